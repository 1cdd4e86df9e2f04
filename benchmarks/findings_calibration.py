"""Calibration of the report's four findings: how often each comes out each way on sweeps with a known truth.

Method. Each scenario of `ckptlab.reporting.simulate` (a sweep's shape and which claims hold in it) is
simulated `--sweeps` times: per-item answers of every base checkpoint and fine-tuned model drawn from
a model where the latent gain (i), the relation between the base's level and the gain (ii), the
forgetting (iii) and the template spread before and after fine-tuning (iv) are designed, each either
absent (the null) or present (an effect). Every simulated sweep is written to a results store and
analysed by the report's own code (`build_study`, then `findings.all_findings`), as `ckptlab report`
would; each finding's outcome is recorded and the store deleted. Sweep i of a scenario is seeded from
(--seed, the scenario's name, i), and its bootstrap from i, so a run is reproducible job by job.

Measured, per (scenario, finding): the share of sweeps whose outcome is replicated, partly replicated,
not replicated or inconclusive, with Wilson 95% intervals for "replicated or partly" and "not replicated".

Targets. Under a null, "replicated" or "partly replicated" at most 5% of the time (a false claim of the
finding); under an effect, "not replicated" at most 5% of the time (a true finding refuted). Each is
judged on the point rate; its interval says how far `--sweeps` pins it down. Under an effect the rate
of replicated-or-partly is the power, reported but without a target (inconclusive is an honest answer).

    .venv/bin/python benchmarks/findings_calibration.py --sweeps 200 --out benchmarks/results/calibration.json
    .venv/bin/python benchmarks/findings_calibration.py --sweeps 5 --scenarios global_null,effects --workers 1
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import shutil
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ckptlab.commands.report import ReportConfig, build_study, json_safe
from ckptlab.reporting.findings import all_findings
from ckptlab.reporting.simulate import SCENARIOS, simulate_store

FINDINGS = ("i", "ii", "iii", "iv")
REPLICATED, PARTLY, NOT_REPLICATED, INCONCLUSIVE = "replicated", "partly replicated", "not replicated", "inconclusive"
TARGET = 0.05
"""Most tolerated rate of the wrong answer: replicated-or-partly under a null, not replicated under an effect."""
Z_95 = 1.959963984540054

Job = tuple[str, int, int, int, str | None]
"""(scenario, sweep index, base seed, bootstrap resamples, temporary folder)."""


def wilson(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (sound near 0 and 1, where the normal one is not)."""
    if n == 0:
        return math.nan, math.nan
    rate = successes / n
    denominator = 1 + z * z / n
    centre = (rate + z * z / (2 * n)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def sweep_seed(seed: int, scenario: str, index: int) -> int:
    """The simulator's seed for sweep `index` of `scenario`: independent of the order jobs run in."""
    sequence = np.random.SeedSequence([seed, zlib.crc32(scenario.encode("utf-8")), index])
    return int(sequence.generate_state(1)[0])


def run_sweep(job: Job) -> dict[str, Any]:
    """Simulate one sweep, analyse it as `ckptlab report` does, and return each finding's outcome."""
    scenario, index, seed, bootstrap, tmp = job
    folder = Path(tempfile.mkdtemp(prefix="ckptlab_calibration_", dir=tmp))
    started = time.perf_counter()
    try:
        path = folder / "results.sqlite"
        truth = simulate_store(path, SCENARIOS[scenario], sweep_seed(seed, scenario, index))
        written = time.perf_counter()
        study = build_study(ReportConfig(store=str(path), bootstrap=bootstrap, bootstrap_seed=index))
        built = time.perf_counter()
        findings = all_findings(study)
        done = time.perf_counter()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "scenario": scenario,
        "index": index,
        "outcomes": {f["id"]: f["outcome"] for f in findings},
        "clipped_abilities": truth["clipped_abilities"],
        "seconds": {"write": written - started, "study": built - written, "findings": done - built},
    }


def run_all(jobs: list[Job], workers: int) -> Iterable[dict[str, Any]]:
    if workers <= 1:  # in this process: no fork, and a profiler sees everything
        yield from map(run_sweep, jobs)
        return
    with multiprocessing.Pool(workers) as pool:
        yield from pool.imap_unordered(run_sweep, jobs)


