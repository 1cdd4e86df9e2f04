"""The events of the training loop that a callback can hook into, in the order they happen.

Every `step` argument is the number of optimizer steps completed when the event fires: during a
step it is that step's 0-based index, at its end its 1-based number (the `step` of the metrics line).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StepCounts:
    """What one optimizer step processed, summed over every process's micro-batches."""

    targets: int
    """Target tokens (labels other than -100): the loss's denominator."""
    tokens: int
    """Input tokens, padding included."""
    token_positions: int
    """Σ b·T² over the micro-batches: the attention term of the FLOP count (train/compute.py)."""


class Callback:
    """A feature of the training loop; every event is a no-op unless a subclass overrides it."""

    state_key: str | None = None
    """Key of this callback's state in training_state.pt; None = it has no state to resume."""
    best_step: int | None = None
    """The step whose checkpoint is the best so far: written, kept and marked `"best"` in run.json."""

    def state_dict(self) -> dict[str, Any] | None:
        """What a resumed run needs to continue this callback (saved under `state_key`)."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()` of a checkpoint."""

    def on_train_start(self, step: int) -> bool:
        """Before the first step (after the step-0 checkpoint); True = the run has nothing left to do."""
        return False

    def on_micro_batch(self, step: int, micro: int) -> None:
        """Before the forward pass of micro-batch `micro` of the step."""

    def on_loss(self, step: int, loss: float) -> float:
        """The step's mean loss, before the divergence check; a callback may replace it."""
        return loss

    def on_gradients(self) -> dict[str, float]:
        """After the step's gradients are accumulated, before clipping; returns fields for its metrics line."""
        return {}

    def on_validation(self, step: int, val_loss: float | None) -> str | None:
        """After a validation; a message (logged after the step's checkpoint) stops the run early."""
        return None

    def on_step_end(self, step: int, record: dict[str, Any], counts: StepCounts) -> None:
        """After the optimizer step and any validation; `record` is the step's metrics line."""

    def run_record(self) -> dict[str, Any]:
        """Fields for run.json, refreshed at every checkpoint and at the end."""
        return {}

    def on_end(self) -> None:
        """However the run ends (also when it raises): close files."""
