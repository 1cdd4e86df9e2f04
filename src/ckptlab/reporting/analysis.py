"""The tables behind the report: scores, gains, forgetting, prompt sensitivity, continued pre-training.

Every table is a list of flat dicts (one CSV row each) computed from `Resampled` means, so each value
carries its paired-bootstrap 95% interval. A fine-tuned (or cpt) model is compared with the model it
was trained from (`parent_fp`); when that model is not in the sweep, with the base checkpoint of the
same label. Fine-tuned models are grouped into *recipes* — one fine-tuning run of the sweep (its name, task and
variant; and the cpt run, for models fine-tuned after continued pre-training) applied to each
checkpoint — so a recipe is one line across pre-training steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ckptlab.reporting.bootstrap import Resampled, interval, mean_of
from ckptlab.reporting.data import SweepData, SweepModel
from ckptlab.reporting.taxonomy import Taxonomy, training_name


class Study:
    """The sweep's models and how they relate: parents, recipes, checkpoints in step order."""

    def __init__(
        self, data: SweepData, means: Resampled, taxonomy: Taxonomy, level: float = 0.95, chance_margin: float = 0.02
    ) -> None:
        self.data, self.means, self.taxonomy, self.level = data, means, taxonomy, level
        self.chance_margin = chance_margin
        self.models = data.models
        self.tasks = data.tasks
        self.base_by_checkpoint = {m.checkpoint: m for m in self.of_role("base")}

    def of_role(self, role: str) -> list[SweepModel]:
        return sorted(
            (m for m in self.models.values() if m.role == role),
            key=lambda m: (m.step if m.step is not None else -1, m.checkpoint, m.label),
        )

    def parent(self, model: SweepModel) -> SweepModel | None:
        if model.parent_fp in self.models:
            return self.models[model.parent_fp]
        base = self.base_by_checkpoint.get(model.checkpoint)
        return base if base is not None and base is not model else None

    def recipe(self, model: SweepModel) -> str:
        """A fine-tuned model's recipe: its fine-tuning run's name, task and variant (and the cpt run it started
        from)."""
        parent = self.parent(model)
        task = training_name(model.finetune_task)
        name = model.finetune or task
        extra = [x for x in (task if task != name else "", model.variant) if x]
        if parent is not None and parent.role == "cpt":
            extra.append(f"after cpt {parent.finetune or parent.checkpoint}")
        if parent is not None and parent.role == "finetuned":  # sequential fine-tuning (`after:`)
            extra.append(f"after {parent.finetune or training_name(parent.finetune_task)}")
        return name + (f" ({', '.join(extra)})" if extra else "")

    def recipes(self) -> dict[str, list[SweepModel]]:
        out: dict[str, list[SweepModel]] = {}
        for model in self.of_role("finetuned"):
            out.setdefault(self.recipe(model), []).append(model)
        return out

    def lineage(self, model: SweepModel) -> list[SweepModel]:
        """The model, the model it was trained from, and so on back to its base checkpoint."""
        chain = [model]
        while (parent := self.parent(chain[-1])) is not None and parent not in chain:
            chain.append(parent)
        return chain

    def in_task(self, model: SweepModel) -> list[str]:
        """The eval sets a fine-tuned model trained on."""
        return [t for t in self.tasks if self.taxonomy.relation(t, model.finetune_task) == "in-task"]

    def score(self, model: SweepModel, task: str) -> np.ndarray | None:
        return self.means.score(model.model_fp, task)

    def change(self, model: SweepModel, task: str) -> np.ndarray | None:
        """Paired change of a model vs the model it was trained from (None when either is missing)."""
        parent = self.parent(model)
        mine = self.score(model, task)
        theirs = self.score(parent, task) if parent is not None else None
        return None if mine is None or theirs is None else mine - theirs

    def at_chance(self, task: str, value: float) -> bool:
        chance = self.data.chance.get(task)
        return chance is not None and not math.isnan(value) and value <= chance + self.chance_margin

    def ci(self, values: np.ndarray | None) -> dict[str, float]:
        value, low, high = interval(values, self.level)
        return {"value": value, "ci_low": low, "ci_high": high}


