"""`ckptlab sweep`: many checkpoints × fine-tunes × continued pre-training × evaluations, as one
resumable command.

Examples (`configs/sweep_demo.yaml` opens with the command that runs it):

    ckptlab sweep --config configs/sweep_demo.yaml
    ckptlab sweep status --config configs/sweep_demo.yaml
    ckptlab sweep --config configs/sweep_demo.yaml --executor ray --address auto

The sweep YAML names the checkpoints to start from, the fine-tuning, continued pre-training and
pre-training runs (each a mapping of the verb's own config keys), and one evaluation (tasks ×
templates × shots) applied to every base and trained model. The plan is a graph of
content-addressed jobs (`ckptlab.sweeps.plan`): a job whose `done.json` exists is skipped, a
partial one resumes, a failed one is retried, and a failure blocks only the jobs that need its
output. Results go to OUT/results.sqlite (with a `sweep_models` row per evaluated model) and
OUT/results.csv. See docs/sweep.md.
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass
class SweepConfig:
    """A sweep: checkpoints × fine-tunes/cpt × evaluations, planned as content-addressed jobs."""

    name: str = ""
    """Name of the sweep in the results store (empty = the name of `out`)."""
    out: str = "sweeps/sweep"
    """Sweep directory: jobs/, results.sqlite, results.csv, plan.json, sweep.lock."""
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    """Models to start from: {run: RUN, steps: [..]} (kept checkpoints of a run), {path: DIR}, {hub: org/name,
    revisions: [..] | all | {steps: [..]} | {every: N} | {log: K}} (docs/sweep.md)."""
    pretrain: list[dict[str, Any]] = field(default_factory=list)
    """Pre-training runs: {name, config: {PretrainConfig keys}, preset: FILE}; each final model is a base model."""
    finetunes: list[dict[str, Any]] = field(default_factory=list)
    """Fine-tunes of every base model (or those listed in `from`): {name, config: {FinetuneConfig keys}, preset,
    variant, from, after, seeds, resources}; `after: NAME` fine-tunes that entry's models (a chain), `seeds: [0, 1,
    2]` runs the entry once per seed (docs/sweep.md)."""
    cpt: list[dict[str, Any]] = field(default_factory=list)
    """Continued pre-training of every base model (or `from`): {name, config: {CptConfig keys}, preset, variant, from,
    resources}."""
    evaluate: dict[str, Any] = field(default_factory=dict)
    """EvaluateConfig keys (tasks, templates, shots, limit, ...) applied to every base and trained model; empty = no
    evaluation."""
    resources: dict[str, Any] = field(default_factory=dict)
    """Per job kind (pretrain, finetune, cpt, evaluate): {num_cpus, num_gpus} reserved on Ray (default 1 CPU, and 1
    GPU when the cluster has GPUs unless the job's device is cpu; a given num_gpus, 0 included, wins)."""
    command: Literal["run", "status"] = "run"
    """run: run what is not done; status: show done / running / pending / failed / blocked jobs (`ckptlab sweep
    status`)."""
    executor: Literal["local", "ray"] = "local"
    """local: one job after another in this process (one GPU at most); ray: jobs as Ray tasks (local cluster, or
    `address`), one job per reserved GPU."""
    address: str | None = None
    """Ray cluster to join (e.g. auto or ray://host:10001); null starts a local one."""
    ray_num_cpus: int | None = None
    """CPUs of a local Ray cluster (null = all of this machine's)."""
    ray_temp_dir: str | None = None
    """Session folder of a local Ray cluster (null = Ray's default under /tmp)."""
    wait: bool = False
    """When another sweep holds OUT/sweep.lock, wait for it instead of refusing."""
    progress: bool = True
    """Print a line per job started and finished, with done/total and an ETA."""


@dataclass
class Summary:
    """What `run_sweep` did and where things stand."""

    states: dict[str, int]
    """Jobs per state: done, running, pending, failed, blocked."""
    executed: int
    """Jobs run to completion by this call."""
    failed: dict[str, str]
    """Job directory name → reason, for jobs that are failed now."""
    blocked: list[str]
    """Job directory names that wait on a failed job."""
    results: Path
    rows: int

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked


def spec_from_dict(values: dict[str, Any]) -> Any:
    """A checked sweep spec from a mapping of SweepConfig keys (what a sweep YAML holds)."""
    from ckptlab import config as configlib

    return build(configlib.build(SweepConfig, values))


def build(config: SweepConfig) -> Any:
    from ckptlab.commands import VerbTable
    from ckptlab.sweeps.spec import build_spec

    return build_spec(config, VerbTable())


def plan(spec: Any) -> Any:
    """The job graph of a spec (opens the store to memoise file hashes)."""
    from ckptlab.evaluation.store import ResultStore
    from ckptlab.sweeps.jobs import STORE
    from ckptlab.sweeps.plan import build_plan

    store = ResultStore(spec.out / STORE)
    try:
        return build_plan(spec, store)
    finally:
        store.close()


def run_sweep(
    spec: Any,
    executor: str = "local",
    progress: bool = True,
    wait: bool = False,
    ray_options: Any = None,
    say: Any = None,
) -> Summary:
    """Run every job of `spec` that is not done; write OUT/results.csv; return the summary.

    Raises:
        UserError: another sweep holds the lock (unless `wait`), or an input cannot be read.
        JobStopped: a training job was stopped by SIGTERM/SIGINT (it resumes on the next run).
    """
    from ckptlab.sweeps import state
    from ckptlab.sweeps.executors import execute
    from ckptlab.sweeps.progress import Progress
    from ckptlab.sweeps.results import write_results_csv

    say = say or functools.partial(print, flush=True)
    if executor == "ray":
        from ckptlab.sweeps.executors import check_ray

        check_ray()
    out = spec.out.resolve()
    with state.SweepLock(out) as lock:
        lock.acquire(wait=wait, say=say)
        the_plan = plan(spec)
        _write_plan(out, the_plan)
        before = state.job_states(out, the_plan)
        done = sum(1 for s, _ in before.values() if s == "done")
        say(f"sweep {spec.name}: {len(the_plan.jobs)} jobs, {done} done; executor {executor}; in {out}")
        ticker = Progress(the_plan, done, progress, say)
        outcome = execute(the_plan, out, executor, ticker, spec.verbs, ray_options)
        path, rows = write_results_csv(
            out, spec.name, {j.id for j in the_plan.jobs if j.kind == "evaluate"}, set(the_plan.task_fps)
        )
        states = state.job_states(out, the_plan)
    by_id = the_plan.by_id()
    counts = {name: sum(1 for s, _ in states.values() if s == name) for name in state.STATES}
    failed = {by_id[i].dirname: detail for i, (s, detail) in states.items() if s == "failed"}
    blocked = [by_id[i].dirname for i, (s, _) in states.items() if s == "blocked"]
    summary = Summary(counts, len(outcome.executed), failed, blocked, path, rows)
    say(
        f"{counts['done']}/{len(the_plan.jobs)} jobs done, {counts['failed']} failed, {counts['blocked']} blocked; "
        f"{rows} result rows in {path}"
    )
    for name, reason in failed.items():
        say(f"  failed: {name}: {reason}")
    return summary


def _write_plan(out: Path, the_plan: Any) -> None:
    from ckptlab.files import atomic_write_text

    jobs = [{"id": j.id, "kind": j.kind, "name": j.name, "dir": j.dirname, "deps": j.deps} for j in the_plan.jobs]
    atomic_write_text(out / "plan.json", json.dumps({"jobs": jobs, "task_fps": the_plan.task_fps}, indent=1) + "\n")


def status(spec: Any) -> dict[str, list[tuple[Any, str]]]:
    """{state: [(job, detail)]} for every job of the sweep, without taking the lock."""
    from ckptlab.sweeps import state

    the_plan = plan(spec)
    states = state.job_states(spec.out, the_plan)
    grouped: dict[str, list[tuple[Any, str]]] = {name: [] for name in state.STATES}
    for job in the_plan.jobs:
        name, detail = states[job.id]
        grouped[name].append((job, detail))
    return grouped


def _print_status(spec: Any) -> None:
    from ckptlab.sweeps.executors import reserves
    from ckptlab.sweeps.plan import Plan
    from ckptlab.sweeps.state import lock_holder

    grouped = status(spec)
    total = sum(len(v) for v in grouped.values())
    holder = lock_holder(spec.out)
    print(f"sweep {spec.name} in {spec.out}: {total} jobs" + (f"; running now (pid {holder})" if holder else ""))
    print("  " + ", ".join(f"{name} {len(jobs)}" for name, jobs in grouped.items()))
    every = Plan([job for jobs in grouped.values() for job, _ in jobs], [])
    print(f"  on Ray a job reserves: {reserves(every, None)}")
    for name, jobs in grouped.items():
        for job, detail in jobs:
            print(f"  {name:<8} {job.kind:<9} {job.name:<40} {job.id[:12]}" + (f"  {detail}" if detail else ""))


def sweep(config: SweepConfig) -> int:
    """Run (or show the status of) the sweep; returns the exit code (1 when a job failed or is blocked)."""
    from ckptlab.sweeps.executors import RayOptions
    from ckptlab.sweeps.jobs import JobStopped

    spec = build(config)
    if config.command == "status":
        _print_status(spec)
        return 0
    options = RayOptions(config.address, config.ray_num_cpus, config.ray_temp_dir)
    try:
        summary = run_sweep(spec, config.executor, config.progress, config.wait, options)
    except JobStopped as stopped:
        print(f"stopped: {stopped}")
        return 0
    except KeyboardInterrupt:
        # What is done stays done and a partial job resumes, so the next run continues from here.
        print("interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    return 0 if summary.ok else 1
