"""TensorBoard scalars of every step (`train.tensorboard`), written by the main process under RUN/tensorboard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ckptlab.errors import ConfigError
from ckptlab.train.callbacks.base import Callback, StepCounts

SCALARS = ("loss", "lr", "grad_norm", "tokens_per_s", "val_loss")


class TensorBoardCallback(Callback):
    """Writes the metrics line's scalars as `train/<key>` at each step."""

    def __init__(self, root: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "train.tensorboard: the tensorboard package is not installed (pip install tensorboard)"
            ) from None
        self.writer = SummaryWriter(log_dir=str(root / "tensorboard"))

    def on_step_end(self, step: int, record: dict[str, Any], counts: StepCounts) -> None:
        """Write the step's scalars (validation loss only at validated steps)."""
        for key in SCALARS:
            if record.get(key) is not None:
                self.writer.add_scalar(f"train/{key}", record[key], step)

    def on_end(self) -> None:
        """Flush and close the event file."""
        self.writer.close()