def _rate(count: int, n: int) -> float:
    return count / n if n else math.nan


def summarise(scenario: str, results: list[dict[str, Any]], info: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per finding of a scenario: outcome rates, their intervals, and whether the target is met."""
    truth = SCENARIOS[scenario].truth
    rows = []
    for finding in FINDINGS:
        counts = Counter(r["outcomes"].get(finding, "missing") for r in results)
        n = len(results)
        claimed = counts[REPLICATED] + counts[PARTLY]
        expected = truth.get(finding, "n/a")
        meets: bool | None = None
        if expected == "null":
            meets = _rate(claimed, n) <= TARGET
        elif expected == "effect":
            meets = _rate(counts[NOT_REPLICATED], n) <= TARGET
        rows.append(
            {
                "scenario": scenario,
                "finding": finding,
                "truth": expected,
                "n": n,
                "replicated_rate": _rate(claimed, n),
                "replicated_ci": list(wilson(claimed, n)),
                "strict_replicated_rate": _rate(counts[REPLICATED], n),
                "partly_rate": _rate(counts[PARTLY], n),
                "not_replicated_rate": _rate(counts[NOT_REPLICATED], n),
                "not_replicated_ci": list(wilson(counts[NOT_REPLICATED], n)),
                "inconclusive_rate": _rate(counts[INCONCLUSIVE], n),
                "meets_target": meets,
                "description": SCENARIOS[scenario].description,
                "seconds_per_sweep": float(np.mean([sum(r["seconds"].values()) for r in results])),
                "clipped_abilities": int(sum(r["clipped_abilities"] for r in results)),
                **info,
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| scenario | finding | truth | n | replicated+partly [95% CI] | not replicated | inconclusive | target met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        low, high = r["replicated_ci"]
        met = {True: "yes", False: "**no**", None: "–"}[r["meets_target"]]
        lines.append(
            f"| {r['scenario']} | {r['finding']} | {r['truth']} | {r['n']} | "
            f"{r['replicated_rate']:.2f} [{low:.2f}, {high:.2f}] | {r['not_replicated_rate']:.2f} | "
            f"{r['inconclusive_rate']:.2f} | {met} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sweeps", type=int, default=20, help="simulated sweeps per scenario with a null finding")
    parser.add_argument(
        "--effect_sweeps",
        type=int,
        help="simulated sweeps per scenario where every finding holds (power; no target); default: --sweeps",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="results JSON (one object per scenario and finding)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated; default: all")
    parser.add_argument("--bootstrap", type=int, default=1000, help="the report's bootstrap resamples")
    parser.add_argument("--workers", type=int, default=2, help="processes (1 = run in this one)")
    parser.add_argument("--tmp", help="folder for the temporary stores (e.g. /dev/shm); default: the system's")
    args = parser.parse_args()

    names = [s for s in args.scenarios.split(",") if s]
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")

    def sweeps(name: str) -> int:
        all_effects = all(truth == "effect" for truth in SCENARIOS[name].truth.values())
        return args.effect_sweeps if all_effects and args.effect_sweeps is not None else args.sweeps

    jobs: list[Job] = [(s, i, args.seed, args.bootstrap, args.tmp) for s in names for i in range(sweeps(s))]
    started = time.perf_counter()
    results: dict[str, list[dict[str, Any]]] = {s: [] for s in names}
    for done, result in enumerate(run_all(jobs, args.workers), 1):
        results[result["scenario"]].append(result)
        outcomes = ", ".join(f"{k}: {v}" for k, v in result["outcomes"].items())
        seconds = sum(result["seconds"].values())
        print(
            f"[{done}/{len(jobs)}] {result['scenario']} #{result['index']} ({seconds:.1f} s): {outcomes}",
            file=sys.stderr,
        )
    wall = time.perf_counter() - started
    info = {"seed": args.seed, "bootstrap": args.bootstrap}
    rows = [row for s in names for row in summarise(s, sorted(results[s], key=lambda r: r["index"]), info)]
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(json_safe(rows), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(markdown(rows))
    print(f"\n{len(jobs)} sweeps in {wall:.1f} s wall ({args.workers} worker(s), bootstrap {args.bootstrap})")


if __name__ == "__main__":
    main()
