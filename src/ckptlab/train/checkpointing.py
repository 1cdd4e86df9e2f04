"""Checkpoints of a training run: writing them, restoring from one, retention, and run.json bookkeeping.

A checkpoint is the loadable HF model directory plus `training_state.pt` (optimizer, RNG, data
position, fingerprints and the callbacks' states), written atomically by `runs/checkpoint.py`.
Kept steps (and the best one, when a callback chooses it) stay for later use; of the others only
the newest `resume_checkpoints` survive. A kept checkpoint older than those loses its training state
(weights-only, a third of the bytes with AdamW) unless `keep.optimizer_state`. run.json lists the
checkpoints and is rewritten after each.

The main process writes a checkpoint's files while training waits; hashing them, the manifest, the
rename, run.json and retention then finish on a background thread, which the next save, the end of
the run and any exception wait for (`wait_for_finalize`).
"""

from __future__ import annotations

import copy
import functools
import random
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckptlab.errors import CheckpointError
from ckptlab.runs.run_dir import check_fingerprints

if TYPE_CHECKING:
    import torch

    from ckptlab.runs.run_dir import RunDir
    from ckptlab.train.callbacks.base import Callback
    from ckptlab.train.config import TrainConfig
    from ckptlab.train.distributed import Dist

# Written as None when no callback fills them, so every training_state.pt has the same keys whichever
# features ran (and checkpoints from before the callbacks resume unchanged).
OPTIONAL_STATE_KEYS = ("early_stopping",)
FINALIZE_THREAD = "ckptlab-finalize"
"""Name prefix of the threads that complete checkpoints in the background."""


@dataclass
class Position:
    """How far the run has come: optimizer steps, samples and tokens consumed."""

    step: int = 0
    samples_seen: int = 0
    tokens_seen: int = 0


