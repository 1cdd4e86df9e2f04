"""Early stopping: stop fine-tuning when the validation loss stops improving; keep the best checkpoint.

A validation *improves* when its loss is below the best so far by more than `min_delta`; after
`patience` validations in a row without improving, the run stops. The loop writes a checkpoint at
every improving validation and keeps it (marked `"best": true` in run.json) until a better one
replaces it. Off unless asked for, and the loop then runs exactly as without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ckptlab.errors import ConfigError
from ckptlab.train.callbacks.base import Callback


@dataclass
class EarlyStoppingConfig:
    """Stop when the validation loss stops improving."""

    patience: int | None = None
    """Stop after this many validations in a row without a new best validation loss; null = never stop early."""
    min_delta: float = 0.0
    """A validation loss improves on the best only when lower by more than this."""

    def __post_init__(self) -> None:
        if self.patience is not None and self.patience < 1:
            raise ConfigError(
                "early_stopping.patience: expected a positive integer (validations without improvement), "
                f"got {self.patience}"
            )
        if not (math.isfinite(self.min_delta) and self.min_delta >= 0):
            raise ConfigError(f"early_stopping.min_delta: expected a number ≥ 0, got {self.min_delta}")


class EarlyStopping(Callback):
    """The best validation loss so far and how many validations have not improved on it."""

    metric = "val_loss"
    state_key = "early_stopping"

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        self.patience, self.min_delta = patience, min_delta
        self.best: float | None = None
        self.best_step: int | None = None
        self.bad_validations = 0
        self.stopped_at: int | None = None

    def observe(self, step: int, value: float | None) -> tuple[bool, bool]:
        """(improved, stop) after the validation at `step`; a missing loss counts as no improvement."""
        if value is not None and math.isfinite(value) and (self.best is None or value < self.best - self.min_delta):
            self.best, self.best_step, self.bad_validations = value, step, 0
            return True, False
        self.bad_validations += 1
        stop = self.bad_validations >= self.patience
        if stop:
            self.stopped_at = step
        return False, stop

    def on_validation(self, step: int, val_loss: float | None) -> str | None:
        """Stop after `patience` validations without improvement, saying why."""
        if not self.observe(step, val_loss)[1]:
            return None
        return (
            f"early stopping at step {step}: {self.patience} validations without a better "
            f"val_loss than {self.best} (step {self.best_step})"
        )

    def on_train_start(self, step: int) -> bool:
        """A run resumed from the checkpoint where it stopped early has nothing left to do."""
        return self.stopped_at is not None

    def state_dict(self) -> dict[str, Any]:
        """The counters a resumed run continues from."""
        return {
            "best": self.best,
            "best_step": self.best_step,
            "bad_validations": self.bad_validations,
            "stopped_at": self.stopped_at,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()`."""
        self.best, self.best_step = state["best"], state["best_step"]
        self.bad_validations, self.stopped_at = state["bad_validations"], state["stopped_at"]

    def run_record(self) -> dict[str, Any]:
        """run.json's `early_stopping`: the settings, the best validation and where the run stopped."""
        return {
            "early_stopping": {
                "metric": self.metric,
                "patience": self.patience,
                "min_delta": self.min_delta,
                "best_step": self.best_step,
                "best_val_loss": self.best,
                "bad_validations": self.bad_validations,
                "stopped_at": self.stopped_at,
            }
        }
