"""Checkpoints of a training run: writing them, restoring from one, retention, and run.json bookkeeping.

A checkpoint is the loadable HF model directory plus `training_state.pt` (optimizer, RNG, data
position, fingerprints and the callbacks' states), written atomically by `runs/checkpoint.py`.
Kept steps (and the best one, when a callback chooses it) stay for later use; of the others only
the newest `resume_checkpoints` survive. run.json lists the checkpoints and is rewritten after each.
"""

from __future__ import annotations

import functools
import random
import shutil
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
        save_model: Callable[[Path], object],
        config: TrainConfig,
        kept: Sequence[int],
        fingerprints: dict[str, str],
        dist: Dist,
        callbacks: Sequence[Callback],
    ) -> None:
        self.run, self.save_model, self.kept, self.fingerprints = run, save_model, kept, fingerprints
        self.config, self.dist, self.callbacks = config, dist, callbacks
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

        state = load_training_state(checkpoint)
        check_fingerprints(state.get("fingerprints", {}), self.fingerprints, allow_changed, checkpoint)
        if state["global_batch"] != self.global_batch and "batch" not in allow_changed:
            raise CheckpointError(
                f"{checkpoint}: the run used a global batch of {state['global_batch']}, now "
                f"{self.global_batch}; resume anyway with --allow_changed batch"
            )
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
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
        """Write the checkpoint of `position.step`, then drop superseded ones; every process calls it."""
        at_step = position.step
        # The best checkpoint so far (early stopping) is kept until a better one replaces it.
        is_best = self.best_step == at_step
        is_kept = at_step in self.kept or is_best
        if self.dist.is_main:
            from ckptlab.runs import checkpoint as ckpt

            meta = {"tokens_seen": position.tokens_seen, "kept": is_kept, "fingerprints": self.fingerprints}
            write = functools.partial(self._write, position=position, optimizer=optimizer)
            path = ckpt.write_checkpoint(self.run.checkpoints, at_step, write, meta)
            entry = {
                "step": at_step,
                "path": str(path.relative_to(self.run.root)),
                "kept": is_kept,
                "tokens_seen": position.tokens_seen,
                "val_loss": val_loss,
            }
            if is_best:
                entry["best"] = True
                for old in self.manifest["checkpoints"]:
                    if old.pop("best", False):
                        old["kept"] = old["step"] in self.kept
            # Superseded resume checkpoints are deleted only after the new one is complete.
            entries = sorted(
                [c for c in self.manifest["checkpoints"] if c["step"] != at_step] + [entry], key=lambda c: c["step"]
            )
            # Kept checkpoints can be resumed from too, so they count among the newest retained.
            newest = entries[-self.config.resume_checkpoints :]
            stale = [c for c in entries if not c["kept"] and c not in newest]
            self.manifest["checkpoints"] = [c for c in entries if c not in stale]
            self.manifest["latest_step"] = at_step
            self._annotate(stop_reason)
            self.run.write_run_manifest(self.manifest)
            for old in stale:
                shutil.rmtree(self.run.root / old["path"], ignore_errors=True)
        self.dist.barrier()

    def _write(self, folder: Path, position: Position, optimizer: torch.optim.Optimizer) -> None:
        import torch

        from ckptlab.runs.checkpoint import TRAINING_STATE

        self.save_model(folder)
        state = {
            "step": position.step,
            "samples_seen": position.samples_seen,
            "tokens_seen": position.tokens_seen,
            "global_batch": self.global_batch,
            "optimizer": optimizer.state_dict(),
            "rng": rng_state(),
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
        self._annotate(stop_reason)
        self.manifest["status"] = status
        if self.dist.is_main:
            self.run.write_run_manifest(self.manifest)
        return self.manifest["checkpoints"]


def rng_state() -> dict[str, Any]:
    """Python's and torch's (CPU and CUDA) random generator states."""
    import torch

    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore `rng_state()`."""
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
