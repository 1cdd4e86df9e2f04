"""Metrics over per-example rows, 95% bootstrap intervals over items, and prompt sensitivity.

A row is a stored per-example result: `gold`, `prediction`, `correct` and `scores` (for
classification the per-choice log-likelihoods `ll`, continuation lengths `chars`, and `choices`;
for generation `rouge_l` and `exact_match`). Point estimates and bootstrap resamples go through the
same functions, so an interval is always of the number it is printed beside.

- accuracy, exact_match, rouge_l: means over examples.
- accuracy_norm: accuracy when each choice's log-likelihood is divided by its length in characters
  (lm-evaluation-harness's acc_norm).
- macro_f1: mean over classes present among gold labels or predictions of the per-class F1
  (0 where undefined), as scikit-learn's f1_score(average="macro").
- mcc: Matthews correlation, multiclass (Gorodkin's R_K, as scikit-learn), 0 when undefined.

Bootstrap: `resamples` draws of n item indices with replacement from `numpy.random.default_rng(seed)`;
the interval is the 2.5th and 97.5th percentile of the resampled metric.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

MEAN_METRICS = ("accuracy", "accuracy_norm", "exact_match", "rouge_l")
CONFUSION_METRICS = ("macro_f1", "mcc")


def normalised_prediction(scores: dict[str, Any]) -> str:
    """The choice with the highest log-likelihood per character (first on ties)."""
    values = [ll / max(1, chars) for ll, chars in zip(scores["ll"], scores["chars"])]
    return scores["choices"][max(range(len(values)), key=values.__getitem__)]


def item_values(metric: str, rows: Sequence[dict[str, Any]]) -> list[float]:
    """The per-example values whose mean is `metric` (for mean-type metrics)."""
    if metric == "accuracy":
        return [float(r["correct"]) for r in rows]
    if metric == "accuracy_norm":
        return [float(normalised_prediction(r["scores"]) == r["gold"]) for r in rows]
    if metric in ("exact_match", "rouge_l"):
        return [float(r["scores"][metric]) for r in rows]
    raise ValueError(f"not a mean metric: {metric}")


def _codes(rows: Sequence[dict[str, Any]]) -> tuple[list[int], list[int], int]:
    labels = sorted({r["gold"] for r in rows} | {r["prediction"] for r in rows})
    index = {label: i for i, label in enumerate(labels)}
    return [index[r["gold"]] for r in rows], [index[r["prediction"]] for r in rows], len(labels)


def _from_confusion(metric: str, confusion: Any) -> Any:
    """macro-F1 or MCC of a stack of confusion matrices C[b, gold, predicted] (numpy)."""
    import numpy as np

    confusion = confusion.astype(np.float64)
    true_counts = confusion.sum(axis=2)
    pred_counts = confusion.sum(axis=1)
    tp = np.diagonal(confusion, axis1=1, axis2=2)
    if metric == "macro_f1":
        denominator = true_counts + pred_counts
        f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
        present = denominator > 0
        return (f1 * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1)
    total = confusion.sum(axis=(1, 2))
    correct = tp.sum(axis=1)
    numerator = correct * total - (pred_counts * true_counts).sum(axis=1)
    denominator = np.sqrt((total**2 - (pred_counts**2).sum(axis=1)) * (total**2 - (true_counts**2).sum(axis=1)))
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def _confusions(gold: Any, pred: Any, k: int, index: Any) -> Any:
    import numpy as np

    codes = (gold * k + pred)[index]  # (resamples, n)
    offsets = np.arange(codes.shape[0])[:, None] * (k * k)
    counts = np.bincount((codes + offsets).ravel(), minlength=codes.shape[0] * k * k)
    return counts.reshape(codes.shape[0], k, k)


def metric_value(metric: str, rows: Sequence[dict[str, Any]]) -> float:
    """The metric over all rows (nan when there are none)."""
    import numpy as np

    if not rows:
        return math.nan
    if metric in MEAN_METRICS:
        values = item_values(metric, rows)
        return sum(values) / len(values)
    gold, pred, k = _codes(rows)
    index = np.arange(len(rows))[None, :]
    return float(_from_confusion(metric, _confusions(np.array(gold), np.array(pred), k, index))[0])


def bootstrap_interval(
    metric: str, rows: Sequence[dict[str, Any]], resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of `metric` over examples; deterministic for a seed."""
    import numpy as np

    n = len(rows)
    if n == 0 or resamples <= 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    chunk = max(1, 4_000_000 // n)  # bounded memory; a function of n only, so results stay seeded
    if metric in MEAN_METRICS:
        values = np.array(item_values(metric, rows))
        compute = lambda index: values[index].mean(axis=1)  # noqa: E731
    else:
        gold, pred, k = _codes(rows)
        gold_a, pred_a = np.array(gold), np.array(pred)
        compute = lambda index: _from_confusion(metric, _confusions(gold_a, pred_a, k, index))  # noqa: E731
    draws = []
    done = 0
    while done < resamples:
        size = min(chunk, resamples - done)
        draws.append(compute(rng.integers(0, n, size=(size, n))))
        done += size
    stats = np.concatenate(draws)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(stats, tail)), float(np.percentile(stats, 100 - tail))


def sensitivity(values: dict[str, float]) -> dict[str, float]:
    """Prompt sensitivity of one metric across templates: spread (best - worst), std, worst."""
    finite = [v for v in values.values() if not math.isnan(v)]
    if not finite:
        return {"spread": math.nan, "std": math.nan, "worst": math.nan}
    std = statistics.pstdev(finite)  # population std over the templates evaluated (exact for equal values)
    return {"spread": max(finite) - min(finite), "std": std, "worst": min(finite)}


def agreement(predictions: dict[str, dict[str, str]]) -> tuple[float, int]:
    """Fraction of examples on which every template predicts the same answer, and how many examples.

    `predictions` maps template -> {example id -> prediction}; only examples every template scored count.
    """
    if len(predictions) < 2:
        return math.nan, 0
    common = set.intersection(*(set(p) for p in predictions.values()))
    if not common:
        return math.nan, 0
    same = sum(1 for i in common if len({p[i] for p in predictions.values()}) == 1)
    return same / len(common), len(common)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (rouge-score, Porter stemming)."""
    return _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure


_SCORER: list[Any] = []


def _rouge_scorer() -> Any:
    if not _SCORER:
        try:
            from rouge_score import rouge_scorer
        except ImportError:
            from ckptlab.errors import UserError

            raise UserError("ROUGE-L needs the rouge-score package (pip install rouge-score)") from None
        _SCORER.append(rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True))
    return _SCORER[0]


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the texts are equal after collapsing whitespace, else 0.0."""
    return float(" ".join(prediction.split()) == " ".join(reference.split()))
