"""Load a sweep's results store into plain Python: models, scores, per-example item values.

The store's `sweep_models` rows say what each model is (base checkpoint, fine-tuned model, cpt
model); its `metrics` rows give each (model, task, template, shots) score with a 95% interval; its
`examples` rows give the per-example values (`correct`, or the ROUGE-L in `scores`) that the paired
bootstraps resample. One shot count is analysed (the smallest present unless asked), and per task
one task fingerprint and few-shot seed (the most common), so every model is compared on the same items.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptlab.errors import UserError
from ckptlab.evaluation.metrics import MEAN_METRICS, item_values, normalised_prediction
from ckptlab.evaluation.store import ResultStore

ROLES = ("base", "finetuned", "cpt")
ItemValues = dict[tuple[str, str, str], dict[str, float]]  # (model_fp, task, template) → example id → value
# The training stage a hub revision label names (OLMo-2 `stage2-ingredient1-step11931-tokens50B`, after any prefix).
_STAGE = re.compile(r"(?:^|[-_/])stage(\d+)-")


@dataclass
class SweepModel:
    """One evaluated model in the study's terms (a `sweep_models` row)."""

    model_fp: str
    role: str
    checkpoint: str
    step: int | None
    tokens_seen: int | None
    finetune: str | None
    finetune_task: str | None
    method: str | None
    variant: str | None
    parent_fp: str | None
    compute: dict[str, Any]

    @property
    def stage(self) -> int:
        """Training stage named by the checkpoint label (`stage2-...`), 0 when none: steps restart in each stage."""
        found = _STAGE.search(self.checkpoint)
        return int(found.group(1)) if found else 0

    @property
    def label(self) -> str:
        if self.role == "base":
            return self.checkpoint
        extra = ", ".join(x for x in (self.method, self.variant) if x)
        return f"{self.finetune or self.finetune_task} @ {self.checkpoint}" + (f" ({extra})" if extra else "")


@dataclass
class Score:
    """A metric row: value and its 95% interval over examples, n examples."""

    value: float
    ci_low: float
    ci_high: float
    n: int


@dataclass
class SweepData:
    """Everything the report reads from the store, keyed by model fingerprint and task name."""

    store_path: Path
    models: dict[str, SweepModel]
    tasks: list[str]
    templates: dict[str, list[str]]
    metric: dict[str, str]
    """Primary metric per task (accuracy for classification, rouge_l for generation)."""
    shots: int
    scores: dict[tuple[str, str, str], Score]
    """(model_fp, task, template) → the primary metric's row."""
    sensitivity: dict[tuple[str, str, str], float]
    """(model_fp, task, statistic) → template `*` rows of the primary metric (spread, std, worst, agreement)."""
    items: dict[tuple[str, str, str], dict[str, float]]
    """(model_fp, task, template) → example id → item value of the primary metric."""
    chance: dict[str, float | None]
    """Per task, the larger of uniform guessing and always answering the most common gold label (None: a
    metric without a chance level: generation, exact match)."""
    warnings: list[str] = field(default_factory=list)
    seed_rows: list[dict[str, Any]] = field(default_factory=list)
    """Seed replicates merged into one model each: every replicate's score per eval set (tables/seeds.csv)."""
    members: dict[str, list[str]] = field(default_factory=dict)
    """A seed-averaged model → its replicates, whose item values stay in `items` (prompt sensitivity is
    measured per replicate)."""

    def steps(self) -> list[int]:
        return sorted({m.step for m in self.models.values() if m.step is not None})


