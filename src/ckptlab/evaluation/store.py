"""The results store: one SQLite file (stdlib) of metric rows, per-example rows and evaluated models.

Per-example rows are the cache. Their key is (model fingerprint, task fingerprint, template,
shots, seed, example id); the model fingerprint hashes the model's *content* (weights, config,
tokenizer), not its path, so a copied checkpoint hits and a different one never does; it ends in the
dtype the scores were computed in (`-bfloat16`; nothing for fp32), so the two never mix. Rows are
committed one batch at a time while an evaluation runs, so a killed evaluation resumes where it
stopped. Metric rows are derived from the per-example rows and can always be recomputed.

Tables:
- `metrics`: model_fp, model_source, model_label, task, task_fp, split, template, shots, seed,
  metric, value, ci_low, ci_high, n, batch_size, ckptlab_version, created. Prompt-sensitivity rows
  have template `*` and metric `<metric>:spread|std|worst` or `agreement`.
- `examples`: model_fp, task_fp, template, shots, seed, example_id, task, example_index,
  prediction, scores (JSON), gold, correct, batch_size (of the forward pass that scored the row; a unit's
  largest is its plan size, which a resumed `batch_size: auto` run reuses), created.
- `models`: model_fp, content_hash, kind, source, label, run, step, tokens_seen, dtype, created,
  trust_remote_code (1 when the model's own repository code was allowed to run).
- `file_hashes`: a memo of SHA-256 by (path, size, mtime) so large weight files are hashed once.
- `sweep_models`: what each model evaluated by a sweep *is* in the study's terms (written by
  `ckptlab sweep`, read by `ckptlab report`): model_fp, sweep, job_id, role (`base` | `finetuned` |
  `cpt`), checkpoint (the base checkpoint's label, e.g. `step-00000200` or a hub revision), step and
  tokens_seen of that base checkpoint (pre-training progress), finetune (the sweep's name for the
  fine-tuning or cpt run; null for a base model), finetune_task (the task or data trained on), method
  (full, lora, ...), variant (free label, e.g. `replay=0.1`), parent_fp (the model it was trained
  from; null for a base model), compute (JSON: tokens, flops, wall_s, trainable_params, ...).
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ckptlab import __version__
from ckptlab.errors import UserError

EXAMPLE_KEY = ("model_fp", "task_fp", "template", "shots", "seed")
METRIC_COLUMNS = (
    "model_fp",
    "model_source",
    "model_label",
    "task",
    "task_fp",
    "split",
    "template",
    "shots",
    "seed",
    "metric",
    "value",
    "ci_low",
    "ci_high",
    "n",
    "batch_size",
    "ckptlab_version",
    "created",
)
EXAMPLE_COLUMNS = (
    "model_fp",
    "task_fp",
    "template",
    "shots",
    "seed",
    "example_id",
    "task",
    "example_index",
    "prediction",
    "scores",
    "gold",
    "correct",
    "batch_size",
    "created",
)
MODEL_COLUMNS = (
    "model_fp",
    "content_hash",
    "kind",
    "source",
    "label",
    "run",
    "step",
    "tokens_seen",
    "dtype",
    "created",
    "trust_remote_code",  # last: stores written before it gain the column at the end (ALTER TABLE)
)
SWEEP_MODEL_COLUMNS = (
    "model_fp",
    "sweep",
    "job_id",
    "role",
    "checkpoint",
    "step",
    "tokens_seen",
    "finetune",
    "finetune_task",
    "method",
    "variant",
    "parent_fp",
    "compute",
    "created",
)
TABLES = ("metrics", "examples", "models", "sweep_models")

SCHEMA = """
CREATE TABLE IF NOT EXISTS metrics (
  model_fp TEXT NOT NULL, model_source TEXT, model_label TEXT, task TEXT NOT NULL, task_fp TEXT NOT NULL,
  split TEXT, template TEXT NOT NULL, shots INTEGER NOT NULL, seed INTEGER NOT NULL, metric TEXT NOT NULL,
  value REAL, ci_low REAL, ci_high REAL, n INTEGER NOT NULL, batch_size INTEGER, ckptlab_version TEXT, created TEXT,
  PRIMARY KEY (model_fp, task_fp, template, shots, seed, metric, n));
CREATE TABLE IF NOT EXISTS examples (
  model_fp TEXT NOT NULL, task_fp TEXT NOT NULL, template TEXT NOT NULL, shots INTEGER NOT NULL,
  seed INTEGER NOT NULL, example_id TEXT NOT NULL, task TEXT, example_index INTEGER, prediction TEXT,
  scores TEXT, gold TEXT, correct INTEGER, batch_size INTEGER, created TEXT,
  PRIMARY KEY (model_fp, task_fp, template, shots, seed, example_id));
