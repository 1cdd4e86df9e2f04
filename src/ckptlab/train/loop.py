"""The one training loop: pre-training, continued pre-training and fine-tuning all run here.

What differs between them is the batch source (which tokens, which are targets), the schedule,
and which parameters are trainable — never the loop. Read top to bottom:

1. restore the training state when resuming (optimizer, RNG, data position);
2. for every optimizer step: the step's micro-batches are a pure function of the step, the loss
   is summed over target tokens and divided by the *global* number of target tokens (so batch
   8 × 1 equals batch 1 × accumulation 8 equals 2 processes × 4), NaN stops the run, gradients
   are clipped, AdamW steps;
3. metrics every step, validation every `val_every`, a checkpoint at every kept step, every
   `save_every` steps, and when SIGTERM/SIGINT asks the run to stop.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, Sequence

from ckptlab.errors import CheckpointError, ConfigError, TrainingDiverged
from ckptlab.runs.run_dir import check_fingerprints
from ckptlab.train.config import TrainConfig


class BatchSource(Protocol):
    """Maps global sample indices to a batch; must be a pure function of the indices."""

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """`input_ids` and `labels` (LongTensor [b, T]; labels aligned with inputs, -100 = not a
        target) and optionally `attention_mask`."""
        ...


@dataclass
class LoopResult:
    step: int
    status: Literal["complete", "stopped"]
    last_loss: float | None
    checkpoints: list[dict[str, Any]]
    stop_reason: Literal["max_steps", "early_stopping", "signal"] = "max_steps"
    best_step: int | None = None
    """The step of the best validation loss, when early stopping watched it."""


def _fault_injection() -> dict[str, int]:
    # Tests simulate crashes at exact points: CKPTLAB_FAULT="kill:step=5,micro=1" or "nan:step=3".
    spec = os.environ.get("CKPTLAB_FAULT", "")
    if not spec:
        return {}
    kind, _, args = spec.partition(":")
    fault = {"kind_" + kind: 1}
    for part in filter(None, args.split(",")):
        key, _, value = part.partition("=")
        fault[key] = int(value)
    return fault


class _StopFlag:
    """Set by SIGTERM/SIGINT; the loop finishes the current step, checkpoints and exits 0."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def rng_state() -> dict[str, Any]:
    import torch

    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make_optimizer(model: Any, config: TrainConfig) -> Any:
    """AdamW with weight decay on matrices only; frozen parameters are left out."""
    import torch

    decay, no_decay = [], []
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


