"""OUT/results.csv: every metric row of the sweep joined with what its model is (`sweep_models`).

Timestamps and wall-clock times are left out and rows are sorted on every column, so the same
sweep gives the same file however it was run: in one go or killed and re-run, locally or on Ray.
The results store (`results.sqlite`) keeps everything, timings included.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ckptlab.evaluation.store import METRIC_COLUMNS, SWEEP_MODEL_COLUMNS, ResultStore
from ckptlab.files import atomic_write_text

METRIC_FIELDS = [c for c in METRIC_COLUMNS if c != "created"]
MODEL_FIELDS = [c for c in SWEEP_MODEL_COLUMNS if c not in ("model_fp", "created")]
COLUMNS = METRIC_FIELDS + MODEL_FIELDS


def _stable_compute(compute: dict[str, Any]) -> str:
    """The compute record without what the clock decides (wall_s, tokens/s, energy from wall time)."""
    clocked = ("time", "seconds", "energy")
    kept = {k: v for k, v in compute.items() if not (k.endswith("_s") or any(word in k for word in clocked))}
    return json.dumps(kept, sort_keys=True) if kept else ""


def table_rows(store: ResultStore, sweep: str, job_ids: set[str], task_fps: set[str]) -> list[dict[str, Any]]:
    """Metric rows of the sweep's current evaluation jobs and tasks, each with its model's row."""
    models = {m["model_fp"]: m for m in store.sweep_models(sweep) if m["job_id"] in job_ids}
    rows = []
    for metric in store.rows("metrics"):
        model = models.get(metric["model_fp"])
        if model is None or metric["task_fp"] not in task_fps:
            continue
        row = {c: metric[c] for c in METRIC_FIELDS}
        row.update({c: model[c] for c in MODEL_FIELDS})
        row["compute"] = _stable_compute(model["compute"])
        rows.append(row)
    rows.sort(key=lambda r: tuple("" if r[c] is None else str(r[c]) for c in COLUMNS))
    return rows


def write_results_csv(out: Path, sweep: str, job_ids: set[str], task_fps: set[str]) -> tuple[Path, int]:
    """Write OUT/results.csv atomically; returns (path, rows)."""
    from ckptlab.sweeps.jobs import STORE

    path = Path(out) / "results.csv"
    store = ResultStore(Path(out) / STORE)
    try:
        rows = table_rows(store, sweep, job_ids, task_fps)
    finally:
        store.close()
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
    return path, len(rows)
