"""Learning-rate schedules and kept-checkpoint schedules, as pure functions of the step.

Because the learning rate is a function of the step alone, resuming a run needs no scheduler
state: the resumed process computes the same rate for the same step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from ckptlab.errors import ConfigError

ScheduleName = Literal["cosine", "linear", "constant", "wsd"]


@dataclass
class ScheduleConfig:
    """How the learning rate moves with the optimizer step."""

    name: ScheduleName = "cosine"
    """cosine: warm-up then cosine decay to min_lr; linear: warm-up then linear decay to min_lr; constant: warm-up then flat; wsd: warm-up, stable at lr, then a linear decay over the last decay_steps steps."""
    lr: float = 3e-4
    """Peak learning rate, reached at the end of the warm-up."""
    min_lr: float = 3e-5
    """Final learning rate of the decay (cosine, linear, wsd)."""
    warmup_steps: int = 0
    """Linear warm-up from warmup_start_lr to lr over this many steps."""
    warmup_fraction: float = 0.0
    """Warm-up as a fraction of the total steps; used when warmup_steps is 0 (e.g. 0.03)."""
    warmup_start_lr: float = 0.0
    """Learning rate at step 0 of the warm-up."""
    decay_steps: int = 0
    """wsd only: length of the final decay phase (0 = the last 20% of the steps)."""

    def __post_init__(self) -> None:
        if self.lr < 0 or self.min_lr < 0 or self.warmup_start_lr < 0:
            raise ConfigError("schedule: lr, min_lr and warmup_start_lr must be ≥ 0")
        if self.warmup_steps < 0 or self.decay_steps < 0:
            raise ConfigError("schedule: warmup_steps and decay_steps must be ≥ 0")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError(f"schedule.warmup_fraction: expected 0 ≤ x < 1, got {self.warmup_fraction}")


def lr_at(step: int, schedule: ScheduleConfig, total_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based) of a run of `total_steps` steps."""
    warmup = schedule.warmup_steps or int(round(schedule.warmup_fraction * total_steps))
    if step < warmup:
        return schedule.warmup_start_lr + (schedule.lr - schedule.warmup_start_lr) * (step + 1) / warmup
    if schedule.name == "constant":
        return schedule.lr
    if schedule.name == "wsd":
        decay = schedule.decay_steps or max(1, int(round(0.2 * total_steps)))
        decay_start = max(warmup, total_steps - decay)
        if step < decay_start:
            return schedule.lr
        progress = min(1.0, (step - decay_start + 1) / max(1, total_steps - decay_start))
        return schedule.lr + (schedule.min_lr - schedule.lr) * progress
    span = max(1, total_steps - warmup - 1)
    progress = min(1.0, (step - warmup) / span)
    if schedule.name == "linear":
        return schedule.lr + (schedule.min_lr - schedule.lr) * progress
    return schedule.min_lr + 0.5 * (schedule.lr - schedule.min_lr) * (1 + math.cos(math.pi * progress))


@dataclass
class KeepConfig:
    """Which steps keep a checkpoint for later fine-tuning and evaluation."""

    schedule: Literal["log", "every", "list", "none"] = "log"
    """log: steps 0, 1, 2, 4, … below `every`, then every `every` steps (as Pythia keeps); every: multiples of `every`, 0 included; list: exactly `steps`; none: only the final step."""
    every: int = 1000
    """Interval of the every and log schedules."""
    steps: list[int] = field(default_factory=list)
    """Explicit steps to keep (schedule: list), e.g. [0, 100, 500]."""
    final: bool = True
    """Also keep the final step of the run."""

    def __post_init__(self) -> None:
        if self.every <= 0:
            raise ConfigError(f"keep.every: expected a positive integer, got {self.every}")
        if any(s < 0 for s in self.steps):
            raise ConfigError("keep.steps: steps must be ≥ 0")
        if self.schedule == "list" and not self.steps:
            raise ConfigError("keep.steps: schedule 'list' needs at least one step")


def kept_steps(keep: KeepConfig, total_steps: int) -> list[int]:
    """The sorted steps (0..total_steps) whose checkpoints are kept.

    Step k means "after k optimizer updates"; step 0 is the initialisation.
    """
    if keep.schedule == "list":
        steps = {s for s in keep.steps if s <= total_steps}
    elif keep.schedule == "every":
        steps = set(range(0, total_steps + 1, keep.every))
    elif keep.schedule == "log":
        steps = {0}
        power = 1
        while power < keep.every and power <= total_steps:
            steps.add(power)
            power *= 2
        steps.update(range(keep.every, total_steps + 1, keep.every))
    else:
        steps = set()
    if keep.final:
        steps.add(total_steps)
    return sorted(steps)