class Checkpointer:
    """Writes and restores the checkpoints of one run and keeps its run.json current."""

    def __init__(
        self,
        run: RunDir,
        save_model: Callable[..., object],
        config: TrainConfig,
        kept: Sequence[int],
        fingerprints: dict[str, str],
        dist: Dist,
        callbacks: Sequence[Callback],
        keep_optimizer_state: bool = False,
        sharded_model: torch.nn.Module | None = None,
    ) -> None:
        self.run, self.save_model, self.kept, self.fingerprints = run, save_model, kept, fingerprints
        self.config, self.dist, self.callbacks = config, dist, callbacks
        # FSDP: its full state is gathered for every checkpoint, which `save_model` gets as `state_dict=`.
        self.sharded_model = sharded_model
        self.keep_optimizer_state = keep_optimizer_state
        self._finalizing: threading.Thread | None = None
        self._finalize_error: BaseException | None = None
        self.global_batch = config.global_batch(dist.world_size)
        self.manifest = self._running({"checkpoints": []})

    @property
    def best_step(self) -> int | None:
        """The step a callback (early stopping) chose as best so far: its checkpoint is written and kept."""
        return next((c.best_step for c in self.callbacks if c.best_step is not None), None)

    def _running(self, manifest: dict[str, Any]) -> dict[str, Any]:
        manifest.update(status="running", fingerprints=self.fingerprints, max_steps=self.config.max_steps)
        return manifest

    def restore(
        self,
        checkpoint: Path,
        optimizer: torch.optim.Optimizer,
        allow_changed: Sequence[str],
        log: Callable[[str], None],
    ) -> Position:
        """Load the training state of `checkpoint` into the optimizer, the RNGs and the callbacks."""
        from ckptlab.runs.checkpoint import load_training_state
        from ckptlab.train.distributed import load_optimizer_state

        state = load_training_state(checkpoint)
        check_fingerprints(state.get("fingerprints", {}), self.fingerprints, allow_changed, checkpoint)
        if state["global_batch"] != self.global_batch and "batch" not in allow_changed:
            raise CheckpointError(
                f"{checkpoint}: the run used a global batch of {state['global_batch']}, now "
                f"{self.global_batch}; resume anyway with --allow_changed batch"
            )
        load_optimizer_state(optimizer, state["optimizer"], self.sharded_model)
        set_rng_state(state["rng"], self.dist.device)
        for callback in self.callbacks:
            if callback.state_key is not None and state.get(callback.state_key) is not None:
                callback.load_state_dict(state[callback.state_key])
        position = Position(state["step"], state["samples_seen"], state["tokens_seen"])
        log(f"resuming from {checkpoint} (step {position.step})")
        self.manifest = self._running(self.run.read_run_manifest())
        return position

    def save(
        self, position: Position, optimizer: torch.optim.Optimizer, val_loss: float | None, stop_reason: str
    ) -> None:
        """Write the checkpoint of `position.step`, then drop superseded ones; every process calls it.

        The main process returns once the files are written; the rest finishes in the background.
        """
        at_step = position.step
        # The best checkpoint so far (early stopping) is kept until a better one replaces it.
        is_best = self.best_step == at_step
        is_kept = at_step in self.kept or is_best
        # Whole (unsharded) states, so the checkpoint loads and resumes with any number of processes.
        model_state, optimizer_state = None, optimizer.state_dict()
        if self.sharded_model is not None:  # collective: every process takes part, rank 0 gets the result
            from ckptlab.train.distributed import full_model_state, full_optimizer_state

            model_state = full_model_state(self.sharded_model)
            optimizer_state = full_optimizer_state(self.sharded_model, optimizer)
        if self.dist.is_main:
            from ckptlab.runs import checkpoint as ckpt

            self.wait_for_finalize()  # retention below reads what the previous save left
            meta = {
                "tokens_seen": position.tokens_seen,
                "samples_seen": position.samples_seen,
                "kept": is_kept,
                "fingerprints": self.fingerprints,
            }
            write = functools.partial(
                self._write, position=position, optimizer_state=optimizer_state, model_state=model_state
            )
            tmp = ckpt.begin_checkpoint(self.run.checkpoints, at_step, write)
            entry = {
                "step": at_step,
                "path": str((self.run.checkpoints / ckpt.step_dirname(at_step)).relative_to(self.run.root)),
                "kept": is_kept,
                "tokens_seen": position.tokens_seen,
                "val_loss": val_loss,
            }
            if is_best:
                entry["best"] = True
                for old in self.manifest["checkpoints"]:
                    if old.pop("best", False):
                        old["kept"] = old["step"] in self.kept
            entries = sorted(
                [c for c in self.manifest["checkpoints"] if c["step"] != at_step] + [entry], key=lambda c: c["step"]
            )
            # Kept checkpoints can be resumed from too, so they count among the newest retained.
            newest = entries[-self.config.resume_checkpoints :]
            stale = [c for c in entries if not c["kept"] and c not in newest]
            self.manifest["checkpoints"] = [c for c in entries if c not in stale]
            # Kept ones older than the newest are for fine-tuning and evaluation: their weights suffice.
            superseded = [
                c
                for c in self.manifest["checkpoints"]
                if not self.keep_optimizer_state and c not in newest and c.get("optimizer_state", True)
            ]
            for old in superseded:
                old["optimizer_state"] = False
            self.manifest["latest_step"] = at_step
            self._annotate(stop_reason)
            finalize = functools.partial(
                self._finalize,
                tmp,
                at_step,
                meta,
                weights_only=[self.run.root / c["path"] for c in superseded],
                stale=[self.run.root / c["path"] for c in stale],
                run_manifest=copy.deepcopy(self.manifest),
            )
            self._start_finalize(finalize, at_step)
        # The other processes wait only until the files are written: they never read them, and the
        # main process waits for the hashing itself before its next save and at the end.
        self.dist.barrier()

    def _finalize(
        self,
        tmp: Path,
        step: int,
        meta: dict[str, Any],
        weights_only: list[Path],
        stale: list[Path],
        run_manifest: dict[str, Any],
    ) -> None:
        from ckptlab.runs import checkpoint as ckpt

        ckpt.complete_checkpoint(tmp, step, meta)
        # Only once the new checkpoint is complete do older ones lose their training state or go.
        for path in weights_only:
            if path.is_dir():
                ckpt.drop_training_state(path)
        self.run.write_run_manifest(run_manifest)
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)

    def _start_finalize(self, work: Callable[[], None], step: int) -> None:
        def run() -> None:
            try:
                work()
            except BaseException as error:  # noqa: BLE001 - raised again on the training thread by wait_for_finalize
                self._finalize_error = error

        self._finalizing = threading.Thread(target=run, name=f"{FINALIZE_THREAD}-{step}")
        self._finalizing.start()

    def wait_for_finalize(self) -> None:
        """Block until the last checkpoint is complete and listed in run.json; raise what went wrong finishing it."""
        if self._finalizing is not None:
            self._finalizing.join()
            self._finalizing = None
        error, self._finalize_error = self._finalize_error, None
        if error is not None:
            raise error

    def _write(
        self,
        folder: Path,
        position: Position,
        optimizer_state: dict[str, Any],
        model_state: dict[str, Any] | None,
    ) -> None:
        import torch

        from ckptlab.runs.checkpoint import TRAINING_STATE

        if model_state is None:
            self.save_model(folder)
        else:
            self.save_model(folder, state_dict=model_state)
        state = {
            "step": position.step,
            "samples_seen": position.samples_seen,
            "tokens_seen": position.tokens_seen,
            "global_batch": self.global_batch,
            "optimizer": optimizer_state,
            "rng": rng_state(self.dist.device),
            "fingerprints": self.fingerprints,
        }
        for callback in self.callbacks:
            if callback.state_key is not None:
                state[callback.state_key] = callback.state_dict()
        for key in OPTIONAL_STATE_KEYS:
            state.setdefault(key, None)
        torch.save(state, folder / TRAINING_STATE)

    def _annotate(self, stop_reason: str) -> None:
        for callback in self.callbacks:
            self.manifest.update(callback.run_record())
        self.manifest["stop_reason"] = stop_reason

    def finish(self, status: str, stop_reason: str) -> list[dict[str, Any]]:
        """Record how the run ended in run.json (main process); the checkpoints it lists."""
        self.wait_for_finalize()
        self._annotate(stop_reason)
        self.manifest["status"] = status
        if self.dist.is_main:
            self.run.write_run_manifest(self.manifest)
        return self.manifest["checkpoints"]


