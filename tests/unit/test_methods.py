"""Partial fine-tuning (last_k, head): frozen weights bit for bit, tied heads untied; dropout override."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import VOCAB, one_thread, random_rows, tiny_model  # noqa: F401

from ckptlab.data import sft
from ckptlab.errors import UserError
from ckptlab.models import methods
from ckptlab.models.hf import count_parameters
from ckptlab.runs.run_dir import RunDir
from ckptlab.train import distributed
from ckptlab.train.config import TrainConfig
from ckptlab.train.loop import train


def tiny(architecture: str = "gpt_neox", **overrides):
    return tiny_model(architecture, num_layers=3, intermediate_size=64, hf_overrides=overrides)


def fit(model, tmp_path, steps: int = 3) -> None:
    rows = random_rows(8, (12, 12), 4)
    config = TrainConfig(
        max_steps=steps, micro_batch_size=4, progress=False, val_every=0, save_every=0, weight_decay=0.1
    )
    train(
        model=model,
        save_model=lambda folder: None,
        train_data=sft.SftBatches(rows, seed=0, pad_id=1),
        val_data=None,
        config=config,
        lr_at=lambda s: 1e-2,
        kept=[],
        run=RunDir(tmp_path / "run"),
        fingerprints={},
        resume_from=None,
        allow_changed=[],
        dist=distributed.Dist(),
    )


def changed_parameters(before, after) -> set[str]:
    old = dict(before.named_parameters())
    return {name for name, param in after.named_parameters() if not torch.equal(param, old[name])}


def test_last_k_trains_the_last_blocks_final_norm_and_head_and_nothing_else(tmp_path):
    model = tiny()
    record = methods.select_trainable(model, "last_k", last_k=2)
    assert record == {"method": "last_k", "untied_head": False, "last_k": 2, "blocks": [1, 2], "final_norm": True}
    # per block: 2 norms 128 + qkv 3,168 + dense 1,056 + MLP 32·64+64 + 64·32+32 = 4,192 → 8,544; norm 64; head 3,104
    assert count_parameters(model, trainable_only=True) == 2 * 8_544 + 64 + 32 * VOCAB
    before = copy.deepcopy(model)
    fit(model, tmp_path)
    changed = changed_parameters(before, model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed and changed <= trainable  # frozen parameters bit for bit
    assert all(
        name.startswith(("gpt_neox.layers.1.", "gpt_neox.layers.2.", "gpt_neox.final_layer_norm.", "lm_head."))
        for name in trainable
    )
    assert "lm_head.weight" in changed and any(n.startswith("gpt_neox.layers.1.") for n in changed)


def test_head_of_a_tied_model_is_untied_and_only_the_head_trains(tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny("llama", tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    record = methods.select_trainable(model, "head")
    assert record == {"method": "head", "untied_head": True}
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["lm_head.weight"]
    before = copy.deepcopy(model)
    fit(model, tmp_path)
    assert changed_parameters(before, model) == {"lm_head.weight"}  # the input embedding is untouched
    model.save_pretrained(tmp_path / "saved")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert loaded.lm_head.weight is not loaded.model.embed_tokens.weight
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    assert torch.equal(loaded.model.embed_tokens.weight, before.model.embed_tokens.weight)


def test_full_trains_everything():
    model = tiny()
    methods.select_trainable(model, "head")
    assert methods.select_trainable(model, "full") == {"method": "full"}
    assert count_parameters(model, trainable_only=True) == count_parameters(model)


@pytest.mark.parametrize("k", [0, 4])
def test_last_k_outside_the_blocks_is_one_line_naming_the_key(k):
    with pytest.raises(UserError, match=rf"^last_k: expected 1 ≤ k ≤ 3 \(the model's transformer blocks\), got {k}$"):
        methods.select_trainable(tiny(), "last_k", last_k=k)


@pytest.mark.parametrize(
    "architecture, keys", [("gpt_neox", ["attention_dropout", "hidden_dropout"]), ("llama", ["attention_dropout"])]
)
def test_dropout_override_reaches_config_and_modules(architecture, keys):
    model = tiny(architecture)
    inputs = torch.randint(2, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        plain = model(input_ids=inputs).logits
    assert methods.set_dropout(model, 0.5) == keys
    assert all(getattr(model.config, key) == 0.5 for key in keys)
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=inputs).logits, plain)  # dropout acts in training mode
    methods.set_dropout(model, 0.0)
    with torch.no_grad():
        assert torch.equal(model(input_ids=inputs).logits, plain)
