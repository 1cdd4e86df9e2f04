"""What each model cost, what fine-tuning bought per unit of compute, and which model to pick.

Conventions (docs/report.md):

- **Training FLOPs** of a model are the `flops` of its own run's `compute` record plus those of every
  trained model it descends from (a chain A → B costs A + B; a model fine-tuned after cpt costs the
  cpt run too), by the Kaplan et al. (2020) count of `train/compute.py`.
- **Pre-training FLOPs** of a base checkpoint are its `sweep_models` compute record's `flops` (the
  sweep writes the pre-training run's record scaled by the checkpoint's tokens seen ÷ the run's
  tokens); without one, 6·N·tokens_seen with N (`matmul_params`) from the compute record of any
  model trained from it (the same architecture; the attention term is left out); else unknown.
- **Total compute** of a model = pre-training FLOPs of its checkpoint + its training FLOPs.
  Evaluation FLOPs are not counted (the same for every model of one size).
- **Gain per PFLOP** of a fine-tuned model = its gain over its base checkpoint (the mean over its
  in-task eval sets, paired) ÷ its training PFLOPs (1 PFLOP = 1e15 FLOPs).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ckptlab.reporting.analysis import Study
from ckptlab.reporting.bootstrap import mean_of
from ckptlab.reporting.data import SweepModel

PFLOP = 1e15


def training_flops(study: Study, model: SweepModel) -> float | None:
    """FLOPs of the runs that made the model from its base checkpoint; None when a record lacks them."""
    trained = [m for m in study.lineage(model) if m.role != "base"]
    flops = [(m.compute or {}).get("flops") for m in trained]
    known = [f for f in flops if f is not None]
    return None if len(known) < len(flops) else float(sum(known))


def base_of(study: Study, model: SweepModel) -> SweepModel | None:
    root = study.lineage(model)[-1]
    return root if root.role == "base" else study.base_by_checkpoint.get(model.checkpoint)


def pretraining_flops(study: Study, base: SweepModel | None) -> tuple[float | None, str]:
    """(FLOPs, how they were found) of a base checkpoint's pre-training up to its step."""
    if base is None:
        return None, "unknown"
    recorded = (base.compute or {}).get("flops")
    if recorded is not None:
        return float(recorded), "run record"
    if base.tokens_seen:
        # N of the whole pre-trained network: a full fine-tune or cpt run keeps its shape; a LoRA run adds
        # adapters and a classification run swaps the head, so their N is used only when nothing else is.
        found: dict[int, list[float]] = {}
        for model in study.models.values():
            params = (model.compute or {}).get("matmul_params")
            if params and model.role != "base" and base_of(study, model) is base:
                rank = 0 if model.role == "cpt" or model.method == "full" else 1
                found.setdefault(rank, []).append(float(params))
        if found:
            candidates = found[min(found)]
            params = max(set(candidates), key=lambda n: (candidates.count(n), -n))
            how = "6·N·tokens" if min(found) == 0 else "6·N·tokens (N of an adapted model)"
            return 6.0 * params * base.tokens_seen, how
    return None, "unknown"


def compute_table(study: Study) -> list[dict[str, Any]]:
    """One row per trained model: method, trainable parameters, tokens, FLOPs, wall time, energy."""
    rows = []
    for role in ("cpt", "finetuned"):
        for model in study.of_role(role):
            record = model.compute or {}
            total = training_flops(study, model)
            rows.append(
                {
                    "model": model.label,
                    "role": role,
                    "recipe": _recipe(study, model),
                    "checkpoint": model.checkpoint,
                    "step": model.step,
                    "method": model.method or "",
                    "trainable_params": record.get("trainable_params"),
                    "total_params": record.get("total_params"),
                    "tokens": record.get("tokens"),
                    "flops": record.get("flops"),
                    "chain_flops": total,
                    "wall_s": record.get("wall_s"),
                    "energy_kwh": record.get("energy_kwh"),
                    "device": record.get("device", ""),
                }
            )
    return rows


def _recipe(study: Study, model: SweepModel) -> str:
    return {"finetuned": study.recipe(model), "cpt": f"cpt {model.finetune or ''}"}.get(model.role, "base")


def _gain_over_base(study: Study, model: SweepModel) -> tuple[np.ndarray | None, list[str]]:
    base = base_of(study, model)
    tasks = study.in_task(model)
    if base is None:
        return None, tasks
    scores = [(study.score(model, t), study.score(base, t)) for t in tasks]
    gains = [mine - theirs for mine, theirs in scores if mine is not None and theirs is not None]
    return mean_of(gains), tasks


def gain_per_pflop_table(study: Study) -> list[dict[str, Any]]:
    """Per fine-tuned model, then per method: in-task gain over the base ÷ training PFLOPs."""
    rows: list[dict[str, Any]] = []
    by_method: dict[str, list[tuple[np.ndarray, float, np.ndarray]]] = {}
    for model in study.of_role("finetuned"):
        gain, tasks = _gain_over_base(study, model)
        flops = training_flops(study, model)
        if gain is None or not flops:
            continue
        per_pflop = gain / (flops / PFLOP)
        by_method.setdefault(model.method or "", []).append((gain, flops, per_pflop))
        ci = study.ci(per_pflop)
        rows.append(
            {
                "level": "model",
                "method": model.method or "",
                "recipe": study.recipe(model),
                "checkpoint": model.checkpoint,
                "step": model.step,
                "in_task": " ".join(tasks),
                "models": 1,
                "gain": float(gain[0]),
                "pflops": flops / PFLOP,
                "gain_per_pflop": ci["value"],
                "ci_low": ci["ci_low"],
                "ci_high": ci["ci_high"],
            }
        )
    for method, found in sorted(by_method.items()):
        ci = study.ci(mean_of(p for _, _, p in found))
        rows.append(
            {
                "level": "method",
                "method": method,
                "recipe": "",
                "checkpoint": "",
                "step": None,
                "in_task": "",
                "models": len(found),
                "gain": float(np.mean([g[0] for g, _, _ in found])),
                "pflops": float(np.mean([f for _, f, _ in found])) / PFLOP,
                "gain_per_pflop": ci["value"],
                "ci_low": ci["ci_low"],
                "ci_high": ci["ci_high"],
            }
        )
    return rows


