"""The one training loop: pre-training, continued pre-training and fine-tuning all run here.

What differs between them is the batch source (which tokens, which are targets), the schedule,
and which parameters are trainable — never the loop. Read top to bottom:

1. restore the training state when resuming (optimizer, RNG, data position, callbacks' states);
2. for every optimizer step: the step's micro-batches are a pure function of the step, the loss
   is summed over target tokens and divided by the *global* number of target tokens (so batch
   8 × 1 equals batch 1 × accumulation 8 equals 2 processes × 4), NaN stops the run, gradients
   are clipped, AdamW steps;
3. metrics every step, validation every `val_every`, a checkpoint at every kept step, every
   `save_every` steps, and when SIGTERM/SIGINT asks the run to stop.

Features (early stopping, L2-SP, compute accounting, TensorBoard, fault injection, the metrics file,
the progress bar) are callbacks (`train/callbacks/`); checkpoints and run.json are `train/checkpointing.py`.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ckptlab.errors import TrainingDiverged
from ckptlab.train.config import TrainConfig

if TYPE_CHECKING:
    import torch

    from ckptlab.runs.run_dir import RunDir
    from ckptlab.train.callbacks.base import Callback, StepCounts
    from ckptlab.train.distributed import Dist


class BatchSource(Protocol):
    """Maps global sample indices to a batch; must be a pure function of the indices."""

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """`input_ids` and `labels` (LongTensor [b, T]; labels aligned with inputs, -100 = not a
        target) and optionally `attention_mask`."""
        ...


@dataclass
class LoopResult:
    """How a call of `train` ended."""

    step: int
    status: Literal["complete", "stopped"]
    last_loss: float | None
    checkpoints: list[dict[str, Any]]
    stop_reason: Literal["max_steps", "early_stopping", "signal"] = "max_steps"
    best_step: int | None = None
    """The step of the best validation loss, when early stopping watched it."""


def train(
    *,
    model: torch.nn.Module,
    save_model: Callable[[Path], object],
    train_data: BatchSource,
    val_data: BatchSource | None,
    config: TrainConfig,
    lr_at: Callable[[int], float],
    kept: Sequence[int],
    run: RunDir,
    fingerprints: dict[str, str],
    resume_from: Path | None,
    allow_changed: Sequence[str],
    dist: Dist,
    log: Callable[[str], None] = print,
    initial_optimizer_state: dict[str, Any] | None = None,
    step_fields: Callable[[int], dict[str, Any]] | None = None,
    callbacks: Sequence[Callback] = (),
    keep_optimizer_state: bool = False,
) -> LoopResult:
    """Train `model` in place; checkpoints and metrics go to `run`.

    Args:
        save_model: writes the loadable HF directory (weights, config, tokenizer) into a folder; under FSDP
            it is called with `state_dict=` the whole weights gathered from the shards.
        lr_at: learning rate of each 0-based optimizer step.
        kept: steps whose checkpoints are kept for later use.
        fingerprints: data/tokenizer/model fingerprints recorded in, and checked against, checkpoints.
        resume_from: a verified checkpoint to continue from, or None to start at step 0.
        allow_changed: fingerprint keys that may differ on resume.
        dist: the data-parallel state from `ckptlab.train.distributed.setup`.
        initial_optimizer_state: AdamW state to start from when not resuming (continued
            pre-training from another run's checkpoint keeps its moments unless reset).
        step_fields: extra fields for the metrics line of each 0-based step (e.g. which blend).
        callbacks: optional features, e.g. `L2SP` and `EarlyStopping` (`train/callbacks/`).
        keep_optimizer_state: kept checkpoints keep their optimizer state once newer ones supersede them.
    """
    import torch

    from ckptlab.train import distributed
    from ckptlab.train.callbacks.run_settings import RunSettingsCallback
    from ckptlab.train.checkpointing import Checkpointer, Position
    from ckptlab.train.loss import summed_loss

    # Here, not in the verbs' set-up: every caller (tests and benchmarks too) gets the same speed.
    torch.set_flush_denormal(True)  # denormal gradients made CPU steps 10x slower
    precision = distributed.resolve_precision(config.precision, dist.device)
    sharded = config.parallelism == "fsdp" and dist.enabled
    if config.parallelism == "fsdp" and not dist.enabled:
        log("train.parallelism fsdp: one process, nothing to shard; training unsharded (run.json says none)")
    tf32 = config.tf32 and dist.device.type == "cuda"
    if config.activation_checkpointing:
        distributed.enable_activation_checkpointing(model)
    settings = RunSettingsCallback(config, precision, tf32, "fsdp" if sharded else "ddp" if dist.enabled else "none")
    callbacks = [*_builtin_callbacks(model, config, run, dist), settings, *callbacks]
    # Sharding replaces the parameters by shards: the optimizer and clipping take them after it.
    forward_model = distributed.shard(model, dist, precision) if sharded else _data_parallel(model, dist)
    optimizer = make_optimizer(model, config)
    checkpointer = Checkpointer(
        run,
        save_model,
        config,
        kept,
        fingerprints,
        dist,
        callbacks,
        keep_optimizer_state=keep_optimizer_state,
        sharded_model=model if sharded else None,
    )
    position = Position()
    if resume_from is not None:
        position = checkpointer.restore(resume_from, optimizer, allow_changed, log)
    elif initial_optimizer_state is not None:
        distributed.load_optimizer_state(optimizer, initial_optimizer_state, model if sharded else None)

    autocast = torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def train_loss(input_ids: torch.Tensor, mask: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
        return summed_loss(forward_model, input_ids, mask, labels, autocast)

    # Compiling the loss with the forward lets inductor fuse the upcast and log-softmax into the graph.
    loss_fn = torch.compile(train_loss) if config.compile else train_loss
    params = [p for p in model.parameters() if p.requires_grad]
    max_norm = config.grad_clip if config.grad_clip > 0 else float("inf")

    def validate() -> float | None:
        # FSDP gathers each block's parameters in a collective: every process must run as many forwards.
        return _validate(model, val_data, config, dist, autocast, lockstep=sharded)

    model.train()
    previous_tf32 = distributed.set_tf32(True) if tf32 else None  # a process-wide flag: restored at the end
    status: Literal["complete", "stopped"] = "complete"
    stop_reason: Literal["max_steps", "early_stopping", "signal"] = "max_steps"
    last_loss = None
    try:
        if position.step == 0 and 0 in kept and resume_from is None:
            checkpointer.save(position, optimizer, validate() if config.val_every else None, "max_steps")
        # A run resumed where it stopped early has nothing left to do; every callback still starts.
        if any([callback.on_train_start(position.step) for callback in callbacks]):  # noqa: C419 - every one starts
            stop_reason = "early_stopping"
        with _StopFlag() as stop:
            while position.step < config.max_steps and stop_reason != "early_stopping":
                started = time.perf_counter()
                step = position.step
                lr = lr_at(step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                micro_batches = _micro_batches(train_data, position.samples_seen, config, dist)
                counts = _count(micro_batches, dist)
                loss_sum = torch.zeros((), dtype=torch.float64, device=dist.device)
                for m, batch in enumerate(micro_batches):
                    for callback in callbacks:
                        callback.on_micro_batch(step, m)
                    batch = _to_device(batch, dist.device)
                    with _syncing(forward_model, dist, last=m == len(micro_batches) - 1):
                        loss = loss_fn(batch["input_ids"], batch.get("attention_mask"), batch["labels"])
                        # DDP averages gradients over processes; scale so the result is the global mean.
                        (loss * (dist.world_size / max(counts.targets, 1.0))).backward()
                    loss_sum += loss.detach()
                dist.all_reduce_sum(loss_sum)
                mean_loss = loss_sum.item() / max(counts.targets, 1.0)
                for callback in callbacks:
                    mean_loss = callback.on_loss(step, mean_loss)
                if not math.isfinite(mean_loss):
                    optimizer.zero_grad(set_to_none=True)
                    raise TrainingDiverged(
                        f"loss is {mean_loss} at step {step + 1}; stopped without writing a checkpoint"
                    )
                gradient_fields = [callback.on_gradients() for callback in callbacks]  # e.g. L2-SP's pull
                grad_norm = _as_float(torch.nn.utils.clip_grad_norm_(params, max_norm))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                samples_seen = position.samples_seen + checkpointer.global_batch
                position = Position(step + 1, samples_seen, position.tokens_seen + counts.tokens)
                last_loss = mean_loss
                elapsed = time.perf_counter() - started
                record: dict[str, Any] = {
                    "step": position.step,
                    "loss": mean_loss,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tokens_seen": position.tokens_seen,
                    "tokens_per_s": counts.tokens / elapsed,
                }
                for fields in gradient_fields:
                    record.update(fields)
                if step_fields is not None:
                    record.update(step_fields(step))
                stop_message = None
                if _validation_due(position.step, config, kept):
                    record["val_loss"] = validate()
                    messages = [callback.on_validation(position.step, record["val_loss"]) for callback in callbacks]
                    stop_message = next((message for message in messages if message is not None), None)
                    stop_reason = "early_stopping" if stop_message is not None else stop_reason
                for callback in callbacks:
                    callback.on_step_end(position.step, record, counts)
                stopping = _agree_to_stop(stop.requested, dist)
                ending = stopping or position.step == config.max_steps or stop_message is not None
                best = checkpointer.best_step == position.step
                if ending or best or _checkpoint_due(position.step, config, kept):
                    checkpointer.save(position, optimizer, record.get("val_loss"), stop_reason)
                if stop_message is not None:
                    log(stop_message)
                    break
                if stopping and position.step < config.max_steps:
                    status, stop_reason = "stopped", "signal"
                    log(f"stop requested: checkpoint written at step {position.step}; resume with --resume")
                    break
    except TrainingDiverged:
        checkpointer.finish("diverged", "diverged")
        raise
    finally:
        for callback in callbacks:
            callback.on_end()
        if previous_tf32 is not None:
            distributed.restore_tf32(previous_tf32)
        checkpointer.wait_for_finalize()  # a checkpoint still completing in the background, however the run ends
    checkpoints = checkpointer.finish(status, stop_reason)
    return LoopResult(position.step, status, last_loss, checkpoints, stop_reason, checkpointer.best_step)


def _validation_due(step: int, config: TrainConfig, kept: Sequence[int]) -> bool:
    """Every val_every steps, at the end, and at every kept step (kept checkpoints are compared later)."""
    return bool(config.val_every) and (step % config.val_every == 0 or step == config.max_steps or step in kept)


def _checkpoint_due(step: int, config: TrainConfig, kept: Sequence[int]) -> bool:
    """A kept step, or a resume checkpoint every save_every steps."""
    return step in kept or bool(config.save_every and step % config.save_every == 0)


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only; frozen parameters are left out."""
    import torch

    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 and "norm" not in name.lower() else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=config.schedule.lr, betas=(config.beta1, config.beta2), eps=config.eps, fused=True
    )


