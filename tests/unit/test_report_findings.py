"""The four findings, tested both ways on stores designed to replicate them or not."""

from __future__ import annotations

import math
import sqlite3

import pytest
from report_fixtures import CHANCE, build_store, contrary_store, sun_dredze_store

from ckptlab.commands.report import ReportConfig, build_study
from ckptlab.reporting import analysis, findings


def outcomes(path, **config):
    study = build_study(ReportConfig(**{"store": str(path), "bootstrap": 300, **config}))
    return {f["id"]: f for f in findings.all_findings(study)}


@pytest.fixture(scope="module")
def replicating(tmp_path_factory):
    return sun_dredze_store(tmp_path_factory.mktemp("sd") / "results.sqlite")


def test_a_sweep_shaped_like_the_paper_replicates_i_iii_iv(replicating):
    found = outcomes(replicating)
    assert {k: f["outcome"] for k, f in found.items() if k != "ii"} == dict.fromkeys(("i", "iii", "iv"), "replicated")
    latent = {s["name"]: s for s in found["i"]["statistics"]}
    # +0.35 on world_nli (chance 1/3) and world_paraphrase (1/2): +0.525 and +0.70 chance-normalised
    assert latent["ΔFT (last − first checkpoint)"]["value"] == pytest.approx(0.6125, abs=0.01)
    assert latent["ΔFT − ΔBase"]["ci_low"] > 0 and latent["ΔFT − ΔBase"]["role"] == "decides"
    base = latent["ΔBase (last − first checkpoint)"]
    assert base["ci_low"] < 0 < base["ci_high"] and base["role"] == "context"  # flat
    # Three eval sets with an in-task fine-tune (or its twin's): too few to decide a rank correlation.
    assert found["ii"]["outcome"] == "inconclusive" and "these eval sets only" in found["ii"]["summary"]
    forgetting = {s["name"]: s for s in found["iii"]["statistics"]}
    # knowledge drops by 0.10–0.15 where the base knows it (chance 1/4): about −0.19 chance-normalised
    assert forgetting["mean change, knowledge probes, every pair"]["value"] == pytest.approx(-0.19, abs=0.02)
    assert forgetting["mean change, cross-domain, every pair"]["value"] > 0  # the NLI twin gains: context only
    assert any("world_summarization" in note for note in found["i"]["notes"])  # ROUGE-L is kept apart


def test_a_contrary_sweep_does_not_replicate(tmp_path):
    found = outcomes(contrary_store(tmp_path / "results.sqlite"))
    assert found["ii"]["outcome"] == "inconclusive" and "Too little data" in found["ii"]["summary"]
    assert found["iii"]["outcome"] == "not replicated"
    assert found["i"]["outcome"] == "inconclusive"  # fine-tuned and base scores are flat over steps
    assert found["iv"]["outcome"] == "inconclusive"  # every template scores the same


def test_one_checkpoint_is_too_little_data_for_the_trends(tmp_path):
    path = sun_dredze_store(tmp_path / "results.sqlite", steps=(1000,))
    found = outcomes(path)
    assert found["i"]["outcome"] == "inconclusive" and "Too little data" in found["i"]["summary"]
    assert found["iv"]["outcome"] == "partly replicated"  # higher after fine-tuning; the trend is untested
    assert any("not tested" in note for note in found["iv"]["notes"])


FIVE = ["world_nli", "finance_nli", "world_paraphrase", "world_knowledge", "finance_qa"]
LEVEL = dict(zip(FIVE, (0.1, 0.3, 0.5, 0.7, 0.8)))  # the base's chance-normalised level per eval set


def headroom_store(path, share):
    """Five eval sets, each with a fine-tune of its own; the in-task gain is share(level) of the base's headroom."""

    def raw(task, u):
        return CHANCE[task] + (1 - CHANCE[task]) * u

    def tuned(recipe, task, step):
        u = LEVEL[task]
        return raw(task, u + share(u) * (1 - u) if task == recipe else u)

    return build_store(path, FIVE, [10, 100], {t: t for t in FIVE}, lambda t, s: raw(t, LEVEL[t]), tuned, n=300)


def test_gains_largest_where_the_base_is_weakest_replicate_ii(tmp_path):
    found = outcomes(headroom_store(tmp_path / "r.sqlite", lambda u: 0.8 - 0.8 * u))["ii"]
    assert found["outcome"] == "replicated", found["summary"]
    stat = found["statistics"][0]
    assert stat["value"] < -0.8 and stat["pairs"] == 5 and stat["p_value"] < 0.05


def test_gains_proportional_to_the_headroom_are_not_gains_where_the_base_fails(tmp_path):
    # A raw gain shrinks as the base improves only because there is less room left: the share of the
    # headroom gained is the same everywhere, so (ii) must not replicate (raw gains would give ρ = −1).
    found = outcomes(headroom_store(tmp_path / "r.sqlite", lambda u: 0.5))["ii"]
    assert found["outcome"] != "replicated", found["summary"]
    rows = {n.split(":")[0]: n for n in found["notes"] if "share of the headroom" in n}
    assert len(rows) == 5


