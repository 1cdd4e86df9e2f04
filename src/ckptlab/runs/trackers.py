"""Experiment trackers (`report_to`): TensorBoard, Weights & Biases and MLflow get what a run logs.

One small interface, `Tracker`, and one implementation per service. Training opens them with
`open_trackers` (through its callback, `train/callbacks/trackers.py`) and evaluation hands its
metric rows to `log_evaluation`; nothing else in ckptlab knows which services exist.

Where things go, unless the user's environment says otherwise:

- tensorboard: event files under `OUT/tensorboard` (`tensorboard --logdir OUT/tensorboard`).
- wandb: `wandb.init(project=$WANDB_PROJECT or "ckptlab", dir=$WANDB_DIR or OUT, mode=$WANDB_MODE)`
  (online, offline, disabled; unset = wandb's default, online). Offline runs are written to
  `OUT/wandb/offline-run-*` and uploaded later with `wandb sync`.
- mlflow: $MLFLOW_TRACKING_URI, else a file store in `./mlruns` of the working directory, the
  classic MLflow layout, so the runs of one project land in one store and can be compared
  (`MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri ./mlruns`); experiment
  $MLFLOW_EXPERIMENT_NAME or "ckptlab".

The services' packages are imported only when a tracker is opened: importing wandb and mlflow
costs seconds, which `ckptlab --help` must not pay.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import numbers
import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ckptlab.errors import ConfigError, UserError
from ckptlab.files import atomic_write_text

TRACKERS = ("tensorboard", "wandb", "mlflow")
# The module that must be importable for each tracker; the pip extra has the tracker's own name.
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
STATE_FILE = "trackers.json"
DEFAULT_PROJECT = "ckptlab"
# MLflow's own limits (mlflow.utils.validation): longer values are refused, not truncated.
MLFLOW_MAX_PARAM_VALUE = 6000
MLFLOW_MAX_TAG_VALUE = 8000
MLFLOW_MAX_KEY = 250


class Tracker(ABC):
    """One experiment tracker's run: opened with the run's config, closed once at the end."""

    @abstractmethod
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Scalars of one step (or one evaluated model), under their names as given."""

    @abstractmethod
    def log_summary(self, values: Mapping[str, Any], step: int) -> None:
        """Final values of the run (numbers and strings), e.g. its compute record; `step` is the last step."""

    @abstractmethod
    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]], step: int) -> None:
        """A table whose columns are the keys of `rows` (in order of first appearance)."""

    @abstractmethod
    def close(self, failed: bool = False) -> None:
        """Flush and end the run; `failed` marks it failed where the service has such a status."""

    def state(self) -> dict[str, Any]:
        """What a resumed run needs to continue this tracker's run (kept in OUT/trackers.json)."""
        return {}


def check_trackers(names: Sequence[str], key: str = "report_to") -> list[str]:
    """`names` without repeats, once each is known and its package installed (found, not imported).

    Raises `ConfigError` naming `key` for an unknown name, `UserError` naming the pip extra for a
    missing package, so a run fails before it loads a model rather than at its first step.
    """
    unique = list(dict.fromkeys(names))
    for name in unique:
        if name not in TRACKERS:
            raise ConfigError(f"{key}: unknown tracker '{name}' (expected any of {', '.join(TRACKERS)})")
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise _missing(name, key)
    return unique


