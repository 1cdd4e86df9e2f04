"""Sweep plans: job ids are content hashes (same inputs → same ids; one change → that job and its
dependents only), spec errors name the key, the lock refuses a second holder. No model is loaded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from ckptlab.commands.sweep import spec_from_dict
from ckptlab.errors import ConfigError, UserError
from ckptlab.sweeps.plan import build_plan, dependents
from ckptlab.sweeps.results import _stable_compute
from ckptlab.sweeps.state import SweepLock, lock_holder

LABELS = ["yes", "no"]


def toy_task(root: Path, name: str, rows: int = 6) -> Path:
    (root / name).mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        lines = [
            json.dumps({"id": f"{split}{i}", "text": f"{name} {split} text {i}.", "label": LABELS[i % 2]})
            for i in range(rows)
        ]
        (root / name / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec = {
        "task": name,
        "version": 1,
        "type": "classification",
        "data": {"format": "jsonl", "train": f"{name}/train.jsonl", "test": f"{name}/test.jsonl"},
        "fields": ["text"],
        "label_field": "label",
        "choices": LABELS,
        "templates": {"plain": "{text}\nAnswer:"},
        "metrics": ["accuracy"],
        "fewshot": {"split": "train"},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    return path


def fake_model(path: Path, weights: bytes) -> Path:
    """An HF-looking directory: what the plan hashes (no model is loaded to plan)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "gpt_neox"}', encoding="utf-8")
    (path / "model.safetensors").write_bytes(weights)
    return path


@pytest.fixture
def sweep(tmp_path) -> dict:
    tasks = tmp_path / "tasks"
    return {
        "name": "unit",
        "out": str(tmp_path / "out"),
        "checkpoints": [
            {"path": str(fake_model(tmp_path / "a", b"A" * 64)), "label": "early"},
            {"path": str(fake_model(tmp_path / "b", b"B" * 64)), "label": "late"},
        ],
        "finetunes": [
            {"name": "one", "config": {"task": str(toy_task(tasks, "one")), "train.schedule.lr": 1e-3}},
            {
                "name": "two",
                "config": {"task": str(toy_task(tasks, "two")), "train.schedule.lr": 1e-3},
                "from": ["late"],
            },
        ],
        "evaluate": {"tasks": [str(toy_task(tasks, "probe"))], "limit": 4},
    }


def ids(values: dict) -> dict[str, str]:
    return {job.name + "/" + job.kind: job.id for job in build_plan(spec_from_dict(values)).jobs}


def test_same_sweep_same_ids_and_dependencies_first(sweep):
    plan = build_plan(spec_from_dict(sweep))
    assert [j.name for j in plan.jobs if j.kind == "finetune"] == ["one@early", "one@late", "two@late"]
    assert sum(j.kind == "evaluate" for j in plan.jobs) == 2 + 3
    position = {job.id: i for i, job in enumerate(plan.jobs)}
    assert all(position[dep] < position[job.id] for job in plan.jobs for dep in job.deps)
    assert ids(sweep) == ids(json.loads(json.dumps(sweep)))


def test_changing_one_learning_rate_changes_that_job_and_its_dependents_only(sweep):
    before = ids(sweep)
    sweep["finetunes"][1]["config"]["train.schedule.lr"] = 2e-3
    after = ids(sweep)
    changed = sorted(key for key in before if before[key] != after[key])
    assert changed == ["two@late/evaluate", "two@late/finetune"]


def test_a_new_release_keeps_ids_and_a_results_version_redoes_its_kind(sweep, monkeypatch):
    import ckptlab
    from ckptlab.sweeps import plan

    before = ids(sweep)
    monkeypatch.setattr(ckptlab, "__version__", "99.0.0")  # a release that changes no results
    assert ids(sweep) == before
    monkeypatch.setitem(plan.RESULTS_VERSIONS, "evaluate", plan.RESULTS_VERSIONS["evaluate"] + 1)
    after = ids(sweep)
    changed = sorted(key for key in before if before[key] != after[key])
    assert changed == sorted(key for key in before if key.endswith("/evaluate"))


