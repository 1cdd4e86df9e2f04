"""Masked-language modelling for encoder models (BERT, RoBERTa, MiniLM, ...): `ckptlab cpt --objective mlm`.

The batches of continued pre-training are re-masked as BERT's were (Devlin et al. 2019): of the
tokens that may be masked (not padding, not special tokens), `round(probability × n)` per sequence
are chosen; 80% of them become the mask token, 10% a random token, 10% stay; the loss is on the
chosen tokens only (labels = the original token there, -100 elsewhere). Counting per sequence
instead of a Bernoulli draw per token keeps the masking rate at the configured one (to rounding)
in every sequence. The choice is drawn from `numpy.random.default_rng([seed, sample index])`: a
pure function of the sample index, so a resumed run masks exactly as an uninterrupted one.

The loop needs nothing new: its loss is the cross-entropy of the logits at every position against
labels aligned with the inputs, which is the MLM loss when only the masked positions are labelled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class MaskedBatches:
    """BERT-style masked batches from another batch source's `input_ids` (its labels are ignored).

    Args:
        source: a BatchSource (e.g. windows of a prepared corpus).
        probability: share of the maskable tokens of every sequence that are chosen.
        seed: seed of the choice (with the sample index).
        mask_id: the tokenizer's mask token.
        vocab_size: random replacements are drawn from [0, vocab_size).
        special_ids: token ids never chosen (CLS, SEP, PAD, ...).
    """

    def __init__(
        self, source: Any, probability: float, seed: int, mask_id: int, vocab_size: int, special_ids: Sequence[int] = ()
    ) -> None:
        self.source, self.probability, self.seed = source, probability, seed
        self.mask_id, self.vocab_size = mask_id, vocab_size
        self.special_ids = sorted(set(special_ids))

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        import numpy as np
        import torch

        batch = self.source.batch(indices)
        inputs = batch["input_ids"].numpy().copy()
        labels = np.full_like(inputs, -100)
        attention = batch.get("attention_mask")
        real = attention.numpy().astype(bool) if attention is not None else np.ones_like(inputs, dtype=bool)
        maskable = real & ~np.isin(inputs, self.special_ids)
        for row, index in enumerate(indices):
            rng = np.random.default_rng([self.seed, int(index)])
            positions = np.flatnonzero(maskable[row])
            chosen = rng.choice(positions, size=round(self.probability * len(positions)), replace=False)
            labels[row, chosen] = inputs[row, chosen]
            kind = rng.random(len(chosen))
            inputs[row, chosen[kind < 0.8]] = self.mask_id
            swapped = chosen[(kind >= 0.8) & (kind < 0.9)]
            inputs[row, swapped] = rng.integers(0, self.vocab_size, size=len(swapped))
        out = {"input_ids": torch.from_numpy(inputs), "labels": torch.from_numpy(labels)}
        if attention is not None:
            out["attention_mask"] = attention
        return out
