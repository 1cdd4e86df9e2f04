"""LR schedules and kept-step schedules are pure functions of the step."""

import math

import pytest

from ckptlab.errors import ConfigError
from ckptlab.train.schedules import KeepConfig, ScheduleConfig, kept_steps, lr_at


def test_cosine_warms_up_then_decays_to_min():
    s = ScheduleConfig(name="cosine", lr=1.0, min_lr=0.1, warmup_steps=10)
    rates = [lr_at(k, s, 100) for k in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
    assert rates[-1] == pytest.approx(0.1)


def test_linear_with_warmup_fraction():
    s = ScheduleConfig(name="linear", lr=2e-6, min_lr=0.0, warmup_fraction=0.03)
    assert lr_at(2, s, 100) == pytest.approx(2e-6)  # warm-up of 3 steps ends at step 2
    assert lr_at(99, s, 100) == pytest.approx(0.0)
    assert lr_at(51, s, 100) == pytest.approx(1e-6, rel=0.05)


def test_constant_and_wsd():
    assert {lr_at(k, ScheduleConfig(name="constant", lr=0.5), 50) for k in range(50)} == {0.5}
    s = ScheduleConfig(name="wsd", lr=1.0, min_lr=0.0, warmup_steps=5, decay_steps=10)
    rates = [lr_at(k, s, 100) for k in range(100)]
    assert rates[5:90] == [1.0] * 85
    assert rates[-1] == pytest.approx(0.0) and rates[90] < 1.0


def test_schedule_is_a_pure_function():
    s = ScheduleConfig(name="cosine", lr=1e-3, min_lr=1e-5, warmup_steps=3)
    assert [lr_at(k, s, 40) for k in range(40)] == [lr_at(k, s, 40) for k in range(40)]
    assert math.isfinite(lr_at(0, ScheduleConfig(), 1))


def test_kept_steps_log_like_pythia():
    steps = kept_steps(KeepConfig(schedule="log", every=1000), 3000)
    assert steps == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 3000]


def test_kept_steps_every_list_none():
    assert kept_steps(KeepConfig(schedule="every", every=25), 60) == [0, 25, 50, 60]
    assert kept_steps(KeepConfig(schedule="list", steps=[5, 1, 500]), 100) == [1, 5, 100]
    assert kept_steps(KeepConfig(schedule="none"), 10) == [10]
    assert kept_steps(KeepConfig(schedule="none", final=False), 10) == []


def test_bad_schedule_values():
    with pytest.raises(ConfigError, match="keep.every"):
        KeepConfig(every=0)
    with pytest.raises(ConfigError, match="warmup_fraction"):
        ScheduleConfig(warmup_fraction=1.5)