def _builtin_callbacks(model: torch.nn.Module, config: TrainConfig, run: RunDir, dist: Dist) -> list[Callback]:
    """What every run has: compute accounting, the metrics file, the progress bar; trackers and faults on request."""
    from ckptlab.faults import injected_fault
    from ckptlab.train.callbacks.compute_meter import ComputeMeterCallback
    from ckptlab.train.callbacks.fault_injection import FaultInjectionCallback
    from ckptlab.train.callbacks.metrics_file import MetricsFileCallback
    from ckptlab.train.callbacks.progress import ProgressBarCallback
    from ckptlab.train.callbacks.trackers import TrackersCallback

    compute = ComputeMeterCallback(model, dist.device, dist.world_size, config.device_power_w)
    callbacks: list[Callback] = [compute]
    fault = injected_fault()
    if fault is not None:
        callbacks.append(FaultInjectionCallback(fault))
    if dist.is_main:
        callbacks.append(MetricsFileCallback(run.metrics))
        if config.trackers():
            callbacks.append(TrackersCallback(config.trackers(), run, config, compute))
    callbacks.append(ProgressBarCallback(config.max_steps, enabled=dist.is_main and config.progress))
    return callbacks


def _micro_batches(data: BatchSource, samples_seen: int, config: TrainConfig, dist: Dist) -> list[dict[str, Any]]:
    """This process's micro-batches of the step that starts at global sample `samples_seen`."""
    first = samples_seen + dist.rank * config.micro_batch_size * config.grad_accum_steps
    size = config.micro_batch_size
    return [data.batch(range(first + m * size, first + (m + 1) * size)) for m in range(config.grad_accum_steps)]