def open_trackers(
    names: Sequence[str],
    run_name: str,
    out_dir: str | Path,
    config: Mapping[str, Any] | None = None,
    *,
    key: str = "report_to",
    state_file: str | Path | None = None,
    start_step: int = 0,
) -> list[Tracker]:
    """Open a run in each tracker of `names` and log `config` (nested; logged flattened, `train.lr`).

    Args:
        names: trackers among `TRACKERS`; repeats are ignored.
        run_name: the run's display name (W&B name, MLflow run name).
        out_dir: where local files go (`OUT/tensorboard`, `OUT/wandb`).
        key: the config key that named the trackers, for error messages.
        state_file: a JSON file keeping each tracker's run id. When it holds one, that run is
            continued (W&B `resume="allow"`, MLflow the same run id); the ids of new runs are written
            to it. None: every call starts new runs and nothing is kept.
        start_step: the step a resumed run continues from; TensorBoard drops its later events, which
            the run logs again.
    """
    unique = check_trackers(names, key)
    out = Path(out_dir)
    flat = flatten_config(config or {})
    saved = _read_state(Path(state_file)) if state_file is not None else {}
    opened: list[Tracker] = []
    try:
        for name in unique:
            previous = saved.get(name, {})
            if name == "tensorboard":
                opened.append(TensorBoardTracker(out / "tensorboard", flat, start_step, key))
            elif name == "wandb":
                opened.append(WandbTracker(run_name, out, flat, previous, key))
            else:
                opened.append(MlflowTracker(run_name, flat, previous, key))
    except BaseException:
        for tracker in opened:
            with contextlib.suppress(Exception):  # the error that stopped the opening is the one to see
                tracker.close(failed=True)
        raise
    if state_file is not None:
        state = {**saved, **{name: tracker.state() for name, tracker in zip(unique, opened) if tracker.state()}}
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(state_file), json.dumps(state, indent=1) + "\n")
    return opened


