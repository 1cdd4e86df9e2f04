"""The one loss of training and validation: cross-entropy summed over target tokens.

Summed, not averaged: the loop divides by the *global* number of target tokens of the step (or of
the validation set), so every way of splitting a batch gives the same mean.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def summed_loss(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor,
    autocast: AbstractContextManager[Any],
) -> torch.Tensor:
    """Σ cross-entropy over the target tokens (labels ≠ -100) of one batch, in float32.

    `labels` are aligned with `input_ids` ([b, T]); a sequence classifier's logits are [b, classes],
    one position per sequence, with labels [b, 1].
    """
    import torch.nn.functional as F

    with autocast:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    if logits.ndim == 2:
        logits = logits.unsqueeze(1)
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
