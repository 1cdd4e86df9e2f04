"""The Python API: the verbs as functions that return their results instead of printing them.

    import ckptlab

    results = ckptlab.evaluate("runs/tiny", "rte,sst2", shots=[0, 4])
    frame = ckptlab.load_results("results/ckptlab.sqlite", task="rte").to_pandas()
    run_dir = ckptlab.finetune({"init_from": "runs/tiny", "task": "rte", "out": "runs/ft", "train.max_steps": 50})

Each function runs the code of its command-line verb (`ckptlab.commands`), so a config is checked
exactly as on the command line: an unknown key or a mistyped value raises the `ConfigError` the CLI
would print, any other bad input the same `UserError` (never `SystemExit`). `ckptlab/__init__.py`
exports these functions lazily, and this module imports torch and transformers only inside the verbs,
so `import ckptlab` stays cheap. See docs/api.md.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from ckptlab.errors import ConfigError, UserError

DEFAULT_STORE = "results/ckptlab.sqlite"
"""The results store the CLI uses when `--store` is not given."""


class Results(list[dict[str, Any]]):
    """Metric rows (dicts with the columns of the store's `metrics` table), and a few totals.

    A plain list otherwise: index it, filter it, `json.dump` it. `to_pandas()` makes a DataFrame.
    """

    scored: int
    """Examples scored by the call that made these rows (0 for `load_results` and a fully cached evaluation)."""
    cached: int
    """Examples the call answered from the store."""
    store: Path | None
    """The results store the rows are in."""
    exported: list[Path]
    """Files written for `export=` (evaluate only)."""

    def __init__(
        self,
        rows: Iterable[dict[str, Any]] = (),
        *,
        scored: int = 0,
        cached: int = 0,
        store: Path | None = None,
        exported: list[Path] | None = None,
    ) -> None:
        super().__init__(rows)
        self.scored, self.cached, self.store, self.exported = scored, cached, store, exported or []

    def to_pandas(self) -> Any:
        """The rows as a pandas DataFrame (one row per metric row, the store's columns)."""
        try:
            import pandas
        except ImportError:
            raise ImportError("Results.to_pandas needs pandas, which is not installed: pip install pandas") from None
        from ckptlab.evaluation.store import METRIC_COLUMNS

        columns = list(METRIC_COLUMNS) + [c for row in self for c in row if c not in METRIC_COLUMNS]
        return pandas.DataFrame(list(self), columns=list(dict.fromkeys(columns)))

    to_dataframe = to_pandas


def _listed(value: str | Path | Iterable[Any]) -> list[Any]:
    """A list argument as the CLI reads it: a string is comma-separated (`"rte,sst2"`), a path is one item."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, Path):
        return [str(value)]
    return [str(v) if isinstance(v, Path) else v for v in value]


def _config(cls: type, config: Any, overrides: Mapping[str, Any]) -> Any:
    """A checked `cls` config from an instance, a mapping of (dotted or nested) keys, or a YAML path,
    with `overrides` (keys as in the mapping) on top."""
    from ckptlab import config as configlib

    if isinstance(config, cls):
        return configlib.from_mapping(cls, configlib.to_dict(config), dict(overrides)) if overrides else config
    if isinstance(config, (str, Path)):
        values = configlib.read_yaml(config)
        try:
            return configlib.from_mapping(cls, values, dict(overrides))
        except ConfigError as error:
            raise ConfigError(f"{config}: {error}") from None
    if isinstance(config, Mapping):
        return configlib.from_mapping(cls, dict(config), dict(overrides))
    raise ConfigError(f"expected a {cls.__name__}, a dict of its keys or a YAML file path, got {type(config).__name__}")


def evaluate(
    models: str | Path | list[str | Path],
    tasks: str | Path | list[str | Path],
    *,
    templates: str | list[str] = "all",
    shots: int | str | list[int] | None = None,
    limit: int | None = None,
    store: str | Path = DEFAULT_STORE,
    batch_size: int | Literal["auto"] = "auto",
    dtype: Literal["auto", "float32", "bfloat16"] = "auto",
    device: str = "auto",
    quiet: bool = True,
    **options: Any,
) -> Results:
    """Evaluate models × tasks × templates × shots (`ckptlab evaluate`); returns the metric rows as stored.

    `models`, `tasks`, `templates` and `shots` take a list or a comma-separated string; `options` are any
    other `EvaluateConfig` keys (`bootstrap=200`, `checkpoints="all"`, `export="results/lm_eval/"`, ...).
    Examples already in the store are not scored again. `quiet=False` prints what the CLI prints (and
    draws the progress bar when stderr is a terminal).

    Returns:
        The metric rows of this evaluation, model by model: each unit's rows (one per metric), then the
        prompt-sensitivity rows (template `*`); `.scored`, `.cached`, `.store` and `.exported` say the rest.

    Raises:
        ConfigError: an unknown option or a value of the wrong type.
        UserError: a task file, data row or model that cannot be used (before any model loads).
    """
    from ckptlab import config as configlib
    from ckptlab.commands.evaluate import print_model, print_totals, run_evaluation
    from ckptlab.evaluation.plan import EvaluateConfig

    values: dict[str, Any] = {
        "model": _listed(models),
        "tasks": _listed(tasks),
        "templates": _listed(templates),
        "limit": limit,
        "store": str(store),
        "batch_size": batch_size,
        "dtype": dtype,
        "device": device,
    }
    if shots is not None:
        values["shots"] = _listed(shots) if isinstance(shots, (str, list, tuple)) else [shots]
    config = configlib.from_mapping(EvaluateConfig, values, {"progress": not quiet}, options)
    if quiet:
        # As the CLI does: Hugging Face's progress bars for weight loads are noise here too.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        outcome = run_evaluation(config, say=lambda line: None)
    else:
        outcome = run_evaluation(config, functools.partial(print, flush=True), on_model=print_model)
        print_totals(outcome)
    return Results(
        outcome.rows, scored=outcome.scored, cached=outcome.cached, store=outcome.store, exported=outcome.exported
    )


def load_results(store: str | Path = DEFAULT_STORE, **filters: Any) -> Results:
    """Every metric row of a results store, optionally filtered.

    Filters are store columns (`task="rte"`, `template="bare"`, `shots=0`, `metric="accuracy"`, ...) and
    `model=`, which matches a row's model label, source or fingerprint; a list value matches any of its items.

    Raises:
        UserError: there is no store at `store`.
        ConfigError: a filter that is not a column.
    """
    from ckptlab.evaluation.store import METRIC_COLUMNS, ResultStore

    path = Path(store)
    if not path.is_file():
        raise UserError(f"results store {path}: no such file")
    unknown = sorted(set(filters) - set(METRIC_COLUMNS) - {"model"})
    if unknown:
        raise ConfigError(f"load_results: unknown filter '{unknown[0]}' (filters: model, {', '.join(METRIC_COLUMNS)})")
    models = filters.pop("model", None)
    opened = ResultStore(path)
    try:
        rows = opened.metric_rows(**filters)
    finally:
        opened.close()
    if models is not None:
        wanted = {str(m) for m in (models if isinstance(models, (list, tuple, set)) else [models])}
        rows = [r for r in rows if wanted & {r["model_label"], r["model_source"], r["model_fp"]}]
    return Results(rows, store=path)


def _train(verb: str, config: Any, overrides: Mapping[str, Any]) -> Path:
    from ckptlab.commands import VerbTable

    verbs = VerbTable()
    built = _config(verbs.config_class(verb), config, overrides)
    code = verbs.run(verb, built)
    if code:
        raise UserError(f"{verb} ended with exit code {code}")
    return Path(built.out)


def pretrain(config: Any, **overrides: Any) -> Path:
    """Pre-train from scratch (`ckptlab pretrain`); returns the run directory (`out`).

    `config`: a `PretrainConfig`, a dict of its keys (dotted `"train.max_steps"` or nested), or a YAML file
    path; `overrides` (keys as in the dict) go on top. Prints progress as the CLI does.
    """
    return _train("pretrain", config, overrides)


def cpt(config: Any, **overrides: Any) -> Path:
    """Continue pre-training a checkpoint (`ckptlab cpt`); returns the run directory (`out`). `config` as in
    `pretrain` (a `CptConfig`, a dict or a YAML path)."""
    return _train("cpt", config, overrides)


def finetune(config: Any, **overrides: Any) -> Path:
    """Fine-tune a checkpoint (`ckptlab finetune`); returns the run directory (`out`), whose `run.json` names the
    fine-tuned model under `final`. `config` as in `pretrain` (a `FinetuneConfig`, a dict or a YAML path)."""
    return _train("finetune", config, overrides)


def sweep(spec: Any, **overrides: Any) -> Path:
    """Run every job of a sweep that is not done (`ckptlab sweep`); returns the sweep directory (`out`).

    `spec`: a sweep YAML path, a dict of `SweepConfig` keys or a `SweepConfig`. Raises `UserError` naming the
    failed (or blocked) jobs when any; what is done stays done, so a second call continues.
    """
    from ckptlab.commands.sweep import SweepConfig, build, run_sweep
    from ckptlab.sweeps.executors import RayOptions

    config = _config(SweepConfig, spec, overrides)
    if config.command != "run":
        raise ConfigError("sweep: command status is the CLI's (`ckptlab sweep status`); ckptlab.sweep runs the jobs")
    built = build(config)
    options = RayOptions(config.address, config.ray_num_cpus, config.ray_temp_dir)
    summary = run_sweep(built, config.executor, config.progress, config.wait, options)
    if not summary.ok:
        failed = [f"{name} ({reason})" for name, reason in summary.failed.items()]
        raise UserError(
            f"sweep {built.name}: {len(summary.failed)} job(s) failed, {len(summary.blocked)} blocked: "
            + "; ".join(failed or summary.blocked)
        )
    return Path(built.out)


def report(sweep: str | Path | None = None, **options: Any) -> Path:
    """Analyse a sweep's results (`ckptlab report`); returns the path of `report.html`.

    `sweep`: the sweep directory (or give `store=` a results store); `options` are `ReportConfig` keys
    (`out`, `template`, `bootstrap`, ...). Prints the findings as the CLI does.
    """
    from ckptlab.commands.report import ReportConfig, output_dir
    from ckptlab.commands.report import report as run_report
    from ckptlab.reporting.data import store_path_of

    values = dict(options)
    if sweep is not None:
        values["sweep"] = str(sweep)
    config = _config(ReportConfig, values, {})
    run_report(config)
    return output_dir(config, store_path_of(config.sweep, config.store)) / "report.html"
