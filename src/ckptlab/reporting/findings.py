"""The four findings of Sun & Dredze 2024, each tested on this sweep, with verdicts calibrated by simulation.

Every statistic is computed once on the items and once per paired bootstrap resample (`bootstrap.py`);
a part's p-value is the two-sided bootstrap p of "the statistic is 0" (finding (ii): a permutation p
across eval sets). Within a finding the parts are decided together so that a finding whose claim is
false comes out *replicated or partly replicated* with probability at most α = 1 − level:

- Where every part must hold for the claim (an intersection-union test), each part is tested at α.
- Where one part holding is reported (*partly replicated*), the parts' p-values are Holm-adjusted.

A part *holds* when its (adjusted) p < α and the estimate lies on the claimed side, *fails* when
p < α on the other side, and is *undecided* otherwise (or without an interval). The rates are
measured by `benchmarks/findings_calibration.py` on simulated sweeps with a known truth (docs/report.md).

Scores are compared on one scale: choice eval sets (accuracy, accuracy_norm) on the chance-normalised
scale (score − chance) / (1 − chance). Metrics without a chance level (ROUGE-L, exact match) are kept
out of the findings' statistics (noted), since they have neither a floor nor a scale shared with accuracy.

(i) Latent gains from pre-training. Per recipe and in-task eval set: ΔFT = fine-tuned score at the last
    checkpoint − at the first; ΔBase = the same for their parents. Replicated when ΔFT − ΔBase > 0 and
    ΔFT > 0 both hold; not replicated when either fails; otherwise inconclusive (no "partly": a
    fine-tuned rise that the base matches is not a latent gain).
(ii) Gains where the base cannot do it. Per eval set with an in-task fine-tune (or one on its
    cross-domain twin): the base's level x and the fine-tuned gain as a share of the base's headroom,
    y = (FT − base) / (1 − base). x and y are measured on disjoint halves of the items (cross-fitted: x
    on A with y on B, and x on B with y on A, averaged) so that luck in the base's score cannot make
    the two look anti-correlated. Spearman ρ(x, y) across eval sets; p from the permutation
    distribution across eval sets; needs 5 eval sets (with 4, no permutation can reach p < 0.05).
(iii) Forgetting. Change = fine-tuned − base per (fine-tuned model, eval set) not in-task, where the
    base is above chance. "Above chance" is decided on one half of the items and the change measured
    on the other (cross-fitted), so bases above chance by luck do not regress toward "forgetting".
    Parts (Holm): cross-task sets and knowledge probes, each a mean change < 0. Cross-domain sets are
    context: the paper expects transfer there, not forgetting.
(iv) Prompt sensitivity. Sensitivity = the template variance component (unbiased; `bootstrap.py`).
    Parts (Holm): (a) fine-tuned − its base > 0 over (fine-tuned model, eval set); (b) last − first
    checkpoint < 0 over (recipe, eval set). Pairs where either model answers one class (degenerate)
    are left out. Only (a) testable gives at most partly replicated.
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from ckptlab.reporting.analysis import Study
from ckptlab.reporting.bootstrap import HALVES, Half, holm, interval, mean_of, p_value, spearman
from ckptlab.reporting.data import DEGENERATE_SHARE, SweepModel

REPLICATED, NOT_REPLICATED, PARTLY, INCONCLUSIVE = "replicated", "not replicated", "partly replicated", "inconclusive"
CLAIMS = {
    "i": "Continued pre-training improves the model in a latent way that shows only after fine-tuning.",
    "ii": "Data sets the base model cannot do gain most from fine-tuning.",
    "iii": "Fine-tuning forgets domain knowledge and unseen tasks.",
    "iv": "Sensitivity to the prompt format is high after fine-tuning and falls with more pre-training.",
}
MIN_SETS_FOR_RANKS = 5
"""Eval sets (ii) needs: with n sets the smallest two-sided permutation p of a rank correlation is 2 / n!."""
HEADROOM_FLOOR = 0.05
"""(ii) divides a gain by the base's headroom (1 − base), at least this much: a near-perfect base would
otherwise turn a tiny gain into an arbitrarily large share."""


@dataclass
class Part:
    """One tested part of a finding: its replicates, the side the claim expects, and its p-values."""

    name: str
    values: np.ndarray | None
    claimed: int
    """+1: the claim says the statistic is above 0; −1: below."""
    pairs: int
    p: float = math.nan
    p_adjusted: float = math.nan

    def side(self, alpha: float, adjusted: bool) -> int | None:
        """+1 holds, −1 fails, 0 undecided, None without an interval."""
        p = self.p_adjusted if adjusted else self.p
        if math.isnan(p) or self.values is None:
            return None
        if p >= alpha:
            return 0
        return 1 if np.sign(self.values[0]) == self.claimed else -1


def _stat(
    study: Study, name: str, values: np.ndarray | None, n: int, role: str = "context", part: Part | None = None
) -> dict[str, Any]:
    value, low, high = interval(values, study.level)
    p = part.p if part is not None else p_value(values)
    out = {"name": name, "value": value, "ci_low": low, "ci_high": high, "pairs": n, "role": role, "p_value": p}
    if part is not None:
        out["p_adjusted"] = part.p_adjusted
    return out


def _fmt(stat: dict[str, Any]) -> str:
    value, low, high = stat["value"], stat["ci_low"], stat["ci_high"]
    if math.isnan(value):
        return "n/a"
    small = max(abs(value), 0.0 if math.isnan(low) else max(abs(low), abs(high))) < 0.05
    f = "{:+.4f}" if small else "{:+.3f}"
    if math.isnan(low):
        return f.format(value) + " (no interval)"
    return f"{f.format(value)} [{f.format(low)}, {f.format(high)}]"


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


def _decide(parts: list[Part], alpha: float) -> str:
    """Holm-adjusted outcome of parts: replicated (all hold), not replicated (one fails), partly replicated
    (some hold, the rest undecided), inconclusive (none holds or fails)."""
    for part, adjusted in zip(parts, holm([p.p for p in parts])):
        part.p_adjusted = adjusted
    sides = [p.side(alpha, adjusted=True) for p in parts]
    if any(s == -1 for s in sides):
        return NOT_REPLICATED
    if sides and all(s == 1 for s in sides):
        return REPLICATED
    return PARTLY if any(s == 1 for s in sides) else INCONCLUSIVE


def _part(name: str, values: np.ndarray | None, claimed: int, pairs: int) -> Part:
    return Part(name, values, claimed, pairs, p=p_value(values))


def _choice_tasks(study: Study) -> tuple[list[str], list[str]]:
    """(eval sets the findings use: those with a chance level, the others: kept apart)."""
    return [t for t in study.tasks if study.has_chance(t)], [t for t in study.tasks if not study.has_chance(t)]


def _apart_note(others: list[str]) -> list[str]:
    if not others:
        return []
    return [
        f"left out of this finding (no chance level, so no scale shared with accuracy): {', '.join(others)}; "
        "see the tables"
    ]


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
        "ΔFT = fine-tuned score at the last − the first checkpoint, ΔBase = the same for their base models, "
        "on each recipe's in-task eval sets (chance-normalised); replicated when ΔFT − ΔBase > 0 and ΔFT > 0 "
        "both hold (each at α: both must hold), not replicated when either lies on the other side"
    )
    alpha = 1 - study.level
    tasks_used, others = _choice_tasks(study)
    notes = _apart_note(others)
    pairs = _first_last(study)
    if not pairs:
        summary = "Too little data: no fine-tuning recipe was run on 2 or more checkpoints."
        return _finding("i", test, INCONCLUSIVE, summary, [], notes)
    tuned, base, apart = [], [], []
    for recipe, first, last in pairs:
        parent_first, parent_last = study.parent(first), study.parent(last)
        assert parent_first is not None and parent_last is not None  # _first_last keeps models with a parent
        in_task = study.in_task(first)
        for task in (t for t in others if t in in_task):  # own scale: shown, not pooled with the normalised sets
            found = study.aligned([first, last, parent_first, parent_last], task)
            if found is not None:
                apart.append((found[1] - found[0]) - (found[3] - found[2]))
        tasks = [t for t in tasks_used if t in in_task]
        if not in_task:
            tasks = list(tasks_used)
            notes.append(f"{recipe}: its fine-tuning task is not an eval set; all eval sets used")
        for task in tasks:
            scores = study.aligned([first, last, parent_first, parent_last], task, normalised=True)
            if scores is None:
                continue
            a, b, pa, pb = scores
            tuned.append(b - a)
            base.append(pb - pa)
    if not tuned:
        shown = [_stat(study, "ΔFT − ΔBase on in-task sets without a chance level", mean_of(apart), len(apart))]
        summary = "Too little data: no in-task choice eval set scored at both checkpoints."
        return _finding("i", test, INCONCLUSIVE, summary, shown if apart else [], notes)
    d_tuned, d_base = mean_of(tuned), mean_of(base)
    assert d_tuned is not None and d_base is not None  # tuned and base grow together and tuned is not empty
    latent = _part("ΔFT − ΔBase", d_tuned - d_base, +1, len(tuned))
    rise = _part("ΔFT (last − first checkpoint)", d_tuned, +1, len(tuned))
    sides = [latent.side(alpha, adjusted=False), rise.side(alpha, adjusted=False)]
    latent.p_adjusted, rise.p_adjusted = latent.p, rise.p  # an intersection-union test: no adjustment
    if -1 in sides:
        outcome = NOT_REPLICATED
    elif sides == [1, 1]:
        outcome = REPLICATED
    else:
        outcome = INCONCLUSIVE
    stats = [
        _stat(study, latent.name, latent.values, len(tuned), "decides", latent),
        _stat(study, rise.name, rise.values, len(tuned), "decides", rise),
        _stat(study, "ΔBase (last − first checkpoint)", d_base, len(base)),
    ]
    if apart:
        name = "ΔFT − ΔBase on in-task sets without a chance level (own scale, not pooled)"
        stats.append(_stat(study, name, mean_of(apart), len(apart)))
    steps = (
        sorted({m.step for _, m, _ in pairs if m.step is not None}),
        sorted({m.step for _, _, m in pairs if m.step is not None}),
    )
    summary = (
        f"From step {', '.join(map(str, steps[0]))} to step {', '.join(map(str, steps[1]))} (chance-normalised), "
        f"the fine-tuned score changed by {_fmt(stats[1])} and the base by {_fmt(stats[2])}: "
        f"ΔFT − ΔBase = {_fmt(stats[0])}, over {len(tuned)} (recipe, eval set) pairs."
    )
    if outcome == INCONCLUSIVE and sides[1] == 1:
        summary += " The fine-tuned score rose, but not detectably more than the base's."
    if apart:
        summary += f" On in-task sets without a chance level (own scale, context): ΔFT − ΔBase = {_fmt(stats[-1])}."
    return _finding("i", test, outcome, summary, stats, notes)


def _headroom_share(tuned: np.ndarray, base: np.ndarray) -> np.ndarray:
    return (tuned - base) / np.maximum(1 - base, HEADROOM_FLOOR)


def _gain_models(study: Study, task: str) -> tuple[list[SweepModel], str]:
    """The fine-tuned models whose gain on `task` is a gain from fine-tuning on it: those fine-tuned on it,
    else those fine-tuned on its cross-domain twin."""
    for relation in ("in-task", "cross-domain"):
        found = [
            m
            for m in study.of_role("finetuned")
            if study.parent(m) is not None and study.taxonomy.relation(task, m.finetune_task) == relation
        ]
        if found:
            return found, relation
    return [], ""


def _cross_fitted_rho(x_a: np.ndarray, x_b: np.ndarray, y_a: np.ndarray, y_b: np.ndarray) -> np.ndarray:
    """ρ of the base level on one half with the gain share on the other, both ways, averaged (rows: (..., sets))."""
    return (spearman(x_a, y_b) + spearman(x_b, y_a)) / 2


def _permutation_p(x_a: np.ndarray, x_b: np.ndarray, y_a: np.ndarray, y_b: np.ndarray) -> float:
    """Two-sided p of the cross-fitted ρ under "x and y are unrelated across eval sets": the share of
    pairings of the eval sets' x with their y (all of them up to 8 sets, else 20,000 drawn) whose |ρ| is at
    least the observed one."""
    n = x_a.size
    if n <= 8:
        orders = np.array(list(itertools.permutations(range(n))))
    else:
        rng = np.random.default_rng(zlib.crc32(b"permutations"))
        orders = np.vstack([np.arange(n), np.argsort(rng.random((19_999, n)), axis=1)])
    rho = _cross_fitted_rho(
        np.broadcast_to(x_a, orders.shape), np.broadcast_to(x_b, orders.shape), y_a[orders], y_b[orders]
    )
    observed = _cross_fitted_rho(x_a, x_b, y_a, y_b)
    return float(np.mean(np.abs(rho) >= abs(float(observed)) - 1e-12))


def gains_where_base_fails(study: Study) -> dict[str, Any]:
    test = (
        "Spearman ρ across eval sets between the base's level and the in-task gain as a share of the base's "
        "headroom, (FT − base) / (1 − base), chance-normalised, each measured on a different half of the items "
        "(cross-fitted); p from all pairings of the eval sets (permutation); replicated when ρ < 0 at p < α; "
        f"needs {MIN_SETS_FOR_RANKS} eval sets with an in-task fine-tune (or one on a cross-domain twin)"
    )
    tasks_used, others = _choice_tasks(study)
    notes = _apart_note(others)
    level: dict[str, dict[str, np.ndarray]] = {}
    share: dict[str, dict[str, np.ndarray]] = {}
    at_chance: list[str] = []
    for task in tasks_used:
        models, relation = _gain_models(study, task)
        bases: dict[Half, list[np.ndarray]] = {"all": [], "A": [], "B": []}
        shares: dict[Half, list[np.ndarray]] = {"all": [], "A": [], "B": []}
        for model in models:
            parent = study.parent(model)
            assert parent is not None  # _gain_models keeps models with a parent
            for half in HALVES:
                both = study.pair(model, parent, task, half, normalised=True)
                if both is not None:
                    bases[half].append(both[1])
                    shares[half].append(_headroom_share(both[0], both[1]))
        if not bases["A"] or not bases["B"]:
            continue
        level[task] = {h: v for h in ("A", "B") if (v := mean_of(bases[h])) is not None}
        share[task] = {h: v for h in ("A", "B") if (v := mean_of(shares[h])) is not None}
        if relation == "cross-domain":
            notes.append(f"{task}: gain of the models fine-tuned on its cross-domain twin")
        chance = study.data.chance.get(task) or 0.0
        base_all = mean_of(bases["all"])
        if base_all is not None and study.at_chance(task, chance + float(base_all[0]) * (1 - chance)):
            at_chance.append(task)
    tasks = list(level)
    for t in tasks:
        x = (float(level[t]["A"][0]) + float(level[t]["B"][0])) / 2
        y = (float(share[t]["A"][0]) + float(share[t]["B"][0])) / 2
        notes.append(f"{t}: base level {x:+.3f}, gain as a share of the headroom {y:+.3f} (chance-normalised)")
    if len(tasks) < 3:
        return _finding(
            "ii",
            test,
            INCONCLUSIVE,
            f"Too little data: {len(tasks)} eval set(s) with an in-task fine-tune and a base score "
            f"({MIN_SETS_FOR_RANKS} or more needed).",
            [],
            notes,
        )
    x_a, x_b = (np.vstack([level[t][h] for t in tasks]).T for h in ("A", "B"))
    y_a, y_b = (np.vstack([share[t][h] for t in tasks]).T for h in ("A", "B"))
    rho = _cross_fitted_rho(x_a, x_b, y_a, y_b)
    # The interval resamples eval sets as well as items (a claim across eval sets); the verdict is the
    # permutation test, exact for these eval sets whatever their number.
    rng = np.random.default_rng(zlib.crc32(("ii" + "".join(tasks)).encode()))
    picks = rng.integers(0, len(tasks), size=(x_a.shape[0] - 1, len(tasks)))
    rows = np.arange(1, x_a.shape[0])[:, None]
    two_level = _cross_fitted_rho(x_a[rows, picks], x_b[rows, picks], y_a[rows, picks], y_b[rows, picks])
    values = np.concatenate([rho[:1], two_level])
    # Without resamples no finding decides (`--bootstrap 0`), this one included, though its p needs none.
    p = _permutation_p(x_a[0], x_b[0], y_a[0], y_b[0]) if x_a.shape[0] > 1 else math.nan
    part = Part("Spearman ρ(base level, gain ÷ headroom)", values, -1, len(tasks), p=p, p_adjusted=p)
    stat = _stat(study, part.name, values, len(tasks), "decides", part)
    stat["interval"] = "eval sets and items resampled"
    stats = [stat]
    summary = f"Across {len(tasks)} eval sets, ρ = {_fmt(stat)}, permutation p = {p:.3f}."
    if math.isnan(p):
        summary = f"Across {len(tasks)} eval sets, ρ = {_fmt(stat)} (no bootstrap: not tested)."
    if at_chance:
        summary += f" The base is at chance on {len(at_chance)} of them ({', '.join(at_chance)})."
    if len(tasks) < MIN_SETS_FOR_RANKS:
        summary += (
            f" With fewer than {MIN_SETS_FOR_RANKS} eval sets no ordering of them is unusual enough to decide: "
            "ρ describes these eval sets only."
        )
        return _finding("ii", test, INCONCLUSIVE, summary, stats, notes)
    side = part.side(1 - study.level, adjusted=False)
    outcome = {1: REPLICATED, -1: NOT_REPLICATED}.get(side or 0, INCONCLUSIVE)
    return _finding("ii", test, outcome, summary, stats, notes)


def forgetting(study: Study) -> dict[str, Any]:
    test = (
        "Mean change (fine-tuned − base, chance-normalised) over the (fine-tuned model, eval set) pairs that are "
        "not in-task and whose base is above chance — decided on one half of the items, the change measured on "
        "the other (cross-fitted) — for cross-task sets and for knowledge probes; each part holds when its "
        "Holm-adjusted p < α and the change is negative. Cross-domain sets are context (transfer is expected)"
    )
    tasks_used, others = _choice_tasks(study)
    notes = _apart_note(others)
    groups = ("cross-task", "knowledge probes", "cross-domain")
    measured: dict[str, list[tuple[str, str, np.ndarray]]] = {g: [] for g in groups}  # (pair, half measured, change)
    every: dict[str, list[np.ndarray]] = {g: [] for g in groups}
    for model in study.of_role("finetuned"):
        parent = study.parent(model)
        if parent is None:
            continue
        for task in tasks_used:
            relation = study.taxonomy.relation(task, model.finetune_task)
            if relation == "in-task":
                continue
            group = "knowledge probes" if task in study.taxonomy.probes else relation
            halves = {h: pair for h in HALVES if (pair := study.pair(model, parent, task, h)) is not None}
            if len(halves) < len(HALVES):
                continue
            every[group].append(study.normalised(task, halves["all"][0]) - study.normalised(task, halves["all"][1]))
            sizes = {"A": len(study.means.ids[task][0]), "B": len(study.means.ids[task][1])}
            crossed: tuple[tuple[Half, Half], ...] = (("A", "B"), ("B", "A"))
            for select, measure in crossed:
                if not study.at_chance(task, float(halves[select][1][0]), sizes[select]):
                    tuned, base = halves[measure]
                    change = study.normalised(task, tuned) - study.normalised(task, base)
                    measured[group].append((f"{model.model_fp} {task}", measure, change))
    if not any(every[g] for g in ("cross-task", "knowledge probes")):
        stats = [_stat(study, f"mean change, {g}, every pair", mean_of(v), len(v)) for g, v in every.items() if v]
        return _finding(
            "iii",
            test,
            INCONCLUSIVE,
            "Too little data: no cross-task or knowledge-probe eval set with both a base and a fine-tuned score.",
            stats,
            notes,
        )

    def cross_fitted(found: list[tuple[str, str, np.ndarray]]) -> np.ndarray | None:
        # Mean over pairs selected on A (measured on B) and over pairs selected on B (measured on A), averaged.
        halves = [mean_of([c for _, h, c in found if h == measure]) for measure in ("B", "A")]
        return mean_of([h for h in halves if h is not None])

    def pairs(group: str) -> int:  # (model, eval set) pairs selected in either half
        return len({pair for pair, _, _ in measured[group]})

    parts = [
        _part(f"mean change where the base is above chance, {g}", cross_fitted(measured[g]), -1, pairs(g))
        for g in ("cross-task", "knowledge probes")
        if measured[g]
    ]
    outcome = _decide(parts, 1 - study.level) if parts else INCONCLUSIVE
    stats = [_stat(study, p.name, p.values, p.pairs, "decides", p) for p in parts]
    if measured["cross-domain"]:
        values = cross_fitted(measured["cross-domain"])
        stats.append(
            _stat(study, "mean change where the base is above chance, cross-domain", values, pairs("cross-domain"))
        )
    stats += [_stat(study, f"mean change, {g}, every pair", mean_of(v), len(v)) for g, v in every.items() if v]
    if not every["knowledge probes"]:
        notes.append("no knowledge-probe eval set in this sweep")
    elif not measured["knowledge probes"]:
        notes.append("the base is at chance on every knowledge probe: nothing there to forget")
    if not parts:
        return _finding(
            "iii",
            test,
            INCONCLUSIVE,
            "The base is at chance on every cross-task and knowledge-probe eval set, so there is nothing to forget.",
            stats,
            notes,
        )
    summary = "Where the base is above chance (chance-normalised, cross-fitted halves): " + "; ".join(
        f"{p.name.rsplit(', ', 1)[1]}: {_fmt(s)} (Holm p = {p.p_adjusted:.3f})" for p, s in zip(parts, stats)
    )
    return _finding("iii", test, outcome, summary + ".", stats, notes)


def prompt_sensitivity(study: Study) -> dict[str, Any]:
    test = (
        "Sensitivity = the template variance component of the score (unbiased; chance-normalised). (a) mean of "
        "fine-tuned − its base over (fine-tuned model, eval set) > 0; (b) mean of last − first checkpoint over "
        "(recipe, eval set) < 0; Holm-adjusted; pairs with a model that answers one class are left out"
    )
    tasks_used, others = _choice_tasks(study)
    notes = _apart_note(others)
    degenerate: set[tuple[str, str]] = set()  # (model, eval set)

    def differences(pairs: list[tuple[SweepModel, SweepModel]]) -> list[np.ndarray]:
        out = []
        for later, earlier in pairs:
            for task in tasks_used:
                if study.degenerate(later, task) or study.degenerate(earlier, task):
                    degenerate.update((m.model_fp, task) for m in (later, earlier) if study.degenerate(m, task))
                    continue
                templates = study.common_templates([later, earlier], task)
                mine, theirs = (study.template_variance(m, task, templates) for m in (later, earlier))
                if mine is not None and theirs is not None:
                    out.append(mine - theirs)
        return out

    tuned = [(m, p) for m in study.of_role("finetuned") if (p := study.parent(m)) is not None]
    after_vs_base = differences(tuned)
    if not after_vs_base:
        return _finding(
            "iv",
            test,
            INCONCLUSIVE,
            "Too little data: no fine-tuned model and base scored under 2 or more templates on the same eval set "
            "(or every such pair has a model that answers one class).",
            [],
            notes,
        )
    late_vs_early = differences([(last, first) for _, first, last in _first_last(study)])
    bases = [m for m in study.of_role("base") if m.step is not None]
    base_trend = differences([(bases[-1], bases[0])]) if len({m.step for m in bases}) >= 2 else []
    parts = [_part("(a) fine-tuned − base", mean_of(after_vs_base), +1, len(after_vs_base))]
    if late_vs_early:
        parts.append(_part("(b) fine-tuned, last − first checkpoint", mean_of(late_vs_early), -1, len(late_vs_early)))
    else:
        notes.append("no recipe on 2 or more checkpoints: the trend with pre-training is not tested")
    outcome = _decide(parts, 1 - study.level)
    if outcome == REPLICATED and len(parts) < 2:
        outcome = PARTLY
    stats = [_stat(study, p.name, p.values, p.pairs, "decides", p) for p in parts]
    if base_trend:
        stats.append(_stat(study, "base, last − first checkpoint", mean_of(base_trend), len(base_trend)))
    if degenerate:
        by_task = Counter(task for _, task in degenerate)
        notes.append(
            f"left out: pairs with a model that answers one class ({DEGENERATE_SHARE:.0%} or more of its answers the "
            f"same; {len(degenerate)} (model, eval set) in all: "
            + ", ".join(f"{task} {count}" for task, count in sorted(by_task.items()))
            + "); tables/sensitivity.csv flags each"
        )
    summary = "Template variance: " + "; ".join(f"{s['name']}: {_fmt(s)}" for s in stats) + "."
    return _finding("iv", test, outcome, summary, stats, notes)


def all_findings(study: Study) -> list[dict[str, Any]]:
    return [latent_gains(study), gains_where_base_fails(study), forgetting(study), prompt_sensitivity(study)]
