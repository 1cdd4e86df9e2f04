"""Seed replicates of a fine-tune are analysed as their mean; tables/seeds.csv keeps every seed."""

from __future__ import annotations

import csv
import random

import numpy as np
import pytest
from report_fixtures import CHANCE, _model

from ckptlab.commands.report import ReportConfig, build_study, report
from ckptlab.evaluation.store import ResultStore
from ckptlab.reporting import findings

TASKS = ["world_nli", "world_knowledge"]
SEED_SCORES = {0: 0.5, 1: 0.6, 2: 0.7}  # world_nli accuracy of each seed's fine-tune


def replicated_store(path, parents_of_replicates: bool = False):
    rng = random.Random(0)
    store = ResultStore(path)
    try:
        for step in (10, 100):
            common = {"checkpoint": f"step-{step:08d}", "step": step, "tokens_seen": step * 1000}
            _model(
                store,
                f"base-{step}",
                TASKS,
                lambda t: CHANCE[t] if step == 10 else 0.5,
                0.0,
                120,
                rng,
                role="base",
                **common,
            )
            for seed, nli in SEED_SCORES.items():
                _model(
                    store,
                    f"ft-{step}-{seed}",
                    TASKS,
                    lambda t, nli=nli: (nli if step == 100 else 0.4) if t == "world_nli" else 0.3,
                    0.0,
                    120,
                    rng,
                    role="finetuned",
                    finetune="nli",
                    finetune_task="world_nli",
                    method="full",
                    variant=f"seed={seed}",
                    parent_fp=f"base-{step}",
                    compute={"tokens": 1000, "flops": 6e9},
                    **common,
                )
        if parents_of_replicates:
            _model(
                store,
                "chained",
                TASKS,
                lambda t: 0.5,
                0.0,
                120,
                rng,
                role="finetuned",
                finetune="next",
                finetune_task="world_knowledge",
                method="full",
                parent_fp="ft-100-0",
                checkpoint="step-00000100",
                step=100,
                tokens_seen=100_000,
            )
    finally:
        store.close()
    return path


def test_replicates_become_one_model_whose_items_are_the_seed_mean(tmp_path):
    study = build_study(ReportConfig(store=str(replicated_store(tmp_path / "r.sqlite")), bootstrap=200))
    tuned = study.of_role("finetuned")
    assert len(tuned) == 2 and {m.variant for m in tuned} == {"mean of 3 seeds"}
    late = next(m for m in tuned if m.step == 100)
    assert float(study.score(late, "world_nli")[0]) == pytest.approx(0.6, abs=0.01)
    assert list(study.recipes()) == ["nli (world_nli, mean of 3 seeds)"]
    rows = [r for r in study.data.seed_rows if r["task"] == "world_nli" and r["step"] == 100]
    assert len(rows) == 1 and rows[0]["seeds"] == 3
    assert (rows[0]["min"], rows[0]["max"]) == pytest.approx((0.5, 0.7), abs=0.01)
    assert rows[0]["by_seed"].startswith("0:0.5")
    latent = {s["name"]: s for s in findings.latent_gains(study)["statistics"]}
    # 0.4 → mean 0.6 on 3 choices: +0.2, or +0.3 on the chance-normalised scale
    assert latent["ΔFT (last − first checkpoint)"]["value"] == pytest.approx(0.3, abs=0.01)


def test_prompt_sensitivity_of_a_seed_mean_is_the_mean_of_its_seeds(tmp_path):
    study = build_study(ReportConfig(store=str(replicated_store(tmp_path / "r.sqlite")), bootstrap=50))
    merged = next(m for m in study.of_role("finetuned") if m.step == 100)
    members = study.data.members[merged.model_fp]
    assert len(members) == 3
    templates = study.means.templates_of(merged.model_fp, "world_nli")
    own = [study.means.template_variance(fp, "world_nli", templates)[0] for fp in members]
    assert study.means.template_variance(merged.model_fp, "world_nli", templates)[0] == pytest.approx(np.mean(own))
    # the variance of the seed-averaged items would be smaller: averaging seeds averages template noise away
    averaged = study.data.items
    assert all((fp, "world_nli", templates[0]) in averaged for fp in members)


def test_the_report_writes_every_seed(tmp_path):
    store = replicated_store(tmp_path / "r.sqlite")
    assert report(ReportConfig(store=str(store), out=str(tmp_path / "out"), bootstrap=50)) == 0
    with open(tmp_path / "out" / "tables" / "seeds.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 2 and {r["seeds"] for r in rows} == {"3"}  # 2 checkpoints × 2 eval sets


def test_replicates_that_other_models_start_from_are_kept_apart(tmp_path):
    study = build_study(ReportConfig(store=str(replicated_store(tmp_path / "r.sqlite", True)), bootstrap=50))
    assert any("kept apart" in w for w in study.data.warnings)
    assert sum(m.variant == "mean of 3 seeds" for m in study.of_role("finetuned")) == 1  # step 10 still merges
