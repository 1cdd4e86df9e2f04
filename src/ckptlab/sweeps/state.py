"""What a sweep directory says about its jobs, and the lock that keeps two sweeps out of it.

```
OUT/
  sweep.lock        flock-ed by the running sweep; holds its pid
  plan.json         the jobs of the last run: id, kind, name, deps
  results.sqlite    the results store (every evaluation writes here)
  results.csv       metric rows joined with what each model is (the results table)
  jobs/<kind>-<name>-<id[:12]>/
    running.json    written when the job starts (pid, time)
    done.json       written last, atomically: the job is complete iff it exists
    failed.json     the one-line reason of the last failure (removed when the job is retried)
    log.txt         everything the job printed
    run/            the run directory of a pretrain, finetune or cpt job
```
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from ckptlab.errors import UserError
from ckptlab.files import atomic_write_text

LOCK = "sweep.lock"
STATES = ("done", "running", "pending", "failed", "blocked")


def job_dir(out: Path, job: Any) -> Path:
    return Path(out) / "jobs" / job.dirname


def read_marker(directory: Path, name: str) -> dict[str, Any] | None:
    path = directory / f"{name}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_marker(directory: Path, name: str, record: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / f"{name}.json", json.dumps(record, indent=1, sort_keys=True) + "\n")


def clear_marker(directory: Path, name: str) -> None:
    (directory / f"{name}.json").unlink(missing_ok=True)


def is_done(out: Path, job: Any) -> bool:
    return (job_dir(out, job) / "done.json").is_file()


class SweepLock:
    """An exclusive, non-blocking `fcntl.flock` on OUT/sweep.lock (released by the kernel if we die)."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / LOCK
        self.fd: int | None = None

    def acquire(self, wait: bool = False, say: Any = print) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            if not wait:
                os.close(fd)
                raise UserError(
                    f"{self.path} is held by pid {holder}: another sweep is running on this directory "
                    "(pass --wait to wait for it)"
                ) from None
            say(f"waiting for {self.path} (held by pid {holder})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> SweepLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    return text or "unknown"


def lock_holder(out: Path) -> str | None:
    """The pid holding OUT/sweep.lock, or None when no sweep runs there (the lock is not taken)."""
    path = Path(out) / LOCK
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_pid(fd)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def job_states(out: Path, plan: Any) -> dict[str, tuple[str, str]]:
    """{job id: (state, detail)}; detail is the failure reason, blocking job, or `partial`."""
    from ckptlab.sweeps.plan import dependents

    running_sweep = lock_holder(out) is not None
    states: dict[str, tuple[str, str]] = {}
    failed = set()
    for job in plan.jobs:
        directory = job_dir(out, job)
        if (directory / "done.json").is_file():
            states[job.id] = ("done", "")
        elif (failure := read_marker(directory, "failed")) is not None:
            states[job.id] = ("failed", failure.get("reason", ""))
            failed.add(job.id)
        elif (directory / "running.json").is_file():
            states[job.id] = ("running", "") if running_sweep else ("pending", "partial: resumes where it stopped")
        else:
            states[job.id] = ("pending", "")
    by_id = plan.by_id()
    blocked = dependents(plan, failed)
    for job in plan.jobs:  # in plan order, so a dependency's state is settled first
        if job.id in blocked:
            cause = next(d for d in job.deps if d in failed or d in blocked)
            states[job.id] = ("blocked", f"needs {by_id[cause].dirname}")
    return states


def now() -> float:
    return round(time.time(), 3)
