"""The compute and sequential fine-tuning sections on a designed store: exact numbers, the Pareto set,
the recommendation's picks, and that they reach the report's CSVs and HTML."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from report_fixtures import CHAIN_FLOPS, CHAIN_SCORES, chain_store

from ckptlab.commands.report import ReportConfig, build_study, report
from ckptlab.reporting import compute as costs
from ckptlab.reporting import sequential


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    path = chain_store(tmp_path_factory.mktemp("chain") / "results.sqlite")
    return build_study(ReportConfig(store=str(path), bootstrap=300))


def by(rows, **match):
    found = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, found)
    return found[0]


def test_pareto_marks_points_no_other_point_dominates():
    points = [(1.0, 0.5), (2.0, 0.4), (2.0, 0.7), (0.5, 0.3), (3.0, 0.7), (4.0, 0.9), (0.5, 0.3)]
    assert costs.pareto(points) == [True, False, True, True, False, True, False]
    assert costs.pareto([]) == []


def test_sequential_loss_of_the_first_task_with_and_without_replay(study):
    rows = sequential.sequential_table(study)
    plain = "para (world_paraphrase, after nli)"
    replay = "para (world_paraphrase, replay=0.25, after nli)".replace("para (", "para-replay (")
    for step in (100, 1000):
        lost = by(rows, chain=plain, step=step, task="world_nli")
        assert lost["trained_by"] == "first" and lost["before"] == pytest.approx(CHAIN_SCORES["nli"][step][0])
        assert lost["change"] == pytest.approx(CHAIN_SCORES["para"][step][0] - CHAIN_SCORES["nli"][step][0])
        assert lost["ci_low"] < lost["change"] < lost["ci_high"] < 0
        gained = by(rows, chain=plain, step=step, task="world_paraphrase")
        assert gained["trained_by"] == "second" and gained["change"] == pytest.approx(
            CHAIN_SCORES["para"][step][1] - CHAIN_SCORES["nli"][step][1]
        )
    assert by(rows, chain=plain, task="mean of first's sets (2)")["change"] == pytest.approx(-0.20)
    assert by(rows, chain=replay, task="mean of first's sets (2)")["change"] == pytest.approx(-0.05)
    compared = by(sequential.replay_comparison(study), compared=replay, task="mean of first's sets (2)")
    assert compared["reference"] == plain and compared["change"] == pytest.approx(0.15)
    assert compared["ci_low"] > 0


def test_gain_per_pflop_is_in_task_gain_over_the_base_over_chain_pflops(study):
    rows = costs.gain_per_pflop_table(study)
    nli = by(rows, level="model", recipe="nli (world_nli)", step=100)
    assert nli["gain"] == pytest.approx(0.80 - 0.35) and nli["pflops"] == pytest.approx(0.01)
    assert nli["gain_per_pflop"] == pytest.approx(45.0) and nli["ci_low"] < 45.0 < nli["ci_high"]
    chain = by(rows, level="model", recipe="para (world_paraphrase, after nli)", step=1000)
    # Against the base checkpoint, with the nli run's FLOPs counted in.
    assert chain["gain"] == pytest.approx(0.92 - 0.55)
    assert chain["pflops"] == pytest.approx((CHAIN_FLOPS["nli"] + CHAIN_FLOPS["para"]) / 1e15)
    lora = [r["gain_per_pflop"] for r in rows if r["level"] == "model" and r["method"] == "lora"]
    assert by(rows, level="method", method="lora")["gain_per_pflop"] == pytest.approx(sum(lora) / 2)
    assert by(rows, level="method", method="full")["models"] == 6


def test_frontier_and_recommendation_pick_the_designed_models(study):
    frontier = costs.frontier_table(study)
    nli = [r for r in frontier if r["task"] == "world_nli"]
    assert len(nli) == 10
    base = by(nli, model="step-00000100")
    assert base["pretrain_pflops"] == pytest.approx(0.1) and base["total_pflops"] == pytest.approx(0.1)
    chain = by(nli, recipe="para (world_paraphrase, after nli)", step=100)
    assert chain["total_pflops"] == pytest.approx(0.1 + 0.015)
    on = sorted((r["recipe"], r["step"]) for r in nli if r["on_frontier"])
    assert on == [
        ("base", 100),
        ("nli (world_nli)", 100),
        ("nli (world_nli)", 1000),
        ("nli-lora (world_nli)", 100),
        ("nli-lora (world_nli)", 1000),
    ]
    pick = by(costs.recommendation_table(study, frontier), task="world_nli")
    assert pick["best_model"] == "nli @ step-00001000 (full)" and pick["best_score"] == pytest.approx(0.90)
    # Most score above chance per PFLOP: LoRA on the early checkpoint (the base there is at chance).
    assert (pick["per_pflop_checkpoint"], pick["per_pflop_method"]) == ("step-00000100", "lora")
    # "Not significantly below the best" is not evidence of being as good: with 200 items LoRA's 0.89 is not
    # shown within 0.02 of 0.90, so the cheapest model shown equivalent is the best itself ...
    assert pick["cheapest_equivalent_model"] == pick["best_model"] and pick["equivalence_margin"] == 0.02
    # ... and within 0.1 it is LoRA on the late checkpoint (0.80 at the early one is not shown within 0.1).
    study.equivalence_margin = 0.1
    try:
        wide = by(costs.recommendation_table(study, frontier), task="world_nli")
    finally:
        study.equivalence_margin = 0.02
    assert (wide["cheapest_equivalent_checkpoint"], wide["cheapest_equivalent_method"]) == ("step-00001000", "lora")


def test_equivalence_needs_the_upper_bound_below_the_margin():
    close = np.concatenate([[0.005], np.random.default_rng(0).normal(0.005, 0.005, 999)])
    noisy = np.concatenate([[0.005], np.random.default_rng(0).normal(0.005, 0.05, 999)])
    assert costs.equivalent(close, 0.02, 0.95) and not costs.equivalent(noisy, 0.02, 0.95)
    assert not costs.equivalent(np.array([0.0, np.nan]), 0.02, 0.95)  # no interval: no evidence


def test_pretraining_compute_falls_back_to_six_n_tokens(tmp_path):
    path = chain_store(tmp_path / "results.sqlite", n=30, base_flops=False)
    study = build_study(ReportConfig(store=str(path), bootstrap=20))
    base = study.base_by_checkpoint["step-00001000"]
    assert costs.pretraining_flops(study, base) == (6.0 * 1000 * 1000 * 1000, "6·N·tokens")


def test_six_n_tokens_takes_n_from_a_full_fine_tune_before_an_adapted_one(tmp_path):
    path = chain_store(tmp_path / "results.sqlite", n=30, base_flops=False)
    study = build_study(ReportConfig(store=str(path), bootstrap=20))
    base = study.base_by_checkpoint["step-00001000"]
    for model in study.models.values():  # LoRA's record counts its adapters too: a larger N, listed first
        if model.method == "lora":
            model.compute = {**model.compute, "matmul_params": 1500}
    lora_first = dict(sorted(study.models.items(), key=lambda kv: kv[1].method != "lora"))
    study.models.clear()
    study.models.update(lora_first)
    assert costs.pretraining_flops(study, base) == (6.0 * 1000 * 1000 * 1000, "6·N·tokens")
    for model in study.models.values():
        if model.method == "full":
            model.compute = {k: v for k, v in model.compute.items() if k != "matmul_params"}
    assert costs.pretraining_flops(study, base) == (6.0 * 1500 * 1000 * 1000, "6·N·tokens (N of an adapted model)")


def test_report_writes_the_compute_frontier_and_sequential_sections(tmp_path):
    chain_store(tmp_path / "sweep" / "results.sqlite", n=60)
    assert report(ReportConfig(sweep=str(tmp_path / "sweep"), bootstrap=50)) == 0
    out = tmp_path / "sweep" / "report"
    assert (out / "figures" / "frontier.png").read_bytes().startswith(b"\x89PNG")
    html = (out / "report.html").read_text(encoding="utf-8")
    for title in (
        "Compute of the training runs",
        "Score per compute: frontier and recommendation",
        "Sequential fine-tuning",
    ):
        assert title in html
    with open(out / "tables" / "compute.csv", newline="", encoding="utf-8") as handle:
        computed = list(csv.DictReader(handle))
    assert len(computed) == 8 and {r["method"] for r in computed} == {"full", "lora"}
    assert {float(r["chain_flops"]) for r in computed if r["recipe"].startswith("para (")} == {1.5e13}
