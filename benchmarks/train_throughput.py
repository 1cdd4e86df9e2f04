"""Training throughput: ckptlab's loop against a bare PyTorch loop and the Hugging Face Trainer.

    .venv/bin/python benchmarks/train_throughput.py --steps 15 --warmup 3 --repeats 3 --out BENCHMARKS.md

All three train the same GPT-NeoX (4 layers, d_model 256, 4 heads, FFN 1024, context 256, vocab
8192, untied head, N(0, 0.02) init, seed 0) with AdamW (lr 3e-4 constant, betas 0.9/0.95, weight
decay 0.1 on matrices, eps 1e-8), gradient clipping at 1.0, batch 16 × 256 tokens, on the same
pre-generated random-token batches in the same order and with the same targets:

  ckptlab  `ckptlab.train.loop.train` into a temporary RunDir: metrics.jsonl every step, NaN check,
           clipping, no validation, no checkpoint inside the timed window.
  bare     forward (the model computes the loss from `labels`) / backward / clip / step / zero_grad.
  trainer  `transformers.Trainer` over a Dataset of the same rows (sequential sampler, no eval,
           no saving, logging every 1000 steps).

bf16 means autocast to bfloat16 plus `torch.compile` for all three. The Trainer gets
`optim="adamw_torch"` (its default on torch ≥ 2.8 is the fused AdamW, which the other two do not
use; `--trainer-optim adamw_torch_fused` measures that). What is timed is wall-clock between step
boundaries after the warm-up steps (compilation happens in the warm-up); each runner's docstring
says which boundaries. Tokens are input tokens, 16 × 256 per step. The loops alternate within each
round (rotated order) and the medians over rounds are reported, with the fastest measured step as
a second, noise-resistant view. Results go to benchmarks/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))  # runnable from a checkout without installing

LAYERS, WIDTH, HEADS, FFN, CONTEXT, VOCAB, BATCH = 4, 256, 4, 1024, 256, 8192, 16
LR, BETAS, WEIGHT_DECAY, EPS, CLIP, SEED = 3e-4, (0.9, 0.95), 0.1, 1e-8, 1.0, 0
IMPLS = ("ckptlab", "bare", "trainer")
SECTION_BEGIN, SECTION_END = "<!-- train_throughput:begin -->", "<!-- train_throughput:end -->"


def build_model() -> Any:
    """The benchmark model, built by ckptlab's builder (the plain GPT-NeoX fallback is the same model)."""
    torch.manual_seed(SEED)
    try:
        from ckptlab.models.hf import ModelConfig
        from ckptlab.models.hf import build_model as ckptlab_build

        config = ModelConfig(
            architecture="gpt_neox",
            hidden_size=WIDTH,
            num_layers=LAYERS,
            num_heads=HEADS,
            intermediate_size=FFN,
            context_length=CONTEXT,
            init_std=0.02,
        )
        return ckptlab_build(config, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, pad_token_id=None)
    except ImportError:
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        config = GPTNeoXConfig(
            vocab_size=VOCAB,
            hidden_size=WIDTH,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            intermediate_size=FFN,
            max_position_embeddings=CONTEXT,
            initializer_range=0.02,
            tie_word_embeddings=False,
            bos_token_id=0,
            eos_token_id=0,
        )
        return GPTNeoXForCausalLM(config)


def flops_per_token(model: Any) -> tuple[int, float]:
    """(N, FLOPs per trained token) with FLOPs = 6·N + 12·L·d·T.

    N counts every parameter except the input embedding (a lookup, not a matmul); the LM head is
    in N. 12·L·d·T is the attention score and value matmuls (forward + backward), with no
    discount for the causal mask, as in the PaLM paper's appendix B.
    """
    n = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    return n, 6.0 * n + 12.0 * LAYERS * WIDTH * CONTEXT


def make_samples(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), each [count, CONTEXT] and contiguous, from random windows of CONTEXT + 1
    tokens: targets are the inputs shifted by one, already aligned as ckptlab's batches are."""
    generator = torch.Generator().manual_seed(1234)
    windows = torch.randint(0, VOCAB, (count, CONTEXT + 1), generator=generator)
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