def wait_for_every_finalize() -> None:
    """Join every background checkpoint completion of this process (for hooks that must strike after them)."""
    for thread in threading.enumerate():
        if thread.name.startswith(FINALIZE_THREAD):
            thread.join()


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Python's and torch's random generator states: the CPU's and, on CUDA, that of this process's `device`.

    One CUDA generator, not every visible device's: each process trains on one device, so the
    checkpoint (written by rank 0) can be restored with fewer GPUs or processes than it was made with.
    """
    import torch

    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda_device"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore `rng_state()`; on CUDA only the generator of this process's `device`.

    Every process restores rank 0's generator. All ranks are seeded alike and draw alike (same
    shapes), so their dropout streams continue as uninterrupted on the same number of processes;
    with another number the samples are shared out differently and so are the dropout masks: the
    run is reproducible, not bit-identical to one without the change. Older checkpoints hold every
    visible device's state (`cuda`): this device's is taken if it was saved, else the first (rank 0's).
    """
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if device is None or device.type != "cuda" or not torch.cuda.is_available():
        return
    saved = state.get("cuda_device")
    if saved is None and state.get("cuda"):
        index = device.index if device.index is not None else torch.cuda.current_device()
        saved = state["cuda"][index] if index < len(state["cuda"]) else state["cuda"][0]
    if saved is not None:
        torch.cuda.set_rng_state(saved, device)
