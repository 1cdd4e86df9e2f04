"""Mixtures: a pure, exact allocation of global sample indices to sources; replay; staged blends."""

from __future__ import annotations

import random
from fractions import Fraction

import numpy as np
import pytest

from ckptlab.commands.cpt import BlendSource, CptConfig
from ckptlab.config import load
from ckptlab.data.batches import MixtureBatches
from ckptlab.data.mixture import Mixture
from ckptlab.errors import ConfigError


def random_weights(rng: random.Random, k: int) -> list[float]:
    weights = [rng.choice([0.0, rng.random(), rng.randint(1, 9) / 10]) for _ in range(k)]
    if sum(weights) == 0:
        weights[rng.randrange(k)] = 1.0
    return weights


def prefix_bounds(weights: list[float]) -> list[float]:
    """The documented bound B_j on |count_j(n) - n·w_j| (hierarchical rounding, in the order given)."""
    total = sum(Fraction(w) for w in weights)
    share = [Fraction(w) / total for w in weights]
    order = [j for j, w in enumerate(share) if w > 0]
    bounds = [0.0] * len(weights)
    done, harmonic = Fraction(0), 0.0
    for position, j in enumerate(order):
        last = position == len(order) - 1
        bounds[j] = (0.0 if last else 0.5) + 0.5 * float(share[j]) * harmonic
        done += share[j]
        if not last:
            harmonic += 1 / float(1 - done)
    return bounds


def test_locate_is_consistent_with_counts_and_a_bijection():
    """Sample i is the source's sample number count(i), and each source reads 0, 1, 2, … in order."""
    mixture = Mixture([[3, 1, 0, 2], [0, 1, 5, 1]], [57], replay_source=1, replay_fraction=0.1)
    seen: list[list[int]] = [[] for _ in range(4)]
    counts = mixture.counts(0)
    for i in range(400):
        source, position = mixture.locate(i)
        after = mixture.counts(i + 1)
        assert [a - b for a, b in zip(after, counts)] == [int(j == source) for j in range(4)]
        assert position == counts[source]
        seen[source].append(position)
        counts = after
    for positions in seen:
        assert positions == list(range(len(positions)))  # no repeats, no gaps, also across the switch
    assert seen[2][:1] == [0] and all(mixture.source_of(i) != 2 for i in range(57))  # blend 0 has no source 2


@pytest.mark.parametrize("switch, fraction", [(0, 0.2), (57, 0.1), (64, 0.25), (101, 0.0), (300, 0.5)])
def test_switch_is_exact_with_and_without_replay(switch, fraction):
    mixture = Mixture([[0, 1, 0], [0, 0, 1]], [switch], replay_source=0, replay_fraction=fraction)
    sources = [mixture.source_of(i) for i in range(400)]
    assert all(s in (0, 1) for s in sources[:switch]) and all(s in (0, 2) for s in sources[switch:])
    assert [mixture.blend_of(i) for i in (0, switch - 1, switch, 399)][-2:] == [1, 1]


def test_pure_function_fresh_instances_agree_in_any_order():
    args = ([[0.3, 0.2, 0.5], [0.1, 0.0, 0.9]], [1000])
    a, b = Mixture(*args, replay_source=0, replay_fraction=0.05), Mixture(*args, replay_source=0, replay_fraction=0.05)
    indices = list(range(2000))
    forward = [a.locate(i) for i in indices]
    random.Random(1).shuffle(indices)
    shuffled = dict(zip(indices, (b.locate(i) for i in indices)))
    assert forward == [shuffled[i] for i in range(2000)]
    assert a.locate(10**12 + 7) == b.locate(10**12 + 7)  # a resumed run far in is no slower or different


@pytest.mark.parametrize("seed", range(6))
def test_two_sources_within_one_sample_over_every_window(seed):
    rng = random.Random(seed)
    w = rng.choice([rng.random(), 0.25, 0.05, 0.5, 1 / 3])
    mixture = Mixture([[w, 1 - w]])
    n = 600
    counts = np.array([mixture.counts(k) for k in range(n + 1)])
    for a in range(0, n, 7):
        windows = counts[a + 1 :, 0] - counts[a, 0]
        expected = np.arange(1, n - a + 1) * w
        assert np.all(np.abs(windows - expected) < 1.0), (w, a)


@pytest.mark.parametrize("seed", range(8))
def test_k_sources_within_the_documented_bounds(seed):
    rng = random.Random(100 + seed)
    weights = random_weights(rng, rng.randint(3, 5))
    mixture = Mixture([weights])
    bounds = prefix_bounds(weights)
    share = np.array(weights) / sum(weights)
    n = 500
    counts = np.array([mixture.counts(k) for k in range(n + 1)])
    assert np.all(counts.sum(axis=1) == np.arange(n + 1))
    error = counts - np.outer(np.arange(n + 1), share)
    assert np.all(np.abs(error) <= np.array(bounds) + 1e-9), (weights, np.abs(error).max(axis=0), bounds)
    assert np.abs(error[:, 0]).max() <= 0.5 + 1e-9  # the first source: within one over any window


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.25, 0.5, 0.3])
def test_replay_within_one_sample_over_every_window_across_the_switch(fraction):
    mixture = Mixture([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]], [301], replay_source=0, replay_fraction=fraction)
    n = 700
    replayed = np.array([0] + list(np.cumsum([_is_replay(mixture, i) for i in range(n)])))
    for a in range(0, n, 5):
        windows = replayed[a + 1 :] - replayed[a]
        assert np.all(np.abs(windows - np.arange(1, n - a + 1) * fraction) < 1.0), a


