"""The paired bootstrap over items: shared resamples, paired differences, rank correlation, NaN for no items."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ckptlab.reporting.bootstrap import Resampled, holm, interval, p_value, spearman
from ckptlab.reporting.data import Score, SweepData


def sweep(items, scores=None, templates=("a",)):
    tasks = sorted({k[1] for k in list(items) + list(scores or {})})
    return SweepData(
        Path("x.sqlite"),
        {},
        tasks,
        {t: list(templates) for t in tasks},
        dict.fromkeys(tasks, "accuracy"),
        0,
        dict(scores or {}),
        {},
        items,
        dict.fromkeys(tasks),
    )


def test_point_estimate_is_the_item_mean_and_pairs_share_resamples():
    ids = [f"e{i}" for i in range(40)]
    a = {i: float(n % 2) for n, i in enumerate(ids)}
    items = {("m1", "t", "a"): a, ("m2", "t", "a"): dict(a)}
    means = Resampled(sweep(items), resamples=200, seed=3)
    assert means.values[("m1", "t", "a", "all")][0] == 0.5
    difference = means.score("m1", "t") - means.score("m2", "t")
    assert np.all(difference == 0)  # identical items resampled identically: the paired difference is exactly 0
    estimate, low, high = interval(means.score("m1", "t"))
    assert estimate == 0.5 and low < 0.5 < high


def test_paired_interval_is_narrower_than_the_scores_interval():
    rng = np.random.default_rng(0)
    hard = rng.random(300) < 0.5
    base = {f"e{i}": float(h) for i, h in enumerate(hard)}
    tuned = {f"e{i}": float(h or i % 10 == 0) for i, h in enumerate(hard)}  # the same items plus 10% more
    means = Resampled(sweep({("b", "t", "a"): base, ("f", "t", "a"): tuned}), resamples=500)
    change = interval(means.score("f", "t") - means.score("b", "t"))
    alone = interval(means.score("f", "t"))
    assert change[1] > 0  # a paired gain of ~5 points is detected ...
    assert change[2] - change[1] < (alone[2] - alone[1]) / 2  # ... because pairing removes item difficulty


def test_resamples_are_seeded_per_task():
    items = {("m", "t", "a"): {f"e{i}": float(i % 3 == 0) for i in range(50)}}
    first = Resampled(sweep(items), resamples=100, seed=1).values[("m", "t", "a", "all")]
    more = {**items, ("m", "u", "a"): {"x": 1.0}}
    second = Resampled(sweep(more), resamples=100, seed=1).values[("m", "t", "a", "all")]
    assert np.array_equal(first, second)


def test_metric_rows_without_items_have_no_interval_and_mean_over_templates():
    scores = {("m", "t", "a"): Score(0.6, 0.5, 0.7, 10), ("m", "t", "b"): Score(0.8, 0.7, 0.9, 10)}
    means = Resampled(sweep({}, scores, templates=("a", "b")), resamples=50)
    estimate, low, high = interval(means.score("m", "t"))
    assert math.isclose(estimate, 0.7) and math.isnan(low) and math.isnan(high)
    assert means.template_variance("m", "t") is None  # a variance component needs per-example rows


def test_only_examples_every_model_scored_are_compared():
    items = {("m1", "t", "a"): {"e1": 1.0, "e2": 0.0, "e3": 1.0}, ("m2", "t", "a"): {"e1": 1.0, "e2": 1.0}}
    data = sweep(items)
    means = Resampled(data, resamples=10)
    assert means.items_per_task["t"] == 2 and means.values[("m1", "t", "a", "all")][0] == 0.5
    assert any("the 2 that all of them scored" in w for w in data.warnings)


def test_spearman_matches_a_hand_computation_with_ties():
    x = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 2.0, 3.0], [4.0, 3.0, 2.0, 1.0]])
    y = np.array([[2.0, 4.0, 6.0, 8.0], [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    rho = spearman(x, y)
    # Ranks of [1, 1, 2, 3] are [1.5, 1.5, 3, 4]; Pearson of those with [1, 2, 3, 4] is 0.9486833.
    assert np.allclose(rho, [1.0, 0.9486833, -1.0])
    assert spearman(np.array([[1.0, 1.0, 1.0]]), np.array([[1.0, 2.0, 3.0]]))[0] == 0.0
    assert math.isnan(spearman(np.array([[1.0, math.nan, 2.0]]), np.array([[1.0, 2.0, 3.0]]))[0])


def test_halves_are_disjoint_fixed_and_average_to_the_whole():
    rng = np.random.default_rng(1)
    items = {("m", "t", "a"): {f"e{i}": float(v) for i, v in enumerate(rng.random(101) < 0.6)}}
    means = Resampled(sweep(items), resamples=300, seed=2)
    half_a, half_b = means.ids["t"]
    assert len(half_a) == 50 and len(half_b) == 51 and not set(half_a) & set(half_b)
    whole, a, b = (means.score("m", "t", half=h) for h in ("all", "A", "B"))
    assert np.allclose(whole, (50 * a + 51 * b) / 101)  # every resample: the halves make up the whole
    fewer = {("m", "t", "a"): {k: v for k, v in items[("m", "t", "a")].items() if k != "e0"}}
    assert set(Resampled(sweep(fewer), resamples=10).ids["t"][0]) - set(half_a) <= {"e0"} | set(half_b)


def test_template_variance_is_unbiased_where_best_minus_worst_is_not():
    # Three templates that are the same prompt in truth: every item right with probability 0.6, drawn
    # anew per template. Best − worst is then clearly above 0; the variance component averages 0.
    rng = np.random.default_rng(5)
    variances, gaps = [], []
    for _ in range(60):
        items = {("m", "t", name): {f"e{i}": float(rng.random() < 0.6) for i in range(200)} for name in "abc"}
        means = Resampled(sweep(items, templates=("a", "b", "c")), resamples=20)
        variances.append(means.template_variance("m", "t")[0])
        gaps.append(np.ptp([means.score("m", "t", [name])[0] for name in "abc"]))
    assert abs(np.mean(variances)) < 0.0003 and np.mean(gaps) > 0.04
    shifted = {("m", "t", name): {f"e{i}": float(i % 10 < 6 + k) for i in range(200)} for k, name in enumerate("abc")}
    exact = Resampled(sweep(shifted, templates=("a", "b", "c")), resamples=20).template_variance("m", "t")[0]
    assert exact == pytest.approx(0.01, abs=0.002)  # template means 0.6, 0.7, 0.8: variance 0.01


def test_p_values_match_the_interval_and_holm_steps_down():
    above = np.concatenate([[0.3], np.linspace(0.05, 0.6, 999)])
    assert p_value(above) < 0.01 and interval(above)[1] > 0
    spanning = np.concatenate([[0.1], np.linspace(-0.2, 0.4, 999)])
    assert p_value(spanning) > 0.05
    assert math.isnan(p_value(np.array([0.1, math.nan])))
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = holm([0.02, math.nan])
    assert adjusted[0] == 0.02 and math.isnan(adjusted[1])  # a part without an interval does not count