def _row_of(study: Study, model: SweepModel) -> dict[str, Any]:
    recipe = {"finetuned": study.recipe(model), "cpt": model.finetune or ""}.get(model.role, "")
    return {
        "model_fp": model.model_fp,
        "role": model.role,
        "checkpoint": model.checkpoint,
        "step": model.step,
        "recipe": recipe,
        "method": model.method or "",
        "variant": model.variant or "",
    }


def score_table(study: Study) -> list[dict[str, Any]]:
    """Every model × eval set: the primary metric over the chosen template(s), with its interval."""
    rows = []
    for role in ("base", "cpt", "finetuned"):
        for model in study.of_role(role):
            for task in study.tasks:
                values = study.score(model, task)
                if values is None:
                    continue
                rows.append(
                    {
                        **_row_of(study, model),
                        "task": task,
                        "metric": study.data.metric[task],
                        **study.ci(values),
                        "chance": study.data.chance.get(task),
                        "items": study.means.items_per_task.get(task, 0),
                    }
                )
    return rows


def heatmap(study: Study, models: list[SweepModel]) -> tuple[list[str], list[str], list[list[float]]]:
    """(row labels, eval sets, values): one row per model in step order."""
    rows = [m.checkpoint for m in models]
    values = []
    for model in models:
        line = []
        for task in study.tasks:
            score = study.score(model, task)
            line.append(float(score[0]) if score is not None else math.nan)
        values.append(line)
    return rows, list(study.tasks), values


def curves(study: Study) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Per eval set, per series (`base` and each recipe): points (step, value, ci_low, ci_high)."""
    series: dict[str, list[SweepModel]] = {"base": study.of_role("base"), **study.recipes()}
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for task in study.tasks:
        for name, models in series.items():
            points = [
                {"step": m.step, **study.ci(study.score(m, task))}
                for m in models
                if m.step is not None and study.score(m, task) is not None
            ]
            if points:
                out.setdefault(task, {})[name] = points
    return out


def gain_table(study: Study) -> list[dict[str, Any]]:
    """Each fine-tuned model × eval set: its base's score, its own, and the paired gain."""
    rows = []
    for model in study.of_role("finetuned"):
        parent = study.parent(model)
        if parent is None:
            continue
        for task in study.tasks:
            base, tuned = study.score(parent, task), study.score(model, task)
            if base is None or tuned is None:
                continue
            gain = study.ci(tuned - base)
            rows.append(
                {
                    **_row_of(study, model),
                    "task": task,
                    "relation": study.taxonomy.relation(task, model.finetune_task),
                    "base": float(base[0]),
                    "finetuned": float(tuned[0]),
                    "gain": gain["value"],
                    "ci_low": gain["ci_low"],
                    "ci_high": gain["ci_high"],
                    "base_at_chance": study.at_chance(task, float(base[0])),
                }
            )
    return rows


def forgetting_table(study: Study) -> list[dict[str, Any]]:
    """Recipe × eval set: mean change vs the base over the recipe's checkpoints, and how the sets relate."""
    rows = []
    for recipe, models in study.recipes().items():
        for task in study.tasks:
            changes = [c for c in (study.change(m, task) for m in models) if c is not None]
            if not changes:
                continue
            info = study.taxonomy.info(task)
            rows.append(
                {
                    "recipe": recipe,
                    "finetune_task": training_name(models[0].finetune_task),
                    "task": task,
                    "relation": study.taxonomy.relation(task, models[0].finetune_task),
                    "knowledge_probe": info.probes_knowledge,
                    "family": info.family,
                    "domain": info.domain,
                    "checkpoints": len(changes),
                    **study.ci(mean_of(changes)),
                }
            )
    return rows