def _is_replay(mixture: Mixture, i: int) -> bool:
    return mixture._replayed(i + 1) > mixture._replayed(i)


class Tagged:
    """A fake source: sample k of source s is [s, k, k+1, …] (length depends on the source)."""

    def __init__(self, tag: int, length: int) -> None:
        self.tag, self.length = tag, length

    def window(self, k: int) -> np.ndarray:
        return np.array([self.tag, k] + list(range(k + 1, k + self.length - 1)), dtype=np.int64)


@pytest.mark.parametrize("global_batch", [8, 12])
def test_batches_honour_replay_within_one_sample_over_any_window_of_steps(global_batch):
    """Counted from the rows the loop receives (their tags), not from the allocation."""
    fraction, steps = 0.25, 40
    mixture = Mixture(
        [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], [13 * global_batch], replay_source=0, replay_fraction=fraction
    )
    batches = MixtureBatches(mixture, [Tagged(0, 9), Tagged(1, 9), Tagged(2, 9)])
    tags = [
        batches.batch(range(s * global_batch, (s + 1) * global_batch))["input_ids"][:, 0].numpy() for s in range(steps)
    ]
    per_step = np.array([(t == 0).sum() for t in tags])
    for a in range(steps):
        for b in range(a + 1, steps + 1):
            assert abs(per_step[a:b].sum() - (b - a) * global_batch * fraction) < 1.0, (a, b)
    # The switch lands exactly on step 13's first sample: blend 1 before, blend 2 (source 2) after.
    assert all((t != 2).all() for t in tags[:13]) and all((t != 1).all() for t in tags[13:])


def test_batches_are_windows_with_shifted_labels_and_pad_when_lengths_differ():
    same = MixtureBatches(Mixture([[1.0, 1.0]]), [Tagged(0, 6), Tagged(1, 6)]).batch(range(4))
    assert set(same) == {"input_ids", "labels"}
    assert same["input_ids"].shape == (4, 5) and same["input_ids"].dtype.is_floating_point is False
    assert (same["labels"][:, :-1] == same["input_ids"][:, 1:]).all()
    mixed = MixtureBatches(Mixture([[1.0, 1.0]]), [Tagged(0, 6), Tagged(1, 4)], pad_id=7).batch(range(4))
    short = mixed["input_ids"][:, 0] == 1
    assert mixed["input_ids"].shape == (4, 5) and short.any() and (~short).any()
    assert (mixed["attention_mask"][short].sum(dim=1) == 3).all() and (mixed["attention_mask"][~short] == 1).all()
    assert (mixed["labels"][short][:, 3:] == -100).all() and (mixed["input_ids"][short][:, 3:] == 7).all()
    assert (mixed["labels"] != -100).sum() == mixed["attention_mask"].sum()


@pytest.mark.parametrize(
    "blends, kwargs, message",
    [
        ([[0.0, 0.0]], {}, "blend 0: weights sum to 0"),
        ([[1.0, -0.5]], {}, r"blend 0\[1\].weight: expected a number ≥ 0"),
        ([[1.0, float("nan")]], {}, "expected a finite number"),
        ([[1.0], [1.0]], {}, "need 1 switch point"),
        ([[1.0, 1.0]], {"replay_source": 0, "replay_fraction": 1.0}, "replay_fraction"),
        ([[1.0, 1.0]], {"replay_fraction": 0.2}, "needs a replay source"),
    ],
)
def test_bad_mixtures(blends, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Mixture(blends, **kwargs)


def test_blend_config_forms_and_errors():
    config = load(
        CptConfig, ["--blend", "data/a=3,data/b", "--second_blend", "[{data: data/c, weight: 2}]", "--switch_step", "5"]
    )
    assert config.blend == [BlendSource("data/a", 3.0), BlendSource("data/b", 1.0)]
    assert config.second_blend == [BlendSource("data/c", 2.0)]
    for argv, message in [
        (["--blend", "data/a=0,data/b=0"], "blend: weights sum to 0"),
        (["--blend", "data/a=-1,data/b=2"], r"blend\[0\].weight: expected a finite number ≥ 0"),
        (["--blend", "data/a=lots"], "blend: 'data/a=lots' is not DIR or DIR=WEIGHT"),
        (["--replay_fraction", "0.2"], "no replay data"),
        (["--replay", "data/g"], "replay_fraction is 0"),
        (["--second_blend", "data/c"], "say when to switch"),
        (["--switch_step", "3"], "no second_blend"),
        (["--second_blend", "data/c", "--switch_step", "500"], "switch_step: expected 0 ≤ step ≤ train.max_steps"),
        (["--second_blend", "data/c", "--switch_step", "5", "--switch_at_lr", "1e-4"], "not both"),
        (["--reuse.decay_to_fraction", "0"], "reuse.decay_to_fraction"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load(CptConfig, argv)


def test_one_source_reads_like_pretraining():
    """A single-source blend without replay is the pre-training sampler: sample i is window i."""
    mixture = Mixture([[2.5]])
    assert [mixture.locate(i) for i in (0, 1, 2, 99, 10**9)] == [(0, 0), (0, 1), (0, 2), (0, 99), (0, 10**9)]