def log_evaluation(
    names: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    run_name: str,
    out_dir: str | Path,
    config: Mapping[str, Any] | None = None,
    *,
    key: str = "report_to",
) -> None:
    """Log an evaluation's metric rows to each tracker of `names` as a new run, then close it.

    Call it once, after the evaluation, with every metric row it produced (rows as the results
    store holds them: task, template, shots, metric, value, ci_low, ci_high, n, model_label,
    model_fp, ...), e.g.

        log_evaluation(config.report_to, rows, run_name="eval-rte", out_dir=Path(config.store).parent,
                       config=configlib.to_dict(config))

    Each tracker gets the whole table (`evaluation/metrics`: W&B a Table, MLflow the artifact
    `evaluation/metrics.json`, TensorBoard a text table) and one scalar per row named
    `task/template/shots/metric`, with `..._ci_low` and `..._ci_high` beside it. A scalar's step
    is the evaluated checkpoint's `step` when every model's rows have one and no two models share
    it, else the model's position among the rows' models (0, 1, ...): every model is its own point.
    An empty `names` does nothing (no package is imported).
    """
    if not names:
        return
    trackers = open_trackers(names, run_name, out_dir, config, key=key)
    failed = True
    try:
        steps = _steps_of_models(rows)
        by_step: dict[int, dict[str, float]] = {}
        for row in rows:
            step = steps[row.get("model_fp")]
            # A `/` inside a part would add a level; MLflow's file store also needs `x` and `x_ci_low`
            # side by side, as it cannot hold both a metric `x` and `x/ci_low` (a file and a folder).
            name = "/".join(str(row.get(part)).replace("/", "_") for part in ("task", "template", "shots", "metric"))
            scalars = by_step.setdefault(step, {})
            for suffix, field in (("", "value"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high")):
                if _is_number(row.get(field)):
                    scalars[name + suffix] = float(row[field])
        for tracker in trackers:
            for step, scalars in sorted(by_step.items()):
                tracker.log_metrics(scalars, step)
            tracker.log_table("evaluation/metrics", rows, max(by_step, default=0))
        failed = False
    finally:
        for tracker in trackers:
            tracker.close(failed=failed)


def _steps_of_models(rows: Sequence[Mapping[str, Any]]) -> dict[Any, int]:
    """model_fp → the x of its scalars: its checkpoint step when those tell the models apart, else its position."""
    positions: dict[Any, int] = {}
    checkpoint_steps: dict[Any, Any] = {}
    for row in rows:
        positions.setdefault(row.get("model_fp"), len(positions))
        step = row.get("step")
        checkpoint_steps[row.get("model_fp")] = step if isinstance(step, int) and not isinstance(step, bool) else None
    values = list(checkpoint_steps.values())
    if None not in values and len(set(values)) == len(values):
        return checkpoint_steps
    return positions


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys (`{"train": {"lr": 1}}` → `{"train.lr": 1}`)."""
    flat: dict[str, Any] = {}
    for name, value in config.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


class TensorBoardTracker(Tracker):
    """Scalars as TensorBoard scalars; the config, summary and tables as markdown text."""

    def __init__(self, log_dir: Path, config: Mapping[str, Any], start_step: int, key: str) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise _missing("tensorboard", key) from None
        # A resumed run logs again the steps after its checkpoint: purge_step hides the first copies.
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=start_step + 1 if start_step else None)
        if config:
            self.writer.add_text("config", _markdown_table(["key", "value"], list(config.items())), start_step)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)

    def log_summary(self, values: Mapping[str, Any], step: int) -> None:
        self.log_metrics({name: value for name, value in values.items() if _is_number(value)}, step)
        self.writer.add_text("summary", _markdown_table(["key", "value"], list(values.items())), step)

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]], step: int) -> None:
        columns = _columns(rows)
        self.writer.add_text(name, _markdown_table(columns, [[row.get(c) for c in columns] for row in rows]), step)

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    """A W&B run; every scalar is plotted against the `step` metric, not W&B's own counter."""

    def __init__(
        self, run_name: str, out_dir: Path, config: Mapping[str, Any], previous: Mapping[str, Any], key: str
    ) -> None:
        try:
            import wandb
        except ImportError:
            raise _missing("wandb", key) from None
        self.wandb = wandb
        directory = Path(os.environ.get("WANDB_DIR") or out_dir)
        directory.mkdir(parents=True, exist_ok=True)
        run_id = previous.get("id")
        # Read here, not left to wandb: it reads the environment once per process, at its first run.
        mode: Any = os.environ.get("WANDB_MODE") or None  # its value is checked by wandb
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT") or previous.get("project") or DEFAULT_PROJECT,
                name=run_name,
                dir=str(directory),
                config=dict(config),
                mode=mode,
                id=run_id,
                resume="allow" if run_id else None,
                # Its own run, whatever other run the process has open (a notebook's, another job's).
                reinit="create_new",
            )
        except (wandb.errors.Error, ValueError) as error:  # no API key, a WANDB_MODE it does not know, ...
            raise UserError(f"{key} wandb: {_one_line(error)} (WANDB_MODE=offline logs without an account)") from None
        # W&B drops a step lower than one already logged, and a resumed run logs again the steps
        # after its checkpoint: an explicit step metric keeps them (as transformers' callback does).
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step", step_sync=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log({**metrics, "step": step})

    def log_summary(self, values: Mapping[str, Any], step: int) -> None:
        self.run.summary.update(dict(values))

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]], step: int) -> None:
        columns: list[Any] = _columns(rows)
        table = self.wandb.Table(
            columns=columns, data=[[row.get(c) for c in columns] for row in rows], allow_mixed_types=True
        )
        self.run.log({name: table, "step": step})

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)

    def state(self) -> dict[str, Any]:
        return {"id": self.run.id, "project": self.run.project}


