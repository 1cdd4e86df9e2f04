"""`ckptlab evaluate`: every model × task × template × shots, cached by model content, with 95% CIs.

Examples:

    ckptlab evaluate --model runs/tiny --tasks rte,sst2 --templates all --shots 0,4
    ckptlab evaluate --model SmolLM2-135M-Instruct.Q4_1.gguf --tasks sst2 --limit 64
    ckptlab evaluate --model runs/tiny --tasks world/tasks --export results/all.csv

`--model` is a checkpoint, a run directory (its kept checkpoints, see `--checkpoints`), an HF
directory, a `.gguf` file or `org/name@revision`. `--tasks` names shipped tasks (rte, mrpc, sst2,
cola, wnli, mr, subj, mpqa; `shipped` for all), task YAML files, or folders of them (a world's
`tasks/`). Every task file and data row is checked before any model loads. Results go to the SQLite
store; an identical re-run is answered from it without loading the model.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ckptlab.errors import UserError
from ckptlab.evaluation.plan import EvaluateConfig, plan_units

if TYPE_CHECKING:
    from ckptlab.evaluation.models import ModelRef
    from ckptlab.evaluation.runner import UnitResult


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


def evaluate(config: EvaluateConfig) -> int:
    """Evaluate as configured; returns the process exit code."""
    from ckptlab.evaluation.models import (
        content_hash,
        eval_precision,
        load_for_eval,
        model_fingerprint,
        resolve_models,
    )
    from ckptlab.evaluation.store import ResultStore, check_export_path, export

    if not config.model:
        raise UserError("evaluate: give the model(s) with --model (a checkpoint, run, HF dir, .gguf or org/name@rev)")
    if not config.tasks:
        raise UserError("evaluate: give the task(s) with --tasks (e.g. --tasks rte,sst2 or a task YAML)")
    if config.export:
        check_export_path(config.export)
    say = functools.partial(print, flush=True)  # progress shows up in logs as it happens
    units = plan_units(config, say)  # every task and data row is checked here, before any model loads
    refs = resolve_models(config.model, config.checkpoints)
    store = ResultStore(config.store)
    # Resolved once: the fingerprint, the models row and the load all use the same dtype (auto: bf16 on CUDA).
    dtype, device = eval_precision(config.dtype, config.device)
    started = time.perf_counter()
    try:
        from ckptlab.evaluation.runner import Evaluator

        evaluator = Evaluator(
            store, config.batch_size, config.bootstrap, config.bootstrap_seed, config.length_normalized, say=say
        )
        total_scored = total_cached = 0
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
            _print_results(f"{ref.label} (model {model_fp})", results, sensitivity)
            total_scored += sum(r.scored for r in results)
            total_cached += sum(r.cached for r in results)
        print(
            f"\n{len(refs)} model(s), {len(units)} unit(s): {total_scored} examples scored, {total_cached} from the "
            f"store, in {time.perf_counter() - started:.1f} s; results in {store.path}"
        )
        if config.export:
            for path in export(store, config.export):
                print(f"exported {path}")
    finally:
        store.close()
    return 0
