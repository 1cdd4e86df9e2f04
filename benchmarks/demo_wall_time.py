"""Wall time of `ckptlab demo` on this machine, with the stage breakdown and the sweep's job times.

Runs the real command in a subprocess into a fresh folder (nothing reused), reads the stage times
that the demo prints ("stage times: world N s, ...") and the `wall_s` of every sweep job from its
`done.json`, and records the machine's load average before and after (the machines are shared: a
run under load says so). Results: `benchmarks/results/demo_wall_time.json`; BENCHMARKS.md holds
the table and its reading.

    .venv/bin/python benchmarks/demo_wall_time.py                 # size demo, fp32
    .venv/bin/python benchmarks/demo_wall_time.py --size tiny     # seconds; checks the script
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def job_times(sweep_dir: Path) -> dict[str, dict[str, float]]:
    """Per job kind: count, total, median and max wall seconds (from each job's done.json)."""
    by_kind: dict[str, list[float]] = {}
    for done in sorted(sweep_dir.glob("jobs/*/done.json")):
        record = json.loads(done.read_text())
        by_kind.setdefault(record["kind"], []).append(float(record["wall_s"]))
    return {
        kind: {"jobs": len(t), "total_s": sum(t), "median_s": statistics.median(t), "max_s": max(t)}
        for kind, t in by_kind.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="demo", choices=["tiny", "demo", "large"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--ckptlab", default=str(Path(sys.executable).parent / "ckptlab"))
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "demo_wall_time.json"))
    parser.add_argument("--keep", action="store_true", help="keep the demo's output folder")
    args = parser.parse_args()

    out = Path(tempfile.mkdtemp(prefix="ckptlab_demo_")) / "demo-out"
    load_before = os.getloadavg()
    started = time.perf_counter()
    proc = subprocess.run(
        [
            args.ckptlab,
            "demo",
            "--size",
            args.size,
            "--precision",
            args.precision,
            "--out",
            str(out),
            "--progress",
            "false",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    wall = time.perf_counter() - started
    load_after = os.getloadavg()
    (out.parent / "demo.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"ckptlab demo exited {proc.returncode}; log: {out.parent / 'demo.log'}\n{proc.stderr[-2000:]}")
    found = re.search(r"^stage times: (.*)$", proc.stdout, re.MULTILINE)
    stages = (
        {name: float(seconds) for name, seconds in re.findall(r"(\w+) ([0-9.]+) s", found.group(1))} if found else {}
    )
    findings = json.loads((out / "report" / "findings.json").read_text())
    result = {
        "size": args.size,
        "precision": args.precision,
        "wall_s": wall,
        "stages_s": stages,
        "sweep_jobs": job_times(out / "sweep"),
        "findings": {f["id"]: f["outcome"] for f in findings},
        "load_average_before": load_before,
        "load_average_after": load_after,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=1))
    if args.keep:
        print(f"demo output kept: {out}")
    else:
        shutil.rmtree(out.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
