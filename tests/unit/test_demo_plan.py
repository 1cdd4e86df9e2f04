"""The demo's sweep: what `ckptlab demo` asks the sweep to run, as docs/world.md and BENCHMARKS.md state it."""

from __future__ import annotations

from pathlib import Path

from ckptlab.commands.demo import DEMO_PLANS, EVAL_SETS, DemoConfig, sweep_spec


def test_the_demo_fine_tunes_nli_longer_and_summarization_shorter(tmp_path):
    plan = DEMO_PLANS["demo"]
    spec = sweep_spec(
        DemoConfig(out=str(tmp_path)),
        plan,
        list(plan.sweep_steps),
        tmp_path / "world",
        tmp_path / "runs" / "pretrain",
        tmp_path,
    )
    steps = {entry["name"]: entry["config"]["train.max_steps"] for entry in spec["finetunes"]}
    assert steps == {"nli": 598, "paraphrase": 260, "summarization": 156}
    assert len(plan.sweep_steps) >= 8 and len(spec["evaluate"]["tasks"]) == len(EVAL_SETS) == 8
    assert spec["evaluate"]["limit"] == 72 and spec["evaluate"]["templates"] == ["all"]


def test_every_size_fine_tunes_each_task_at_least_one_step(tmp_path):
    for size, plan in DEMO_PLANS.items():
        spec = sweep_spec(
            DemoConfig(out=str(tmp_path), size=size), plan, [plan.pretrain_steps], Path("w"), Path("r"), tmp_path
        )
        assert all(entry["config"]["train.max_steps"] >= 1 for entry in spec["finetunes"]), size