class SampleBatches:
    """ckptlab BatchSource over the pre-generated samples (contiguous slices, no copies)."""

    def __init__(self, samples: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.inputs, self.targets = samples

    def batch(self, indices: Any) -> dict[str, torch.Tensor]:
        rows = slice(indices.start, indices.stop) if isinstance(indices, range) else list(indices)
        return {"input_ids": self.inputs[rows], "labels": self.targets[rows]}


def decay_groups(model: Any) -> list[dict[str, Any]]:
    # The same split as ckptlab and the Trainer: matrices decay, biases and norms do not.
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in params if p.ndim >= 2 and "norm" not in n.lower()]
    rest = [p for n, p in params if not (p.ndim >= 2 and "norm" not in n.lower())]
    return [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0.0}]


def run_ckptlab(samples: tuple[torch.Tensor, torch.Tensor], warmup: int, steps: int, bf16: bool) -> dict[str, Any]:
    """Timed window: from the start of step `warmup` to the start of step `warmup + steps`.

    Step starts are when the loop asks `lr_at` for the step's rate (its first action), so the
    window holds `steps` whole iterations: batch, forward, loss, backward, NaN check, clip, AdamW,
    the metrics.jsonl line, progress and the checkpoint decision. The run has one extra step so
    that the end of the window is a step start too; the end-of-run checkpoint comes after it.
    """
    from ckptlab.runs.run_dir import RunDir, read_metrics
    from ckptlab.train import distributed
    from ckptlab.train.config import TrainConfig
    from ckptlab.train.loop import train
    from ckptlab.train.schedules import ScheduleConfig

    model = build_model()
    starts: dict[int, float] = {}

    def lr_at(step: int) -> float:
        starts[step] = time.perf_counter()
        return LR

    config = TrainConfig(
        max_steps=warmup + steps + 1,
        micro_batch_size=BATCH,
        grad_accum_steps=1,
        schedule=ScheduleConfig(name="constant", lr=LR),
        weight_decay=WEIGHT_DECAY,
        beta1=BETAS[0],
        beta2=BETAS[1],
        eps=EPS,
        grad_clip=CLIP,
        val_every=0,
        save_every=0,
        precision="bf16" if bf16 else "fp32",
        compile=bf16,
        device="cpu",
        seed=SEED,
        progress=False,
    )
    with tempfile.TemporaryDirectory(prefix="ckptlab-bench-") as root:
        run = RunDir(root)
        train(
            model=model,
            save_model=lambda folder: None,
            train_data=SampleBatches(samples),
            val_data=None,
            config=config,
            lr_at=lr_at,
            kept=[],
            run=run,
            fingerprints={},
            resume_from=None,
            allow_changed=[],
            dist=distributed.setup("cpu"),
            log=lambda message: None,
        )
        records = [r for r in read_metrics(run.metrics) if "tokens_per_s" in r]
    seconds = starts[warmup + steps] - starts[warmup]
    measured = [r for r in records if warmup < r["step"] <= warmup + steps]
    # The loop's own per-step timer stops after zero_grad (before the metrics line is written).
    in_loop = sum(BATCH * CONTEXT / r["tokens_per_s"] for r in measured)
    return {
        "seconds": seconds,
        "in_loop_tokens_per_s": BATCH * CONTEXT * steps / in_loop,
        "loss": measured[-1]["loss"],
        "step_seconds": _durations([starts[k] for k in sorted(starts)]),
    }


def run_bare(samples: tuple[torch.Tensor, torch.Tensor], warmup: int, steps: int, bf16: bool) -> dict[str, Any]:
    """Timed window: from the start of step `warmup` to the end of step `warmup + steps - 1`."""
    model = build_model()
    model.train()
    forward = torch.compile(model) if bf16 else model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(decay_groups(model), lr=LR, betas=BETAS, eps=EPS)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    marks, losses = [], []
    for step in range(warmup + steps):
        marks.append(time.perf_counter())
        inputs = samples[0][step * BATCH : (step + 1) * BATCH]
        targets = samples[1][step * BATCH : (step + 1) * BATCH]
        with autocast:
            # shift_labels: targets are already aligned with the inputs (as in ckptlab's batches).
            loss = forward(input_ids=inputs, labels=targets, shift_labels=targets).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    marks.append(time.perf_counter())
    return {
        "seconds": marks[warmup + steps] - marks[warmup],
        "loss": float(losses[-1]),
        "step_seconds": _durations(marks),
    }


