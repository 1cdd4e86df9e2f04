"""Paired bootstrap over items: every mean the report shows, with the same resamples for every model.

For each task the example ids every model scored are resampled with replacement, `resamples` times,
and the *same* resample is applied to every (model, template) of that task. So a difference between
two models (fine-tuned vs its base, last vs first checkpoint) or two templates is a paired
difference, and any statistic computed from the means — a difference of differences, a mean over
eval sets, a rank correlation across eval sets, a best-minus-worst template spread — gets its
interval by computing it once per resample. Tasks are resampled independently (seeded by the
task's name), so adding a task does not change another task's resamples.

Each mean is an array of length 1 + resamples: index 0 is the estimate on the items themselves,
the rest are the bootstrap replicates. A score known only from a metric row (no per-example rows)
has NaN replicates, so any interval that needs it comes out NaN (reported as inconclusive).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable

import numpy as np

from ckptlab.reporting.data import SweepData


class Resampled:
    """Point estimates and bootstrap replicates of the mean item value per (model, task, template)."""

    def __init__(self, data: SweepData, resamples: int = 1000, seed: int = 0, template: str = "mean") -> None:
        self.resamples = resamples
        self.template = template
        self.data = data
        self.values: dict[tuple[str, str, str], np.ndarray] = {}
        self.items_per_task: dict[str, int] = {}
        for task in data.tasks:
            self._resample_task(task, seed)
        for (model_fp, task, template), score in data.scores.items():
            if (model_fp, task, template) not in self.values:  # a metric row without per-example rows
                self.values[(model_fp, task, template)] = np.concatenate([[score.value], np.full(resamples, math.nan)])

    def _resample_task(self, task: str, seed: int) -> None:
        keys = sorted(k for k in self.data.items if k[1] == task)
        if not keys:
            return
        id_sets = [set(self.data.items[k]) for k in keys]
        ids = sorted(set.intersection(*id_sets))
        union = set.union(*id_sets)
        if len(ids) < len(union):
            self.data.warnings.append(
                f"task {task}: models scored different examples ({len(union)} in all); "
                f"every comparison uses the {len(ids)} that all of them scored"
            )
        if not ids:
            return
        n = len(ids)
        matrix = np.array([[self.data.items[k][i] for i in ids] for k in keys], dtype=np.float64)  # (keys, n)
        rng = np.random.default_rng([seed, zlib.crc32(task.encode("utf-8"))])
        means = [matrix.mean(axis=1)[None, :]]
        chunk = max(1, 2_000_000 // n)  # bounded memory for large tasks
        done = 0
        while done < self.resamples:
            size = min(chunk, self.resamples - done)
            draws = rng.integers(0, n, size=(size, n))
            counts = np.bincount((draws + np.arange(size)[:, None] * n).ravel(), minlength=size * n).reshape(size, n)
            means.append(counts @ matrix.T / n)
            done += size
        stacked = np.concatenate(means, axis=0)  # (1 + resamples, keys)
        for column, key in enumerate(keys):
            self.values[key] = stacked[:, column]
        self.items_per_task[task] = n

    def templates_of(self, model_fp: str, task: str) -> dict[str, np.ndarray]:
        return {
            t: self.values[(model_fp, task, t)]
            for t in self.data.templates.get(task, [])
            if (model_fp, task, t) in self.values
        }

    def score(self, model_fp: str, task: str) -> np.ndarray | None:
        """The model's score on the task: the mean over its templates, or the configured template."""
        by_template = self.templates_of(model_fp, task)
        if self.template != "mean":
            return by_template.get(self.template)
        if not by_template:
            return None
        return np.mean(np.vstack(list(by_template.values())), axis=0)

    def spread(self, model_fp: str, task: str) -> np.ndarray | None:
        """Best minus worst template (prompt sensitivity); None with fewer than two templates."""
        by_template = self.templates_of(model_fp, task)
        if len(by_template) < 2:
            return None
        stacked = np.vstack(list(by_template.values()))
        return stacked.max(axis=0) - stacked.min(axis=0)


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


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks along the last axis, ties sharing their average rank (as scipy's rankdata)."""
    less = (x[..., None, :] < x[..., :, None]).sum(axis=-1)
    equal = (x[..., None, :] == x[..., :, None]).sum(axis=-1)
    return less + (equal + 1) / 2


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of rows of x and y (shape (replicates, points)); NaN where an input is NaN."""
    rx, ry = _average_ranks(x), _average_ranks(y)
    rx = rx - rx.mean(axis=-1, keepdims=True)
    ry = ry - ry.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((rx**2).sum(axis=-1) * (ry**2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rx * ry).sum(axis=-1) / denominator
    # Constant ranks (all eval sets tied) carry no evidence either way: 0, so an interval spans it.
    rho = np.where(denominator == 0, 0.0, rho)
    return np.where(np.isnan(x).any(axis=-1) | np.isnan(y).any(axis=-1), math.nan, rho)
