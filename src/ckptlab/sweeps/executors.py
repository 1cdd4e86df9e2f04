"""Executors: run the pending jobs of a plan, each once its dependencies are done.

`local` runs them one after another in this process (importing torch and transformers once for
the whole sweep), so on one GPU at most. `ray` submits every ready job as a Ray task reserving the
job's CPUs and GPUs, waits for any to finish and submits what became ready; checkpoints and the
results store are passed by path, so the sweep directory must be on storage every node sees. A
failed job does not stop the others; the jobs that need its output are reported blocked.

GPUs: a job without `num_gpus` of its own reserves one GPU when the Ray cluster has any (unless its
`device` is cpu), none otherwise; the spec cannot know the cluster, so `reservation` decides at
execution time. On a cluster with GPUs every task runs in a fresh worker process (`max_calls=1`):
CUDA reads CUDA_VISIBLE_DEVICES once per process, so a reused worker would keep the GPUs (and the
CUDA memory) of the job it ran before.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptlab.sweeps import state
from ckptlab.sweeps.jobs import run_job
from ckptlab.sweeps.plan import Job, Plan, dependents
from ckptlab.sweeps.progress import Progress
from ckptlab.sweeps.spec import DEFAULT_RESOURCES, SET_BY_SWEEP, Verbs

JobRunner = Callable[[Job, str, Verbs], dict[str, Any]]
Clock = Callable[[], float]


@dataclass
class RayOptions:
    address: str | None = None
    """Address of an existing cluster; None starts a local one."""
    num_cpus: int | None = None
    """CPUs of a local cluster (None = all)."""
    temp_dir: str | None = None
    """Ray's session folder for a local cluster (None = Ray's default)."""


@dataclass
class Outcome:
    """What an execution did."""

    executed: list[str] = field(default_factory=list)
    """Ids of jobs run to completion now."""
    failed: dict[str, str] = field(default_factory=dict)
    """Id → reason of jobs that failed now."""


class _Schedule:
    """Which jobs may start: not done, not failed now, every dependency done."""

    def __init__(self, plan: Plan, out: Path) -> None:
        self.plan = plan
        self.done = {job.id for job in plan.jobs if state.is_done(out, job)}
        self.failed: set[str] = set()
        self.started: set[str] = set()

    def ready(self) -> list[Job]:
        return [
            job
            for job in self.plan.jobs
            if job.id not in self.done
            and job.id not in self.started
            and job.id not in self.failed
            and all(dep in self.done for dep in job.deps)
        ]

    def remaining(self) -> list[Job]:
        blocked = dependents(self.plan, self.failed)
        return [
            job
            for job in self.plan.jobs
            if job.id not in self.done and job.id not in self.failed and job.id not in blocked
        ]

    def record(self, job: Job, result: dict[str, Any], outcome: Outcome) -> None:
        if result["status"] == "done":
            self.done.add(job.id)
            outcome.executed.append(job.id)
        else:
            self.failed.add(job.id)
            outcome.failed[job.id] = result.get("reason", "")


def requested_device(job: Job) -> str:
    """The device the job's config asks for (`device` of evaluation, `train.device` of training)."""
    values = job.values if job.kind == "evaluate" else (job.values.get("train") or {})
    return str(values.get("device") or "auto")


def reservation(job: Job, cluster_gpus: float) -> dict[str, float]:
    """What a Ray task of `job` reserves on a cluster with `cluster_gpus` GPUs: its own num_cpus and
    num_gpus when given (0 included); else 1 CPU, and 1 GPU when the cluster has one and the job's
    device is not cpu."""
    gpus = job.resources.get("num_gpus")
    if gpus is None:
        gpus = 1 if cluster_gpus >= 1 and requested_device(job) != "cpu" else 0
    return {"num_cpus": job.resources.get("num_cpus", DEFAULT_RESOURCES["num_cpus"]), "num_gpus": gpus}


