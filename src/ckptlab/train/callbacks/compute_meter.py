"""The run's compute (tokens, FLOPs, wall time, energy) in run.json, continued across resumes.

The FLOP convention and its maths live in `train/compute.py`; this callback only feeds it each
step's counts and hands its record to run.json and its counters to the training state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ckptlab.train.callbacks.base import Callback, StepCounts

if TYPE_CHECKING:
    import torch


class ComputeMeterCallback(Callback):
    """run.json's `compute` and training_state.pt's `compute` (see `ckptlab.train.compute.ComputeMeter`)."""

    state_key = "compute"

    def __init__(self, model: torch.nn.Module, device: torch.device, processes: int, power_w: float | None) -> None:
        from ckptlab.train.compute import ComputeMeter

        self.meter = ComputeMeter(model, device, processes, power_w)

    def on_step_end(self, step: int, record: dict[str, Any], counts: StepCounts) -> None:
        """Count the step's tokens."""
        self.meter.add(counts.tokens, counts.targets, counts.token_positions)

    def state_dict(self) -> dict[str, Any]:
        """The counters, so a resumed run continues them."""
        return self.meter.state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the counters of a checkpoint."""
        self.meter.load_state(state)

    def run_record(self) -> dict[str, Any]:
        """run.json's `compute`."""
        return {"compute": self.meter.record()}