def step_notes(models: list[SweepModel]) -> list[str]:
    """What the step-based curves and findings leave out or mix, said in the report rather than silently."""
    notes = []
    stepless = sorted({m.checkpoint for m in models if m.role == "base" and m.step is None})
    if stepless:
        notes.append(
            f"{len(stepless)} base checkpoint(s) have no training step and are left out of the step curves and the "
            f"findings that compare steps: {', '.join(stepless)} (a hub revision gives its step only when named "
            "stepN, e.g. step1000 or stage1-step150-tokens1B; main, tags and commits give none)"
        )
    stages = sorted({m.stage for m in models if m.role == "base" and m.step is not None})
    if len(stages) > 1:
        notes.append(
            f"base checkpoints come from {len(stages)} training stages ({', '.join(f'stage {s}' for s in stages)}): "
            "steps restart in each stage, so models are ordered by stage then step, and a step axis shows the "
            "stages on top of each other"
        )
    return notes


def dtype_notes(model_fps: list[str]) -> list[str]:
    """A warning when the models were scored in different dtypes (a fingerprint ends in `-bfloat16` when not fp32).

    `--dtype auto` resolves per machine (bf16 on CUDA, fp32 on a CPU), so a sweep resumed elsewhere can mix
    them; bf16 flips a few percent of close predictions (BENCHMARKS.md), which comparisons would read as effects.
    """
    suffixes = [fp.rpartition("-")[2] for fp in model_fps]
    dtypes = Counter(s if s in ("bfloat16", "float16") else "float32" for s in suffixes)
    if len(dtypes) < 2:
        return []
    counts = ", ".join(f"{dtype}: {n}" for dtype, n in sorted(dtypes.items()))
    return [
        f"models were scored in different dtypes ({counts}): differences between them mix the precision's effect "
        "with the models' (bf16 flips a few percent of close predictions); evaluate every model with one --dtype"
    ]


def store_path_of(sweep: str | None, store: str | None) -> Path:
    """The results store of a sweep directory (or the one given); a one-line error when there is none."""
    if store:
        path = Path(store)
        if not path.is_file():
            raise UserError(f"{path}: results store not found")
        return path
    if not sweep:
        raise UserError("no sweep given: ckptlab report SWEEP_DIR (or --store RESULTS.sqlite)")
    folder = Path(sweep)
    if not folder.is_dir():
        raise UserError(f"{folder}: sweep directory not found")
    path = folder / "results.sqlite"
    if not path.is_file():
        raise UserError(f"{path}: no results store in the sweep directory (expected the output of `ckptlab sweep`)")
    return path


def _most_common(values: list[Any]) -> Any:
    # Ties go to the smallest value, so the choice does not depend on row order.
    counts = Counter(values)
    best = max(counts.values())
    return min(v for v, c in counts.items() if c == best)


def _primary_metric(metrics_present: set[str], override: str | None) -> str | None:
    if override:
        return override
    for name in ("accuracy", "rouge_l", "exact_match", "accuracy_norm"):
        if name in metrics_present:
            return name
    return None


def load(
    store_path: Path, sweep: str | None = None, shots: int | None = None, metric_overrides: dict[str, str] | None = None
) -> SweepData:
    """Read the store at `store_path` (the models of one sweep name, or of all), each seed replicate of a
    fine-tune as a model of its own (`reporting.replicates` merges them)."""
    store = ResultStore(store_path)
    try:
        data = _load(store, store_path, sweep, shots, metric_overrides or {})
    finally:
        store.close()
    return data


