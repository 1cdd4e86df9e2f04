"""The four findings of Sun & Dredze 2024, each tested on this sweep with a paired bootstrap over items.

Every statistic below is a mean of paired differences of per-example scores (or a rank correlation
of such means), so its 95% interval comes from the same item resamples as the numbers themselves
(`bootstrap.py`). A part of a test *holds* when its interval lies entirely on the claimed side of 0,
*fails* when it lies entirely on the other side, and is *undecided* when it spans 0 (or has no
interval: no per-example rows). Outcomes: `replicated` (every part holds), `not replicated` (a part
fails, or the claim's precondition is contradicted), `partly replicated` (some parts hold, the
others are undecided), `inconclusive` (nothing holds or fails, or too little data).

(i) Latent gains from pre-training. For each recipe (one fine-tuning run of the sweep applied to
    every checkpoint) and each of its in-task eval sets (all eval sets when the fine-tuning task is
    not one of them): ΔFT = fine-tuned score at the last checkpoint − at the first; ΔBase = the same
    for the models they were fine-tuned from. Means over (recipe, eval set). Replicated when ΔFT > 0
    and either ΔFT − ΔBase > 0 or ΔBase is flat (its interval spans 0); not replicated when ΔFT < 0,
    or ΔFT > 0 but the base rose as much (ΔBase > 0 and ΔFT − ΔBase not > 0). Needs 2 checkpoints.
(ii) Gains where the base cannot do it. Per eval set: base score above chance (the larger of uniform
    guessing and the majority label; 0 for generation), and gain = fine-tuned − base, both averaged
    over fine-tuned models. Spearman ρ(base above chance, gain) across eval sets: replicated when
    ρ < 0, not replicated when ρ > 0. Needs 3 eval sets; a base at chance on every set is inconclusive.
(iii) Forgetting. Change = fine-tuned − base on every (fine-tuned model, eval set) pair that is not
    in-task; parts: the mean over all such pairs (out-of-task) and over the knowledge-probe sets
    (`probes_pretraining_knowledge`). Each part holds when its mean change < 0.
(iv) Prompt sensitivity. Spread = best − worst template score. Parts: (a) mean over (fine-tuned
    model, eval set) of spread(fine-tuned) − spread(base) > 0; (b) mean over (recipe, eval set) of
    spread at the last checkpoint − at the first < 0. Needs 2 templates; (b) needs 2 checkpoints.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ckptlab.reporting.analysis import Study
from ckptlab.reporting.bootstrap import interval, mean_of, spearman
from ckptlab.reporting.data import SweepModel

REPLICATED, NOT_REPLICATED, PARTLY, INCONCLUSIVE = "replicated", "not replicated", "partly replicated", "inconclusive"
CLAIMS = {
    "i": "Continued pre-training improves the model in a latent way that shows only after fine-tuning.",
    "ii": "Data sets the base model cannot do gain most from fine-tuning.",
    "iii": "Fine-tuning forgets domain knowledge and unseen tasks.",
    "iv": "Sensitivity to the prompt format is high after fine-tuning and falls with more pre-training.",
}


def side(values: np.ndarray | None, level: float) -> int | None:
    """+1 / -1 when the interval lies above / below 0, 0 when it spans 0, None without an interval."""
    _, low, high = interval(values, level)
    if math.isnan(low):
        return None
    return 1 if low > 0 else -1 if high < 0 else 0


def _stat(name: str, values: np.ndarray | None, level: float, n: int) -> dict[str, Any]:
    value, low, high = interval(values, level)
    return {"name": name, "value": value, "ci_low": low, "ci_high": high, "pairs": n}


def _fmt(stat: dict[str, Any]) -> str:
    if math.isnan(stat["value"]):
        return "n/a"
    if math.isnan(stat["ci_low"]):
        return f"{stat['value']:+.3f} (no interval)"
    return f"{stat['value']:+.3f} [{stat['ci_low']:+.3f}, {stat['ci_high']:+.3f}]"


def _finding(
    key: str, test: str, outcome: str, summary: str, stats: list[dict[str, Any]], notes: list[str]
) -> dict[str, Any]:
    return {
        "id": key,
        "claim": CLAIMS[key],
        "test": test,
        "outcome": outcome,
        "summary": summary,
        "statistics": stats,
        "notes": notes,
    }


def _combine(parts: list[int | None]) -> str:
    """Outcome of parts that each should be +1 (already sign-flipped to the claimed side)."""
    if any(p == -1 for p in parts):
        return NOT_REPLICATED
    if parts and all(p == 1 for p in parts):
        return REPLICATED
    return PARTLY if any(p == 1 for p in parts) else INCONCLUSIVE


def _first_last(study: Study) -> list[tuple[str, SweepModel, SweepModel]]:
    """(recipe, model at its first checkpoint, model at its last) for recipes on 2+ checkpoints."""
    out = []
    for recipe, models in study.recipes().items():
        stepped = [m for m in models if m.step is not None and study.parent(m) is not None]
        if len({m.step for m in stepped}) >= 2:
            out.append((recipe, stepped[0], stepped[-1]))
    return out


def latent_gains(study: Study) -> dict[str, Any]:
    test = (
        "ΔFT = fine-tuned score at the last − the first checkpoint, ΔBase = the same for their base "
        "models, on each recipe's in-task eval sets; replicated when ΔFT > 0 and (ΔFT − ΔBase > 0 or "
        "ΔBase's interval spans 0)"
    )
    pairs = _first_last(study)
    if not pairs:
        return _finding(
            "i", test, INCONCLUSIVE, "Too little data: no fine-tuning recipe was run on 2 or more checkpoints.", [], []
        )
    tuned, base, notes = [], [], []
    for recipe, first, last in pairs:
        tasks = [t for t in study.tasks if study.taxonomy.relation(t, first.finetune_task) == "in-task"]
        if not tasks:
            tasks = list(study.tasks)
            notes.append(f"{recipe}: its fine-tuning task is not an eval set; all eval sets used")
        for task in tasks:
            parent_first, parent_last = study.parent(first), study.parent(last)
            assert parent_first is not None and parent_last is not None  # _first_last keeps models with a parent
            a, b = study.score(first, task), study.score(last, task)
            pa, pb = study.score(parent_first, task), study.score(parent_last, task)
            if a is None or b is None or pa is None or pb is None:
                continue
            tuned.append(b - a)
            base.append(pb - pa)
            if study.at_chance(task, float(pa[0])) and study.at_chance(task, float(pb[0])):
                notes.append(f"{recipe} / {task}: the base is at chance at both checkpoints")
    if not tuned:
        return _finding("i", test, INCONCLUSIVE, "Too little data: no in-task scores at both checkpoints.", [], notes)
    d_tuned, d_base = mean_of(tuned), mean_of(base)
    assert d_tuned is not None and d_base is not None  # tuned and base grow together and tuned is not empty
    level = study.level
    stats = [
        _stat("ΔFT (last − first checkpoint)", d_tuned, level, len(tuned)),
        _stat("ΔBase (last − first checkpoint)", d_base, level, len(base)),
        _stat("ΔFT − ΔBase", d_tuned - d_base, level, len(tuned)),
    ]
    s_tuned, s_base, s_diff = side(d_tuned, level), side(d_base, level), side(d_tuned - d_base, level)
    if s_tuned == 1:
        outcome = REPLICATED if s_diff == 1 or s_base == 0 else NOT_REPLICATED
    else:
        outcome = NOT_REPLICATED if s_tuned == -1 else INCONCLUSIVE
    # _first_last keeps models with a step: the filters only tell mypy so.
    steps = (
        sorted({m.step for _, m, _ in pairs if m.step is not None}),
        sorted({m.step for _, _, m in pairs if m.step is not None}),
    )
    summary = (
        f"From step {', '.join(map(str, steps[0]))} to step {', '.join(map(str, steps[1]))}, the fine-tuned "
        f"score changed by {_fmt(stats[0])} and the base by {_fmt(stats[1])} (difference {_fmt(stats[2])}), "
        f"over {len(tuned)} (recipe, eval set) pairs."
    )
    return _finding("i", test, outcome, summary, stats, notes)


def gains_where_base_fails(study: Study) -> dict[str, Any]:
    test = (
        "Spearman ρ across eval sets between the base score above chance and the gain from fine-tuning "
        "(both averaged over fine-tuned models); replicated when ρ < 0 (interval below 0)"
    )
    base_by_task: dict[str, np.ndarray] = {}
    gain_by_task: dict[str, np.ndarray] = {}
    at_chance: list[bool] = []
    for task in study.tasks:
        bases: list[np.ndarray] = []
        gains: list[np.ndarray] = []
        for model in study.of_role("finetuned"):
            parent = study.parent(model)
            change = study.change(model, task)
            if parent is None or change is None:
                continue
            base = study.score(parent, task)
            assert base is not None  # a change needs the parent's score
            bases.append(base)
            gains.append(change)
        if bases:
            chance = study.data.chance.get(task) or 0.0
            base_mean, gain_mean = mean_of(bases), mean_of(gains)
            assert base_mean is not None and gain_mean is not None  # bases and gains are not empty
            base_by_task[task] = base_mean - chance
            gain_by_task[task] = gain_mean
            at_chance.append(study.at_chance(task, float(base_by_task[task][0] + chance)))
    tasks = list(base_by_task)
    if len(tasks) < 3:
        return _finding(
            "ii",
            test,
            INCONCLUSIVE,
            f"Too little data: {len(tasks)} eval set(s) with both a base and a "
            "fine-tuned score (3 or more needed for a rank correlation).",
            [],
            [],
        )
    rho = spearman(np.vstack([base_by_task[t] for t in tasks]).T, np.vstack([gain_by_task[t] for t in tasks]).T)
    stat = _stat("Spearman ρ(base above chance, gain)", rho, study.level, len(tasks))
    stats = [stat]
    notes = [
        f"{t}: base above chance {float(base_by_task[t][0]):+.3f}, gain {float(gain_by_task[t][0]):+.3f}" for t in tasks
    ]
    low_gain = [float(gain_by_task[t][0]) for t, c in zip(tasks, at_chance) if c]
    high_gain = [float(gain_by_task[t][0]) for t, c in zip(tasks, at_chance) if not c]
    if all(at_chance):
        return _finding(
            "ii",
            test,
            INCONCLUSIVE,
            f"The base is at chance on every eval set, so its ranking is noise "
            f"(ρ = {_fmt(stat)}); the mean gain is {np.mean(low_gain):+.3f}.",
            stats,
            notes,
        )
    s = side(rho, study.level)
    outcomes: dict[int | None, str] = {1: NOT_REPLICATED, -1: REPLICATED}
    outcome = outcomes.get(s, INCONCLUSIVE)
    summary = f"Across {len(tasks)} eval sets, ρ = {_fmt(stat)}."
    if low_gain:
        summary += (
            f" Mean gain where the base is at chance: {np.mean(low_gain):+.3f} ({len(low_gain)} sets); "
            f"elsewhere: {np.mean(high_gain):+.3f} ({len(high_gain)} sets)."
        )
    return _finding("ii", test, outcome, summary, stats, notes)


def forgetting(study: Study) -> dict[str, Any]:
    test = (
        "Mean change (fine-tuned − base) over the (fine-tuned model, eval set) pairs that are not in-task and "
        "whose base scores above chance (where there is something to forget), and over the knowledge-probe "
        "sets among them; each part holds when its interval lies below 0. Means over every out-of-task pair "
        "are shown for context"
    )
    context: dict[str, list[np.ndarray]] = {
        "out-of-task": [],
        "knowledge probes": [],
        "cross-domain": [],
        "cross-task": [],
    }
    known: dict[str, list[np.ndarray]] = {"out-of-task": [], "knowledge probes": []}
    for model in study.of_role("finetuned"):
        parent = study.parent(model)
        for task in study.tasks:
            relation = study.taxonomy.relation(task, model.finetune_task)
            change = study.change(model, task)
            if change is None or parent is None or relation == "in-task":
                continue
            probe = task in study.taxonomy.probes
            context["out-of-task"].append(change)
            context[relation].append(change)
            if probe:
                context["knowledge probes"].append(change)
            # A base at chance knows nothing there to forget: averaging its pairs in would dilute
            # forgetting that exists only at late checkpoints.
            base = study.score(parent, task)
            assert base is not None  # a change needs the parent's score
            if not study.at_chance(task, float(base[0])):
                known["out-of-task"].append(change)
                if probe:
                    known["knowledge probes"].append(change)
    if not context["out-of-task"]:
        return _finding(
            "iii",
            test,
            INCONCLUSIVE,
            "Too little data: no out-of-task eval set with both a base and a fine-tuned score.",
            [],
            [],
        )
    decisive = [
        _stat(f"mean change where the base is above chance, {name}", mean_of(values), study.level, len(values))
        for name, values in known.items()
        if values
    ]
    stats = decisive + [
        _stat(f"mean change, {name}", mean_of(values), study.level, len(values))
        for name, values in context.items()
        if values
    ]
    notes = [] if context["knowledge probes"] else ["no knowledge-probe eval set in this sweep"]
    all_pairs = next(s for s in stats if s["name"] == "mean change, out-of-task")
    if not known["out-of-task"]:
        return _finding(
            "iii",
            test,
            INCONCLUSIVE,
            "The base is at chance on every out-of-task eval set, so there is "
            f"nothing to forget (mean change over all {len(context['out-of-task'])} pairs: "
            f"{_fmt(all_pairs)}).",
            stats,
            notes,
        )
    if context["knowledge probes"] and not known["knowledge probes"]:
        notes.append("the base is at chance on every knowledge probe: only the out-of-task part is tested")
    parts = [p for p in ("out-of-task", "knowledge probes") if known[p]]
    signs = [side(mean_of(known[p]), study.level) for p in parts]
    outcome = _combine([None if s is None else -s for s in signs])  # the claim is a negative change
    summary = "Where the base is above chance: " + "; ".join(
        f"{p}: {_fmt(decisive[i])} over {len(known[p])} pairs" for i, p in enumerate(parts)
    )
    summary += f". Over every out-of-task pair: {_fmt(all_pairs)} ({len(context['out-of-task'])} pairs)."
    return _finding("iii", test, outcome, summary, stats, notes)


def prompt_sensitivity(study: Study) -> dict[str, Any]:
    test = (
        "Spread = best − worst template. (a) mean spread(fine-tuned) − spread(base) over (fine-tuned model, "
        "eval set) > 0; (b) mean spread at the last − the first checkpoint over (recipe, eval set) < 0"
    )
    after_vs_base = []
    for model in study.of_role("finetuned"):
        parent = study.parent(model)
        for task in study.tasks:
            mine = study.means.spread(model.model_fp, task)
            theirs = study.means.spread(parent.model_fp, task) if parent is not None else None
            if mine is not None and theirs is not None:
                after_vs_base.append(mine - theirs)
    if not after_vs_base:
        return _finding(
            "iv",
            test,
            INCONCLUSIVE,
            "Too little data: no fine-tuned model and base scored under 2 or more templates on the same eval set.",
            [],
            [],
        )
    late_vs_early, base_late_vs_early = [], []
    for _, first, last in _first_last(study):
        for task in study.tasks:
            a, b = study.means.spread(first.model_fp, task), study.means.spread(last.model_fp, task)
            if a is not None and b is not None:
                late_vs_early.append(b - a)
    bases = [m for m in study.of_role("base") if m.step is not None]
    if len({m.step for m in bases}) >= 2:
        for task in study.tasks:
            a, b = study.means.spread(bases[0].model_fp, task), study.means.spread(bases[-1].model_fp, task)
            if a is not None and b is not None:
                base_late_vs_early.append(b - a)
    stats = [_stat("spread after fine-tuning − base spread", mean_of(after_vs_base), study.level, len(after_vs_base))]
    parts = [side(mean_of(after_vs_base), study.level)]
    notes = []
    if late_vs_early:
        stats.append(
            _stat("fine-tuned spread, last − first checkpoint", mean_of(late_vs_early), study.level, len(late_vs_early))
        )
        s = side(mean_of(late_vs_early), study.level)
        parts.append(None if s is None else -s)
    else:
        notes.append("no recipe on 2 or more checkpoints: the trend with pre-training is not tested")
    if base_late_vs_early:
        stats.append(
            _stat(
                "base spread, last − first checkpoint (context)",
                mean_of(base_late_vs_early),
                study.level,
                len(base_late_vs_early),
            )
        )
    outcome = _combine(parts)
    if outcome == REPLICATED and len(parts) < 2:
        outcome = PARTLY
    summary = "; ".join(f"{s['name']}: {_fmt(s)}" for s in stats) + "."
    return _finding("iv", test, outcome, summary, stats, notes)


def all_findings(study: Study) -> list[dict[str, Any]]:
    return [latent_gains(study), gains_where_base_fails(study), forgetting(study), prompt_sensitivity(study)]
