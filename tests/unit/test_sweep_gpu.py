"""GPU placement of sweep jobs: what a job reserves by default (decided from the cluster), that Ray
gives concurrent jobs different GPUs in fresh workers and hides the GPUs from jobs that reserve none,
and that the local executor says it uses one GPU. No model is loaded: a recording runner stands in."""

from __future__ import annotations

import json
import tempfile

import pytest
import test_sweep_plan
from test_sweep_plan import fake_model, toy_task

from ckptlab.commands.sweep import spec_from_dict
from ckptlab.sweeps.executors import RayOptions, reservation, reserves, run_local, run_ray
from ckptlab.sweeps.plan import build_plan
from ckptlab.sweeps.progress import Progress

sweep = test_sweep_plan.sweep  # the fixture: two fake checkpoints, two fine-tunes, one evaluation


def by_name(plan) -> dict:
    return {f"{job.kind} {job.name}": job for job in plan.jobs}


def test_a_job_reserves_a_gpu_only_when_the_cluster_has_one_and_a_given_num_gpus_wins(sweep):
    sweep["finetunes"][1]["resources"] = {"num_gpus": 0}  # entry `two`: explicit 0
    sweep["finetunes"][0]["config"]["train.device"] = "cpu"  # entry `one`: runs on CPU anyway
    sweep["resources"] = {"evaluate": {"num_cpus": 2}}
    plan = build_plan(spec_from_dict(sweep))
    jobs = by_name(plan)
    assert all("num_gpus" not in job.resources for job in plan.jobs if job.name != "two@late")
    evaluate = jobs["evaluate early"]
    assert reservation(evaluate, 8) == {"num_cpus": 2, "num_gpus": 1}
    assert reservation(evaluate, 0) == {"num_cpus": 2, "num_gpus": 0}  # CPU-only: as before
    assert reservation(jobs["finetune two@late"], 8) == {"num_cpus": 1, "num_gpus": 0}
    assert reservation(jobs["finetune one@early"], 8)["num_gpus"] == 0
    sweep["resources"] = {"evaluate": {"num_gpus": 2}}
    assert reservation(by_name(build_plan(spec_from_dict(sweep)))["evaluate early"], 8)["num_gpus"] == 2
    assert reserves(plan, 2) == "finetune 1 CPU, no GPU; evaluate 2 CPU + 1 GPU"
    assert reserves(plan, None) == "finetune 1 CPU, no GPU; evaluate 2 CPU + 1 GPU if the cluster has GPUs"
    assert reserves(plan, 0) == "finetune 1 CPU, no GPU; evaluate 2 CPU, no GPU"


def test_status_says_what_a_job_reserves(sweep, capsys):
    from ckptlab.commands.sweep import _print_status

    sweep["finetunes"][1]["resources"] = {"num_gpus": 0}
    _print_status(spec_from_dict(sweep))
    said = capsys.readouterr().out
    assert "on Ray a job reserves: finetune 1 CPU + 1 GPU if the cluster has GPUs or 1 CPU, no GPU; evaluate" in said


def test_the_local_executor_says_once_that_it_uses_one_gpu(sweep, tmp_path, monkeypatch):
    from ckptlab.sweeps import executors

    ran = []
    monkeypatch.setattr(executors, "run_job", lambda job, out, verbs: ran.append(job.id) or {"status": "done"})
    plan = build_plan(spec_from_dict(sweep))
    said: list[str] = []
    outcome = run_local(plan, tmp_path / "out", Progress(plan, 0, True, said.append), verbs=None, gpus=8)
    assert len(outcome.executed) == len(plan.jobs) == len(ran)
    notes = [line for line in said if "local executor" in line]
    assert notes == [said[0]] and "first of the 8 visible GPUs" in notes[0] and "--executor ray" in notes[0]
    said.clear()
    run_local(plan, tmp_path / "again", Progress(plan, 0, True, said.append), verbs=None, gpus=1)
    assert not [line for line in said if "local executor" in line]


@pytest.mark.slow
def test_ray_gives_concurrent_jobs_their_own_gpu_in_a_fresh_worker(tmp_path, monkeypatch):
    """Ray with 2 declared GPUs: 4 evaluation jobs reserve one each by default, so two run at a time on
    different devices, each in its own process; a fine-tune with num_gpus 0 sees no GPU."""
    ray = pytest.importorskip("ray")
    root = tmp_path
    models = [fake_model(root / name, name.encode() * 64) for name in ("a", "b", "c")]
    tasks = root / "tasks"
    spec = spec_from_dict(
        {
            "out": str(root / "out"),
            "checkpoints": [{"path": str(path)} for path in models],
            "finetunes": [{"name": "cpu", "config": {"task": str(toy_task(tasks, "one"))}, "from": ["a"]}],
            "resources": {"finetune": {"num_gpus": 0}},
            "evaluate": {"tasks": [str(toy_task(tasks, "probe"))]},
        }
    )
    plan = build_plan(spec)
    record = root / "record"
    record.mkdir()
    where = str(record)

    def recording_runner(job, out, verbs):
        import json
        import os
        import time

        started = time.time()
        time.sleep(1.5 if job.kind == "evaluate" else 0.2)
        seen = {"cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid(), "start": started}
        with open(os.path.join(where, job.dirname + ".json"), "w") as handle:
            json.dump({**seen, "end": time.time(), "kind": job.kind}, handle)
        return {"status": "done", "wall_s": time.time() - started}

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    # The GPUs the node shows every process: a job that reserves none must not inherit them.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
    said: list[str] = []
    try:
        progress = Progress(plan, 0, True, said.append)
        outcome = run_ray(plan, root / "out", progress, RayOptions(), None, runner=recording_runner)
    finally:
        ray.shutdown()
    assert sorted(outcome.executed) == sorted(job.id for job in plan.jobs) and not outcome.failed
    assert said[0] == "ray cluster: 4 CPUs, 2 GPUs; a job reserves: finetune 1 CPU, no GPU; evaluate 1 CPU + 1 GPU"
    seen = {path.stem: json.loads(path.read_text()) for path in record.glob("*.json")}
    gpu = sorted((s for s in seen.values() if s["kind"] == "evaluate"), key=lambda s: s["start"])
    (cpu,) = (s for s in seen.values() if s["kind"] == "finetune")
    assert len(gpu) == 4 and {s["cuda"] for s in gpu} == {"0", "1"}
    assert cpu["cuda"] == ""
    assert len({s["pid"] for s in seen.values()}) == len(seen)  # a fresh worker per job
    for job in gpu:  # never more than two at once, and never two on one device
        overlapping = [s for s in gpu if s["start"] < job["end"] and job["start"] < s["end"]]
        assert len(overlapping) <= 2
        assert len({s["cuda"] for s in overlapping}) == len(overlapping)
    assert gpu[2]["start"] >= min(gpu[0]["end"], gpu[1]["end"])  # the third waited for a free GPU
