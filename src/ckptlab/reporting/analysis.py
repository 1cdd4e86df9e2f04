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
from collections.abc import Callable, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

from ckptlab.reporting.bootstrap import Half, Resampled, interval, mean_of
from ckptlab.reporting.data import DEGENERATE_SHARE, SweepData, SweepModel
from ckptlab.reporting.taxonomy import Taxonomy, training_name


class Study:
    """The sweep's models and how they relate: parents, recipes, checkpoints in step order."""

    def __init__(
        self,
        data: SweepData,
        means: Resampled,
        taxonomy: Taxonomy,
        level: float = 0.95,
        chance_margin: float = 0.02,
        equivalence_margin: float = 0.02,
    ) -> None:
        self.data, self.means, self.taxonomy, self.level = data, means, taxonomy, level
        self.chance_margin, self.equivalence_margin = chance_margin, equivalence_margin
        self.models = data.models
        self.tasks = data.tasks
        self.base_by_checkpoint = {m.checkpoint: m for m in self.of_role("base")}

    def of_role(self, role: str) -> list[SweepModel]:
        return sorted(
            (m for m in self.models.values() if m.role == role),
            key=lambda m: (m.stage, m.step if m.step is not None else -1, m.checkpoint, m.label),
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

    def score(self, model: SweepModel, task: str, templates: Sequence[str] | None = None) -> np.ndarray | None:
        return self.means.score(model.model_fp, task, templates)

    def common_templates(self, models: Sequence[SweepModel], task: str) -> list[str]:
        """The templates every one of the models was scored with on the task (a warning when they differ): a
        comparison over different templates would count the templates' difference as the models'."""
        sets = [self.means.templates_of(m.model_fp, task) for m in models]
        common = [t for t in sets[0] if all(t in other for other in sets[1:])] if sets else []
        if any(names != common for names in sets):
            warning = (
                f"task {task}: {', '.join(m.label for m in models)} were scored with different templates; "
                f"compared on the {len(common)} all of them have ({', '.join(common) or 'none'})"
            )
            if warning not in self.data.warnings:
                self.data.warnings.append(warning)
        return common

    def aligned(
        self, models: Sequence[SweepModel], task: str, half: Half = "all", normalised: bool = False
    ) -> list[np.ndarray] | None:
        """The models' scores on the templates all of them have (on the chance-normalised scale if asked);
        None when one is missing."""
        common = self.common_templates(models, task)
        found = [self.means.score(m.model_fp, task, common, half) for m in models]
        if not common or any(v is None for v in found):
            return None
        scores = [v for v in found if v is not None]
        return [self.normalised(task, v) for v in scores] if normalised else scores

    def pair(
        self, model: SweepModel, other: SweepModel, task: str, half: Half = "all", normalised: bool = False
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Both models' scores on their common templates; None when either is missing."""
        both = self.aligned([model, other], task, half, normalised)
        return None if both is None else (both[0], both[1])

    def change(self, model: SweepModel, task: str, half: Half = "all", normalised: bool = False) -> np.ndarray | None:
        """Paired change of a model vs the model it was trained from (None when either is missing)."""
        parent = self.parent(model)
        both = self.pair(model, parent, task, half, normalised) if parent is not None else None
        return None if both is None else both[0] - both[1]

    def has_chance(self, task: str) -> bool:
        """A choice task (accuracy, accuracy_norm): its scores have a chance level and a chance-normalised scale."""
        return self.data.chance.get(task) is not None

    def normalised(self, task: str, values: np.ndarray) -> np.ndarray:
        """(score − chance) / (1 − chance): 0 at chance, 1 at perfect, so eval sets with 2 and 4 choices (or a
        majority label) share one scale."""
        chance = self.data.chance.get(task)
        assert chance is not None  # only choice tasks are normalised
        return (values - chance) / (1 - chance)

    def chance_margin_of(self, task: str, items: int | None = None) -> float:
        """How far above chance a score must be to count as above it: `chance_margin`, or more on a small eval
        set — the one-sided critical value of a score at chance over `items` items at the report's level."""
        chance = self.data.chance.get(task)
        n = items if items is not None else self.means.items_per_task.get(task, 0)
        if chance is None or n <= 0:
            return self.chance_margin
        return max(self.chance_margin, NormalDist().inv_cdf(self.level) * math.sqrt(chance * (1 - chance) / n))

    def at_chance(self, task: str, value: float, items: int | None = None) -> bool:
        chance = self.data.chance.get(task)
        return chance is not None and not math.isnan(value) and value <= chance + self.chance_margin_of(task, items)

    def degenerate(self, model: SweepModel, task: str) -> bool:
        """The model answers (nearly) one class on this set: see `data.DEGENERATE_SHARE`."""
        share = self.data.sensitivity.get((model.model_fp, task, "top_share"), math.nan)
        return not math.isnan(share) and share >= DEGENERATE_SHARE

    def template_variance(self, model: SweepModel, task: str, templates: Sequence[str]) -> np.ndarray | None:
        """The model's template variance component over `templates`, on the chance-normalised scale."""
        values = self.means.template_variance(model.model_fp, task, templates)
        chance = self.data.chance.get(task)
        if values is None or chance is None:
            return values
        return values / (1 - chance) ** 2

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
            both = study.pair(model, parent, task)
            if both is None:
                continue
            tuned, base = both
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


STATS = ("agreement", "kappa", "top_share")


def sensitivity_table(study: Study) -> list[dict[str, Any]]:
    """Model × eval set: the template variance component (chance-normalised on choice sets) with its interval,
    the best − worst template gap (a point value: biased upward, shown for familiarity), the templates' raw
    agreement and Fleiss' κ, and whether the model answers one class (degenerate)."""
    rows = []
    for role in ("base", "cpt", "finetuned"):
        for model in study.of_role(role):
            for task in study.tasks:
                templates = study.means.templates_of(model.model_fp, task)
                variance = study.template_variance(model, task, templates)
                if variance is None:
                    continue
                by_template = [study.score(model, task, [t]) for t in templates]
                points = [float(v[0]) for v in by_template if v is not None]
                stat = {name: study.data.sensitivity.get((model.model_fp, task, name), math.nan) for name in STATS}
                rows.append(
                    {
                        **_row_of(study, model),
                        "task": task,
                        "statistic": "template variance" + (" (chance-normalised)" if study.has_chance(task) else ""),
                        **study.ci(variance),
                        "best_minus_worst": max(points) - min(points) if points else math.nan,
                        "agreement": stat["agreement"],
                        "kappa": stat["kappa"],
                        "top_prediction_share": stat["top_share"],
                        "degenerate": study.degenerate(model, task),
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
    """Mean template variance over eval sets at each step, for the base models and each recipe."""

    def variance(model: SweepModel, task: str) -> np.ndarray | None:
        if study.degenerate(model, task):
            return None
        return study.template_variance(model, task, study.means.templates_of(model.model_fp, task))

    series = {"base": mean_over_tasks(study, study.of_role("base"), variance)}
    for recipe, models in study.recipes().items():
        series[recipe] = mean_over_tasks(study, models, variance)
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