def _load(store: ResultStore, path: Path, sweep: str | None, shots: int | None, overrides: dict[str, str]) -> SweepData:
    rows = store.sweep_models(sweep)
    metric_rows = store.rows("metrics")
    if not rows:
        if not metric_rows:
            raise UserError(f"{path}: the results store is empty (no evaluated models)")
        which = f" of sweep '{sweep}'" if sweep else ""
        raise UserError(
            f"{path}: no sweep_models rows{which}: the store does not say which models are base, "
            "fine-tuned or cpt (it was not written by `ckptlab sweep`)"
        )
    warnings: list[str] = []
    models: dict[str, SweepModel] = {}
    for r in rows:
        if r["role"] not in ROLES:
            warnings.append(f"model {r['model_fp'][:12]}: unknown role '{r['role']}', ignored")
            continue
        models[r["model_fp"]] = SweepModel(
            model_fp=r["model_fp"],
            role=r["role"],
            checkpoint=str(r["checkpoint"] or f"step-{r['step']}"),
            step=r["step"],
            tokens_seen=r["tokens_seen"],
            finetune=r["finetune"],
            finetune_task=r["finetune_task"],
            method=r["method"],
            variant=r["variant"],
            parent_fp=r["parent_fp"],
            compute=r["compute"],
        )
    warnings.extend(step_notes(list(models.values())))
    warnings.extend(dtype_notes(list(models)))
    metric_rows = [r for r in metric_rows if r["model_fp"] in models]
    if not metric_rows:
        raise UserError(f"{path}: no metric rows for the sweep's {len(models)} models (nothing was evaluated)")
    evaluated_shots = sorted({r["shots"] for r in metric_rows})
    shots = evaluated_shots[0] if shots is None else shots
    if len(evaluated_shots) > 1:
        warnings.append(
            f"evaluated with shots {', '.join(map(str, evaluated_shots))}; this report analyses "
            f"{shots}-shot results (--shots)"
        )
    metric_rows = [r for r in metric_rows if r["shots"] == shots]
    if not metric_rows:
        raise UserError(f"{path}: no results with shots={shots}")
    # One (task fingerprint, few-shot seed) per task: the most common, so every model sees the same items.
    unit_of = {
        task: _most_common([(r["task_fp"], r["seed"]) for r in metric_rows if r["task"] == task])
        for task in sorted({r["task"] for r in metric_rows})
    }
    for task, unit in unit_of.items():
        others = {(r["task_fp"], r["seed"]) for r in metric_rows if r["task"] == task} - {unit}
        if others:
            warnings.append(
                f"task {task}: {len(others) + 1} versions or few-shot seeds in the store; "
                f"using the most common ({unit[0][:12]}, seed {unit[1]})"
            )
    metric_rows = [r for r in metric_rows if (r["task_fp"], r["seed"]) == unit_of[r["task"]]]
    metric = {}
    for task in unit_of:
        present = {r["metric"] for r in metric_rows if r["task"] == task and r["template"] != "*"}
        chosen = _primary_metric(present, overrides.get(task))
        if chosen is None or chosen not in MEAN_METRICS:
            warnings.append(f"task {task}: no mean-type metric ({', '.join(sorted(present))}); left out")
            continue
        metric[task] = chosen
    tasks = sorted(metric)
    scores: dict[tuple[str, str, str], Score] = {}
    sensitivity: dict[tuple[str, str, str], float] = {}
    for r in sorted(metric_rows, key=lambda r: r["n"]):  # the row over the most examples wins
        task = r["task"]
        if task not in metric:
            continue
        if r["template"] == "*":
            name, _, stat = r["metric"].partition(":")
            if r["metric"] == "agreement":
                sensitivity[(r["model_fp"], task, "agreement")] = _float(r["value"])
            elif name == metric[task]:
                sensitivity[(r["model_fp"], task, stat)] = _float(r["value"])
        elif r["metric"] == metric[task]:
            scores[(r["model_fp"], task, r["template"])] = Score(
                _float(r["value"]), _float(r["ci_low"]), _float(r["ci_high"]), int(r["n"])
            )
    templates = {task: sorted({k[2] for k in scores if k[1] == task}) for task in tasks}
    items, chance, predictions = _items(store, models, unit_of, metric, shots)
    for (model_fp, task), by_template in predictions.items():
        sensitivity.update({(model_fp, task, stat): value for stat, value in prediction_stats(by_template).items()})
    return SweepData(path, models, tasks, templates, metric, shots, scores, sensitivity, items, chance, warnings)


