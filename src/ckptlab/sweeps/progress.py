"""Sweep progress lines and the remaining-time estimate (ETA) printed with each finished job.

The ETA sizes every remaining job by the work its config names (`work_units`), learns seconds per
unit per job kind from finished jobs, divides by the share of the executor actually in use so far
(executor-seconds worked ÷ elapsed wall time, which absorbs idle workers and gaps), and is never
less than the longest chain of remaining jobs that wait on each other (docs/sweep.md).
"""

from __future__ import annotations

import bisect
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ckptlab.sweeps.plan import Job, Plan
from ckptlab.train.config import TrainConfig

Clock = Callable[[], float]


class Progress:
    """Plain progress lines for the whole plan: jobs done/total, the job that starts, an ETA
    (`RemainingTime`); `clock` is injectable so that a test can replay a sweep."""

    def __init__(
        self, plan: Plan, done: int, enabled: bool, say: Callable[[str], None], clock: Clock = time.monotonic
    ) -> None:
        self.total, self.done, self.enabled, self.say = len(plan.jobs), done, enabled, say
        self.remaining_time = RemainingTime(plan, clock)

    def _line(self, text: str) -> None:
        if self.enabled:
            self.say(f"[{self.done}/{self.total}] {text}")

    def started(self, job: Job) -> None:
        self.remaining_time.started(job)
        self._line(f"start {job.kind} {job.name} ({job.id[:12]})")

    def finished(self, job: Job, result: dict[str, Any], remaining: list[Job]) -> None:
        wall = float(result.get("wall_s") or 0.0)
        succeeded = result["status"] == "done"
        self.remaining_time.finished(job, wall, succeeded)
        if succeeded:
            self.done += 1
            self._line(f"done  {job.kind} {job.name} in {wall:.1f} s{self._eta(remaining)}")
        else:
            self._line(f"FAILED {job.kind} {job.name}: {result.get('reason')}")

    def _eta(self, remaining: list[Job]) -> str:
        seconds = self.remaining_time.seconds_left(remaining) if remaining else None
        return "" if seconds is None else f"; {len(remaining)} left, ETA {_duration(seconds)}"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


# Work is counted in token passes (a token through one forward pass), so that the seconds per pass
# of one kind of job can size a kind not seen yet; once a kind has finished a job, its own rate
# takes over and these constants no longer matter for it.
TRAINING_PASSES_PER_TOKEN = 3
"""A backward pass costs about two forward passes (6N against 2N FLOPs per token)."""
PASSES_PER_SCORED_EXAMPLE = 140
"""Forward tokens to score one example under one template (its choices × the prompt): ~140 in the
demo sweep (2-3 choices of ~50 tokens). An order of magnitude only."""
TEMPLATES_UNDER_ALL = 3
"""Templates that `templates: [all]` stands for (a task's file says; every shipped task has three)."""


def work_units(job: Job) -> float | None:
    """Token passes of a job from its config values alone; None when they do not say (a fine-tune
    sized by `epochs`, a sequence length left to the model, an evaluation without `limit`)."""
    values = job.values
    if job.kind == "evaluate":
        tasks, templates, limit = _listed(values.get("tasks")), _listed(values.get("templates")), values.get("limit")
        if not tasks or not limit:
            return None
        per_task = TEMPLATES_UNDER_ALL if templates in ([], ["all"]) else len(templates)
        prompts = sum(1 + int(shots) for shots in _listed(values.get("shots")) or ["0"])  # k shots: k+1 examples
        return len(tasks) * per_task * int(limit) * prompts * PASSES_PER_SCORED_EXAMPLE
    train = values.get("train") or {}
    steps = train.get("max_steps", None if job.kind == "finetune" else TrainConfig.max_steps)
    length = {
        "pretrain": (values.get("model") or {}).get(
            "context_length", 256
        ),  # ModelConfig's (models.hf is slower to import)
        "finetune": values.get("max_length"),
        "cpt": values.get("context_length"),
    }.get(job.kind)
    if not steps or not length:
        return None
    sequences = steps * train.get("micro_batch_size", TrainConfig.micro_batch_size)
    tokens = sequences * train.get("grad_accum_steps", TrainConfig.grad_accum_steps) * length
    return float(tokens * TRAINING_PASSES_PER_TOKEN)


