"""Learning-rate schedules and kept-checkpoint schedules, as pure functions of the step.

Because the learning rate is a function of the step alone, resuming a run needs no scheduler
state: the resumed process computes the same rate for the same step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from ckptlab.errors import ConfigError

ScheduleName = Literal["cosine", "linear", "constant", "wsd", "infinite"]


@dataclass
class ScheduleConfig:
    """How the learning rate moves with the optimizer step."""

    name: ScheduleName = "cosine"
    """cosine: warm-up then cosine decay to min_lr; linear: warm-up then linear decay to min_lr; constant: warm-up then
    flat; wsd: warm-up, stable at lr, then a linear decay over the last decay_steps steps; infinite (Ibrahim et al.
    2024): warm-up, cosine cooldown from lr to constant_lr over cooldown_steps, constant, then a linear anneal to
    min_lr over the last decay_steps steps."""
    lr: float = 3e-4
    """Peak learning rate, reached at the end of the warm-up."""
    min_lr: float = 3e-5
    """Final learning rate of the decay (cosine, linear, wsd, infinite)."""
    warmup_steps: int = 0
    """Linear warm-up from warmup_start_lr to lr over this many steps."""
    warmup_fraction: float = 0.0
    """Warm-up as a fraction of the total steps; used when warmup_steps is 0 (e.g. 0.03)."""
    warmup_start_lr: float = 0.0
    """Learning rate the warm-up starts from (continued pre-training re-warms from here)."""
    decay_steps: int = 0
    """wsd and infinite: length of the final decay (anneal) phase (0 = the last 20% of the steps)."""
    cooldown_steps: int = 0
    """infinite only: steps of the cosine cooldown from lr to constant_lr right after the warm-up (0 = drop at once)."""
    constant_lr: float = 0.0
    """infinite only: the learning rate held between the cooldown and the final anneal (must be > 0)."""

    def __post_init__(self) -> None:
        if self.lr < 0 or self.min_lr < 0 or self.warmup_start_lr < 0:
            raise ConfigError("schedule: lr, min_lr and warmup_start_lr must be ≥ 0")
        if self.warmup_steps < 0 or self.decay_steps < 0 or self.cooldown_steps < 0:
            raise ConfigError("schedule: warmup_steps, decay_steps and cooldown_steps must be ≥ 0")
        if self.constant_lr < 0:
            raise ConfigError(f"schedule.constant_lr: expected a number ≥ 0, got {self.constant_lr}")
        if self.name == "infinite" and self.constant_lr <= 0:
            raise ConfigError("schedule.constant_lr: the infinite schedule needs the constant learning rate (> 0)")
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
    if schedule.name == "infinite":
        return _infinite(step, schedule, total_steps, warmup)
    span = max(1, total_steps - warmup - 1)
    progress = min(1.0, (step - warmup) / span)
    if schedule.name == "linear":
        return schedule.lr + (schedule.min_lr - schedule.lr) * progress
    return schedule.min_lr + 0.5 * (schedule.lr - schedule.min_lr) * (1 + math.cos(math.pi * progress))


def _infinite(step: int, schedule: ScheduleConfig, total_steps: int, warmup: int) -> float:
    # Ibrahim et al. 2024: the constant phase can go on for any number of steps, and any of its
    # steps can be annealed from, so continuing later needs no re-warming; this run anneals at its end.
    decay = schedule.decay_steps or max(1, int(round(0.2 * total_steps)))
    anneal_start = max(warmup, total_steps - decay)
    cooldown_end = min(warmup + schedule.cooldown_steps, anneal_start)
    if step < cooldown_end:
        progress = (step - warmup + 1) / schedule.cooldown_steps
        return schedule.constant_lr + 0.5 * (schedule.lr - schedule.constant_lr) * (1 + math.cos(math.pi * progress))
    if step < anneal_start:
        return schedule.constant_lr
    progress = min(1.0, (step - anneal_start + 1) / max(1, total_steps - anneal_start))
    return schedule.constant_lr + (schedule.min_lr - schedule.constant_lr) * progress


def reuse_schedule(start_lr: float, decay_to_fraction: float = 0.01) -> ScheduleConfig:
    """The continued-pretraining schedule of Parmar et al. 2024 (*Reuse, Don't Retrain*).

    Starts at `start_lr` (the pre-training run's minimum learning rate) with no warm-up and
    cosine-decays to `start_lr * decay_to_fraction` at the last step.
    """
    if start_lr <= 0:
        raise ConfigError(f"reuse schedule: the starting learning rate must be > 0, got {start_lr}")
    if not 0 <= decay_to_fraction <= 1:
        raise ConfigError(f"reuse.decay_to_fraction: expected 0 ≤ x ≤ 1, got {decay_to_fraction}")
    return ScheduleConfig(name="cosine", lr=start_lr, min_lr=start_lr * decay_to_fraction, warmup_steps=0)


def peak_lr(schedule: ScheduleConfig, total_steps: int) -> float:
    """The largest learning rate of the run."""
    return max(lr_at(step, schedule, total_steps) for step in range(total_steps))


def first_step_at_or_below(schedule: ScheduleConfig, total_steps: int, threshold: float) -> int | None:
    """The first 0-based step whose learning rate is ≤ `threshold` after the schedule has been above it.

    Steps of a warm-up that starts below the threshold do not count: a blend switch meant for the
    decay must not fire at step 0 of a re-warming. None when the rate never falls to the threshold.
    """
    warms_up = (schedule.warmup_steps or int(round(schedule.warmup_fraction * total_steps))) > 0
    risen = False
    for step in range(total_steps):
        rate = lr_at(step, schedule, total_steps)
        if rate <= threshold and (risen or not warms_up):
            return step
        risen = risen or rate > threshold
    return None


@dataclass
class KeepConfig:
    """Which steps keep a checkpoint for later fine-tuning and evaluation."""

    schedule: Literal["log", "every", "list", "none"] = "log"
    """log: steps 0, 1, 2, 4, … below `every`, then every `every` steps (as Pythia keeps); every: multiples of `every`,
    0 included; list: exactly `steps`; none: only the final step."""
    every: int = 1000
    """Interval of the every and log schedules."""
    steps: list[int] = field(default_factory=list)
    """Explicit steps to keep (schedule: list), e.g. [0, 100, 500]."""
    final: bool = True
    """Also keep the final step of the run."""
    optimizer_state: bool = False
    """Keep the optimizer state in kept checkpoints older than the newest train.resume_checkpoints (false: they
    become weights-only, a third of the bytes with AdamW; true for continuing pre-training from them with carried
    moments)."""

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