CREATE TABLE IF NOT EXISTS models (
  model_fp TEXT PRIMARY KEY, content_hash TEXT, kind TEXT, source TEXT, label TEXT, run TEXT, step INTEGER,
  tokens_seen INTEGER, dtype TEXT, created TEXT, trust_remote_code INTEGER);
CREATE TABLE IF NOT EXISTS sweep_models (
  model_fp TEXT NOT NULL, sweep TEXT NOT NULL, job_id TEXT, role TEXT NOT NULL, checkpoint TEXT, step INTEGER,
  tokens_seen INTEGER, finetune TEXT, finetune_task TEXT, method TEXT, variant TEXT, parent_fp TEXT, compute TEXT,
  created TEXT, PRIMARY KEY (sweep, model_fp));
CREATE TABLE IF NOT EXISTS file_hashes (
  path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL,
  PRIMARY KEY (path, size, mtime_ns));
"""


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class ResultStore:
    """A results store file; opened (and created) on construction."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=60)
            self.db.execute("PRAGMA journal_mode=WAL")  # readers and parallel evaluations do not block
            self.db.executescript(SCHEMA)
            if "trust_remote_code" not in {row[1] for row in self.db.execute("PRAGMA table_info(models)")}:
                with self.db:
                    self.db.execute("ALTER TABLE models ADD COLUMN trust_remote_code INTEGER")
        except (OSError, sqlite3.Error) as error:
            raise UserError(f"results store {self.path}: cannot open ({error})") from None

    def close(self) -> None:
        self.db.close()

    # --- per-example rows (the cache) ---
    def cached_ids(self, key: Sequence[Any]) -> set[str]:
        """Example ids already scored under key (model_fp, task_fp, template, shots, seed)."""
        rows = self.db.execute(
            "SELECT example_id FROM examples WHERE model_fp=? AND task_fp=? AND template=? AND shots=? AND seed=?",
            tuple(key),
        )
        return {r[0] for r in rows}

    def plan_batch_size(self, key: Sequence[Any]) -> int | None:
        """The batch size a unit's rows were planned with (the largest recorded), or None before any row."""
        (size,) = self.db.execute(
            "SELECT MAX(batch_size) FROM examples WHERE model_fp=? AND task_fp=? AND template=? AND shots=? AND seed=?",
            tuple(key),
        ).fetchone()
        return size

    def add_examples(self, key: Sequence[Any], task: str, rows: Iterable[dict[str, Any]], batch_size: int) -> None:
        """Insert per-example rows in one transaction (existing rows are kept as they are)."""
        created = now()
        values = [
            (
                *key,
                r["example_id"],
                task,
                r["example_index"],
                r["prediction"],
                json.dumps(r["scores"], sort_keys=True),
                r["gold"],
                int(r["correct"]),
                batch_size,
                created,
            )
            for r in rows
        ]
        with self.db:
            self.db.executemany(
                f"INSERT OR IGNORE INTO examples VALUES ({', '.join('?' * len(EXAMPLE_COLUMNS))})", values
            )

    def examples(self, key: Sequence[Any], ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Per-example rows under key (all, or those with the given ids), in example order."""
        cursor = self.db.execute(
            "SELECT * FROM examples WHERE model_fp=? AND task_fp=? AND template=? AND shots=? AND seed=? "
            "ORDER BY example_index, example_id",
            tuple(key),
        )
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, r)) for r in cursor]
        if ids is not None:
            wanted = set(ids)
            rows = [r for r in rows if r["example_id"] in wanted]
        for row in rows:
            row["scores"] = json.loads(row["scores"])
        return rows

    # --- metric and model rows ---
    def add_metrics(self, rows: Iterable[dict[str, Any]]) -> None:
        created = now()
        values = [
            tuple({**r, "ckptlab_version": __version__, "created": created}.get(c) for c in METRIC_COLUMNS)
            for r in rows
        ]
        with self.db:
            self.db.executemany(
                f"INSERT OR REPLACE INTO metrics VALUES ({', '.join('?' * len(METRIC_COLUMNS))})", values
            )

    def add_model(self, row: dict[str, Any]) -> None:
        values = tuple({**row, "created": now()}.get(c) for c in MODEL_COLUMNS)
        with self.db:
            self.db.execute(f"INSERT OR REPLACE INTO models VALUES ({', '.join('?' * len(MODEL_COLUMNS))})", values)

    def add_sweep_model(self, row: dict[str, Any]) -> None:
        """Record (or replace) what a model evaluated by a sweep is; `compute` may be a dict (stored as JSON)."""
        row = {**row, "created": now()}
        if isinstance(row.get("compute"), dict):
            row["compute"] = json.dumps(row["compute"], sort_keys=True)
        values = tuple(row.get(c) for c in SWEEP_MODEL_COLUMNS)
        with self.db:
            self.db.execute(
                f"INSERT OR REPLACE INTO sweep_models VALUES ({', '.join('?' * len(SWEEP_MODEL_COLUMNS))})", values
            )

    def sweep_models(self, sweep: str | None = None) -> list[dict[str, Any]]:
        """The sweep_models rows (of one sweep, or all), `compute` decoded, ordered by role, step, finetune."""
        rows = [
            r
            for r in self.rows("sweep_models", order="role, step, finetune, method, variant")
            if sweep is None or r["sweep"] == sweep
        ]
        for row in rows:
            row["compute"] = json.loads(row["compute"]) if row["compute"] else {}
        return rows

    def metric_rows(
        self, order: str = "model_label, model_fp, task, template, shots, metric, n", **equal: Any
    ) -> list[dict[str, Any]]:
        """Metric rows whose columns equal the given values (a list, tuple or set: any of them), in `order`."""
        unknown = sorted(set(equal) - set(METRIC_COLUMNS))
        if unknown:
            raise ValueError(f"not a metrics column: {unknown[0]}")
        where, values = [], []
        for column, value in equal.items():
            options = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
            where.append(f"{column} IN ({', '.join('?' * len(options))})")
            values.extend(options)
        cursor = self.db.execute(
            "SELECT * FROM metrics" + (f" WHERE {' AND '.join(where)}" if where else "") + f" ORDER BY {order}", values
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, r)) for r in cursor]

    def rows(self, table: str, order: str = "") -> list[dict[str, Any]]:
        if table not in TABLES:
            raise ValueError(table)
        cursor = self.db.execute(f"SELECT * FROM {table}" + (f" ORDER BY {order}" if order else ""))
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, r)) for r in cursor]

    # --- file hash memo ---
    def file_sha256(self, path: Path, compute: Any) -> str:
        """SHA-256 of a file, computed once per (path, size, mtime) and remembered."""
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        row = self.db.execute("SELECT sha256 FROM file_hashes WHERE path=? AND size=? AND mtime_ns=?", key).fetchone()
        if row:
            return row[0]
        digest = compute(path)
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO file_hashes VALUES (?, ?, ?, ?)", (*key, digest))
        return digest


def export_format(path: str) -> str:
    """What an export path asks for: `csv`, `parquet`, or `lm_eval` (lm-evaluation-harness's results files: a path
    ending in `/`, an existing directory, or a `.json` file; written by `evaluation.lm_eval_results`)."""
    lower = path.lower()
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith(".parquet"):
        return "parquet"
    if lower.endswith(".json") or path.endswith(("/", os.sep)) or Path(path).is_dir():
        return "lm_eval"
    raise UserError(
        f"--export {path}: expected a .csv or .parquet file (tables), or a directory ending in / or a .json file "
        "(lm-evaluation-harness results)"
    )


def check_export_path(path: str) -> None:
    """Refuse an export format that cannot be written here, before any evaluation starts."""
    if export_format(path) == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UserError(
                f"--export {path}: Parquet needs pyarrow (pip install pyarrow); or give a .csv path"
            ) from None


def export(store: ResultStore, path: str | Path) -> list[Path]:
    """Write every metric row to `path` and every per-example row beside it (`<stem>.examples.<ext>`)."""
    path = Path(path)
    check_export_path(str(path))
    if export_format(str(path)) == "lm_eval":
        raise UserError(f"--export {path}: lm-eval results are written by evaluation.lm_eval_results, not as tables")
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for table, target in (("metrics", path), ("examples", path.with_name(f"{path.stem}.examples{path.suffix}"))):
        rows = store.rows(
            table, order="task, template, shots" + (", example_index" if table == "examples" else ", metric")
        )
        columns = METRIC_COLUMNS if table == "metrics" else EXAMPLE_COLUMNS
        if target.suffix.lower() == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(
                pa.Table.from_pylist(rows or [], schema=None) if rows else pa.table({c: [] for c in columns}), target
            )
        else:
            with open(target, "w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(columns))
                writer.writeheader()
                writer.writerows(rows)
        written.append(target)
    return written
