"""LoRA through peft: init equals the base, merge equals the adapter model, only adapters train, checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import VOCAB, one_thread, random_rows, tiny_model  # noqa: F401

from ckptlab.data import sft
from ckptlab.errors import UserError
from ckptlab.models import lora
from ckptlab.runs.run_dir import RunDir
from ckptlab.train import distributed
from ckptlab.train.config import TrainConfig
from ckptlab.train.loop import train


def tiny(architecture: str = "gpt_neox"):
    return tiny_model(architecture)


def logits(model, inputs):
    model.eval()
    with torch.no_grad():
        return model(input_ids=inputs).logits


def rows(count: int = 16):
    """Sequences of 10-20 tokens whose last 4 tokens are targets."""
    return random_rows(count, (10, 20), 4)


def train_lora(tmp_path, steps=4):
    base = tiny()
    reference = copy.deepcopy(base)
    torch.manual_seed(0)
    model = lora.wrap(base, lora.LoraConfig(r=4, alpha=8, dropout=0.0), lora.resolve_targets(base, []))
    config = TrainConfig(
        max_steps=steps, micro_batch_size=4, progress=False, val_every=0, save_every=0, weight_decay=0.1
    )
    train(
        model=model,
        save_model=lambda folder: None,
        train_data=sft.SftBatches(rows(), seed=0, pad_id=1),
        val_data=None,
        config=config,
        lr_at=lambda s: 5e-2,
        kept=[],
        run=RunDir(tmp_path / "run"),
        fingerprints={},
        resume_from=None,
        allow_changed=[],
        dist=distributed.Dist(),
    )
    return reference, model


INPUTS = torch.randint(2, VOCAB, (3, 12), generator=torch.Generator().manual_seed(1))


def test_at_initialisation_the_logits_equal_the_base_models():
    base = tiny()
    expected = logits(base, INPUTS)
    model = lora.wrap(base, lora.LoraConfig(dropout=0.1), ["query_key_value"])
    assert torch.equal(logits(model, INPUTS), expected)
    assert all(name.count("lora_") for name in lora.trainable_parameters(model))


def test_training_changes_only_the_adapters_and_merging_matches_the_adapter_model(tmp_path):
    reference, model = train_lora(tmp_path)
    base_before = dict(reference.named_parameters())
    trained = dict(model.named_parameters())
    for name, param in trained.items():
        plain = name.replace("base_model.model.", "").replace(".base_layer", "")
        if "lora_" in name:
            continue
        assert torch.equal(param, base_before[plain]), name  # the frozen base, bit for bit
    assert any(not torch.all(p == 0) for n, p in trained.items() if "lora_B" in n)  # the adapters did train
    adapted = logits(model, INPUTS)
    assert not torch.allclose(adapted, logits(reference, INPUTS), atol=1e-3)
    merged = lora.merged_copy(model)
    assert type(merged).__name__ == "GPTNeoXForCausalLM"
    assert torch.allclose(logits(merged, INPUTS), adapted, rtol=0, atol=1e-5)
    assert torch.equal(logits(model, INPUTS), adapted)  # merging a copy leaves the training model alone


def test_checkpoint_holds_a_loadable_merged_model_and_the_adapter_for_an_exact_rebuild(tmp_path):
    from transformers import AutoModelForCausalLM

    _, model = train_lora(tmp_path, steps=2)
    folder = tmp_path / "checkpoint"
    lora.save(model, None, folder)
    assert (folder / "config.json").is_file() and (folder / lora.ADAPTER_DIR / "adapter_model.safetensors").is_file()
    adapted = logits(model, INPUTS)
    merged = AutoModelForCausalLM.from_pretrained(folder)
    assert torch.allclose(logits(merged, INPUTS), adapted, rtol=0, atol=1e-5)
    rebuilt = lora.load_adapter(tiny(), folder / lora.ADAPTER_DIR)
    assert torch.equal(logits(rebuilt, INPUTS), adapted)
    # The same trainable parameters in the same order: the optimizer state of the checkpoint fits.
    assert list(lora.trainable_parameters(rebuilt)) == list(lora.trainable_parameters(model))
    assert all(
        torch.equal(a, b)
        for a, b in zip(lora.trainable_parameters(rebuilt).values(), lora.trainable_parameters(model).values())
    )


@pytest.mark.parametrize("architecture, expected", [("gpt_neox", ["query_key_value"]), ("llama", ["q_proj", "v_proj"])])
def test_default_target_modules_by_architecture(architecture, expected):
    model = tiny(architecture)
    assert lora.resolve_targets(model, []) == expected
    assert lora.resolve_targets(model, ["all-linear"]) == "all-linear"
    wrapped = lora.wrap(model, lora.LoraConfig(), expected)
    adapted = {name.split(".")[-4] for name in lora.trainable_parameters(wrapped)}
    assert adapted == set(expected)


def test_missing_target_modules_are_one_line_listing_the_linear_modules():
    model = tiny()
    with pytest.raises(UserError) as error:
        lora.resolve_targets(model, ["q_proj", "query_key_value", "v_proj"])
    message = str(error.value)
    assert "\n" not in message
    assert message == (
        "lora.target_modules: q_proj, v_proj are not linear modules of this gpt_neox model (its linear "
        "modules: dense, dense_4h_to_h, dense_h_to_4h, lm_head, query_key_value)"
    )
