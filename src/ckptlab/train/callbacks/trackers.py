"""Experiment trackers of a training run (`train.report_to`), fed by the main process only.

At the start each tracker gets the run's config (RUN/config.yaml as the verb resolved it, flattened
to dotted keys), at every step every number of the metrics line (`train/loss`, `train/val_loss`, ...,
the same values metrics.jsonl gets), and at the end run.json's compute record as summary values
(`compute/flops`, ...). The trackers' run ids are kept in RUN/trackers.json, so a resumed run
continues the same W&B and MLflow runs; the trackers themselves are `ckptlab.runs.trackers`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ckptlab.train.callbacks.base import Callback, StepCounts

if TYPE_CHECKING:
    from ckptlab.runs.run_dir import RunDir
    from ckptlab.runs.trackers import Tracker
    from ckptlab.train.callbacks.compute_meter import ComputeMeterCallback
    from ckptlab.train.config import TrainConfig

KEY = "train.report_to"


class TrackersCallback(Callback):
    """Logs the run to the trackers named in `train.report_to` (and TensorBoard for `train.tensorboard`)."""

    def __init__(self, names: Sequence[str], run: RunDir, config: TrainConfig, compute: ComputeMeterCallback) -> None:
        from ckptlab.runs.trackers import check_trackers

        # Checked here, before the model is placed and the step-0 checkpoint written, not at the first step.
        self.names = check_trackers(names, KEY)
        self.run = run
        self.config = config
        self.compute = compute
        self.trackers: list[Tracker] = []
        self.last_step = 0

    def on_train_start(self, step: int) -> bool:
        """Open the trackers (continuing their runs when RUN/trackers.json names them) and log the config."""
        from ckptlab.runs.trackers import STATE_FILE, open_trackers

        self.last_step = step
        self.trackers = open_trackers(
            self.names,
            self.run.root.resolve().name,
            self.run.root,
            self._run_config(),
            key=KEY,
            state_file=self.run.root / STATE_FILE,
            start_step=step,
        )
        return False

    def on_step_end(self, step: int, record: dict[str, Any], counts: StepCounts) -> None:
        """Log every number of the step's metrics line as `train/<field>`."""
        scalars = {
            f"train/{name}": float(value)
            for name, value in record.items()
            if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        for tracker in self.trackers:
            tracker.log_metrics(scalars, step)
        self.last_step = step

    def on_end(self) -> None:
        """Log the compute record as summary values and close the trackers; a run that raised is marked failed."""
        # on_end runs in the loop's `finally`: an exception on its way out is visible here.
        failed = sys.exc_info()[0] is not None
        compute = self.compute.run_record()["compute"] if self.trackers else {}
        summary = {f"compute/{name}": value for name, value in compute.items()}
        for tracker in self.trackers:
            # Errors are reported, not raised: on_end runs while the run ends, and raising here would
            # hide the run's own outcome and leave the other trackers and callbacks open.
            try:
                tracker.log_summary(summary, self.last_step)
            except Exception as error:
                _warn(tracker, "log the compute record", error)
            try:
                tracker.close(failed=failed)
            except Exception as error:
                _warn(tracker, "close", error)
        self.trackers = []

    def _run_config(self) -> dict[str, Any]:
        """The verb's resolved config (every verb writes RUN/config.yaml first); else the training keys alone."""
        import yaml

        from ckptlab import config as configlib

        if self.run.config.exists():
            saved = yaml.safe_load(self.run.config.read_text(encoding="utf-8"))
            if isinstance(saved, dict):
                return saved
        return {"train": configlib.to_dict(self.config)}


def _warn(tracker: Tracker, action: str, error: Exception) -> None:
    print(f"{KEY}: {type(tracker).__name__} could not {action}: {error}", file=sys.stderr)