def train(
    *,
    model: Any,
    save_model: Callable[[Path], None],
    train_data: BatchSource,
    val_data: BatchSource | None,
    config: TrainConfig,
    lr_at: Callable[[int], float],
    kept: Sequence[int],
    run: Any,
    fingerprints: dict[str, str],
    resume_from: Path | None,
    allow_changed: Sequence[str],
    dist: Any,
    log: Callable[[str], None] = print,
    initial_optimizer_state: dict[str, Any] | None = None,
    step_fields: Callable[[int], dict[str, Any]] | None = None,
    anchor: Any = None,
    early_stopping: Any = None,
) -> LoopResult:
    """Train `model` in place; checkpoints and metrics go to `run` (a RunDir).

    Args:
        save_model: writes the loadable HF directory (weights, config, tokenizer) into a folder.
        lr_at: learning rate of each 0-based optimizer step.
        kept: steps whose checkpoints are kept for later use.
        fingerprints: data/tokenizer/model fingerprints recorded in, and checked against, checkpoints.
        resume_from: a verified checkpoint to continue from, or None to start at step 0.
        allow_changed: fingerprint keys that may differ on resume.
        dist: the data-parallel state from `ckptlab.train.distributed.setup`.
        initial_optimizer_state: AdamW state to start from when not resuming (continued
            pre-training from another run's checkpoint keeps its moments unless reset).
        step_fields: extra fields for the metrics line of each 0-based step (e.g. which blend).
        anchor: an `L2SP` regulariser whose gradient joins every step's (`train/regularisation.py`).
        early_stopping: an `EarlyStopping` watching every validation loss; the best checkpoint is kept.
    """
    import torch
    import torch.nn.functional as F

    from ckptlab.runs import checkpoint as ckpt
    from ckptlab.train.compute import ComputeMeter

    torch.set_flush_denormal(True)  # denormal gradients made CPU steps 10x slower
    device = dist.device
    step, samples_seen, tokens_seen = 0, 0, 0
    optimizer = make_optimizer(model, config)
    global_batch = config.micro_batch_size * config.grad_accum_steps * dist.world_size
    meter = ComputeMeter(model, device, dist.world_size, config.device_power_w)

    if initial_optimizer_state is not None and resume_from is None:
        optimizer.load_state_dict(initial_optimizer_state)
    if resume_from is not None:
        state = torch.load(resume_from / ckpt.TRAINING_STATE, map_location="cpu", weights_only=False)
        check_fingerprints(state.get("fingerprints", {}), fingerprints, allow_changed, resume_from)
        if state["global_batch"] != global_batch and "batch" not in allow_changed:
            raise CheckpointError(
                f"{resume_from}: the run used a global batch of {state['global_batch']}, now "
                f"{global_batch}; resume anyway with --allow_changed batch"
            )
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        step, samples_seen, tokens_seen = state["step"], state["samples_seen"], state["tokens_seen"]
        if "compute" in state:
            meter.load_state(state["compute"])
        if early_stopping is not None and state.get("early_stopping") is not None:
            early_stopping.load_state(state["early_stopping"])
        log(f"resuming from {resume_from} (step {step})")

    forward_model = model
    if dist.enabled:
        forward_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")

    def summed_loss(input_ids: Any, attention_mask: Any, labels: Any) -> Any:
        with autocast:
            logits = forward_model(input_ids=input_ids, attention_mask=attention_mask).logits
        if logits.ndim == 2:  # sequence classification: one position per sequence, labels [batch, 1]
            logits = logits.unsqueeze(1)
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")

    # Compiling the loss with the forward lets inductor fuse the upcast and log-softmax into the graph.
    loss_fn = torch.compile(summed_loss) if config.compile else summed_loss
    params = [p for p in model.parameters() if p.requires_grad]
    fault = _fault_injection()
    manifest = run.read_run_manifest() if resume_from is not None else {"checkpoints": []}
    manifest.update(status="running", fingerprints=fingerprints, max_steps=config.max_steps)
    writer = _tensorboard(run.root) if (config.tensorboard and dist.is_main) else None
    last_val: dict[int, float] = {}
    stop_reason = "max_steps"

    def annotate() -> None:
        manifest.update(compute=meter.record(), stop_reason=stop_reason)
        if early_stopping is not None:
            manifest["early_stopping"] = early_stopping.record()

    def save_checkpoint(at_step: int) -> None:
        # The best checkpoint so far (early stopping) is kept until a better one replaces it.
        is_best = early_stopping is not None and early_stopping.best_step == at_step
        is_kept = at_step in kept or is_best
        if dist.is_main:
            def write(folder: Path) -> None:
                save_model(folder)
                torch.save(
                    {
                        "step": at_step,
                        "samples_seen": samples_seen,
                        "tokens_seen": tokens_seen,
                        "global_batch": global_batch,
                        "optimizer": optimizer.state_dict(),
                        "rng": rng_state(),
                        "fingerprints": fingerprints,
                        "compute": meter.state(),
                        "early_stopping": early_stopping.state() if early_stopping is not None else None,
                    },
                    folder / ckpt.TRAINING_STATE,
                )

            meta = {"tokens_seen": tokens_seen, "kept": is_kept, "fingerprints": fingerprints}
            path = ckpt.write_checkpoint(run.checkpoints, at_step, write, meta)
            entry = {"step": at_step, "path": str(path.relative_to(run.root)), "kept": is_kept,
                     "tokens_seen": tokens_seen, "val_loss": last_val.get(at_step)}
            if is_best:
                entry["best"] = True
                for old in manifest["checkpoints"]:
                    if old.pop("best", False):
                        old["kept"] = old["step"] in kept
            # Superseded resume checkpoints are deleted only after the new one is complete.
            entries = sorted([c for c in manifest["checkpoints"] if c["step"] != at_step] + [entry],
                             key=lambda c: c["step"])
            # Kept checkpoints can be resumed from too, so they count among the newest retained.
            newest = entries[-config.resume_checkpoints:]
            stale = [c for c in entries if not c["kept"] and c not in newest]
            manifest["checkpoints"] = [c for c in entries if c not in stale]
            manifest["latest_step"] = at_step
            annotate()
            run.write_run_manifest(manifest)
            for old in stale:
                shutil.rmtree(run.root / old["path"], ignore_errors=True)
        dist.barrier()

    def validate() -> float | None:
        if val_data is None or config.val_batches == 0:
            return None
        model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=device)
        with torch.no_grad(), autocast:
            for b in range(dist.rank, config.val_batches, dist.world_size):
                start = b * config.micro_batch_size
                batch = _to_device(val_data.batch(range(start, start + config.micro_batch_size)), device)
                logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
                logits = logits.unsqueeze(1) if logits.ndim == 2 else logits
                labels = batch["labels"]
                total[0] += F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
                total[1] += (labels != -100).sum()
        dist.all_reduce_sum(total)
        model.train()
        return float(total[0] / total[1]) if total[1] > 0 else None

    progress = _progress_bar(config, step, dist.is_main)
    model.train()
    last_loss = None
    if step == 0 and 0 in kept and resume_from is None:
        last_val[0] = validate() if config.val_every else None
        save_checkpoint(0)
    run.metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics = open(run.metrics, "a", encoding="utf-8") if dist.is_main else None
    status: Literal["complete", "stopped"] = "complete"
    if early_stopping is not None and early_stopping.stopped_at is not None:
        stop_reason = "early_stopping"  # resumed from the checkpoint where the run stopped early: nothing left
    try:
        with _StopFlag() as stop:
            while step < config.max_steps and stop_reason != "early_stopping":
                started = time.perf_counter()
                lr = lr_at(step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                first = samples_seen + dist.rank * config.micro_batch_size * config.grad_accum_steps
                micro_batches = [
                    train_data.batch(range(first + m * config.micro_batch_size, first + (m + 1) * config.micro_batch_size))
                    for m in range(config.grad_accum_steps)
                ]
                counts = torch.tensor(
                    [sum(int((b["labels"] != -100).sum()) for b in micro_batches),
                     sum(int(b["input_ids"].numel()) for b in micro_batches),
                     # Σ b·T²: the attention term of the FLOP count (train/compute.py).
                     sum(int(b["input_ids"].numel()) * int(b["input_ids"].shape[-1]) for b in micro_batches)],
                    # Counted on the CPU: only a multi-process run needs them on the device (NCCL).
                    dtype=torch.float64, device=device if dist.enabled else "cpu",
                )
                dist.all_reduce_sum(counts)
                targets = counts[0].item()
                loss_sum = torch.zeros((), dtype=torch.float64, device=device)
                for m, batch in enumerate(micro_batches):
                    if fault.get("kind_kill") and fault.get("step") == step and fault.get("micro", 0) == m:
                        os.kill(os.getpid(), signal.SIGKILL)
                    batch = _to_device(batch, device)
                    sync = contextlib.nullcontext()
                    if dist.enabled and m < len(micro_batches) - 1:
                        sync = forward_model.no_sync() if hasattr(forward_model, "no_sync") else sync
                    with sync:
                        loss = loss_fn(batch["input_ids"], batch.get("attention_mask"), batch["labels"])
                        # DDP averages gradients over processes; scale so the result is the global mean.
                        (loss * (dist.world_size / max(targets, 1.0))).backward()
                    loss_sum += loss.detach()
                dist.all_reduce_sum(loss_sum)
                mean_loss = loss_sum.item() / max(targets, 1.0)
                if fault.get("kind_nan") and fault.get("step") == step:
                    mean_loss = float("nan")
                if not math.isfinite(mean_loss):
                    optimizer.zero_grad(set_to_none=True)
                    raise TrainingDiverged(f"loss is {mean_loss} at step {step + 1}; stopped without writing a checkpoint")
                penalty = anchor.add_gradient() if anchor is not None else None
                max_norm = config.grad_clip if config.grad_clip > 0 else float("inf")
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                samples_seen += global_batch
                tokens_seen += int(counts[1].item())
                meter.add(int(counts[1].item()), int(targets), int(counts[2].item()))
                elapsed = time.perf_counter() - started
                last_loss = mean_loss
                record = {"step": step, "loss": mean_loss, "lr": lr, "grad_norm": grad_norm,
                          "tokens_seen": tokens_seen, "tokens_per_s": counts[1].item() / elapsed}
                if penalty is not None:
                    record["anchor_penalty"] = penalty
                if step_fields is not None:
                    record.update(step_fields(step - 1))
                # Kept checkpoints always get a validation loss: they are what users compare later.
                if config.val_every and (step % config.val_every == 0 or step == config.max_steps or step in kept):
                    last_val[step] = record["val_loss"] = validate()
                    if early_stopping is not None and early_stopping.observe(step, last_val[step])[1]:
                        stop_reason = "early_stopping"
                if metrics is not None:
                    metrics.write(_json_line(record))
                    metrics.flush()
                if writer is not None:
                    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "val_loss"):
                        if record.get(key) is not None:
                            writer.add_scalar(f"train/{key}", record[key], step)
                progress.update(1)
                progress.set_postfix(loss=f"{mean_loss:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
                stopping = _agree_to_stop(stop.requested, dist)
                ending = stopping or step == config.max_steps or stop_reason == "early_stopping"
                best = early_stopping is not None and early_stopping.best_step == step
                if step in kept or (config.save_every and step % config.save_every == 0) or ending or best:
                    save_checkpoint(step)
                if stop_reason == "early_stopping":
                    log(f"early stopping at step {step}: {early_stopping.patience} validations without a better "
                        f"val_loss than {early_stopping.best} (step {early_stopping.best_step})")
                    break
                if stopping and step < config.max_steps:
                    status, stop_reason = "stopped", "signal"
                    log(f"stop requested: checkpoint written at step {step}; resume with --resume")
                    break
    except TrainingDiverged:
        if dist.is_main:
            stop_reason = "diverged"
            annotate()
            manifest.update(status="diverged")
            run.write_run_manifest(manifest)
        raise
    finally:
        progress.close()
        if metrics is not None:
            metrics.close()
        if writer is not None:
            writer.close()
    annotate()
    manifest.update(status=status)
    if dist.is_main:
        run.write_run_manifest(manifest)
    return LoopResult(step=step, status=status, last_loss=last_loss, checkpoints=manifest["checkpoints"],
                      stop_reason=stop_reason, best_step=early_stopping.best_step if early_stopping is not None else None)


def _agree_to_stop(requested: bool, dist: Any) -> bool:
    """Every process must stop at the same step, or the others would hang in all-reduce."""
    if not dist.enabled:
        return requested
    import torch

    flag = torch.tensor([1.0 if requested else 0.0], device=dist.device)
    return bool(dist.all_reduce_sum(flag).item() > 0)


def _to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if hasattr(v, "to") else v) for k, v in batch.items()}


def _json_line(record: dict[str, Any]) -> str:
    import json

    # Python's float repr round-trips exactly, so per-step losses can be compared bit for bit.
    return json.dumps(record) + "\n"


def _progress_bar(config: TrainConfig, start: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=config.max_steps, initial=start, unit="step", disable=not (enabled and config.progress),
                dynamic_ncols=True, smoothing=0.1)


def _tensorboard(root: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("train.tensorboard: the tensorboard package is not installed (pip install tensorboard)") from None
    return SummaryWriter(log_dir=str(root / "tensorboard"))
