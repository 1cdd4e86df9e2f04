"""`ckptlab demo`: the whole study on built-in data, offline, on a CPU in minutes.

Stages, each skipped (or resumed) when its output is already complete, so an interrupted demo
picks up where it stopped:

1. generate the built-in synthetic world (`ckptlab world`);
2. prepare its general corpus into token shards with a trained BPE tokenizer (`ckptlab prepare`);
3. pre-train a small GPT-NeoX keeping Pythia-style log-spaced checkpoints (`ckptlab pretrain`);
4. a sweep (`ckptlab sweep`): fine-tune every chosen checkpoint on the world's NLI, paraphrase
   and summarization tasks, and evaluate every base and fine-tuned model on eight eval sets
   (in-task, cross-domain, knowledge probes) under the three prompt templates; with Ray installed
   the jobs run one per CPU core on a local Ray cluster, else one after another in this process;
5. the report (`ckptlab report`): heatmaps, gains, forgetting, prompt sensitivity and the four
   findings of Sun & Dredze 2024, computed from this run.

It ends by printing where the report is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ckptlab.errors import ConfigError


@dataclass(frozen=True)
class DemoPlan:
    """The scale of one demo size."""

    model_size: str
    vocab: int
    context: int
    pretrain_steps: int
    keep_every: int
    sweep_steps: tuple[int, ...]
    """Kept pre-training checkpoints that the sweep fine-tunes and evaluates."""
    finetune_steps: int
    finetune_batch: int
    finetune_lr: float
    eval_limit: int
    """Items scored per eval set and template."""


DEMO_PLANS = {
    "tiny": DemoPlan("tiny", 512, 128, 40, 20, (8, 40), 6, 8, 1e-3, 8),
    "demo": DemoPlan("small", 2048, 128, 800, 200, (16, 32, 64, 128, 200, 400, 600, 800), 260, 16, 1e-3, 72),
    "large": DemoPlan("demo", 8192, 256, 4000, 1000, (64, 128, 256, 512, 1000, 2000, 3000, 4000), 600, 16, 5e-4, 300),
}

# The fine-tunes of every checkpoint: (name, task file under the world, tokens per training sequence,
# steps as a multiple of the plan's finetune_steps). Records of NLI and paraphrase fit in 64 tokens,
# biographies and their summaries in 128. NLI gets more steps: from the demo's step-800 checkpoint
# three seeds of 600 steps reached 56-63% (chance 33%), while of three seeds of 390 steps one stayed
# at chance (docs/world.md); summarization, the costliest per step, reaches most of its ROUGE-L
# sooner, and pays for it.
FINETUNES = [
    ("nli", "tasks/world_nli.yaml", 64, 2.3),
    ("paraphrase", "tasks/world_paraphrase.yaml", 64, 1.0),
    ("summarization", "tasks/world_summarization.yaml", 128, 0.6),
]
# Eight eval sets: the three fine-tuning tasks, their cross-domain twins (finance), and the two
# closed-book knowledge probes (facts stated only in the general / only in the domain corpus).
EVAL_SETS = [
    "world_nli",
    "world_paraphrase",
    "world_summarization",
    "world_knowledge",
    "finance_nli",
    "finance_paraphrase",
    "finance_summarization",
    "finance_qa",
]


@dataclass
class DemoConfig:
    """The demo study on the built-in world."""

    out: str = "demo-out"
    """Directory for everything the demo writes: world/, data/, runs/pretrain/, sweep/, report/."""
    size: Literal["tiny", "demo", "large"] = "demo"
    """World and model scale: tiny (seconds, for tests), demo (minutes), large (an hour or more)."""
    seed: int = 0
    """Seed of the world, the tokenizer split, initialisation and data order."""
    max_steps: int = 0
    """Pre-training steps (0 = the size's default)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Training precision: auto = bf16 autocast on CUDA, fp32 on CPU (bf16 is faster on CPUs with AMX too)."""
    device: str = "auto"
    """cpu, cuda, or auto."""
    executor: Literal["auto", "local", "ray"] = "auto"
    """Where the sweep's jobs run: ray (one job per CPU core on a local Ray cluster, each on one thread), local (one
    after another in this process), auto (ray when it is installed)."""
    progress: bool = True
    """Show progress bars and the sweep's per-job progress lines."""

    def __post_init__(self) -> None:
        if self.max_steps < 0:
            raise ConfigError(f"max_steps: expected an integer ≥ 0, got {self.max_steps}")


def demo(config: DemoConfig) -> int:
    """Run (or resume) the demo; returns the exit code."""
    out = Path(config.out)
    plan = DEMO_PLANS[config.size]
    steps = config.max_steps or plan.pretrain_steps
    timings: dict[str, float] = {}

    def stage(name: str, function: Any, *args: Any) -> Any:
        started = time.perf_counter()
        result = function(*args)
        timings[name] = time.perf_counter() - started
        return result

    world_dir = stage("world", _world, config, out)
    data_dir = stage("prepare", _prepare, config, plan, world_dir, out)
    run_root = stage("pretrain", _pretrain, config, plan, steps, data_dir, out)
    sweep_steps = [s for s in plan.sweep_steps if s <= steps] or [steps]
    summary = stage("sweep", _sweep, config, plan, sweep_steps, world_dir, run_root, out)
    print(
        f"sweep: {summary.executed} job(s) run now, {summary.states.get('done', 0)} of "
        f"{sum(summary.states.values())} done; results in {summary.results}"
    )
    if not summary.ok:
        print(
            f"\nthe sweep did not finish: {len(summary.failed)} job(s) failed, {len(summary.blocked)} blocked "
            f"(reasons above and in {out / 'sweep' / 'jobs'}/*/failed.json); re-run `ckptlab demo --out {out}` "
            "to retry them"
        )
        return 1
    report_path = stage("report", _report, world_dir, out)
    print("\nstage times: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items()))
    print(f"report: {report_path}")
    return 0


def _world(config: DemoConfig, out: Path) -> Path:
    from ckptlab.commands.world import WorldConfig, world

    world_dir = out / "world"
    if (world_dir / "world.json").exists():
        print(f"[1/5] world: {world_dir} exists, kept")
    else:
        print(f"[1/5] world: generating the {config.size} world")
        world(WorldConfig(out=str(world_dir), seed=config.seed, size=config.size))
    return world_dir


def _prepare(config: DemoConfig, plan: DemoPlan, world_dir: Path, out: Path) -> Path:
    from ckptlab.commands.prepare import PrepareConfig, prepare
    from ckptlab.data.shards import MANIFEST

    data_dir = out / "data"
    if (data_dir / MANIFEST).exists():
        print(f"[2/5] prepare: {data_dir} exists, kept")
    else:
        print("[2/5] prepare: tokenizing the general corpus")
        prepare(
            PrepareConfig(
                sources=[str(world_dir / "corpus" / "general.txt")],
                out=str(data_dir),
                vocab_size=plan.vocab,
                val_fraction=0.02,
                seed=config.seed,
            )
        )
    return data_dir


def _pretrain(config: DemoConfig, plan: DemoPlan, steps: int, data_dir: Path, out: Path) -> Path:
    from ckptlab.commands.pretrain import PretrainConfig, pretrain
    from ckptlab.models.hf import ModelConfig
    from ckptlab.runs.run_dir import RunDir
    from ckptlab.train.config import TrainConfig
    from ckptlab.train.schedules import KeepConfig, ScheduleConfig

    print("[3/5] pretrain: keeping log-spaced checkpoints (resumes if interrupted)")
    run = RunDir(out / "runs" / "pretrain")
    pretrain(
        PretrainConfig(
            data=str(data_dir),
            out=str(run.root),
            model=ModelConfig(size=plan.model_size, context_length=plan.context),
            train=TrainConfig(
                max_steps=steps,
                micro_batch_size=16,
                precision=config.precision,
                device=config.device,
                seed=config.seed,
                progress=config.progress,
                val_every=max(1, steps // 8),
                save_every=max(1, steps // 8),
                schedule=ScheduleConfig(name="cosine", lr=2e-3, min_lr=2e-4, warmup_steps=max(1, steps // 20)),
            ),
            keep=KeepConfig(schedule="log", every=plan.keep_every),
            resume=True,
        )
    )
    manifest = run.read_run_manifest()
    print("\nkept checkpoints:")
    print(f"  {'step':>6}  {'tokens':>10}  {'val loss':>8}")
    for entry in manifest["checkpoints"]:
        if entry["kept"]:
            val = f"{entry['val_loss']:.4f}" if entry.get("val_loss") is not None else "-"
            print(f"  {entry['step']:>6}  {entry['tokens_seen']:>10,}  {val:>8}")
    return run.root


def sweep_spec(
    config: DemoConfig, plan: DemoPlan, sweep_steps: list[int], world_dir: Path, run_root: Path, out: Path
) -> dict[str, Any]:
    """The demo's sweep as a sweep YAML would write it."""
    finetunes = []
    for name, task, max_length, steps_factor in FINETUNES:
        # Sun & Dredze 2024's recipe (full fine-tuning, no weight decay, the training-format
        # template) with a constant LR: at this model size a decaying one over a few hundred steps
        # stayed at chance (docs/world.md).
        finetunes.append(
            {
                "name": name,
                "config": {
                    "task": str(world_dir / task),
                    "template": "train_format",
                    "max_length": max_length,
                    "train.max_steps": max(1, round(plan.finetune_steps * steps_factor)),
                    "train.micro_batch_size": plan.finetune_batch,
                    "train.schedule.name": "constant",
                    "train.schedule.lr": plan.finetune_lr,
                    "train.schedule.warmup_fraction": 0.03,
                    "train.weight_decay": 0.0,
                    "train.precision": config.precision,
                    "train.device": config.device,
                    "train.seed": config.seed,
                    "keep.schedule": "none",
                },
            }
        )
    return {
        "name": "demo",
        "out": str(out / "sweep"),
        "checkpoints": [{"run": str(run_root), "steps": sweep_steps}],
        "finetunes": finetunes,
        "evaluate": {
            "tasks": [str(world_dir / "tasks" / f"{t}.yaml") for t in EVAL_SETS],
            "templates": ["all"],
            "shots": [0],
            "limit": plan.eval_limit,
            "device": config.device,
        },
        # On Ray, one job per core: these models are too small for two threads to help one job.
        "resources": {"finetune": {"num_cpus": 1}, "evaluate": {"num_cpus": 1}},
    }


def _sweep(
    config: DemoConfig, plan: DemoPlan, sweep_steps: list[int], world_dir: Path, run_root: Path, out: Path
) -> Any:
    import importlib.util

    from ckptlab.commands.sweep import run_sweep, spec_from_dict
    from ckptlab.sweeps.executors import RayOptions

    spec = spec_from_dict(sweep_spec(config, plan, sweep_steps, world_dir, run_root, out))
    executor = config.executor
    if executor == "auto":
        executor = "ray" if importlib.util.find_spec("ray") is not None else "local"
    print(
        f"\n[4/5] sweep: {len(sweep_steps)} checkpoints × {len(FINETUNES)} fine-tunes, "
        f"{len(EVAL_SETS)} eval sets × 3 templates, executor {executor} (skips what is done)"
    )
    ray_options = RayOptions() if executor == "ray" else None
    return run_sweep(spec, executor=executor, progress=config.progress, ray_options=ray_options)


def _report(world_dir: Path, out: Path) -> Path:
    from ckptlab.commands.report import ReportConfig, report

    print("\n[5/5] report")
    report_dir = out / "report"
    report(ReportConfig(sweep=str(out / "sweep"), out=str(report_dir), task_dirs=[str(world_dir)]))
    return report_dir / "report.html"