def test_a_new_variant_label_re_evaluates_but_does_not_retrain(sweep):
    before = ids(sweep)
    sweep["finetunes"][1]["variant"] = "lr=1e-3"
    after = ids(sweep)
    assert sorted(key for key in before if before[key] != after[key]) == ["two@late/evaluate"]


def test_defaults_written_out_and_moved_inputs_keep_ids(sweep, tmp_path):
    before = ids(sweep)
    sweep["finetunes"][0]["config"]["train.weight_decay"] = 0.0  # the fine-tuning default
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "a", moved)
    sweep["checkpoints"][0]["path"] = str(moved)
    assert ids(sweep) == before


def test_changed_inputs_change_ids(sweep, tmp_path):
    before = ids(sweep)
    (tmp_path / "a" / "model.safetensors").write_bytes(b"C" * 64)  # other weights at the same path
    after = ids(sweep)
    assert sorted(k for k in before if before[k] != after[k]) == [
        "early/evaluate",
        "one@early/evaluate",
        "one@early/finetune",
    ]
    with open(tmp_path / "tasks" / "probe" / "test.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"id": "extra", "text": "more", "label": "yes"}) + "\n")
    again = ids(sweep)
    assert {k for k in after if after[k] != again[k]} == {k for k in after if k.endswith("/evaluate")}


def test_failed_jobs_block_their_dependents_transitively(sweep):
    plan = build_plan(spec_from_dict(sweep))
    finetune = next(j for j in plan.jobs if j.name == "one@late" and j.kind == "finetune")
    blocked = dependents(plan, {finetune.id})
    assert [j.name for j in plan.jobs if j.id in blocked] == ["one@late"]
    assert all(j.kind == "evaluate" for j in plan.jobs if j.id in blocked)


def chained(sweep: dict) -> dict:
    """`one` on both checkpoints, then `three` fine-tunes each of one's models (defined before it)."""
    three = {"name": "three", "after": "one", "config": {"task": sweep["finetunes"][1]["config"]["task"]}}
    sweep["finetunes"] = [three] + sweep["finetunes"]
    return sweep


def test_a_chain_fine_tunes_the_models_of_its_after_entry(sweep):
    before = ids(sweep)
    plan = build_plan(spec_from_dict(chained(sweep)))
    after = {job.name + "/" + job.kind: job.id for job in plan.jobs}
    assert {k: after[k] for k in before} == before  # the chain adds jobs, it changes none
    by_name = {(j.name, j.kind): j for j in plan.jobs}
    position = {job.id: i for i, job in enumerate(plan.jobs)}
    for label in ("early", "late"):
        first, second = by_name[(f"one@{label}", "finetune")], by_name[(f"three@{label}", "finetune")]
        assert second.deps == [first.id] and position[first.id] < position[second.id]
        assert second.model["fingerprint"] == f"job:{first.id}" and second.model["finetune"] == "one"
        evaluation = by_name[(f"three@{label}", "evaluate")].model
        assert (evaluation["role"], evaluation["finetune"], evaluation["checkpoint"]) == ("finetuned", "three", label)
        assert evaluation["parent"]["key"] == f"one@{label}" and evaluation["base"]["key"] == label
    sweep["finetunes"][1]["config"]["train.schedule.lr"] = 2e-3  # one's learning rate: the chain re-runs
    again = ids(sweep)
    assert sorted(k for k in after if after[k] != again[k]) == [
        f"{name}@{label}/{kind}"
        for name in ("one", "three")
        for label in ("early", "late")
        for kind in ("evaluate", "finetune")
    ]


def test_a_chain_follows_its_after_entry_checkpoints(sweep):
    sweep["finetunes"].append({"name": "three", "after": "two", "config": sweep["finetunes"][0]["config"]})
    plan = build_plan(spec_from_dict(sweep))
    assert [j.name for j in plan.jobs if j.kind == "finetune"] == ["one@early", "one@late", "two@late", "three@late"]
    sweep["finetunes"][2]["from"] = ["early"]
    with pytest.raises(ConfigError, match=r"^finetunes \(three\).from: 'early' is not fine-tuned by 'two'"):
        spec_from_dict(sweep)


def test_seeds_replicate_a_fine_tune_under_one_name(sweep):
    before = ids(sweep)
    sweep["finetunes"][1]["seeds"] = [0, 3]
    sweep["finetunes"][1]["variant"] = "short"
    plan = build_plan(spec_from_dict(sweep))
    tuned = {j.name: j for j in plan.jobs if j.kind == "finetune"}
    assert sorted(tuned) == ["one@early", "one@late", "two-seed0@late", "two-seed3@late"]
    assert [tuned[f"two-seed{k}@late"].values["train"]["seed"] for k in (0, 3)] == [0, 3]
    models = {j.name: j.model for j in plan.jobs if j.kind == "evaluate" and j.model["role"] == "finetuned"}
    assert {(m["finetune"], m["variant"]) for n, m in models.items() if n.startswith("two")} == {
        ("two", "short, seed=0"),
        ("two", "short, seed=3"),
    }
    after = {job.name + "/" + job.kind: job.id for job in plan.jobs}
    assert {k: after[k] for k in before if k.startswith("one")} == {
        k: v for k, v in before.items() if k.startswith("one")
    }


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda s: s["finetunes"][1].update({"seeds": [1, 1]}),
            "finetunes[1] (two).seeds: expected a list of distinct",
        ),
        (lambda s: s["finetunes"][1].update({"seeds": []}), "finetunes[1] (two).seeds: expected a list of distinct"),
        (
            lambda s: [
                s["finetunes"][1].update({"seeds": [0, 1]}),
                s["finetunes"][1]["config"].update({"train.seed": 2}),
            ],
            "finetunes[1] (two).config.train.seed: give either train.seed or seeds",
        ),
        (
            lambda s: [s["finetunes"][0].update({"seeds": [0, 1]}), s["finetunes"][1].update({"after": "one"})],
            "finetunes (two).after: 'one' is replicated over seeds",
        ),
        (
            lambda s: s["finetunes"][1].update({"seeds": [0], "after": "one"}),
            "a chained entry (after) cannot be replicated",
        ),
        (lambda s: s["finetunes"][1].update({"after": "nope"}), "finetunes (two).after: no finetunes entry 'nope'"),
        (
            lambda s: s["finetunes"][1].update({"after": "two"}),
            "finetunes (two).after: the chain is a cycle (two → two)",
        ),
        (
            lambda s: [s["finetunes"][0].update({"after": "two"}), s["finetunes"][1].update({"after": "one"})],
            "the chain is a cycle (one → two → one)",
        ),
        (
            lambda s: s["finetunes"][0]["config"].update({"train.lr": 1}),
            "finetunes[0] (one).config: unknown config key 'train.lr'",
        ),
        (
            lambda s: s["finetunes"][0]["config"].update({"init_from": "x"}),
            "finetunes[0] (one).config.init_from: set by the sweep",
        ),
        (lambda s: s["finetunes"][0]["config"].update({"method": "qlora"}), "config key 'method'"),
        (
            lambda s: s["finetunes"][1].update({"from": ["nope"]}),
            "finetune two.from: no checkpoint or pretrain entry 'nope'",
        ),
        (lambda s: s["finetunes"][1].update({"name": "one"}), "finetunes[1].name: 'one' is used by another entry"),
        (lambda s: s["checkpoints"].append({"path": s["checkpoints"][0]["path"], "label": "late"}), "labelled 'late'"),
        (
            lambda s: s["checkpoints"].append({"run": "/no/such/run"}),
            "checkpoints[2].run: /no/such/run is not a run directory",
        ),
        (lambda s: s.update({"resources": {"finetune": {"gpus": 1}}}), "unknown key 'resources.finetune.gpus'"),
        (lambda s: s["evaluate"].update({"store": "x.sqlite"}), "evaluate.store: set by the sweep"),
        (
            lambda s: s["finetunes"][0]["config"].update({"objective": "classification"}),
            "finetunes (one).config.objective",
        ),
    ],
)
def test_spec_errors_name_the_key(sweep, change, message):
    change(sweep)
    with pytest.raises(ConfigError, match=None) as error:
        spec_from_dict(sweep)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_lock_refuses_a_second_holder_and_names_the_pid(tmp_path):
    import os

    first, second = SweepLock(tmp_path), SweepLock(tmp_path)
    first.acquire()
    try:
        assert lock_holder(tmp_path) == str(os.getpid())
        with pytest.raises(UserError, match=f"sweep.lock is held by pid {os.getpid()}"):
            second.acquire()
    finally:
        first.release()
    assert lock_holder(tmp_path) is None
    second.acquire()
    second.release()


