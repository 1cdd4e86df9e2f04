"""metrics.jsonl: one JSON line per optimizer step, written by the main process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from ckptlab.train.callbacks.base import Callback, StepCounts


class MetricsFileCallback(Callback):
    """Appends each step's metrics line to `path` and flushes it, so a killed run loses no finished step."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file: IO[str] | None = None

    def on_train_start(self, step: int) -> bool:
        """Open for appending: a resumed run continues the file (truncated to its checkpoint beforehand)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Open across events (closed in on_end), so no `with` block can hold it.
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        return False

    def on_step_end(self, step: int, record: dict[str, Any], counts: StepCounts) -> None:
        """Write the line."""
        if self.file is not None:
            # Python's float repr round-trips exactly, so per-step losses can be compared bit for bit.
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def on_end(self) -> None:
        """Close the file."""
        if self.file is not None:
            self.file.close()