def run_trainer(
    samples: tuple[torch.Tensor, torch.Tensor], warmup: int, steps: int, bf16: bool, optim: str
) -> dict[str, Any]:
    """Timed window: from the end of step `warmup` to the end of step `warmup + steps` (callback
    `on_step_end`), which also holds `steps` whole iterations: fetch, collate, forward, backward,
    clip, step, zero_grad and the Trainer's logging/saving checks."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: dict[int, float] = {}

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.ends[state.global_step] = time.perf_counter()

    class Rows(torch.utils.data.Dataset):
        # shift_labels reaches the model's loss through its **kwargs: the targets are already
        # aligned, as in the other two loops (remove_unused_columns=False keeps the key).
        def __len__(self) -> int:
            return (warmup + steps) * BATCH

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"input_ids": samples[0][i], "labels": samples[1][i], "shift_labels": samples[1][i]}

    class LastLossTrainer(Trainer):
        # Keeps the last step's loss (the Trainer only reports the mean over the run); a detached
        # tensor in a list, no synchronisation.
        def compute_loss(self, *a: Any, **k: Any) -> Any:
            result = super().compute_loss(*a, **k)
            losses.append((result[0] if isinstance(result, tuple) else result).detach())
            return result

    model = build_model()
    clock = StepClock()
    losses: list[torch.Tensor] = []
    with tempfile.TemporaryDirectory(prefix="trainer-bench-") as root:
        args = TrainingArguments(
            output_dir=root,
            max_steps=warmup + steps,
            per_device_train_batch_size=BATCH,
            gradient_accumulation_steps=1,
            learning_rate=LR,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=WEIGHT_DECAY,
            adam_beta1=BETAS[0],
            adam_beta2=BETAS[1],
            adam_epsilon=EPS,
            max_grad_norm=CLIP,
            optim=optim,
            eval_strategy="no",
            save_strategy="no",
            report_to="none",
            logging_steps=1000,
            dataloader_num_workers=0,
            use_cpu=True,
            bf16=bf16,
            torch_compile=bf16,
            seed=SEED,
            disable_tqdm=True,
            remove_unused_columns=False,
            train_sampling_strategy="sequential",
        )
        trainer = LastLossTrainer(model=model, args=args, train_dataset=Rows(), callbacks=[clock])
        trainer.train()
    return {
        "seconds": clock.ends[warmup + steps] - clock.ends[warmup],
        "loss": float(losses[-1]),
        "step_seconds": _durations([clock.ends[k] for k in sorted(clock.ends)]),
    }


def matmul_peak(dtype: torch.dtype, size: int = 2048, runs: int = 5, bursts: int = 1) -> float:
    """GFLOP/s of size×size matmuls (2·size³ FLOPs each): the median of `runs` timed ones after
    two untimed ones, best over `bursts` such bursts (a co-tenant can only slow a burst down)."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    best = 0.0
    for _ in range(bursts):
        for _ in range(2):
            a @ b
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - started)
        best = max(best, 2 * size**3 / statistics.median(times) / 1e9)
    return best