def cluster_share(need: dict[str, float], cluster: dict[str, float]) -> float:
    """The share of a Ray cluster that a job reserving `need` holds: of the resource it takes most
    of (1 / share jobs like it run at once; fragmentation over nodes is left to the measurement)."""
    shares = [
        min(need[key] / cluster[name], 1.0) if cluster.get(name) else 1.0
        for key, name in (("num_cpus", "CPU"), ("num_gpus", "GPU"))
        if need[key]
    ]
    return max(shares, default=0.0)


def reserves(plan: Plan, cluster_gpus: float | None) -> str:
    """What a job of each kind reserves on Ray, as one line; `cluster_gpus` None = cluster not known yet."""
    texts: dict[str, list[str]] = {}
    for job in plan.jobs:
        if cluster_gpus is None and "num_gpus" not in job.resources and requested_device(job) != "cpu":
            text = f"{reservation(job, 0)['num_cpus']:g} CPU + 1 GPU if the cluster has GPUs"
        else:
            need = reservation(job, cluster_gpus or 0)
            text = f"{need['num_cpus']:g} CPU" + (f" + {need['num_gpus']:g} GPU" if need["num_gpus"] else ", no GPU")
        if text not in texts.setdefault(job.kind, []):
            texts[job.kind].append(text)
    kinds = [kind for kind in SET_BY_SWEEP if kind in texts]  # pretrain, finetune, cpt, evaluate
    return "; ".join(f"{kind} {' or '.join(texts[kind])}" for kind in kinds)


