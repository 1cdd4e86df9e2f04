"""Records in run.json how the run computed: precision as resolved for the device, TF32, parallelism, checkpointing."""

from __future__ import annotations

from typing import Any

from ckptlab.train.callbacks.base import Callback
from ckptlab.train.config import TrainConfig


class RunSettingsCallback(Callback):
    """run.json's `training` record; a resumed run records how its latest part ran."""

    def __init__(self, config: TrainConfig, precision: str, tf32: bool, parallelism: str) -> None:
        self.record = {
            "precision": precision,
            "precision_requested": config.precision,
            "tf32": tf32,
            "parallelism": parallelism,
            "activation_checkpointing": config.activation_checkpointing,
        }

    def run_record(self) -> dict[str, Any]:
        return {"training": dict(self.record)}