def test_gains_largest_where_the_base_is_best_do_not_replicate_ii(tmp_path):
    found = outcomes(headroom_store(tmp_path / "r.sqlite", lambda u: 0.1 + 0.8 * u))["ii"]
    assert found["outcome"] == "not replicated", found["summary"]


def test_out_of_task_models_do_not_count_as_gains(tmp_path):
    # Only world_nli has a fine-tune of its own: the other eval sets' changes are not gains from training on them.
    path = build_store(
        tmp_path / "r.sqlite",
        FIVE,
        [10, 100],
        {"nli": "world_nli"},
        base=lambda t, s: CHANCE[t] + 0.1,
        tuned=lambda r, t, s: CHANCE[t] + (0.5 if t == "world_nli" else 0.0),
    )
    found = outcomes(path)["ii"]
    assert found["outcome"] == "inconclusive" and "Too little data: 2 eval set(s)" in found["summary"]


def test_without_bootstrap_every_finding_is_inconclusive(replicating):
    found = outcomes(replicating, bootstrap=0)
    assert {f["outcome"] for f in found.values()} == {"inconclusive"}
    assert found["i"]["statistics"][1]["value"] == pytest.approx(0.6125, abs=0.01)  # the estimate is still shown


def test_scoring_one_template_still_measures_the_spread_over_all(replicating):
    found = outcomes(replicating, template="instruction")
    assert found["i"]["outcome"] == "replicated"
    assert found["iv"]["outcome"] == "replicated"  # sensitivity is measured over every template, whatever is scored


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
    # the fine-tuned gain is the base's own: ΔFT holds, ΔFT − ΔBase is 0, so no latent gain is shown
    assert found["i"]["outcome"] == "inconclusive" and "not detectably more than the base" in found["i"]["summary"]
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
    # −0.25 on 4 choices is −1/3 chance-normalised
    assert stats["mean change, knowledge probes, every pair"]["value"] == pytest.approx(-1 / 3 / 8, abs=0.01)
    known = stats["mean change where the base is above chance, knowledge probes"]
    assert known["value"] < -0.2 and known["pairs"] <= 3  # the late checkpoint (and any chance base lucky on a half)
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


def test_a_base_that_answers_one_class_does_not_make_iv_replicate(tmp_path):
    # The fine-tuned models are no more sensitive than the base on any set, but a base that answers "c0" to
    # everything on world_nli has no template spread at all: compared with it, fine-tuning looks sensitive.
    path = build_store(
        tmp_path / "results.sqlite",
        ["world_nli", "world_paraphrase"],
        [10, 100],
        {"nli": "world_nli"},
        base=lambda task, step: CHANCE[task] + 0.2,
        tuned=lambda recipe, task, step: CHANCE[task] + 0.3,
        spread=lambda role, step: 0.1,
        n=300,
    )
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE examples SET prediction='c0', correct=(gold='c0') WHERE model_fp LIKE 'base-%' AND task='world_nli'"
        )
    found = outcomes(path)["iv"]
    assert any("answers one class" in n and "world_nli" in n for n in found["notes"])
    assert found["statistics"][0]["pairs"] == 2  # world_paraphrase only, at two checkpoints
    assert found["outcome"] != "replicated"
    rows = analysis.sensitivity_table(build_study(ReportConfig(store=str(path), bootstrap=20)))
    flagged = {(r["checkpoint"], r["task"]) for r in rows if r["degenerate"]}
    assert flagged == {("step-00000010", "world_nli"), ("step-00000100", "world_nli")}
    assert all(math.isnan(r["kappa"]) for r in rows if r["degenerate"])  # one class: agreement by construction


def test_models_scored_with_different_templates_are_compared_on_the_shared_ones(tmp_path):
    path = build_store(
        tmp_path / "results.sqlite",
        ["world_nli"],
        [10],
        {"nli": "world_nli"},
        base=lambda task, step: 0.5,
        tuned=lambda recipe, task, step: 0.7,
        spread=lambda role, step: 0.2,
    )
    with sqlite3.connect(path) as db:
        for table in ("examples", "metrics"):
            db.execute(f"DELETE FROM {table} WHERE model_fp='base-10' AND template='bare'")
    study = build_study(ReportConfig(store=str(path), bootstrap=50))
    tuned = study.of_role("finetuned")[0]
    change = study.change(tuned, "world_nli")
    # templates at +0.1, 0, −0.1 around the score: without 'bare' (−0.1) both means are 0.05 higher
    assert float(change[0]) == pytest.approx(0.2, abs=0.02)
    assert any("different templates" in w and "(instruction, train_format)" in w for w in study.data.warnings)


def test_the_chance_margin_grows_on_small_eval_sets(replicating):
    study = build_study(ReportConfig(store=str(replicating), bootstrap=10))
    # WNLI-sized (71 items, 2 choices): one-sided 95% critical value 1.645·√(0.25/71) ≈ 0.098
    assert study.chance_margin_of("world_paraphrase", 71) == pytest.approx(0.0976, abs=0.001)
    assert study.chance_margin_of("world_paraphrase", 100_000) == 0.02  # the configured floor
    assert study.at_chance("world_paraphrase", 0.58, 71) and not study.at_chance("world_paraphrase", 0.58, 10_000)
