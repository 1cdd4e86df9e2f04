"""`ckptlab evaluate`: every model × task × template × shots, cached by model content, with 95% CIs.

Examples:

    ckptlab evaluate --model runs/tiny --tasks rte,sst2 --templates all --shots 0,4
    ckptlab evaluate --model SmolLM2-135M-Instruct.Q4_1.gguf --tasks sst2 --limit 64
    ckptlab evaluate --model runs/tiny --tasks world/tasks --export results/all.csv
    ckptlab evaluate --model runs/tiny --tasks rte,sst2 --export results/lm_eval/

`--model` is a checkpoint, a run directory (its kept checkpoints, see `--checkpoints`), an HF
directory, a `.gguf` file or `org/name@revision`. `--tasks` names shipped tasks (rte, mrpc, sst2,
cola, wnli, mr, subj, mpqa; `shipped` for all), task YAML files, or folders of them (a world's
`tasks/`). Every task file and data row is checked before any model loads. Results go to the SQLite
store; an identical re-run is answered from it without loading the model.

The work is `run_evaluation`, which returns the results (`Evaluation`); `evaluate` prints them, and
the Python API (`ckptlab.evaluate`) returns them.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckptlab.errors import UserError
from ckptlab.evaluation.plan import EvaluateConfig, plan_units

if TYPE_CHECKING:
    from ckptlab.evaluation.models import ModelRef
    from ckptlab.evaluation.runner import Unit, UnitResult


def _interval(value: float, low: float | None, high: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if low is None or math.isnan(low):
        return f"{value:.4f}"
    return f"{value:.4f} [{low:.4f}, {high:.4f}]"


def _print_results(label: str, results: list[UnitResult], sensitivity: list[dict[str, Any]]) -> None:
    print(f"\n== {label}")
    rows = [("task", "template", "shots", "n", "metrics: value [95% CI]", "scored", "cached", "ex/s")]
    for result in results:
        unit = result.unit
        speed = f"{result.scored / result.seconds:.1f}" if result.scored and result.seconds > 0 else "-"
        values = "; ".join(
            f"{r['metric']} {_interval(r['value'], r['ci_low'], r['ci_high'])}" for r in result.metric_rows
        )
        n = str(result.metric_rows[0]["n"]) if result.metric_rows else "0"
        rows.append(
            (
                unit.task.spec.name,
                unit.template,
                str(unit.shots),
                n,
                values,
                str(result.scored),
                str(result.cached),
                speed,
            )
        )
    _table(rows)
    if not sensitivity:
        return
    print(
        "\nprompt sensitivity across templates (spread = best - worst; agreement = share of examples "
        "on which every template predicts the same)"
    )
    table = [("task", "shots", "metric", "spread", "std", "worst", "agreement")]
    by_key: dict = {}
    for row in sensitivity:
        stats = by_key.setdefault((row["task"], row["shots"]), {})
        if row["metric"] == "agreement":
            stats["agreement"] = row["value"]
        else:
            metric, stat = row["metric"].rsplit(":", 1)
            stats.setdefault(metric, {})[stat] = row["value"]
    for (task, shots), stats in by_key.items():
        agree = stats.pop("agreement", math.nan)
        for metric, values in stats.items():
            table.append(
                (
                    task,
                    str(shots),
                    metric,
                    f"{values['spread']:.4f}",
                    f"{values['std']:.4f}",
                    f"{values['worst']:.4f}",
                    f"{agree:.3f}",
                )
            )
    _table(table)


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


@dataclass
class ModelResults:
    """One model's part of an evaluation."""

    ref: ModelRef
    """The model as resolved from `--model` (source, label, run, step)."""
    model_fp: str
    """Its fingerprint: the model key of the results store."""
    units: list[UnitResult]
    """One result per unit (task × template × shots): examples scored and from the store, metric rows."""
    sensitivity: list[dict[str, Any]]
    """Prompt-sensitivity rows (template `*`): spread, std and worst across templates, and agreement."""


@dataclass
class Evaluation:
    """What `run_evaluation` did: each model's results, the totals, and the metric rows as stored."""

    models: list[ModelResults]
    """Each model's results, in `--model` order."""
    units: list[Unit]
    """The planned units (every model is evaluated on each)."""
    scored: int
    """Examples scored by this evaluation (forward passes)."""
    cached: int
    """Examples answered from the store."""
    seconds: float
    """Wall time of the evaluation (the export not included)."""
    store: Path
    """The results store."""
    rows: list[dict[str, Any]] = field(default_factory=list)
    """The metric rows of this evaluation exactly as the store holds them (`metrics` table columns), model by
    model: the units' rows, then the prompt-sensitivity rows."""
    exported: list[Path] = field(default_factory=list)
    """Files written for `export`."""


def _row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["model_fp"], row["task_fp"], row["template"], row["shots"], row["seed"], row["metric"], row["n"])


