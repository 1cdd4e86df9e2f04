"""The training verbs' shared config: optimisation and bookkeeping (`TrainConfig`), and the keys every
training verb has (`TrainingVerbConfig`: out, train, keep, resume, allow_changed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from ckptlab.errors import ConfigError
from ckptlab.train.schedules import KeepConfig, ScheduleConfig

CHANGEABLE_ON_RESUME = ("data", "tokenizer", "model", "batch")


def check_allow_changed(items: Sequence[str]) -> None:
    """The `allow_changed` key of every training verb names only changes a resume can check."""
    unknown = sorted(set(items) - set(CHANGEABLE_ON_RESUME))
    if unknown:
        raise ConfigError(
            f"allow_changed: unknown item '{unknown[0]}' (expected any of {', '.join(CHANGEABLE_ON_RESUME)})"
        )


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping settings shared by every training verb."""

    max_steps: int = 100
    """Optimizer steps in the run (the schedule spans them)."""
    micro_batch_size: int = 8
    """Sequences per forward/backward pass on each process."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step; global batch = micro_batch_size × grad_accum_steps × processes."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Learning-rate schedule."""
    weight_decay: float = 0.1
    """AdamW weight decay, applied to matrices only (not to biases, norms or embeddings' biases)."""
    beta1: float = 0.9
    """AdamW β1."""
    beta2: float = 0.95
    """AdamW β2."""
    eps: float = 1e-8
    """AdamW ε."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 = no clipping; the norm is still logged)."""
    val_every: int = 50
    """Compute validation loss every this many steps, at every kept step and at the end (0 = never)."""
    val_batches: int = 4
    """Micro-batches of held-out data per validation."""
    save_every: int = 50
    """Write a resume checkpoint every this many steps (0 = only kept steps and on SIGTERM)."""
    resume_checkpoints: int = 2
    """Retain resume checkpoints until this many newer checkpoints exist, so a corrupt newest one has a fallback."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """bf16 runs matmuls under autocast (weights and optimizer stay fp32); auto = bf16 on CUDA, fp32 on CPU."""
    tf32: bool = True
    """On CUDA, let fp32 matmuls and convolutions use TF32 tensor cores (no effect on CPU)."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass instead of keeping them (less memory, ~1/3 more
    compute)."""
    parallelism: Literal["ddp", "fsdp"] = "ddp"
    """Under torchrun with several processes: ddp (every process holds the whole model) or fsdp (parameters, gradients
    and optimizer state sharded per transformer block)."""
    compile: bool = False
    """Wrap the model in torch.compile (first step is slow: ~30 s cold on CPU)."""
    device: str = "auto"
    """cpu, cuda, or auto (CUDA when available)."""
    seed: int = 0
    """Seed of initialisation, data order and dropout."""
    progress: bool = True
    """Show a progress bar with loss, tokens/s and ETA (on stderr)."""
    tensorboard: bool = False
    """Also write TensorBoard scalars under RUN/tensorboard: the same as listing tensorboard in report_to."""
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = field(default_factory=list)
    """Experiment trackers that also get every metrics line, the config and the compute record (docs/design.md; pip
    install 'ckptlab[wandb]' etc.; WANDB_* and MLFLOW_* variables are honoured); train.tensorboard true adds
    tensorboard."""
    device_power_w: float | None = None
    """Power drawn per device (watts) for the energy estimate in run.json's compute record; null = 65 on CPU, 700 on
    CUDA."""

    def __post_init__(self) -> None:
        # None is left to a subclass that resolves it later (fine-tuning's steps follow from the data).
        for name in ("max_steps", "micro_batch_size", "grad_accum_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"train.{name}: expected a positive integer, got {value}")
        if self.resume_checkpoints < 1:
            raise ConfigError(f"train.resume_checkpoints: expected a positive integer, got {self.resume_checkpoints}")
        for name in ("val_every", "val_batches", "save_every"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"train.{name}: expected an integer ≥ 0, got {value}")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ConfigError("train.grad_clip and train.weight_decay must be ≥ 0")
        if self.device_power_w is not None and not (math.isfinite(self.device_power_w) and self.device_power_w >= 0):
            raise ConfigError(f"train.device_power_w: expected watts ≥ 0, got {self.device_power_w}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigError(f"train.device: expected auto, cpu or cuda, got {self.device!r}")

    def trackers(self) -> list[str]:
        """The experiment trackers to log to: report_to, and tensorboard when train.tensorboard asks for it."""
        return list(dict.fromkeys([*self.report_to, *(["tensorboard"] if self.tensorboard else [])]))

    def global_batch(self, processes: int) -> int:
        """Sequences per optimizer step over all `processes` (data-parallel ranks)."""
        return self.micro_batch_size * self.grad_accum_steps * processes


@dataclass
class TrainingVerbConfig:
    """The keys every training verb (pretrain, cpt, finetune) has; each verb adds its own."""

    out: str = "runs/run"
    """Run directory: config.yaml, metrics.jsonl, run.json and checkpoints/ go here."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation, schedule, precision and bookkeeping."""
    keep: KeepConfig = field(default_factory=KeepConfig)
    """Which steps keep a checkpoint for fine-tuning and evaluation later."""
    resume: bool = False
    """Continue from the newest complete checkpoint in `out` (starts fresh if there is none)."""
    allow_changed: list[str] = field(default_factory=list)
    """On resume, accept these changes since the checkpoint: data, tokenizer, model, batch."""

    def __post_init__(self) -> None:
        check_allow_changed(self.allow_changed)
