"""Sequential fine-tuning: how much of the first fine-tune's in-task score is lost after the second.

A chain is a fine-tuned model (A→B) whose parent is itself a fine-tuned model (A) — what a sweep's
`after:` entries make. For each chain and each eval set A trained on, change = score(A→B) − score(A),
paired over items (negative: lost); the eval sets B trained on show what B bought. Chains that start
from the same A and train on the same second task are compared with the one without a `variant`
label (e.g. plain B against B with replay): difference of changes, paired, with its interval.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ckptlab.reporting.analysis import Study, change_ci
from ckptlab.reporting.bootstrap import mean_of
from ckptlab.reporting.data import SweepModel


def chains(study: Study) -> list[tuple[SweepModel, SweepModel]]:
    """(A, A→B) for every fine-tuned model trained from a fine-tuned model."""
    found = []
    for model in study.of_role("finetuned"):
        parent = study.parent(model)
        if parent is not None and parent.role == "finetuned":
            found.append((parent, model))
    return found


def _changes(study: Study, first: SweepModel, second: SweepModel) -> list[tuple[str, str, np.ndarray]]:
    """(eval set, whose in-task set it is, paired change second − first)."""
    out = []
    for trained_by, tasks in (("first", study.in_task(first)), ("second", study.in_task(second))):
        for task in tasks:
            before, after = study.score(first, task), study.score(second, task)
            if before is not None and after is not None:
                out.append((task, trained_by, after - before))
    return out


def sequential_table(study: Study) -> list[dict[str, Any]]:
    """Per chain, checkpoint and in-task eval set of A or B: A's score, A→B's score, the change; then
    per chain the mean over checkpoints on A's sets (`task` = mean of first's sets)."""
    rows: list[dict[str, Any]] = []
    means: dict[str, tuple[dict[str, Any], list[np.ndarray]]] = {}
    for first, second in chains(study):
        head = {
            "chain": study.recipe(second),
            "first": study.recipe(first),
            "second": second.finetune or "",
            "second_task": second.finetune_task or "",
            "variant": second.variant or "",
        }
        for task, trained_by, change in _changes(study, first, second):
            before, after = study.score(first, task), study.score(second, task)
            assert before is not None and after is not None  # _changes keeps the sets both were scored on
            rows.append(
                {
                    **head,
                    "checkpoint": second.checkpoint,
                    "step": second.step,
                    "task": task,
                    "trained_by": trained_by,
                    "before": float(before[0]),
                    "after": float(after[0]),
                    **change_ci(study, change),
                }
            )
            if trained_by == "first":
                means.setdefault(study.recipe(second), (head, []))[1].append(change)
    for head, changes in means.values():
        rows.append(
            {
                **head,
                "checkpoint": "",
                "step": None,
                "task": f"mean of first's sets ({len(changes)})",
                "trained_by": "first",
                "before": np.nan,
                "after": np.nan,
                **change_ci(study, mean_of(changes)),
            }
        )
    return rows


def replay_comparison(study: Study) -> list[dict[str, Any]]:
    """Chains with the same A (and checkpoint) and second task: each labelled chain vs the unlabelled
    one, on A's eval sets: difference of changes (positive: the labelled chain lost less)."""
    groups: dict[tuple[str, str | None], list[tuple[SweepModel, SweepModel]]] = {}
    for first, second in chains(study):
        groups.setdefault((first.model_fp, second.finetune_task), []).append((first, second))
    rows: list[dict[str, Any]] = []
    means: dict[tuple[str, str], list[np.ndarray]] = {}
    for members in groups.values():
        plain = sorted((s for _, s in members if not s.variant), key=lambda s: s.finetune or "")
        if not plain:
            continue
        reference, first = plain[0], members[0][0]
        for _, other in members:
            if other is reference:
                continue
            for task in study.in_task(first):
                mine, theirs = study.score(other, task), study.score(reference, task)
                if mine is None or theirs is None:
                    continue
                key = (study.recipe(reference), study.recipe(other))
                means.setdefault(key, []).append(mine - theirs)
                rows.append(
                    {
                        "reference": key[0],
                        "compared": key[1],
                        "variant": other.variant or "",
                        "checkpoint": other.checkpoint,
                        "step": other.step,
                        "task": task,
                        **change_ci(study, mine - theirs),
                    }
                )
    for (ref, compared), differences in means.items():  # recipes (the loop above used the names for models)
        rows.append(
            {
                "reference": ref,
                "compared": compared,
                "variant": "",
                "checkpoint": "",
                "step": None,
                "task": f"mean of first's sets ({len(differences)})",
                **change_ci(study, mean_of(differences)),
            }
        )
    return rows
