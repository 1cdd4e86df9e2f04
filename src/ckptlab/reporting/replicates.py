"""Seed replicates: fine-tunes that differ only in their seed are analysed as one model.

A sweep entry with `seeds: [0, 1, 2]` trains one model per seed, each named by the entry with
`seed=K` in its variant. Every table, figure and finding of the report takes their mean: per
example, the mean of the replicates' item values (over the examples all of them scored), so the
paired bootstrap over items works on the seed-averaged model as on any other. The intervals then
say how sure we are about these items for the mean of these seeds; how much the seeds themselves
disagree is in `tables/seeds.csv` (every replicate's score, their mean and range).

Prompt sensitivity is the exception: averaging seeds averages template noise away too (the mean
of 3 seeds varies less across templates than any one seed does), so a seed-averaged model's
template variance, agreement and κ are the means of its replicates' own values, comparable with a
single base model's. The replicates' item values therefore stay in `SweepData.items`, listed in
`SweepData.members`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from typing import Any

from ckptlab.reporting.data import Score, SweepData, SweepModel
from ckptlab.sweeps.spec import SEED_PART


def seed_of(model: SweepModel) -> int | None:
    match = SEED_PART.search(model.variant or "")
    return int(match.group(1)) if match else None


def merge_seed_replicates(data: SweepData) -> list[dict[str, Any]]:
    """Replace each group of seed replicates in `data` by one mean model; the rows of tables/seeds.csv."""
    groups: dict[tuple[Any, ...], list[SweepModel]] = {}
    for model in data.models.values():
        seed = seed_of(model)
        if model.role == "finetuned" and seed is not None:
            rest = SEED_PART.sub("", model.variant or "")
            key = (model.finetune, model.finetune_task, model.method, rest, model.parent_fp, model.checkpoint)
            groups.setdefault(key, []).append(model)
    parents = {m.parent_fp for m in data.models.values()}
    rows: list[dict[str, Any]] = []
    for (_, _, _, rest, _, _), members in sorted(groups.items(), key=lambda kv: kv[1][0].model_fp):
        if any(m.model_fp in parents for m in members):
            data.warnings.append(
                f"{members[0].label}: seed replicates that other models were trained from are kept apart"
            )
            continue
        members.sort(key=lambda m: seed_of(m) or 0)  # every member has a seed: it was grouped by one
        merged = _merged_model(members, rest)
        rows += _seed_rows(data, members, merged)
        _merge_results(data, members, merged.model_fp)
        data.members[merged.model_fp] = [m.model_fp for m in members]
        for member in members:
            del data.models[member.model_fp]
        data.models[merged.model_fp] = merged
    return rows


def _merged_model(members: list[SweepModel], rest: str) -> SweepModel:
    digest = hashlib.sha256("\n".join(m.model_fp for m in members).encode()).hexdigest()[:16]
    variant = ", ".join(x for x in (rest, f"mean of {len(members)} seeds") if x)
    # Replicates run the same recipe: one replicate's compute is the cost of one such model.
    return replace(members[0], model_fp=f"seeds-{digest}", variant=variant)


def _merge_results(data: SweepData, members: list[SweepModel], merged_fp: str) -> None:
    fps = [m.model_fp for m in members]
    for task in data.tasks:
        for template in data.templates.get(task, []):
            found_items = [data.items.get((fp, task, template)) for fp in fps]
            per_member = [values for values in found_items if values]
            if len(per_member) == len(found_items):  # every member has (non-empty) item values
                common = set.intersection(*(set(values) for values in per_member))
                data.items[(merged_fp, task, template)] = {
                    example: sum(values[example] for values in per_member) / len(per_member)
                    for example in sorted(common)
                }
            found_scores = [data.scores.get((fp, task, template)) for fp in fps]
            scores = [score for score in found_scores if score is not None]
            if len(scores) == len(found_scores):
                data.scores[(merged_fp, task, template)] = Score(
                    sum(s.value for s in scores) / len(scores), math.nan, math.nan, min(s.n for s in scores)
                )
        stats = {key[2] for key in data.sensitivity if key[0] in fps and key[1] == task}
        for stat in stats:
            found = [data.sensitivity.get((fp, task, stat)) for fp in fps]
            values = [v for v in found if v is not None]
            if len(values) == len(found):
                data.sensitivity[(merged_fp, task, stat)] = sum(values) / len(values)
    for table in (data.scores, data.sensitivity):  # items stay: sensitivity is measured per replicate
        for key in [k for k in table if k[0] in fps]:
            del table[key]


def _seed_rows(data: SweepData, members: list[SweepModel], merged: SweepModel) -> list[dict[str, Any]]:
    """Per eval set: every replicate's score (mean over templates), their mean and range."""
    rows = []
    for task in data.tasks:
        by_seed = {}
        for member in members:
            values = [
                data.scores[(member.model_fp, task, t)].value
                for t in data.templates.get(task, [])
                if (member.model_fp, task, t) in data.scores
            ]
            if values:
                by_seed[seed_of(member)] = sum(values) / len(values)
        if not by_seed:
            continue
        scores = list(by_seed.values())
        rows.append(
            {
                "model": merged.label,
                "model_fp": merged.model_fp,
                "checkpoint": merged.checkpoint,
                "step": merged.step,
                "task": task,
                "metric": data.metric[task],
                "seeds": len(scores),
                "mean": sum(scores) / len(scores),
                "min": min(scores),
                "max": max(scores),
                "by_seed": " ".join(f"{seed}:{score:.4f}" for seed, score in sorted(by_seed.items())),
            }
        )
    return rows
