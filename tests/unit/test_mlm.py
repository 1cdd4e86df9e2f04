"""MLM masking: the configured rate (within a point), BERT's 80/10/10, special tokens and padding never masked,
purity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ckptlab.data.mlm import MaskedBatches
from ckptlab.errors import UserError
from ckptlab.models.heads import require_masked_lm

MASK, CLS, SEP, PAD, VOCAB = 3, 1, 2, 0, 500


class Windows:
    """[CLS] random tokens [SEP], some rows right-padded: a pure function of the index."""

    def batch(self, indices):
        rows, mask = [], []
        for index in indices:
            rng = np.random.default_rng(index)
            length = 64 - int(index % 3) * 7
            tokens = [CLS, *rng.integers(5, VOCAB, size=length - 2), SEP] + [PAD] * (64 - length)
            rows.append(tokens)
            mask.append([1] * length + [0] * (64 - length))
        ids = torch.tensor(rows)
        return {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.tensor(mask)}


def masked(probability: float) -> MaskedBatches:
    return MaskedBatches(Windows(), probability, seed=0, mask_id=MASK, vocab_size=VOCAB, special_ids=[CLS, SEP, PAD])


@pytest.mark.parametrize("probability", [0.15, 0.3, 0.5])
def test_masking_rate_is_within_one_point_of_the_configured_one(probability):
    source = masked(probability)
    batch = source.batch(range(300))
    original = Windows().batch(range(300))["input_ids"]
    maskable = (original > SEP) & (batch["attention_mask"] == 1)
    chosen = batch["labels"] != -100
    assert abs(float(chosen.sum()) / float(maskable.sum()) - probability) < 0.01
    assert not (chosen & ~maskable).any()  # never CLS, SEP or padding
    assert torch.equal(batch["labels"][chosen], original[chosen])
    replaced = batch["input_ids"][chosen]
    kept_same = replaced == original[chosen]
    share_mask = float((replaced == MASK).float().mean())
    assert 0.77 < share_mask < 0.83 and 0.07 < float(kept_same.float().mean()) < 0.13  # 80% mask, 10% kept
    assert torch.equal(batch["input_ids"][~chosen], original[~chosen])


def test_masks_are_a_pure_function_of_the_sample_index():
    source = masked(0.15)
    pair = source.batch([3, 7])
    assert all(torch.equal(pair[k], source.batch([3, 7])[k]) for k in pair)
    assert torch.equal(source.batch([7])["input_ids"][0], pair["input_ids"][1])
    assert not torch.equal(source.batch([8])["labels"][0], pair["labels"][1])


def test_mlm_on_a_causal_model_is_one_line_naming_the_key():
    from transformers import AutoConfig

    require_masked_lm(AutoConfig.for_model("bert"), "encoder")
    with pytest.raises(
        UserError,
        match=r"^objective: mlm needs an encoder with a masked-LM head \(bert, roberta, \.\.\.\); "
        r"runs/tiny is a gpt_neox causal LM",
    ):
        require_masked_lm(AutoConfig.for_model("gpt_neox"), "runs/tiny")
