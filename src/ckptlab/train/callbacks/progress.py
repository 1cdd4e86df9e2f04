"""The progress bar of the main process (`train.progress`): steps, loss and tokens per second."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ckptlab.train.callbacks.base import Callback, StepCounts

if TYPE_CHECKING:
    from tqdm import tqdm


class ProgressBarCallback(Callback):
    """A tqdm bar over `max_steps`; disabled (but still created) when `enabled` is False."""

    def __init__(self, max_steps: int, enabled: bool) -> None:
        self.max_steps, self.enabled = max_steps, enabled
        self.bar: tqdm[Any] | None = None

    def on_train_start(self, step: int) -> bool:
        """Start the bar at the step the run starts from."""
        from tqdm import tqdm

        self.bar = tqdm(
            total=self.max_steps, initial=step, unit="step", disable=not self.enabled, dynamic_ncols=True, smoothing=0.1
        )
        return False

    def on_step_end(self, step: int, record: dict[str, Any], counts: StepCounts) -> None:
        """Advance one step; show the loss and throughput."""
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")

    def on_end(self) -> None:
        """Close the bar."""
        if self.bar is not None:
            self.bar.close()
