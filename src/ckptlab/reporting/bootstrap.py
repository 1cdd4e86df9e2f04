"""Paired bootstrap over items: every mean the report shows, with the same resamples for every model.

For each task the example ids every model scored are resampled with replacement, `resamples` times,
and the *same* resample is applied to every (model, template) of that task. So a difference between
two models (fine-tuned vs its base, last vs first checkpoint) or two templates is a paired
difference, and any statistic computed from the means — a difference of differences, a mean over
eval sets, a template variance — gets its interval by computing it once per resample. Tasks are
resampled independently (seeded by the task's name), so adding a task does not change another
task's resamples.

Each task's items are split into two fixed halves (A and B, by a hash of the example id) and the
bootstrap resamples within each half (a stratified bootstrap), so every mean exists for the whole
set and for each half with one set of resamples. The halves let a finding *select* on one half and
*measure* on the other (findings (ii) and (iii)): a selection made on noise in half A is independent
of the noise in half B, so it cannot bias what half B measures.

Each mean is an array of length 1 + resamples: index 0 is the estimate on the items themselves,
the rest are the bootstrap replicates. A score known only from a metric row (no per-example rows)
has NaN replicates, so any interval that needs it comes out NaN (reported as inconclusive).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

import numpy as np

from ckptlab.reporting.data import SweepData

Half = Literal["all", "A", "B"]
HALVES: tuple[Half, ...] = ("all", "A", "B")


class Resampled:
    """Point estimates and bootstrap replicates of mean item values per (model, task, template, half)."""

    def __init__(self, data: SweepData, resamples: int = 1000, seed: int = 0, template: str = "mean") -> None:
        self.resamples = resamples
        self.template = template
        self.data = data
        self.seed = seed
        self.values: dict[tuple[str, str, str, Half], np.ndarray] = {}
        self.ids: dict[str, tuple[list[str], list[str]]] = {}
        """Per task: the example ids of half A and of half B (those every model scored)."""
        self.items_per_task: dict[str, int] = {}
        self._variances: dict[tuple[str, str, tuple[str, ...]], np.ndarray | None] = {}
        for task in data.tasks:
            self._resample_task(task)
        for (model_fp, task, template), score in data.scores.items():
            if (model_fp, task, template, "all") not in self.values:  # a metric row without per-example rows
                self.values[(model_fp, task, template, "all")] = np.concatenate(
                    [[score.value], np.full(resamples, math.nan)]
                )

    def _resample_task(self, task: str) -> None:
        keys = sorted(k for k in self.data.items if k[1] == task)
        if not keys:
            return
        id_sets = [set(self.data.items[k]) for k in keys]
        common = set.intersection(*id_sets)
        union = set.union(*id_sets)
        if len(common) < len(union):
            self.data.warnings.append(
                f"task {task}: models scored different examples ({len(union)} in all); "
                f"every comparison uses the {len(common)} that all of them scored"
            )
        if not common:
            return
        # Halves by a hash of the id: fixed whatever models or tasks the store holds.
        ordered = sorted(common, key=lambda i: (zlib.crc32(f"{task}\0{i}".encode()), i))
        half_a, half_b = sorted(ordered[: len(ordered) // 2]), sorted(ordered[len(ordered) // 2 :])
        self.ids[task] = (half_a, half_b)
        self.items_per_task[task] = len(common)
        matrix = np.array([[self.data.items[k][i] for i in half_a + half_b] for k in keys], dtype=np.float64)
        for half, means in self.resample(task, matrix).items():
            for column, (model_fp, _, template) in enumerate(keys):
                self.values[(model_fp, task, template, half)] = means[:, column]

    def resample(self, task: str, matrix: np.ndarray) -> dict[Half, np.ndarray]:
        """Means of per-item rows (shape (rows, items of half A then half B)) on the items and under every
        resample of the task: {half: (1 + resamples, rows)}. The same resamples whatever the rows are."""
        half_a, half_b = self.ids[task]
        n_a, n_b = len(half_a), len(half_b)
        sums_a, sums_b = [matrix[:, :n_a].sum(axis=1)[None, :]], [matrix[:, n_a:].sum(axis=1)[None, :]]
        for counts_a, counts_b in self._counts(task, n_a, n_b):
            sums_a.append(counts_a @ matrix[:, :n_a].T)
            sums_b.append(counts_b @ matrix[:, n_a:].T)
        a, b = np.concatenate(sums_a, axis=0), np.concatenate(sums_b, axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return {"all": (a + b) / (n_a + n_b), "A": a / n_a if n_a else a * math.nan, "B": b / n_b}

    def _counts(self, task: str, n_a: int, n_b: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """How often each item is drawn in each resample, chunk by chunk (bounded memory), regenerated
        from the task's seed so every call sees the same resamples."""
        rng = np.random.default_rng([self.seed, zlib.crc32(task.encode("utf-8"))])
        chunk = max(1, 2_000_000 // max(1, n_a + n_b))
        done = 0
        while done < self.resamples:
            size = min(chunk, self.resamples - done)
            yield _draw_counts(rng, size, n_a), _draw_counts(rng, size, n_b)
            done += size

    def templates_of(self, model_fp: str, task: str) -> list[str]:
        members = self.data.members.get(model_fp, [model_fp])
        return [
            t
            for t in self.data.templates.get(task, [])
            if all((fp, task, t, "all") in self.values for fp in members + [model_fp])
        ]

    def score(
        self, model_fp: str, task: str, templates: Sequence[str] | None = None, half: Half = "all"
    ) -> np.ndarray | None:
        """The model's score: the mean over `templates` (default: all of its templates), or the configured one."""
        names = list(templates) if templates is not None else self.templates_of(model_fp, task)
        if self.template != "mean":
            names = [self.template] if self.template in names else []
        found = [v for t in names if (v := self.values.get((model_fp, task, t, half))) is not None]
        if not names or len(found) < len(names):
            return None
        return np.mean(np.vstack(found), axis=0)

    def template_variance(self, model_fp: str, task: str, templates: Sequence[str] | None = None) -> np.ndarray | None:
        """Prompt sensitivity: the unbiased template variance component of the model's score (None with fewer
        than two templates or no per-example rows). A seed-averaged model gets the mean of its seeds' values,
        so it compares like with like with a single model (averaging seeds first would shrink the spread)."""
        names = tuple(templates if templates is not None else self.templates_of(model_fp, task))
        members = self.data.members.get(model_fp, [model_fp])
        found = [v for fp in members if (v := self._variance(fp, task, names)) is not None]
        return np.mean(np.vstack(found), axis=0) if len(found) == len(members) else None

    def _variance(self, model_fp: str, task: str, templates: tuple[str, ...]) -> np.ndarray | None:
        key = (model_fp, task, templates)
        if key not in self._variances:
            self._variances[key] = self._compute_variance(model_fp, task, templates)
        return self._variances[key]

    def _compute_variance(self, model_fp: str, task: str, templates: tuple[str, ...]) -> np.ndarray | None:
        # Two-way (template × item) layout, one value per cell: the variance of the template means,
        # S² = Q / (T − 1), has expectation σ²_template + σ²_residual / n, and the residual mean square is
        # unbiased for σ²_residual; so σ² = (n·Q − W̄) / ((T − 1)(n − 1)) is unbiased, with W̄ the mean over
        # items of Σ_t (x_tj − x̄_j)². Unlike best − worst, it is not biased upward when templates tie.
        rows = [self.data.items.get((model_fp, task, t)) for t in templates]
        if len(templates) < 2 or task not in self.ids or any(r is None for r in rows):
            return None
        ids = self.ids[task][0] + self.ids[task][1]
        n = len(ids)
        if n < 2:
            return None
        x = np.array([[row[i] for i in ids] for row in rows if row is not None], dtype=np.float64)  # (T, n)
        within = ((x - x.mean(axis=0)) ** 2).sum(axis=0)
        means = self.resample(task, np.vstack([x, within[None, :]]))["all"]  # (1 + resamples, T + 1)
        template_means, mean_within = means[:, :-1], means[:, -1]
        q = ((template_means - template_means.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
        return (n * q - mean_within) / ((len(templates) - 1) * (n - 1))


def _draw_counts(rng: np.random.Generator, size: int, n: int) -> np.ndarray:
    if n == 0:
        return np.zeros((size, 0))
    draws = rng.integers(0, n, size=(size, n))
    return np.bincount((draws + np.arange(size)[:, None] * n).ravel(), minlength=size * n).reshape(size, n)


def mean_of(arrays: Iterable[np.ndarray]) -> np.ndarray | None:
    """Element-wise mean of replicate arrays (None when there are none)."""
    arrays = list(arrays)
    return np.mean(np.vstack(arrays), axis=0) if arrays else None


def interval(values: np.ndarray | None, level: float = 0.95) -> tuple[float, float, float]:
    """(estimate, low, high): the percentile interval of the replicates; NaN bounds without them."""
    if values is None:
        return math.nan, math.nan, math.nan
    replicates = values[1:]
    if replicates.size == 0 or np.isnan(replicates).any():
        return float(values[0]), math.nan, math.nan
    tail = (1 - level) / 2 * 100
    return float(values[0]), float(np.percentile(replicates, tail)), float(np.percentile(replicates, 100 - tail))


def p_value(values: np.ndarray | None) -> float:
    """Two-sided bootstrap p-value of "the statistic is 0": twice the smaller share of replicates on either
    side of 0 (with the +1 of a Monte Carlo test), so p < α exactly when the (1 − α) percentile interval
    excludes 0, up to that +1. NaN without replicates."""
    if values is None or values[1:].size == 0 or np.isnan(values[1:]).any():
        return math.nan
    replicates = values[1:]
    below = (1 + np.count_nonzero(replicates <= 0)) / (replicates.size + 1)
    above = (1 + np.count_nonzero(replicates >= 0)) / (replicates.size + 1)
    return float(min(1.0, 2 * min(below, above)))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: reject part i at level α when its adjusted p < α; the chance that any
    true null part is rejected stays ≤ α (family-wise). NaN stays NaN and does not count."""
    order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[i] = running
    return adjusted


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks along the last axis, ties sharing their average rank (as scipy's rankdata)."""
    less = (x[..., None, :] < x[..., :, None]).sum(axis=-1)
    equal = (x[..., None, :] == x[..., :, None]).sum(axis=-1)
    return less + (equal + 1) / 2


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of rows of x and y (shape (..., points)); NaN where an input is NaN."""
    rx, ry = _average_ranks(x), _average_ranks(y)
    rx = rx - rx.mean(axis=-1, keepdims=True)
    ry = ry - ry.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((rx**2).sum(axis=-1) * (ry**2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rx * ry).sum(axis=-1) / denominator
    # Constant ranks (all eval sets tied) carry no evidence either way: 0, so an interval spans it.
    rho = np.where(denominator == 0, 0.0, rho)
    return np.where(np.isnan(x).any(axis=-1) | np.isnan(y).any(axis=-1), math.nan, rho)
