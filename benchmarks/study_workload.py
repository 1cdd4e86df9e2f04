"""The study's evaluation workload end to end, the way a user runs it with each tool: ckptlab vs lm-eval.

    python benchmarks/study_workload.py [--run demo-out/runs/pretrain] [--limit 72] [--rounds 1]

Workload: 8 checkpoints of one pre-training run (steps 16 … 800 of `ckptlab demo`'s run, the
checkpoints its sweep fine-tunes) × 2 eval sets (the world's NLI and paraphrase tasks) × 3 prompt
templates, 0-shot, the first `--limit` rows of each scored split, fp32 on CPU, batch size 16.

- lm-eval 0.4: the six (task, template) pairs as lm-eval YAMLs (written by `ckptlab tasks export`),
  one `lm_eval --model hf --model_args pretrained=CHECKPOINT --tasks ...` process per checkpoint
  with all six tasks, as its documentation runs a model;
- ckptlab: one `ckptlab evaluate --model RUN --tasks nli.yaml,paraphrase.yaml --templates all`
  process (a run directory means its kept checkpoints; `--checkpoints` picks them here), with a fresh
  results store, so nothing comes from its cache.

Timed: wall clock from the first process's start to the last one's end (interpreter start, imports,
model loads, data, scoring, results). Also compared: every (checkpoint, task, template) accuracy.
Printed and written to OUT/study_workload.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = (16, 32, 64, 128, 200, 400, 600, 800)
TASKS = ("world_nli", "world_paraphrase")


def run(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=str(ROOT / "demo-out" / "runs" / "pretrain"))
    parser.add_argument("--world", default=str(ROOT / "demo-out" / "world"))
    parser.add_argument("--limit", type=int, default=72)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "build" / "study_workload"))
    args = parser.parse_args()
    out, run_dir, world = Path(args.out), Path(args.run).resolve(), Path(args.world).resolve()
    checkpoints = [run_dir / "checkpoints" / f"step-{step:08d}" for step in STEPS]
    missing = [str(c) for c in checkpoints if not c.is_dir()]
    if missing:
        sys.exit(f"missing checkpoints (run `ckptlab demo` first): {', '.join(missing)}")
    out.mkdir(parents=True, exist_ok=True)
    tasks = [world / "tasks" / f"{name}.yaml" for name in TASKS]
    exported = out / "lm_eval_tasks"
    shutil.rmtree(exported, ignore_errors=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ckptlab",
            "tasks",
            "export",
            "--tasks",
            ",".join(map(str, tasks)),
            "--out",
            str(exported),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    names = sorted(p.stem for p in exported.glob("*/*.yaml"))
    lm_eval = [Path(sys.executable).parent / "lm_eval"]
    env_note = "HF_DATASETS_OFFLINE=1"
    timings: dict[str, list[float]] = {"lm-eval": [], "ckptlab": []}
    accuracy: dict[str, dict[str, float]] = {"lm-eval": {}, "ckptlab": {}}
    for round_number in range(args.rounds):
        results = out / f"lm_eval_results_{round_number}"
        shutil.rmtree(results, ignore_errors=True)
        started = time.perf_counter()
        for checkpoint in checkpoints:
            run(
                [
                    "env",
                    env_note,
                    f"HF_DATASETS_CACHE={out / 'hf-datasets'}",
                    *map(str, lm_eval),
                    "--model",
                    "hf",
                    "--model_args",
                    f"pretrained={checkpoint},dtype=float32",
                    "--tasks",
                    ",".join(names),
                    "--include_path",
                    str(exported),
                    "--limit",
                    str(args.limit),
                    "--batch_size",
                    "16",
                    "--device",
                    "cpu",
                    "--output_path",
                    str(results / checkpoint.name),
                ],
                out,
            )
        timings["lm-eval"].append(time.perf_counter() - started)
        store = out / f"ckptlab_{round_number}.sqlite"
        store.unlink(missing_ok=True)
        timings["ckptlab"].append(
            run(
                [
                    str(Path(sys.executable).parent / "ckptlab"),
                    "evaluate",
                    "--model",
                    ",".join(map(str, checkpoints)),
                    "--tasks",
                    ",".join(map(str, tasks)),
                    "--templates",
                    "all",
                    "--shots",
                    "0",
                    "--limit",
                    str(args.limit),
                    "--batch_size",
                    "16",
                    "--dtype",
                    "float32",
                    "--device",
                    "cpu",
                    "--bootstrap",
                    "0",
                    "--progress",
                    "false",
                    "--store",
                    str(store),
                ],
                out,
            )
        )
        for path in results.glob("*/*/results_*.json"):
            checkpoint = path.parent.parent.name
            for task, values in json.loads(path.read_text())["results"].items():
                accuracy["lm-eval"][f"{checkpoint}/{task}"] = values["acc,none"]
        import sqlite3

        with sqlite3.connect(store) as db:
            rows = db.execute("SELECT model_source, task, template, value FROM metrics WHERE metric='accuracy'")
            for source, task, template, value in rows:
                accuracy["ckptlab"][f"{Path(source).name}/{task}_{template}"] = value
        print(
            f"round {round_number + 1}: lm-eval {timings['lm-eval'][-1]:.1f} s, ckptlab {timings['ckptlab'][-1]:.1f} s"
        )
    common = sorted(set(accuracy["lm-eval"]) & set(accuracy["ckptlab"]))
    differences = [abs(accuracy["lm-eval"][k] - accuracy["ckptlab"][k]) for k in common]
    report = {
        "checkpoints": [str(c) for c in checkpoints],
        "tasks": names,
        "limit": args.limit,
        "seconds": timings,
        "median_seconds": {tool: statistics.median(values) for tool, values in timings.items()},
        "lm_eval_over_ckptlab": statistics.median(timings["lm-eval"]) / statistics.median(timings["ckptlab"]),
        "accuracies_compared": len(common),
        "max_accuracy_difference": max(differences) if differences else None,
    }
    (out / "study_workload.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(
        f"8 checkpoints × {len(names)} (task, template) pairs: lm-eval {report['median_seconds']['lm-eval']:.1f} s, "
        f"ckptlab {report['median_seconds']['ckptlab']:.1f} s → {report['lm_eval_over_ckptlab']:.2f}×; "
        f"{len(common)} accuracies compared, max difference {report['max_accuracy_difference']}"
    )


if __name__ == "__main__":
    main()
