"""The four findings, tested both ways on stores designed to replicate them or not."""

from __future__ import annotations

import pytest
from report_fixtures import CHANCE, TASKS, build_store, contrary_store, sun_dredze_store

from ckptlab.commands.report import ReportConfig, build_study
from ckptlab.reporting import findings


def outcomes(path, **config):
    study = build_study(ReportConfig(**{"store": str(path), "bootstrap": 300, **config}))
    return {f["id"]: f for f in findings.all_findings(study)}


@pytest.fixture(scope="module")
def replicating(tmp_path_factory):
    return sun_dredze_store(tmp_path_factory.mktemp("sd") / "results.sqlite")


def test_a_sweep_shaped_like_the_paper_replicates_all_four(replicating):
    found = outcomes(replicating)
    assert {k: f["outcome"] for k, f in found.items()} == dict.fromkeys(("i", "ii", "iii", "iv"), "replicated")
    latent = {s["name"]: s for s in found["i"]["statistics"]}
    assert latent["ΔFT (last − first checkpoint)"]["value"] == pytest.approx(0.35, abs=0.01)
    base = latent["ΔBase (last − first checkpoint)"]
    assert base["ci_low"] < 0 < base["ci_high"]  # flat
    assert found["ii"]["statistics"][0]["ci_high"] < 0
    forgetting = {s["name"]: s for s in found["iii"]["statistics"]}
    assert forgetting["mean change, knowledge probes"]["value"] == pytest.approx(-0.14, abs=0.02)
    assert forgetting["mean change, cross-domain"]["value"] > 0  # the NLI twin gains: not forgetting


def test_a_contrary_sweep_does_not_replicate(tmp_path):
    found = outcomes(contrary_store(tmp_path / "results.sqlite"))
    assert found["ii"]["outcome"] == "not replicated" and found["ii"]["statistics"][0]["ci_low"] > 0
    assert found["iii"]["outcome"] == "not replicated"
    assert found["i"]["outcome"] == "inconclusive"  # fine-tuned and base scores are flat over steps
    assert found["iv"]["outcome"] == "inconclusive"  # every template scores the same


def test_one_checkpoint_is_too_little_data_for_the_trends(tmp_path):
    path = sun_dredze_store(tmp_path / "results.sqlite", steps=(1000,))
    found = outcomes(path)
    assert found["i"]["outcome"] == "inconclusive" and "Too little data" in found["i"]["summary"]
    assert found["iv"]["outcome"] == "partly replicated"  # higher after fine-tuning; the trend is untested
    assert any("not tested" in note for note in found["iv"]["notes"])


def test_base_at_chance_everywhere_is_inconclusive_for_finding_ii(tmp_path):
    tasks = [t for t in TASKS if t != "world_summarization"]
    path = build_store(
        tmp_path / "results.sqlite",
        tasks,
        [10, 100],
        {"nli": "world_nli"},
        base=lambda task, step: CHANCE[task],
        tuned=lambda recipe, task, step: CHANCE[task] + (0.3 if task == "world_nli" else 0.0),
    )
    found = outcomes(path)
    assert found["ii"]["outcome"] == "inconclusive" and "at chance on every eval set" in found["ii"]["summary"]


def test_without_bootstrap_every_finding_is_inconclusive(replicating):
    found = outcomes(replicating, bootstrap=0)
    assert {f["outcome"] for f in found.values()} == {"inconclusive"}
    assert found["i"]["statistics"][0]["value"] == pytest.approx(0.35, abs=0.01)  # the estimate is still shown


def test_scoring_one_template_still_measures_the_spread_over_all(replicating):
    found = outcomes(replicating, template="instruction")
    assert found["ii"]["outcome"] == "replicated"
    assert found["iv"]["outcome"] == "replicated"  # the spread is computed over every template, whatever is scored


def test_gains_visible_in_the_base_and_calmer_fine_tuned_prompts_do_not_replicate(tmp_path):
    tasks = ["world_nli", "finance_nli", "world_knowledge"]
    path = build_store(
        tmp_path / "results.sqlite",
        tasks,
        [10, 100, 1000],
        {"nli": "world_nli"},
        base=lambda task, step: {10: 0.35, 100: 0.5, 1000: 0.65}[step],
        tuned=lambda recipe, task, step: {10: 0.35, 100: 0.5, 1000: 0.65}[step] + 0.2,
        spread=lambda role, step: 0.3 if role == "base" else 0.0,
        n=120,
    )
    found = outcomes(path)
    assert found["i"]["outcome"] == "not replicated"  # the fine-tuned gain is the base's own
    assert found["iv"]["outcome"] == "not replicated"  # fine-tuning made the model less sensitive
    assert found["iii"]["outcome"] == "not replicated"  # every set gains: nothing forgotten


def test_forgetting_is_judged_where_the_base_knows_something_to_forget(tmp_path):
    # The probe is at chance for the first seven checkpoints and known (0.6) at the last; fine-tuning
    # leaves the early models at chance and takes the late one back to 0.35. Averaged over every
    # checkpoint the loss is diluted to about -0.03; where the base is above chance it is -0.25.
    tasks = ["world_nli", "world_knowledge"]
    steps = [1, 2, 4, 8, 16, 32, 64, 128]
    path = build_store(
        tmp_path / "results.sqlite",
        tasks,
        steps,
        {"nli": "world_nli"},
        base=lambda task, step: 0.6 if step == 128 and task == "world_knowledge" else CHANCE[task],
        tuned=lambda recipe, task, step: 0.7 if task == "world_nli" else 0.35 if step == 128 else CHANCE[task],
        n=200,
    )
    found = outcomes(path)["iii"]
    stats = {s["name"]: s for s in found["statistics"]}
    assert stats["mean change, knowledge probes"]["value"] == pytest.approx(-0.25 / 8, abs=0.01)
    known = stats["mean change where the base is above chance, knowledge probes"]
    assert known["value"] == pytest.approx(-0.25, abs=0.03) and known["pairs"] == 1
    assert found["outcome"] == "replicated"


def test_a_base_at_chance_on_every_other_set_has_nothing_to_forget(tmp_path):
    tasks = ["world_nli", "world_knowledge"]
    path = build_store(
        tmp_path / "results.sqlite",
        tasks,
        [10, 100],
        {"nli": "world_nli"},
        base=lambda task, step: CHANCE[task],
        tuned=lambda recipe, task, step: CHANCE[task] + (0.3 if task == "world_nli" else -0.1),
    )
    found = outcomes(path)["iii"]
    assert found["outcome"] == "inconclusive" and "nothing to forget" in found["summary"]
