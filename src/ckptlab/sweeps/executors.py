"""Executors: run the pending jobs of a plan, each once its dependencies are done.

`local` runs them one after another in this process (importing torch and transformers once for
the whole sweep). `ray` submits every ready job as a Ray task reserving the job's CPUs and GPUs,
waits for any to finish and submits what became ready; checkpoints and the results store are
passed by path, so the sweep directory must be on storage every node sees. A failed job does not
stop the others; the jobs that need its output are reported blocked.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptlab.sweeps import state
from ckptlab.sweeps.jobs import run_job
from ckptlab.sweeps.plan import Job, Plan, dependents
from ckptlab.sweeps.spec import Verbs


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


class Progress:
    """Plain progress lines for the whole plan: jobs done/total, the job that starts, an ETA."""

    def __init__(self, plan: Plan, done: int, enabled: bool, say: Callable[[str], None]) -> None:
        self.total, self.done, self.enabled, self.say = len(plan.jobs), done, enabled, say
        self.seconds: dict[str, list[float]] = {}

    def _line(self, text: str) -> None:
        if self.enabled:
            self.say(f"[{self.done}/{self.total}] {text}")

    def started(self, job: Job) -> None:
        self._line(f"start {job.kind} {job.name} ({job.id[:12]})")

    def finished(self, job: Job, result: dict[str, Any], remaining: list[Job]) -> None:
        wall = float(result.get("wall_s") or 0.0)
        if result["status"] == "done":
            self.done += 1
            self.seconds.setdefault(job.kind, []).append(wall)
            self._line(f"done  {job.kind} {job.name} in {wall:.1f} s{self._eta(remaining)}")
        else:
            self._line(f"FAILED {job.kind} {job.name}: {result.get('reason')}")

    def _eta(self, remaining: list[Job]) -> str:
        if not remaining or not self.seconds:
            return ""
        every = [s for values in self.seconds.values() for s in values]
        mean = sum(every) / len(every)
        left = sum(
            sum(self.seconds[j.kind]) / len(self.seconds[j.kind]) if j.kind in self.seconds else mean for j in remaining
        )
        return f"; {len(remaining)} left, ETA {_duration(left)}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


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


def run_local(plan: Plan, out: Path, progress: Progress, verbs: Verbs) -> Outcome:
    schedule, outcome = _Schedule(plan, out), Outcome()
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


def run_ray(plan: Plan, out: Path, progress: Progress, options: RayOptions, verbs: Verbs) -> Outcome:
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
    task = ray.remote(run_job)
    schedule, outcome = _Schedule(plan, out), Outcome()
    running: dict[Any, Job] = {}
    try:
        _check_fits(plan, schedule, ray.cluster_resources(), strict=not options.address, say=progress.say)
        while True:
            for job in schedule.ready():
                schedule.started.add(job.id)
                progress.started(job)
                # No retries: a job that crashed its worker is reported failed; a rerun resumes it.
                ref = task.options(
                    num_cpus=job.resources.get("num_cpus", 1),
                    num_gpus=job.resources.get("num_gpus", 0),
                    max_retries=0,
                    name=job.dirname,
                ).remote(job, str(out), verbs)
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
        for key, name in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
            need, have = job.resources.get(key, 0), cluster.get(name, 0)
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