def _count(micro_batches: list[dict[str, Any]], dist: Dist) -> StepCounts:
    """Targets, tokens and Σ b·T² of the step, summed over every process."""
    import torch

    from ckptlab.train.callbacks.base import StepCounts

    counts = torch.tensor(
        [
            sum(int((b["labels"] != -100).sum()) for b in micro_batches),
            sum(int(b["input_ids"].numel()) for b in micro_batches),
            sum(int(b["input_ids"].numel()) * int(b["input_ids"].shape[-1]) for b in micro_batches),
        ],
        # Counted on the CPU: only a multi-process run needs them on the device (NCCL).
        dtype=torch.float64,
        device=dist.device if dist.enabled else "cpu",
    )
    dist.all_reduce_sum(counts)
    return StepCounts(
        targets=int(counts[0].item()), tokens=int(counts[1].item()), token_positions=int(counts[2].item())
    )


def _validate(
    model: torch.nn.Module,
    val_data: BatchSource | None,
    config: TrainConfig,
    dist: Dist,
    autocast: AbstractContextManager[Any],
    lockstep: bool = False,
) -> float | None:
    """Mean loss per target token over the first `val_batches` batches, shared out among the processes.

    `lockstep`: every process runs the same number of forwards (FSDP), the surplus ones not counted.
    """
    import torch

    from ckptlab.train.loss import summed_loss

    if val_data is None or config.val_batches == 0:
        return None
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=dist.device)
    rounds = math.ceil(config.val_batches / dist.world_size) if lockstep else None
    forwards = rounds * dist.world_size if rounds is not None else config.val_batches
    with torch.no_grad():
        # The bare model, not the DDP wrapper: processes may score different numbers of batches.
        for b in range(dist.rank, forwards, dist.world_size):
            counted = b < config.val_batches
            start = (b if counted else 0) * config.micro_batch_size
            batch = _to_device(val_data.batch(range(start, start + config.micro_batch_size)), dist.device)
            loss = summed_loss(model, batch["input_ids"], batch.get("attention_mask"), batch["labels"], autocast)
            if counted:
                total[0] += loss
                total[1] += (batch["labels"] != -100).sum()
    dist.all_reduce_sum(total)
    model.train()
    return float(total[0] / total[1]) if total[1] > 0 else None