def measure(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    precisions = [p for p in args.precisions.split(",") if p]
    tokens = BATCH * CONTEXT * args.steps
    samples = make_samples((args.warmup + args.steps + 1) * BATCH)
    n_params, per_token = flops_per_token(build_model())
    peak_runs = {"fp32": [matmul_peak(torch.float32, bursts=5)], "bf16": [matmul_peak(torch.bfloat16, bursts=5)]}
    log(
        f"matmul peak (2048², {threads} threads): fp32 {peak_runs['fp32'][0]:.0f} GFLOP/s, "
        f"bf16 {peak_runs['bf16'][0]:.0f} GFLOP/s"
    )
    runners = {
        "ckptlab": run_ckptlab,
        "bare": run_bare,
        "trainer": lambda s, w, n, bf16: run_trainer(s, w, n, bf16, args.trainer_optim),
    }
    runs: list[dict[str, Any]] = []
    for round_index in range(args.repeats):
        for precision in precisions:
            order = IMPLS[round_index % 3 :] + IMPLS[: round_index % 3]
            for impl in order:
                torch._dynamo.reset()  # each run compiles afresh (from the warm on-disk cache)
                # The machine's speed right before the run: co-tenants can halve it for minutes.
                probe = matmul_peak(torch.float32, runs=3)
                started = time.perf_counter()
                result = runners[impl](samples, args.warmup, args.steps, precision == "bf16")
                measured = result["step_seconds"][-args.steps :]
                result.update(
                    impl=impl,
                    precision=precision,
                    round=round_index,
                    tokens_per_s=tokens / result["seconds"],
                    median_step_tokens_per_s=BATCH * CONTEXT / statistics.median(measured),
                    run_seconds=time.perf_counter() - started,
                    probe_fp32_gflops=probe,
                )
                runs.append(result)
                log(
                    f"round {round_index} {precision:>4} {impl:<8} {result['tokens_per_s']:8.0f} tokens/s, "
                    f"median step {result['median_step_tokens_per_s']:8.0f} tokens/s (run "
                    f"{result['run_seconds']:.0f} s, "
                    f"loss {result['loss']:.4f}, probe {probe:.0f} GFLOP/s)"
                )
    # Measured again at the end; the higher median is the peak (a co-tenant can only slow it down).
    peak_runs["fp32"].append(matmul_peak(torch.float32, bursts=5))
    peak_runs["bf16"].append(matmul_peak(torch.bfloat16, bursts=5))
    peaks = {dtype: max(values) for dtype, values in peak_runs.items()}
    settings = {
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "precisions": precisions,
        "layers": LAYERS,
        "d_model": WIDTH,
        "heads": HEADS,
        "ffn": FFN,
        "context": CONTEXT,
        "vocab": VOCAB,
        "batch": BATCH,
        "tokens_per_step": BATCH * CONTEXT,
        "trainer_optim": args.trainer_optim,
    }
    return {
        "settings": settings,
        "machine": {
            "threads": threads,
            "cpu": _cpu_name(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": _version("transformers"),
        },
        "flops": {
            "params_in_matmuls": n_params,
            "flops_per_token": per_token,
            "formula": "6*N + 12*L*d*T, N = all parameters but the input embedding",
        },
        "matmul_peak_gflops": peaks,
        "matmul_peak_gflops_start_end": peak_runs,
        "summary": summarize(runs, precisions, args.steps, peaks, per_token),
        "runs": runs,
    }


def summarize(
    runs: list[dict[str, Any]], precisions: list[str], steps: int, peaks: dict[str, float], per_token: float
) -> dict[str, Any]:
    """Medians over rounds, ranges, the fastest measured step, ratios and MFU."""
    summary: dict[str, Any] = {}
    for precision in precisions:
        for impl in IMPLS:
            mine = [r for r in runs if r["impl"] == impl and r["precision"] == precision]
            values = [r["tokens_per_s"] for r in mine]
            median = statistics.median(values)
            summary[f"{impl}/{precision}"] = {
                "tokens_per_s_median": median,
                "tokens_per_s_min": min(values),
                "tokens_per_s_max": max(values),
                "median_step_tokens_per_s_median": statistics.median(r["median_step_tokens_per_s"] for r in mine),
                # The fastest measured step of all rounds: the loop's cost when no co-tenant slowed it.
                "fastest_step_tokens_per_s": BATCH * CONTEXT / min(min(r["step_seconds"][-steps:]) for r in mine),
                "mfu": median * per_token / (peaks[precision] * 1e9),
            }
            cell = summary[f"{impl}/{precision}"]
            cell["mfu_fastest_step"] = cell["fastest_step_tokens_per_s"] * per_token / (peaks[precision] * 1e9)
        ours = summary[f"ckptlab/{precision}"]["tokens_per_s_median"]
        for other in ("bare", "trainer"):
            # Per-round ratios cancel slow drifts in the machine's load better than a ratio of medians.
            paired = [
                a["tokens_per_s"] / b["tokens_per_s"]
                for a in runs
                for b in runs
                if a["impl"] == "ckptlab"
                and b["impl"] == other
                and a["precision"] == b["precision"] == precision
                and a["round"] == b["round"]
            ]
            summary[f"ckptlab/{other}/{precision}"] = {
                "ratio_of_medians": ours / summary[f"{other}/{precision}"]["tokens_per_s_median"],
                "median_per_round_ratio": statistics.median(paired),
                "ratio_of_fastest_steps": summary[f"ckptlab/{precision}"]["fastest_step_tokens_per_s"]
                / summary[f"{other}/{precision}"]["fastest_step_tokens_per_s"],
            }
    return summary


def table(results: dict[str, Any]) -> str:
    """The Markdown table of medians, ranges, ratios and MFU."""
    summary = results["summary"]
    lines = [
        "| precision | loop | tokens/s, median of rounds | min–max | fastest step, tokens/s | "
        "ckptlab ÷ this: medians | per-round | fastest steps | MFU: median | fastest step |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for precision in results["settings"]["precisions"]:
        for impl in IMPLS:
            cell = summary[f"{impl}/{precision}"]
            ratios = "— | — | —"
            if impl != "ckptlab":
                pair = summary[f"ckptlab/{impl}/{precision}"]
                ratios = (
                    f"{pair['ratio_of_medians']:.2f}× | {pair['median_per_round_ratio']:.2f}× | "
                    f"{pair['ratio_of_fastest_steps']:.2f}×"
                )
            lines.append(
                f"| {precision} | {impl} | {cell['tokens_per_s_median']:,.0f} | "
                f"{cell['tokens_per_s_min']:,.0f}–{cell['tokens_per_s_max']:,.0f} | "
                f"{cell['fastest_step_tokens_per_s']:,.0f} | {ratios} | "
                f"{100 * cell['mfu']:.0f}% | {100 * cell['mfu_fastest_step']:.0f}% |"
            )
    peaks = results["matmul_peak_gflops"]
    lines.append("")
    lines.append(
        f"Matmul peak (2048×2048, {results['machine']['threads']} threads, best burst median): "
        f"fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s. "
        f"FLOPs per token {results['flops']['flops_per_token'] / 1e6:.2f} M "
        f"(6·N + 12·L·d·T, N = {results['flops']['params_in_matmuls']:,})."
    )
    settings = results["settings"]
    lines.append(
        f"{settings['steps']} measured steps after {settings['warmup']} warm-up steps, "
        f"{settings['repeats']} rounds, {settings['tokens_per_step']:,} tokens per step."
    )
    return "\n".join(lines)


def update_section(path: Path, body: str) -> None:
    """Replace the generated section of `path` between the markers (append it if absent)."""
    block = f"{SECTION_BEGIN}\n{body}\n{SECTION_END}"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if SECTION_BEGIN in text and SECTION_END in text:
        pattern = re.compile(re.escape(SECTION_BEGIN) + ".*?" + re.escape(SECTION_END), re.S)
        text = pattern.sub(lambda _: block, text)
    else:
        text = text + ("\n" if text and not text.endswith("\n") else "") + block + "\n"
    path.write_text(text, encoding="utf-8")


def _durations(marks: list[float]) -> list[float]:
    # Seconds between consecutive step boundaries, warm-up included (to check it was long enough).
    return [round(b - a, 4) for a, b in zip(marks, marks[1:])]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=15, help="measured optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them (compilation happens here)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; each runs every loop once, order rotated")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    parser.add_argument(
        "--trainer-optim",
        default="adamw_torch",
        help="Trainer optimizer (adamw_torch = the same torch.optim.AdamW as the other two)",
    )
    parser.add_argument("--results", default=str(HERE / "results" / "train_throughput.json"))
    parser.add_argument("--out", help="Markdown file whose generated section gets the table (e.g. BENCHMARKS.md)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    parser.add_argument(
        "--render", metavar="RESULTS_JSON", help="measure nothing: print (and --out) the table of a results file"
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 1 or args.repeats < 1:
        parser.error("--steps, --warmup and --repeats must be ≥ 1")
    if set(args.precisions.split(",")) - {"fp32", "bf16"}:
        parser.error("--precisions: expected a comma-separated list of fp32 and bf16")
    if args.render:
        results = json.loads(Path(args.render).read_text(encoding="utf-8"))
    else:
        results = measure(args, log=lambda message: print(message, file=sys.stderr, flush=True))
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=1) if args.json else table(results))
    if args.out:
        update_section(Path(args.out), table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
