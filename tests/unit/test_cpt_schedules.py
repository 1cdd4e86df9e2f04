"""Schedules for continued pre-training: the reuse recipe, the infinite schedule, LR-driven switches."""

from __future__ import annotations

import pytest

from ckptlab.commands.cpt import CptConfig, _switch_step
from ckptlab.config import load
from ckptlab.errors import ConfigError
from ckptlab.train.schedules import (
    ScheduleConfig,
    first_step_at_or_below,
    lr_at,
    peak_lr,
    reuse_schedule,
)


def test_reuse_schedule_starts_at_min_lr_without_warmup_and_ends_at_one_hundredth():
    schedule = reuse_schedule(3e-4)
    rates = [lr_at(k, schedule, 200) for k in range(200)]
    assert rates[0] == 3e-4 and peak_lr(schedule, 200) == 3e-4  # no warm-up: the first step is the peak
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert rates[-1] == pytest.approx(3e-6, rel=1e-9)
    switch = first_step_at_or_below(schedule, 200, 0.2 * 3e-4)
    assert rates[switch] <= 6e-5 < rates[switch - 1]
    # cosine from 1 to 0.01 reaches 1/5 of the peak at progress acos(2·(0.2-0.01)/0.99 - 1)/π = 0.7113,
    # i.e. after step 0.7113 × 199 = 141.5 of the 0-based steps 0..199
    assert switch == 142


def test_reuse_constants_are_configurable():
    schedule = reuse_schedule(1e-3, decay_to_fraction=0.1)
    assert lr_at(99, schedule, 100) == pytest.approx(1e-4)
    with pytest.raises(ConfigError, match="starting learning rate"):
        reuse_schedule(0.0)


def test_infinite_schedule_shape():
    s = ScheduleConfig(
        name="infinite",
        lr=1.0,
        min_lr=0.0,
        constant_lr=0.25,
        warmup_steps=10,
        cooldown_steps=20,
        decay_steps=30,
        warmup_start_lr=0.0,
    )
    rates = [lr_at(k, s, 100) for k in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)  # linear warm-up
    cooldown = rates[10:30]
    assert all(a > b for a, b in zip([1.0] + cooldown, cooldown)) and cooldown[-1] == pytest.approx(0.25)
    assert rates[30:70] == [0.25] * 40  # constant: any of these steps can be continued or annealed from
    anneal = rates[70:]
    assert all(a > b for a, b in zip([0.25] + anneal, anneal)) and anneal[-1] == pytest.approx(0.0)
    assert rates[85] == pytest.approx(0.25 * (1 - 16 / 30))  # linear anneal


def test_infinite_schedule_needs_its_constant_lr():
    with pytest.raises(ConfigError, match="constant_lr"):
        ScheduleConfig(name="infinite", lr=1e-3)
    s = ScheduleConfig(name="infinite", lr=1.0, min_lr=0.1, constant_lr=0.5)  # no cooldown: a step down
    rates = [lr_at(k, s, 10) for k in range(10)]
    assert rates[:8] == [0.5] * 8 and rates[-1] == pytest.approx(0.1)


def test_switch_at_lr_ignores_a_rewarming_that_starts_below_the_threshold():
    rewarm = ScheduleConfig(name="cosine", lr=1e-3, min_lr=1e-5, warmup_steps=5, warmup_start_lr=0.0)
    step = first_step_at_or_below(rewarm, 50, 2e-4)
    assert step > 5 and lr_at(step, rewarm, 50) <= 2e-4 < lr_at(step - 1, rewarm, 50)
    assert first_step_at_or_below(rewarm, 50, 1e-6) is None
    flat = ScheduleConfig(name="constant", lr=1e-4)
    assert first_step_at_or_below(flat, 10, 1e-4) == 0


def test_switch_step_from_the_config():
    common = [
        "--second_blend",
        "d2",
        "--train.max_steps",
        "40",
        "--train.schedule.lr",
        "1e-3",
        "--train.schedule.min_lr",
        "1e-5",
        "--train.schedule.warmup_steps",
        "4",
    ]
    assert _switch_step(load(CptConfig, common + ["--switch_step", "7"])) == 7
    by_lr = load(CptConfig, common + ["--switch_at_lr", "5e-4"])
    expected = next(k for k in range(4, 40) if lr_at(k, by_lr.train.schedule, 40) <= 5e-4)
    assert _switch_step(by_lr) == expected and expected > 4
    assert _switch_step(load(CptConfig, ["--blend", "d1"])) is None
    with pytest.raises(ConfigError, match="switch_at_lr: the LR does not fall to 1e-06"):
        _switch_step(load(CptConfig, common + ["--switch_at_lr", "1e-6"]))