def _data_parallel(model: torch.nn.Module, dist: Dist) -> torch.nn.Module:
    """The model wrapped in DDP when several processes train it, else the model itself."""
    if not dist.enabled:
        return model
    import torch

    device_ids = [dist.device.index] if dist.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def _syncing(forward_model: torch.nn.Module, dist: Dist, last: bool) -> AbstractContextManager[Any]:
    """DDP all-reduces (FSDP reduce-scatters) gradients only on the step's last micro-batch; the others accumulate
    locally."""
    if not dist.enabled:
        return contextlib.nullcontext()
    from torch.distributed.fsdp import FSDPModule

    if isinstance(forward_model, FSDPModule):
        forward_model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()
    if last:
        return contextlib.nullcontext()
    from torch.nn.parallel import DistributedDataParallel

    return forward_model.no_sync() if isinstance(forward_model, DistributedDataParallel) else contextlib.nullcontext()


def _as_float(norm: torch.Tensor) -> float:
    """A gradient norm as a number; under FSDP it is a DTensor whose whole value needs a reduction."""
    full_tensor = getattr(norm, "full_tensor", None)
    return float(full_tensor() if full_tensor is not None else norm)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if hasattr(v, "to") else v) for k, v in batch.items()}


class _StopFlag:
    """Set by SIGTERM/SIGINT; the loop finishes the current step, checkpoints and exits 0."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _agree_to_stop(requested: bool, dist: Dist) -> bool:
    """Every process must stop at the same step, or the others would hang in all-reduce."""
    if not dist.enabled:
        return requested
    import torch

    flag = torch.tensor([1.0 if requested else 0.0], device=dist.device)
    return bool(dist.all_reduce_sum(flag).item() > 0)