def test_results_table_leaves_out_what_the_clock_decides():
    compute = {"tokens": 10, "wall_s": 1.5, "tokens_per_s": 7.0, "energy_kwh": 1e-6, "trainable_params": 3}
    assert json.loads(_stable_compute(compute)) == {"tokens": 10, "trainable_params": 3}


def test_hub_revisions_are_planned_without_downloading(sweep):
    sweep["checkpoints"] = [
        {"hub": "EleutherAI/pythia-70m", "revisions": ["step1000", "step143000"]},
        {"hub": "EleutherAI/pythia-160m", "revisions": ["step1000"], "prefix": "160m-"},
    ]
    sweep["finetunes"] = sweep["finetunes"][:1]
    plan = build_plan(spec_from_dict(sweep))
    bases = {j.model["key"]: j.model for j in plan.jobs if j.kind == "evaluate" and j.model["role"] == "base"}
    assert sorted(bases) == ["160m-step1000", "step1000", "step143000"]
    assert bases["step143000"]["step"] == 143000
    assert bases["step1000"]["fingerprint"] == "hub:EleutherAI/pythia-70m@step1000"


def test_pretrain_model_shape_and_progress_flags(sweep, monkeypatch):
    sweep["pretrain"] = [{"name": "scratch", "config": {"data": "unused", "model.size": "tiny"}}]
    sweep["finetunes"] = [{"name": "one", "config": sweep["finetunes"][0]["config"], "from": ["scratch"]}]
    from ckptlab.sweeps import plan as planlib

    monkeypatch.setattr(planlib.Fingerprinter, "_data", lambda self, value: "data:fixed")  # no prepared data
    before = ids(sweep)
    sweep["pretrain"][0]["config"]["train.progress"] = False
    assert ids(sweep) == before
    sweep["pretrain"][0]["config"]["model.size"] = "small"
    after = ids(sweep)
    assert sorted(k for k in before if before[k] != after[k]) == [
        "one@scratch/evaluate",
        "one@scratch/finetune",
        "scratch/evaluate",
        "scratch/pretrain",
    ]


def test_unreadable_inputs_are_named_at_plan_time(sweep, tmp_path):
    sweep["finetunes"][0]["config"]["task"] = str(tmp_path / "missing.yaml")
    with pytest.raises(UserError, match=r"^finetune one: task file .*missing.yaml: not found"):
        build_plan(spec_from_dict(sweep))


def test_a_job_asking_for_more_than_the_ray_cluster_has_is_refused_up_front(sweep, tmp_path):
    from ckptlab.sweeps.executors import _check_fits, _Schedule

    sweep["resources"] = {"finetune": {"num_gpus": 1}}
    plan = build_plan(spec_from_dict(sweep))
    schedule = _Schedule(plan, tmp_path / "out")
    with pytest.raises(
        UserError, match=r"resources.finetune.num_gpus: finetune-one_early-.* asks for 1 GPUs, the Ray cluster has 0"
    ):
        _check_fits(plan, schedule, {"CPU": 2.0}, strict=True, say=print)
    said = []
    _check_fits(plan, schedule, {"CPU": 2.0}, strict=False, say=said.append)  # a cluster that may grow
    assert said and said[0].startswith("warning: ")
    _check_fits(plan, schedule, {"CPU": 2.0, "GPU": 1.0}, strict=True, say=print)
