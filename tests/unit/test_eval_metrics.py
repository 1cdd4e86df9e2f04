"""Metric functions against hand-computed values; bootstrap intervals; prompt sensitivity."""

from __future__ import annotations

import math

import pytest

from ckptlab.evaluation import metrics as M


def rows(gold, pred):
    return [{"gold": g, "prediction": p, "correct": g == p, "scores": {}} for g, p in zip(gold, pred)]


THREE_CLASS = rows(list("aaabbc"), list("aabbcc"))


def test_accuracy_macro_f1_mcc_three_classes():
    assert M.metric_value("accuracy", THREE_CLASS) == pytest.approx(4 / 6)
    # Per class F1 = 2tp / (gold + predicted): a 4/5, b 2/4, c 2/3.
    assert M.metric_value("macro_f1", THREE_CLASS) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    # Gorodkin: (c*s - sum p_k t_k) / sqrt((s^2 - sum p^2)(s^2 - sum t^2)) = (24 - 12) / sqrt(24 * 22).
    assert M.metric_value("mcc", THREE_CLASS) == pytest.approx(12 / math.sqrt(24 * 22))


def test_binary_mcc_and_degenerate_cases():
    binary = rows([1, 1, 0, 0, 1, 0, 1, 1], [1, 0, 0, 1, 1, 0, 1, 1])
    # TP 4, FN 1, FP 1, TN 2: (4*2 - 1*1) / sqrt(5*5*3*3) = 7/15.
    assert M.metric_value("mcc", binary) == pytest.approx(7 / 15)
    constant = rows([0, 1, 0, 1], [1, 1, 1, 1])
    assert M.metric_value("mcc", constant) == 0.0  # undefined -> 0, as scikit-learn
    # Class 0 is never predicted: its F1 is 0; class 1: 2*2 / (2 + 4).
    assert M.metric_value("macro_f1", constant) == pytest.approx((0 + 4 / 6) / 2)
    assert math.isnan(M.metric_value("accuracy", []))


def test_length_normalised_accuracy():
    row = {
        "gold": "long",
        "prediction": "s",
        "correct": False,
        "scores": {"ll": [-4.0, -6.0], "chars": [2, 6], "choices": ["s", "long"]},
    }
    assert M.normalised_prediction(row["scores"]) == "long"
    assert M.metric_value("accuracy_norm", [row]) == 1.0 and M.metric_value("accuracy", [row]) == 0.0


def test_rouge_l_and_exact_match():
    assert M.rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    assert M.rouge_l("", "the cat") == 0.0
    assert M.exact_match(" Paris  France", "Paris France") == 1.0 and M.exact_match("paris", "Paris") == 0.0
    generated = [
        {"gold": "x", "prediction": "x", "correct": True, "scores": {"rouge_l": 0.5, "exact_match": 1.0}},
        {"gold": "y", "prediction": "z", "correct": False, "scores": {"rouge_l": 0.25, "exact_match": 0.0}},
    ]
    assert M.metric_value("rouge_l", generated) == 0.375 and M.metric_value("exact_match", generated) == 0.5


@pytest.mark.parametrize("metric", ["accuracy", "macro_f1", "mcc"])
def test_bootstrap_interval_contains_estimate_and_is_seeded(metric):
    import random

    rng = random.Random(3)
    data = rows([rng.choice("ab") for _ in range(300)], [rng.choice("ab") for _ in range(300)])
    for row in data[:200]:  # make predictions better than chance
        row["prediction"] = row["gold"]
        row["correct"] = True
    value = M.metric_value(metric, data)
    low, high = M.bootstrap_interval(metric, data, resamples=500, seed=0)
    assert low <= value <= high and high - low > 0.01
    assert M.bootstrap_interval(metric, data, resamples=500, seed=0) == (low, high)
    assert M.bootstrap_interval(metric, data, resamples=500, seed=1) != (low, high)
    wide_low, wide_high = M.bootstrap_interval(metric, data[::5], resamples=500, seed=0)
    assert wide_high - wide_low > high - low  # fewer items, wider interval


def test_bootstrap_of_a_constant_and_of_nothing():
    perfect = rows("abab", "abab")
    assert M.bootstrap_interval("accuracy", perfect, resamples=100, seed=0) == (1.0, 1.0)
    assert all(math.isnan(v) for v in M.bootstrap_interval("accuracy", [], resamples=100))


def test_bootstrap_matches_a_plain_loop():
    import numpy as np

    data = rows(list("aabbabbaab" * 3), list("abbbaabaab" * 3))
    low, high = M.bootstrap_interval("macro_f1", data, resamples=200, seed=5)
    rng = np.random.default_rng(5)
    draws = [M.metric_value("macro_f1", [data[i] for i in rng.integers(0, len(data), len(data))]) for _ in range(200)]
    assert (low, high) == pytest.approx((np.percentile(draws, 2.5), np.percentile(draws, 97.5)))


def test_prompt_sensitivity_and_agreement():
    stats = M.sensitivity({"train_format": 0.5, "instruction": 0.7, "bare": 0.6})
    assert stats["spread"] == pytest.approx(0.2) and stats["worst"] == 0.5
    assert stats["std"] == pytest.approx(math.sqrt(0.02 / 3))
    assert M.sensitivity({"a": 0.4, "b": 0.4})["std"] == 0.0
    value, n = M.agreement({"t1": {"a": "x", "b": "y", "c": "z"}, "t2": {"a": "x", "b": "q", "c": "z", "d": "w"}})
    assert (value, n) == (pytest.approx(2 / 3), 3)
    assert math.isnan(M.agreement({"only": {"a": "x"}})[0])