def run_evaluation(
    config: EvaluateConfig,
    say: Callable[[str], None] = print,
    on_model: Callable[[ModelResults], None] | None = None,
) -> Evaluation:
    """Evaluate as configured and return the results (the command prints them; `ckptlab.evaluate` returns them).

    `say` receives progress lines; `on_model` is called with each model's results as soon as it is done.
    """
    from ckptlab.evaluation.models import (
        content_hash,
        eval_precision,
        load_for_eval,
        model_fingerprint,
        resolve_models,
    )
    from ckptlab.evaluation.store import ResultStore, check_export_path, export, export_format

    if not config.model:
        raise UserError("evaluate: give the model(s) with --model (a checkpoint, run, HF dir, .gguf or org/name@rev)")
    if not config.tasks:
        raise UserError("evaluate: give the task(s) with --tasks (e.g. --tasks rte,sst2 or a task YAML)")
    if config.export:
        check_export_path(config.export)
    if config.report_to:
        from ckptlab.runs.trackers import check_trackers

        check_trackers(config.report_to)  # a missing package is found before any model loads
    units = plan_units(config, say)  # every task and data row is checked here, before any model loads
    refs = resolve_models(config.model, config.checkpoints)
    lm_eval = export_format(config.export) == "lm_eval" if config.export else False
    if lm_eval and str(config.export).lower().endswith(".json") and len(refs) > 1:
        raise UserError(
            f"--export {config.export}: an lm-eval results file holds one model and --model gives {len(refs)}; "
            "give a directory (e.g. --export lm_eval/), which gets a folder per model"
        )
    store = ResultStore(config.store)
    # Resolved once: the fingerprint, the models row and the load all use the same dtype (auto: bf16 on CUDA).
    dtype, device = eval_precision(config.dtype, config.device)
    started = time.perf_counter()
    try:
        from ckptlab.evaluation.runner import Evaluator

        evaluator = Evaluator(
            store,
            config.batch_size,
            config.bootstrap,
            config.bootstrap_seed,
            config.length_normalized,
            say=say,
            progress=config.progress,
        )
        outcome = Evaluation([], units, 0, 0, 0.0, store.path)
        for ref in refs:
            content = content_hash(ref, store.file_sha256)
            model_fp = model_fingerprint(content, dtype)
            store.add_model(
                {
                    "model_fp": model_fp,
                    "content_hash": content,
                    "kind": ref.kind,
                    "source": ref.source,
                    "label": ref.label,
                    "run": ref.run,
                    "step": ref.step,
                    "tokens_seen": ref.tokens_seen,
                    "dtype": dtype,
                    "trust_remote_code": int(config.trust_remote_code),
                }
            )
            meta = {"model_source": ref.source, "model_label": ref.label}

            def load(ref: ModelRef = ref) -> tuple[Any, Any]:
                return load_for_eval(ref.source, dtype, device, say, config.trust_remote_code)

            results, sensitivity = evaluator.run_model(model_fp, meta, units, load)
            done = ModelResults(ref, model_fp, results, sensitivity)
            outcome.models.append(done)
            outcome.scored += sum(r.scored for r in results)
            outcome.cached += sum(r.cached for r in results)
            stored = {_row_key(r): r for r in store.metric_rows(model_fp=model_fp)}
            outcome.rows += [stored[_row_key(r)] for u in results for r in u.metric_rows]
            outcome.rows += [stored[_row_key(r)] for r in sensitivity]
            if on_model is not None:
                on_model(done)
        outcome.seconds = time.perf_counter() - started
        if lm_eval:
            from ckptlab.evaluation.lm_eval_results import write_lm_eval_results

            settings = {
                "batch_size": str(config.batch_size),
                "device": device,
                "limit": config.limit,
                "bootstrap_iters": config.bootstrap,
            }
            outcome.exported = write_lm_eval_results(store, str(config.export), outcome.rows, units, settings)
        elif config.export:
            outcome.exported = export(store, config.export)
    finally:
        store.close()
    if config.report_to:
        from ckptlab import config as configlib
        from ckptlab.runs.trackers import log_evaluation

        run_name = "evaluate-" + time.strftime("%Y%m%d-%H%M%S")
        log_evaluation(config.report_to, outcome.rows, run_name, Path(config.store).parent, configlib.to_dict(config))
    return outcome


def print_model(done: ModelResults) -> None:
    """One model's tables: a line per unit, then the prompt sensitivity across templates."""
    _print_results(f"{done.ref.label} (model {done.model_fp})", done.units, done.sensitivity)


def print_totals(outcome: Evaluation) -> None:
    """The closing lines of `ckptlab evaluate`: totals, then each exported file."""
    print(
        f"\n{len(outcome.models)} model(s), {len(outcome.units)} unit(s): {outcome.scored} examples scored, "
        f"{outcome.cached} from the store, in {outcome.seconds:.1f} s; results in {outcome.store}"
    )
    for path in outcome.exported:
        print(f"exported {path}")


def evaluate(config: EvaluateConfig) -> int:
    """Evaluate as configured, printing progress and results; returns the process exit code."""
    say = functools.partial(print, flush=True)  # progress shows up in logs as it happens
    print_totals(run_evaluation(config, say, on_model=print_model))
    return 0