CHOICE_METRICS = ("accuracy", "accuracy_norm")
"""Metrics of a choice among answers: they have a chance level and share one scale once normalised by it."""
DEGENERATE_SHARE = 0.9
"""A model whose most common prediction covers at least this share of an eval set's answers (over items and
templates) answers one class whatever the input: its template spread and agreement say nothing about the prompt."""


def prediction_stats(by_template: dict[str, dict[str, str]]) -> dict[str, float]:
    """Chance-corrected agreement of the templates' predictions (Fleiss' κ, templates as raters) and the share of
    the most common prediction; NaN κ when every answer is the same class (agreement by construction)."""
    templates = list(by_template)
    ids = sorted(set.intersection(*(set(v) for v in by_template.values()))) if templates else []
    answers = [[by_template[t][i] for t in templates] for i in ids]
    if not answers:
        return {}
    raters = len(templates)
    overall = Counter(a for row in answers for a in row)
    top_share = max(overall.values()) / (raters * len(answers))
    if raters < 2:
        return {"top_share": top_share}
    observed = sum((sum(c * c for c in Counter(row).values()) - raters) / (raters * (raters - 1)) for row in answers)
    observed /= len(answers)
    expected = sum((c / (raters * len(answers))) ** 2 for c in overall.values())
    kappa = math.nan if expected >= 1 else (observed - expected) / (1 - expected)
    return {"top_share": top_share, "kappa": kappa}


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def _items(
    store: ResultStore,
    models: dict[str, SweepModel],
    unit_of: dict[str, tuple[str, int]],
    metric: dict[str, str],
    shots: int,
) -> tuple[ItemValues, dict[str, float | None], dict[tuple[str, str], dict[str, dict[str, str]]]]:
    """Per-example item values of the primary metric, each task's chance level, and the predictions of
    choice tasks per (model, task) → template → example id."""
    items: ItemValues = {}
    predictions: dict[tuple[str, str], dict[str, dict[str, str]]] = {}
    golds: dict[str, dict[str, str]] = {}
    uniform: dict[str, dict[str, float]] = {}
    cursor = store.db.execute(
        "SELECT model_fp, task, task_fp, seed, template, example_id, correct, scores, gold, prediction "
        "FROM examples WHERE shots=?",
        (shots,),
    )
    for model_fp, task, task_fp, seed, template, example_id, correct, scores, gold, prediction in cursor:
        if model_fp not in models or task not in metric or unit_of[task] != (task_fp, seed):
            continue
        name = metric[task]
        first_of_example = task not in uniform or example_id not in uniform[task]
        # Parsed once, and only where needed: accuracy rows read `correct` and the stored prediction.
        parsed = json.loads(scores) if name != "accuracy" or first_of_example else {}
        if name == "accuracy":
            value = float(correct)
        else:
            row = {"correct": correct, "scores": parsed, "gold": gold, "prediction": prediction}
            value = item_values(name, [row])[0]
        if name in CHOICE_METRICS:
            if first_of_example:
                choices = parsed.get("choices") or []
                uniform.setdefault(task, {})[example_id] = 1 / len(choices) if choices else math.nan
            # accuracy_norm's answer is the length-normalised choice, not the stored prediction
            answer = normalised_prediction(parsed) if name == "accuracy_norm" else str(prediction)
            predictions.setdefault((model_fp, task), {}).setdefault(template, {})[example_id] = answer
        items.setdefault((model_fp, task, template), {})[example_id] = value
        golds.setdefault(task, {})[example_id] = gold
    chance: dict[str, float | None] = {}
    for task in metric:
        if metric[task] not in CHOICE_METRICS or task not in golds:
            chance[task] = None
            continue
        labels = Counter(golds[task].values())
        majority = max(labels.values()) / sum(labels.values())
        guesses = [v for v in uniform.get(task, {}).values() if not math.isnan(v)]
        chance[task] = max(majority, sum(guesses) / len(guesses) if guesses else 0.0)
    return items, chance, predictions