def sensitivity_table(study: Study) -> list[dict[str, Any]]:
    """Model × eval set: template spread (best − worst) with its interval, and the stored agreement."""
    rows = []
    for role in ("base", "cpt", "finetuned"):
        for model in study.of_role(role):
            for task in study.tasks:
                spread = study.means.spread(model.model_fp, task)
                if spread is None:
                    continue
                agreement = study.data.sensitivity.get((model.model_fp, task, "agreement"), math.nan)
                rows.append(
                    {
                        **_row_of(study, model),
                        "task": task,
                        "statistic": "spread",
                        **study.ci(spread),
                        "agreement": agreement,
                    }
                )
    return rows


def mean_over_tasks(
    study: Study, models: list[SweepModel], per_task: Callable[[SweepModel, str], np.ndarray | None]
) -> list[dict[str, Any]]:
    """Per model (in step order): the mean over eval sets of a per-task statistic, with its interval."""
    points = []
    for model in models:
        values = [v for v in (per_task(model, t) for t in study.tasks) if v is not None]
        if values and model.step is not None:
            points.append(
                {"step": model.step, "checkpoint": model.checkpoint, "tasks": len(values), **study.ci(mean_of(values))}
            )
    return points


def sensitivity_series(study: Study) -> dict[str, list[dict[str, Any]]]:
    """Mean template spread over eval sets at each step, for the base models and each recipe."""
    spread = lambda model, task: study.means.spread(model.model_fp, task)  # noqa: E731
    series = {"base": mean_over_tasks(study, study.of_role("base"), spread)}
    for recipe, models in study.recipes().items():
        series[recipe] = mean_over_tasks(study, models, spread)
    return {name: points for name, points in series.items() if points}


def cpt_domain(study: Study, model: SweepModel, configured: str | None) -> str | None:
    """The domain a cpt run targets: configured, named by its data, or the one non-general domain."""
    if configured:
        return configured
    domains = {study.taxonomy.domain(t) for t in study.tasks} - {"general"}
    name = training_name(model.finetune_task).lower()
    named = [d for d in domains if d in name or d in str(model.finetune or "").lower()]
    if len(named) == 1:
        return named[0]
    return next(iter(domains)) if len(domains) == 1 else None


def cpt_table(study: Study, domain: str | None = None) -> list[dict[str, Any]]:
    """Per cpt model: mean change vs its starting checkpoint on domain and on general eval sets, and per set."""
    rows = []
    for model in study.of_role("cpt"):
        target = cpt_domain(study, model, domain)
        parent = study.parent(model)
        groups: dict[str, list[np.ndarray]] = {"domain": [], "general": []}
        for task in study.tasks:
            change = study.change(model, task)
            if change is None:
                continue
            group = "domain" if study.taxonomy.domain(task) == target else "general"
            groups[group].append(change)
            assert parent is not None  # a change is measured against the parent
            start, after = study.score(parent, task), study.score(model, task)
            assert start is not None and after is not None  # a change needs both scores
            rows.append(
                {
                    **_row_of(study, model),
                    "start": parent.checkpoint,
                    "task": task,
                    "group": group,
                    "start_score": float(start[0]),
                    "cpt_score": float(after[0]),
                    **change_ci(study, change),
                }
            )
        for group, changes in groups.items():
            if changes:
                rows.append(
                    {
                        **_row_of(study, model),
                        "start": parent.checkpoint if parent else "",
                        "task": f"mean of {group} sets ({len(changes)})",
                        "group": group,
                        "start_score": math.nan,
                        "cpt_score": math.nan,
                        **change_ci(study, mean_of(changes)),
                    }
                )
    return rows


def change_ci(study: Study, values: np.ndarray | None) -> dict[str, float]:
    """A change with its interval, as table columns: change, ci_low, ci_high."""
    ci = study.ci(values)
    return {"change": ci["value"], "ci_low": ci["ci_low"], "ci_high": ci["ci_high"]}
