"""Deterministic, stateless mixtures of sample sources: a global sample index → (source, index in it).

A mixture reads from K sources (for continued pre-training: the `TokenWindows` of prepared data
directories). Which source global sample `i` comes from, and which of that source's samples it is,
is a pure function of `i`: nothing depends on what was read before, so a resumed run reads exactly
what an uninterrupted one would, and the loop's data position stays "samples seen".

**Allocation: hierarchical cumulative rounding.** For blend weights w_1..w_K (normalised to sum to
one) the number of the first n samples given to each source is

    count_1(n) = round(n · w_1)
    count_j(n) = round(m_j(n) · w_j / (w_j + … + w_K)),   m_j(n) = n − count_1(n) − … − count_{j−1}(n)
    count_K(n) = m_K(n)                                   (the last source takes the remainder)

with round(x) = floor(x + 1/2) computed exactly on rationals (`fractions.Fraction` of the float
weights, so no platform or float order can change an allocation). Each count_j is non-decreasing in
n and the counts sum to n, so exactly one of them grows from n = i to n = i + 1: sample i belongs to
that source, and is that source's sample number count_j(i).

Because count_1(b) − count_1(a) differs from (b − a)·w_1 by less than one for *every* window [a, b),
the first source of the hierarchy is honoured to within one sample over any window. Replay uses that
place: the split replay | rest is made first, over the whole run, and the blends then share out the
rest. With two sources (replay + one domain source, or a two-source blend without replay) every
source is within one sample over every window. No allocation can promise that for three or more
sources with arbitrary weights (balanced words exist only for special frequencies). Here source j
stays within B_j = ½·(1 + w_j·Σ_{i<j} 1/(1 − W_i)) of n·w_j over every prefix (W_i = w_1 + … + w_i;
the last source, which takes the remainder, without the first ½), so within 2·B_j over any window:
for three equal weights B = 0.5, 0.75, 0.75. (Under replay a blend source may be off by another
½·w_j, its share of replay's rounding.)

**Staged blends.** Blend b applies from global sample `switch_samples[b−1]` on (the loop reads step
k as samples k·G … k·G + G − 1 for a global batch G, so a switch at step S is sample S·G). The rest
stream (samples not given to replay) is cut at the rest index of each switch, and each stage
allocates its own samples by its blend, counted from the stage's start. A source's position keeps
counting across stages and across its uses (a blend source that is also the replay source reads one
sequence), so a source shared by two blends never repeats data at the switch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

from ckptlab.errors import ConfigError


def _round_half_up(m: int, numerator: int, denominator: int) -> int:
    """floor(m · numerator / denominator + 1/2), exactly."""
    return (2 * m * numerator + denominator) // (2 * denominator)


class _Rounding:
    """Hierarchical cumulative rounding of n samples among sources with the given weights."""

    def __init__(self, weights: Sequence[Fraction]) -> None:
        order = [j for j, w in enumerate(weights) if w > 0]
        remaining = sum(weights, Fraction(0))
        self.size = len(weights)
        self.chain: list[tuple[int, int, int]] = []  # (source, numerator, denominator) of each ratio
        for j in order[:-1]:
            ratio = weights[j] / remaining
            self.chain.append((j, ratio.numerator, ratio.denominator))
            remaining -= weights[j]
        self.last = order[-1]

    def counts(self, n: int) -> list[int]:
        """Samples of each source among the first `n`."""
        out = [0] * self.size
        left = n
        for j, numerator, denominator in self.chain:
            out[j] = _round_half_up(left, numerator, denominator)
            left -= out[j]
        out[self.last] = left
        return out

    def source_of(self, n: int) -> int:
        """The source of sample `n` (0-based): the one whose count grows from n to n + 1."""
        before, after = n, n + 1
        for j, numerator, denominator in self.chain:
            count_before = _round_half_up(before, numerator, denominator)
            count_after = _round_half_up(after, numerator, denominator)
            if count_after > count_before:
                return j
            before, after = before - count_before, after - count_after
        return self.last


def _exact_weights(weights: Sequence[float], where: str) -> list[Fraction]:
    exact = []
    for j, weight in enumerate(weights):
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not math.isfinite(weight):
            raise ConfigError(f"{where}[{j}].weight: expected a finite number, got {weight!r}")
        if weight < 0:
            raise ConfigError(f"{where}[{j}].weight: expected a number ≥ 0, got {weight}")
        exact.append(Fraction(weight))
    if sum(exact, Fraction(0)) <= 0:
        raise ConfigError(f"{where}: weights sum to {float(sum(exact, Fraction(0)))}; expected a positive sum")
    return exact


class Mixture:
    """Which source, and which of its samples, every global sample index reads.

    Args:
        blends: per blend, one weight per source (every blend lists all K sources; 0 = unused).
            Weights are relative; each blend is normalised to share out the non-replay samples.
        switch_samples: the global sample index where each blend after the first starts
            (non-decreasing, one per blend after the first).
        replay_source: the source that replay reads (it may also appear in the blends).
        replay_fraction: the share of all samples, in every stage, read from `replay_source`.
    """

    def __init__(
        self,
        blends: Sequence[Sequence[float]],
        switch_samples: Sequence[int] = (),
        replay_source: int | None = None,
        replay_fraction: float = 0.0,
    ) -> None:
        if not blends:
            raise ConfigError("mixture: at least one blend is needed")
        self.num_sources = len(blends[0])
        if any(len(blend) != self.num_sources for blend in blends):
            raise ConfigError("mixture: every blend must give one weight per source")
        if len(switch_samples) != len(blends) - 1:
            raise ConfigError(f"mixture: {len(blends)} blends need {len(blends) - 1} switch point(s)")
        if any(s < 0 for s in switch_samples) or list(switch_samples) != sorted(switch_samples):
            raise ConfigError(f"mixture: switch points must be non-decreasing and ≥ 0, got {list(switch_samples)}")
        if not (isinstance(replay_fraction, (int, float)) and 0.0 <= replay_fraction < 1.0):
            raise ConfigError(f"replay_fraction: expected 0 ≤ x < 1, got {replay_fraction!r}")
        if replay_fraction > 0 and (replay_source is None or not 0 <= replay_source < self.num_sources):
            raise ConfigError("mixture: replay_fraction > 0 needs a replay source")
        self.blends = [_Rounding(_exact_weights(blend, f"blend {b}")) for b, blend in enumerate(blends)]
        self.switch_samples = [int(s) for s in switch_samples]
        self.replay_source = replay_source if replay_fraction > 0 else None
        replay = Fraction(replay_fraction)
        self._replay_ratio = (replay.numerator, replay.denominator)
        # Where each stage starts in the stream of non-replay samples.
        self._stage_starts = [0] + [s - self._replayed(s) for s in self.switch_samples]

    def _replayed(self, n: int) -> int:
        """Replay samples among global samples [0, n)."""
        if self.replay_source is None:
            return 0
        return _round_half_up(n, *self._replay_ratio)

    def blend_of(self, index: int) -> int:
        """The blend (0-based) in force at global sample `index`."""
        stage = 0
        for b, start in enumerate(self.switch_samples, start=1):
            if index >= start:
                stage = b
        return stage

    def counts(self, n: int) -> list[int]:
        """Samples read from each source among global samples [0, n)."""
        out = [0] * self.num_sources
        replayed = self._replayed(n)
        if self.replay_source is not None:
            out[self.replay_source] += replayed
        rest = n - replayed
        ends = self._stage_starts[1:] + [None]
        for rounding, start, end in zip(self.blends, self._stage_starts, ends):
            if rest <= start:
                break
            length = (rest if end is None else min(rest, end)) - start
            for j, count in enumerate(rounding.counts(length)):
                out[j] += count
        return out

    def source_of(self, index: int) -> int:
        """The source that global sample `index` reads."""
        if index < 0:
            raise IndexError(f"sample index must be ≥ 0, got {index}")
        if self.replay_source is not None and self._replayed(index + 1) > self._replayed(index):
            return self.replay_source
        rest_index = index - self._replayed(index)
        stage = max(b for b, start in enumerate(self._stage_starts) if rest_index >= start)
        return self.blends[stage].source_of(rest_index - self._stage_starts[stage])

    def locate(self, index: int) -> tuple[int, int]:
        """(source, index within that source) of global sample `index`."""
        source = self.source_of(index)
        return source, self.counts(index)[source]