class MlflowTracker(Tracker):
    """An MLflow run through `MlflowClient`, which holds no process-wide active run (sweeps run jobs
    one after another in one process, and a failed job must not leave its run active for the next)."""

    def __init__(self, run_name: str, config: Mapping[str, Any], previous: Mapping[str, Any], key: str) -> None:
        try:
            from mlflow.entities import Metric, Param, RunTag
            from mlflow.exceptions import MlflowException
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise _missing("mlflow", key) from None
        self.entities = (Metric, Param, RunTag)
        # The stored store first: a resumed run continues where it started, whatever the working directory.
        self.tracking_uri = (
            os.environ.get("MLFLOW_TRACKING_URI") or previous.get("tracking_uri") or (Path.cwd() / "mlruns").as_uri()
        )
        if "://" not in self.tracking_uri or self.tracking_uri.startswith("file:"):
            # MLflow 3.7+ refuses its file store unless asked; mlflow-skinny has no SQLite store to fall back on.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            self.client = MlflowClient(tracking_uri=self.tracking_uri)
            self.run_id = self._continued_run(previous) or self._new_run(run_name)
            # Params are write-once: a resumed run adds only the keys it did not log before.
            logged = self.client.get_run(self.run_id).data.params
            params = [
                Param(name[:MLFLOW_MAX_KEY], _text(value)[:MLFLOW_MAX_PARAM_VALUE])
                for name, value in config.items()
                if name[:MLFLOW_MAX_KEY] not in logged
            ]
            if params:
                self.client.log_batch(self.run_id, params=params)
        except MlflowException as error:
            raise UserError(f"{key} mlflow ({self.tracking_uri}): {_one_line(error)}") from None

    def _continued_run(self, previous: Mapping[str, Any]) -> str | None:
        from mlflow.exceptions import MlflowException

        run_id = previous.get("run_id")
        if not run_id or previous.get("tracking_uri") != self.tracking_uri:
            return None
        try:
            self.client.get_run(run_id)
        except MlflowException:
            return None  # deleted from the store since: start a new run
        self.client.update_run(run_id, status="RUNNING")
        return str(run_id)

    def _new_run(self, run_name: str) -> str:
        from mlflow.exceptions import MlflowException

        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_PROJECT
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        else:
            try:
                experiment_id = self.client.create_experiment(name)
            except MlflowException:  # created meanwhile by a parallel job of a sweep?
                experiment = self.client.get_experiment_by_name(name)
                if experiment is None:
                    raise
                experiment_id = experiment.experiment_id
        return str(self.client.create_run(experiment_id, run_name=run_name).info.run_id)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        metric = self.entities[0]
        now = int(time.time() * 1000)
        batch = [metric(_mlflow_name(name), float(value), now, step) for name, value in metrics.items()]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_summary(self, values: Mapping[str, Any], step: int) -> None:
        # MLflow has no summary: numbers become metrics at the last step, the rest tags (mutable, unlike params).
        self.log_metrics({name: value for name, value in values.items() if _is_number(value)}, step)
        tag = self.entities[2]
        tags = [
            tag(_mlflow_name(name), _text(value)[:MLFLOW_MAX_TAG_VALUE])
            for name, value in values.items()
            if not _is_number(value)
        ]
        if tags:
            self.client.log_batch(self.run_id, tags=tags)

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]], step: int) -> None:
        columns = _columns(rows)
        # The layout of MlflowClient.log_table's artifacts, written without it: it needs pandas.
        table = {"columns": columns, "data": [[row.get(c) for c in columns] for row in rows]}
        self.client.log_dict(self.run_id, table, f"{name}.json")

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "tracking_uri": self.tracking_uri}


def _missing(name: str, key: str) -> UserError:
    return UserError(f"{key}: {name} needs the {PACKAGES[name]} package: pip install 'ckptlab[{name}]'")


def _read_state(path: Path) -> dict[str, Any]:
    """The kept run ids; an unreadable file only means the trackers start new runs."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return state if isinstance(state, dict) else {}


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _text(value: Any) -> str:
    """A config or summary value as text: strings as they are, the rest as in JSON (`null`, `true`, `[1, 2]`)."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _one_line(error: BaseException, limit: int = 400) -> str:
    """A service's error message on one line (the CLI prints a UserError as one line), cut at `limit`."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _mlflow_name(name: str) -> str:
    """`name` with the characters MLflow refuses in metric and tag names replaced by `_`.

    MLflow allows letters, digits, `_ - . /` and spaces (colons too, except on Windows), and no empty,
    `.` or `..` path segment; a prompt-sensitivity row's template `*` becomes `_`.
    """
    cleaned = re.sub(r"[^\w\-./ ]", "_", name)
    segments = ["_" if part in ("", ".", "..") else part for part in cleaned.split("/")]
    return "/".join(segments)[:MLFLOW_MAX_KEY]


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(column for row in rows for column in row))


def _markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return _text(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines.extend("| " + " | ".join(cell(value) for value in row) + " |" for row in rows)
    return "\n".join(lines)