def visible_gpus() -> int:
    """CUDA devices this process sees (0 without torch or CUDA); NVML answers without creating a context."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count()


def run_local(plan: Plan, out: Path, progress: Progress, verbs: Verbs, gpus: int | None = None) -> Outcome:
    """One job after another in this process; `gpus`: how many this process sees (None = ask torch)."""
    schedule, outcome = _Schedule(plan, out), Outcome()
    gpus = (visible_gpus() if schedule.ready() else 0) if gpus is None else gpus
    if gpus > 1:
        # In one process every job runs on cuda:0: say so rather than leave the other GPUs idle unnoticed.
        progress.say(
            f"local executor: one job at a time, on the first of the {gpus} visible GPUs (cuda:0); "
            "--executor ray runs one job per GPU at once"
        )
    while ready := schedule.ready():
        job = ready[0]
        schedule.started.add(job.id)
        progress.started(job)
        result = run_job(job, str(out), verbs)
        schedule.record(job, result, outcome)
        progress.finished(job, result, schedule.remaining())
    return outcome


def check_ray() -> None:
    """Refuse the Ray executor before anything runs when Ray is not installed."""
    import importlib.util

    from ckptlab.errors import UserError

    if importlib.util.find_spec("ray") is None:
        raise UserError("executor ray: Ray is not installed (pip install 'ckptlab[ray]')")


def _run_in_worker(job: Job, out: str, verbs: Verbs, num_gpus: float, runner: JobRunner) -> dict[str, Any]:
    """A Ray task of a cluster with GPUs, in a fresh worker. Ray sets CUDA_VISIBLE_DEVICES to the GPUs
    of a task with num_gpus > 0 (`auto`/`cuda` then mean its own GPU, cuda:0); recent Ray (2.60,
    ray-project/ray#54868) leaves it as inherited for num_gpus 0 unless RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1,
    so such a job would see every GPU of the node: hide them."""
    if "torch" in sys.modules:
        # CUDA has read CUDA_VISIBLE_DEVICES already in this process: the job could land on another's GPU.
        raise RuntimeError("the Ray worker is not fresh (torch already imported); rerun the sweep")
    if not num_gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    return runner(job, out, verbs)


def run_ray(
    plan: Plan, out: Path, progress: Progress, options: RayOptions, verbs: Verbs, runner: JobRunner = run_job
) -> Outcome:
    """Run the plan as Ray tasks; `runner` runs one job in a worker (`run_job`; tests record instead)."""
    import ray

    from ckptlab.errors import UserError

    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if options.address:
            kwargs["address"] = options.address
        else:
            if options.num_cpus is not None:
                kwargs["num_cpus"] = options.num_cpus
            if options.temp_dir:
                kwargs["_temp_dir"] = str(Path(options.temp_dir).resolve())
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise UserError(f"ray: cannot start or join the cluster: {' '.join(str(error).split())}") from None
    previous = None
    if started_here and threading.current_thread() is threading.main_thread():
        # SIGTERM would end the process without `ray.shutdown()`, leaving the local cluster's agents
        # behind; as an exit it runs the `finally` below. (SIGKILL cannot be caught: `ray stop`.)
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    schedule, outcome = _Schedule(plan, out), Outcome()
    running: dict[Any, Job] = {}
    try:
        cluster = ray.cluster_resources()
        cluster_gpus = cluster.get("GPU", 0)
        progress.say(
            f"ray cluster: {cluster.get('CPU', 0):g} CPUs, {cluster_gpus:g} GPUs; a job reserves: "
            f"{reserves(plan, cluster_gpus)}"
        )
        _check_fits(plan, schedule, cluster, strict=not options.address, say=progress.say)
        progress.remaining_time.share_of = {
            job.id: cluster_share(reservation(job, cluster_gpus), cluster) for job in plan.jobs
        }
        # `max_calls` is fixed per remote function (refused in `.options`), hence the two.
        fresh = ray.remote(max_calls=1)(_run_in_worker)
        reused = ray.remote(runner)
        while True:
            for job in schedule.ready():
                schedule.started.add(job.id)
                progress.started(job)
                need = reservation(job, cluster_gpus)
                # No retries: a job that crashed its worker is reported failed; a rerun resumes it.
                placed = {**need, "max_retries": 0, "name": job.dirname}
                if cluster_gpus:
                    ref = fresh.options(**placed).remote(job, str(out), verbs, need["num_gpus"], runner)
                else:  # CPU-only: workers are reused, as CUDA state cannot go stale
                    ref = reused.options(**placed).remote(job, str(out), verbs)
                running[ref] = job
            if not running:
                break
            finished, _ = ray.wait(list(running), num_returns=1)
            for ref in finished:
                job = running.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as error:
                    reason = " ".join(str(error).split())[:500]
                    state.write_marker(
                        state.job_dir(out, job), "failed", {"job": job.id, "reason": reason, "at": state.now()}
                    )
                    result = {"status": "failed", "reason": reason}
                schedule.record(job, result, outcome)
                progress.finished(job, result, schedule.remaining())
    finally:
        if running:
            for ref in running:
                ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return outcome


def _check_fits(plan: Plan, schedule: _Schedule, cluster: dict[str, float], strict: bool, say: Any) -> None:
    """A task asking for more than the cluster has would wait for ever: refuse it on a local cluster
    (an autoscaling one may still grow, so there it is only said)."""
    from ckptlab.errors import UserError

    for job in plan.jobs:
        if job.id in schedule.done:
            continue
        needs = reservation(job, cluster.get("GPU", 0))
        for key, name in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
            need, have = needs[key], cluster.get(name, 0)
            if need > have:
                message = (
                    f"resources.{job.kind}.{key}: {job.dirname} asks for {need:g} {name}s, the Ray cluster has {have:g}"
                )
                if strict:
                    raise UserError(message)
                say(f"warning: {message}; it waits until the cluster has them")
                return


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def execute(
    plan: Plan, out: Path, executor: str, progress: Progress, verbs: Verbs, ray_options: RayOptions | None = None
) -> Outcome:
    started = time.perf_counter()
    if executor == "ray":
        outcome = run_ray(plan, out, progress, ray_options or RayOptions(), verbs)
    else:
        outcome = run_local(plan, out, progress, verbs)
    if progress.enabled:
        progress.say(
            f"executed {len(outcome.executed)} job(s), {len(outcome.failed)} failed, in "
            f"{time.perf_counter() - started:.1f} s"
        )
    return outcome
