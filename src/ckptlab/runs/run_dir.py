"""A run directory: the resolved config, the per-step metrics, the checkpoints and the run manifest.

```
RUN/
  config.yaml          the resolved config of the run (every key, defaults included)
  run.json             the run manifest: status and the list of complete checkpoints
  metrics.jsonl        one JSON object per optimizer step (and per validation)
  checkpoints/step-00001000/   HF model directory + training_state.pt + checkpoint.json
```
`run.json` is what sweeps read to find a run's kept checkpoints.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ckptlab.errors import CheckpointError, UserError
from ckptlab.files import atomic_write_text
from ckptlab.runs.checkpoint import latest_complete, list_step_dirs, remove_stale_temporaries

RUN_MANIFEST = "run.json"


class RunDir:
    """Paths and small atomic writers of one run directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.metrics = self.root / "metrics.jsonl"
        self.manifest = self.root / RUN_MANIFEST
        self.config = self.root / "config.yaml"

    def refuse_unless_resuming(self, resume: bool) -> None:
        """A new run over an existing one would mix two histories in one directory: refuse it."""
        if not resume and (list_step_dirs(self.checkpoints) or self.metrics.exists()):
            raise UserError(f"{self.root}: already holds a run; pass --resume to continue it, or choose another --out")

    def resume_point(self, starting_from: str, say: Any = print, is_main: bool = True) -> Path | None:
        """The newest complete checkpoint (broken ones are named and skipped), or None to start afresh."""
        remove_stale_temporaries(self.checkpoints)
        latest = latest_complete(self.checkpoints)
        if latest is None:
            say(f"no complete checkpoint in {self.checkpoints}; starting from {starting_from}")
            if is_main:
                # Steps logged by a run killed before its first checkpoint are redone from the start:
                # keeping them would give the new run two histories.
                self.truncate_metrics(-1)
        return latest

    def accept_resume(self, checkpoint: Path, fingerprints: dict[str, str], allow_changed: Any, is_main: bool) -> None:
        """Check `checkpoint` was trained on what this run asks for; drop metrics logged after it."""
        from ckptlab.runs.checkpoint import read_manifest

        saved = read_manifest(checkpoint)
        check_fingerprints(saved.get("fingerprints", {}), fingerprints, allow_changed, checkpoint)
        if is_main:
            self.truncate_metrics(saved["step"])

    def save_config(self, config: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config, yaml.safe_dump(config, sort_keys=False))

    def read_run_manifest(self) -> dict[str, Any]:
        if not self.manifest.exists():
            return {"checkpoints": []}
        try:
            return json.loads(self.manifest.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{self.manifest}: corrupt run manifest ({error})") from None

    def write_run_manifest(self, manifest: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.manifest, json.dumps(manifest, indent=1) + "\n")

    def truncate_metrics(self, step: int) -> None:
        """Drop metric records after `step`: a resumed run re-logs those steps itself."""
        if not self.metrics.exists():
            return
        kept = []
        for line in self.metrics.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a crash mid-write
            if record.get("step", 0) <= step:
                kept.append(line)
        atomic_write_text(self.metrics, "".join(line + "\n" for line in kept))


def check_fingerprints(saved: dict[str, str], current: dict[str, str], allow: Sequence[str], where: Path) -> None:
    """Refuse to resume onto different data, tokenizer or model shape unless that change is allowed."""
    for key, value in current.items():
        if key in saved and saved[key] != value and key not in allow:
            raise CheckpointError(
                f"{where}: the run was trained with a different {key} ({saved[key]} ≠ {value}); "
                f"resume anyway with --allow_changed {key}"
            )


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All complete records of a metrics.jsonl file."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