def pareto(points: list[tuple[float, float]]) -> list[bool]:
    """For (cost, score) points: True where no other point costs no more and scores at least as much
    (one of the two strictly). Of identical points the first is kept."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    best, on = -math.inf, [False] * len(points)
    for i in order:
        if points[i][1] > best:
            on[i], best = True, points[i][1]
    return on


def frontier_table(study: Study) -> list[dict[str, Any]]:
    """Every model × eval set with its total compute (pre-training + training) and score; `on_frontier`
    marks the Pareto set of each eval set (no model is both cheaper and better)."""
    rows = []
    for task in study.tasks:
        found: list[dict[str, Any]] = []
        for role in ("base", "cpt", "finetuned"):
            for model in study.of_role(role):
                score = study.score(model, task)
                pre, how = pretraining_flops(study, base_of(study, model))
                trained = 0.0 if role == "base" else training_flops(study, model)
                if score is None or pre is None or trained is None:
                    continue
                found.append(
                    {
                        "task": task,
                        "model": model.label,
                        "role": role,
                        "recipe": _recipe(study, model),
                        "checkpoint": model.checkpoint,
                        "step": model.step,
                        "method": model.method or ("base" if role == "base" else ""),
                        "pretrain_pflops": pre / PFLOP,
                        "pretrain_flops_from": how,
                        "train_pflops": trained / PFLOP,
                        "total_pflops": (pre + trained) / PFLOP,
                        **study.ci(score),
                        "model_fp": model.model_fp,
                    }
                )
        marks = pareto([(r["total_pflops"], r["value"]) for r in found])
        rows += [{**r, "on_frontier": mark} for r, mark in zip(found, marks)]
    return rows


def recommendation_table(study: Study, frontier: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per eval set: the model with the most score above chance per total PFLOP (among those whose
    interval lies above chance), and the cheapest model shown equivalent to the best (`equivalent`)."""
    rows = []
    for task in study.tasks:
        points = [r for r in frontier if r["task"] == task and r["total_pflops"] > 0]
        if not points:
            continue
        chance = study.data.chance.get(task) or 0.0
        best = max(points, key=lambda r: r["value"])
        best_values = study.means.score(best["model_fp"], task)
        assert best_values is not None  # frontier rows are models with a score
        # Above chance: the interval's lower end, or the estimate when there is no interval.
        above = [r for r in points if r["value"] > chance and not r["ci_low"] <= chance]
        efficient = max(above, key=lambda r: ((r["value"] - chance) / r["total_pflops"], r["value"])) if above else None
        ties = []
        for r in points:
            values = study.means.score(r["model_fp"], task)
            assert values is not None  # frontier rows are models with a score
            best_minus_it = best_values - values
            if r is best or equivalent(best_minus_it, study.equivalence_margin, study.level):
                ties.append((r, study.ci(best_minus_it)))
        cheapest, gap = min(ties, key=lambda x: (x[0]["total_pflops"], -x[0]["value"]))
        row = {
            "task": task,
            "chance": chance,
            "best_model": best["model"],
            "best": _pick(best),
            "best_score": best["value"],
            "best_total_pflops": best["total_pflops"],
        }
        for prefix, chosen in (("per_pflop", efficient), ("cheapest_equivalent", cheapest)):
            row[prefix] = _pick(chosen) if chosen else ""
            for key in ("checkpoint", "method", "recipe", "model"):
                row[f"{prefix}_{key}"] = chosen[key] if chosen else ""
            row[f"{prefix}_score"] = chosen["value"] if chosen else math.nan
            row[f"{prefix}_total_pflops"] = chosen["total_pflops"] if chosen else math.nan
        row["per_pflop_above_chance_per_pflop"] = (
            (efficient["value"] - chance) / efficient["total_pflops"] if efficient else math.nan
        )
        row.update(
            {
                "cheapest_below_best": gap["value"],
                "cheapest_below_best_ci_low": gap["ci_low"],
                "cheapest_below_best_ci_high": gap["ci_high"],
                "equivalence_margin": study.equivalence_margin,
            }
        )
        rows.append(row)
    return rows


def equivalent(best_minus_it: np.ndarray, margin: float, level: float) -> bool:
    """A one-sided test that the best is less than `margin` better: the upper `level` bound of best − it lies
    below the margin (the upper half of a two one-sided tests equivalence test; the other side, it being
    better than the best by the margin, cannot happen to the best). Not significantly below the best would
    call any model equivalent on a noisy eval set; this needs evidence of closeness. Without an interval, no."""
    replicates = best_minus_it[1:]
    if replicates.size == 0 or np.isnan(replicates).any():
        return False
    return float(np.percentile(replicates, 100 * level)) < margin


def _pick(row: dict[str, Any]) -> str:
    """`recipe @ checkpoint`: a model label alone does not say which chain made it."""
    return f"{row['recipe']} @ {row['checkpoint']}"
