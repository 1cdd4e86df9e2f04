"""`ckptlab demo`: the main job on built-in data, offline, on a CPU in minutes.

Stages, each skipped when its output is already complete, so an interrupted demo resumes:

1. generate the built-in synthetic world (`ckptlab world`);
2. prepare its general corpus into token shards with a trained BPE tokenizer (`ckptlab prepare`);
3. pre-train a small GPT-NeoX keeping Pythia-style log-spaced checkpoints (`ckptlab pretrain`).

It ends with a table of the kept checkpoints (step, tokens seen, validation loss) and where they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ckptlab.errors import ConfigError

# Per world size: (model size, vocabulary, context, optimizer steps, keep every).
DEMO_PLANS = {
    "tiny": ("tiny", 512, 64, 40, 20),
    "demo": ("small", 2048, 128, 800, 200),
    "large": ("demo", 8192, 256, 4000, 1000),
}


@dataclass
class DemoConfig:
    """The demo study on the built-in world."""

    out: str = "demo-out"
    """Directory for everything the demo writes: world/, data/, runs/pretrain/."""
    size: Literal["tiny", "demo", "large"] = "demo"
    """World and model scale: tiny (seconds, for tests), demo (minutes), large (an hour or more)."""
    seed: int = 0
    """Seed of the world, the tokenizer split, initialisation and data order."""
    max_steps: int = 0
    """Pre-training steps (0 = the size's default)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Training precision (bf16 is faster on CPUs with AMX and on GPUs)."""
    device: str = "auto"
    """cpu, cuda, or auto."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        if self.max_steps < 0:
            raise ConfigError(f"max_steps: expected an integer ≥ 0, got {self.max_steps}")


def demo(config: DemoConfig) -> int:
    """Run (or resume) the demo; returns the exit code."""
    from ckptlab.data.shards import MANIFEST as DATA_MANIFEST
    from ckptlab.model import ModelConfig
    from ckptlab.prepare import PrepareConfig, prepare
    from ckptlab.pretrain import PretrainConfig, pretrain
    from ckptlab.train.loop import TrainConfig
    from ckptlab.train.run_dir import RunDir
    from ckptlab.train.schedules import KeepConfig, ScheduleConfig
    from ckptlab.world import WorldConfig, world

    out = Path(config.out)
    model_size, vocab, context, steps, keep_every = DEMO_PLANS[config.size]
    steps = config.max_steps or steps

    world_dir = out / "world"
    if (world_dir / "world.json").exists():
        print(f"[1/3] world: {world_dir} exists, kept")
    else:
        print(f"[1/3] world: generating the {config.size} world")
        world(WorldConfig(out=str(world_dir), seed=config.seed, size=config.size))

    data_dir = out / "data"
    if (data_dir / DATA_MANIFEST).exists():
        print(f"[2/3] prepare: {data_dir} exists, kept")
    else:
        print("[2/3] prepare: tokenizing the general corpus")
        prepare(PrepareConfig(sources=[str(world_dir / "corpus" / "general.txt")], out=str(data_dir),
                              vocab_size=vocab, val_fraction=0.02, seed=config.seed))

    print("[3/3] pretrain: keeping log-spaced checkpoints (resumes if interrupted)")
    run = RunDir(out / "runs" / "pretrain")
    pretrain(PretrainConfig(
        data=str(data_dir),
        out=str(run.root),
        model=ModelConfig(size=model_size, context_length=context),
        train=TrainConfig(
            max_steps=steps, micro_batch_size=16, precision=config.precision, device=config.device,
            seed=config.seed, progress=config.progress, val_every=max(1, steps // 8), save_every=max(1, steps // 8),
            schedule=ScheduleConfig(name="cosine", lr=2e-3, min_lr=2e-4, warmup_steps=max(1, steps // 20)),
        ),
        keep=KeepConfig(schedule="log", every=keep_every),
        resume=True,
    ))
    manifest = run.read_run_manifest()
    print("\nkept checkpoints:")
    print(f"  {'step':>6}  {'tokens':>10}  {'val loss':>8}  path")
    for entry in manifest["checkpoints"]:
        if entry["kept"]:
            val = f"{entry['val_loss']:.4f}" if entry.get("val_loss") is not None else "-"
            print(f"  {entry['step']:>6}  {entry['tokens_seen']:>10,}  {val:>8}  {run.root / entry['path']}")
    print(f"\nrun manifest: {run.manifest}")
    return 0