def _listed(value: Any) -> list[str]:
    """A config list as written: a YAML list or a comma-separated string."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return [str(item) for item in value or []]


class RemainingTime:
    """The sweep's ETA: the remaining jobs' seconds, each weighted by the share of the executor it
    holds, over the share measured in use so far; never less than the longest chain of remaining
    jobs that must run one after another.

    A job's seconds: its work units × the median seconds per unit of its kind; without units, the
    median of finished jobs with its config, else of its kind; of a kind not seen yet, its units ×
    the median seconds per unit of every finished job; less the time it has run. The executor sets
    `share_of` (local: one job at a time, 1 each; Ray: the job's reservation over the cluster's), and
    jobs start in submission order as shares free up, as in Ray's queue. The share in use is measured
    (executor-seconds worked by finished and running jobs per second elapsed): it folds in what that
    model misses, such as workers idle for want of ready jobs, a shared or autoscaled cluster, and
    the time between jobs."""

    def __init__(self, plan: Plan, clock: Clock) -> None:
        self.clock = clock
        self.units = {job.id: work_units(job) for job in plan.jobs}
        self.config_of = {job.id: json.dumps(job.values, sort_keys=True, default=str) for job in plan.jobs}
        self.share_of: dict[str, float] = {}
        """Job id → share of the executor the job holds while it runs (1 when not told)."""
        self.began: float | None = None
        self.running: dict[str, float] = {}
        """Job id → when it started, as far as can be told from here."""
        self.queued: list[str] = []
        """Submitted, waiting for a share to free up, in submission order."""
        self.worked = 0.0
        """Executor-seconds of the finished jobs (their seconds × share)."""
        self.by_kind: dict[str, _Seconds] = {}
        self.by_config: dict[str, _Seconds] = {}
        self.every = _Seconds()

    def started(self, job: Job) -> None:
        now = self.clock()
        self.began = now if self.began is None else self.began
        self.queued.append(job.id)
        self._start_what_fits(now)

    def finished(self, job: Job, seconds: float, succeeded: bool) -> None:
        """`seconds`: how long the job ran; a failed job's time is work done, but no rate to learn."""
        now = self.clock()
        if self.running.pop(job.id, None) is None and job.id in self.queued:
            self.queued.remove(job.id)  # it started before the jobs submitted ahead of it
        self.worked += seconds * self.share_of.get(job.id, 1.0)
        if succeeded:
            units = self.units[job.id]
            for seen in (self.by_kind.setdefault(job.kind, _Seconds()), self.every):
                seen.add(seconds, units)
            self.by_config.setdefault(self.config_of[job.id], _Seconds()).add(seconds, units)
        self._start_what_fits(now)

    def _start_what_fits(self, now: float) -> None:
        in_use = sum(self.share_of.get(i, 1.0) for i in self.running)
        for waiting in list(self.queued):
            share = self.share_of.get(waiting, 1.0)
            if in_use + share <= 1 + 1e-9:
                self.queued.remove(waiting)
                self.running[waiting] = now
                in_use += share

    def seconds_left(self, remaining: list[Job]) -> float | None:
        """Wall seconds until every job of `remaining` (running ones included) is done; None until a
        job has finished."""
        if not self.every.per_job or self.began is None:
            return None
        now = self.clock()
        left = {job.id: self._estimate(job) - (now - self.running.get(job.id, now)) for job in remaining}
        left = {job_id: max(seconds, 0.0) for job_id, seconds in left.items()}
        running = sum((now - start) * self.share_of.get(i, 1.0) for i, start in self.running.items())
        in_use = (self.worked + running) / max(now - self.began, 1e-9)
        work = sum(seconds * self.share_of.get(i, 1.0) for i, seconds in left.items())
        chain: dict[str, float] = {}
        for job in remaining:  # a plan lists dependencies first
            chain[job.id] = left[job.id] + max((chain.get(dep, 0.0) for dep in job.deps), default=0.0)
        return max(work / max(in_use, 1e-9), max(chain.values(), default=0.0))

    def _estimate(self, job: Job) -> float:
        units = self.units[job.id]
        kind, same_config = self.by_kind.get(job.kind), self.by_config.get(self.config_of[job.id])
        if units is not None and kind is not None and kind.per_unit:
            return _median(kind.per_unit) * units
        for seen in (same_config, kind):
            if seen is not None:
                return _median(seen.per_job)
        if units is not None and self.every.per_unit:
            return _median(self.every.per_unit) * units
        return _median(self.every.per_job)


@dataclass
class _Seconds:
    """Seconds of finished jobs, and seconds per work unit of those with known units, both sorted.
    Medians, as the first job of a worker also pays for its imports: a mean of a few jobs would
    carry that into every estimate."""

    per_job: list[float] = field(default_factory=list)
    per_unit: list[float] = field(default_factory=list)

    def add(self, seconds: float, units: float | None) -> None:
        bisect.insort(self.per_job, seconds)
        if units:
            bisect.insort(self.per_unit, seconds / units)


def _median(ordered: list[float]) -> float:
    return (ordered[len(ordered) // 2] + ordered[(len(ordered) - 1) // 2]) / 2
