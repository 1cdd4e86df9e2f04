"""Compute accounting: the FLOP formula on hand-counted tiny models, and the record every run writes."""

from __future__ import annotations

import json

import pytest
from tiny_models import VOCAB, one_thread, random_rows, tiny_model  # noqa: F401

from ckptlab.data import sft
from ckptlab.errors import ConfigError
from ckptlab.runs.run_dir import RunDir
from ckptlab.train import distributed
from ckptlab.train.compute import forward_flops, model_dims, training_flops
from ckptlab.train.config import TrainConfig
from ckptlab.train.loop import train


def tiny(architecture: str = "gpt_neox", **overrides):
    return tiny_model(architecture, hf_overrides=overrides)


# Hand count of the tiny GPT-NeoX (d 32, 2 blocks, MLP 256, vocabulary 97, untied head):
# per block: 2 layer norms 2·(32+32) = 128, query_key_value 32·96+96 = 3,168, dense 32·32+32 = 1,056,
# dense_h_to_4h 32·256+256 = 8,448, dense_4h_to_h 256·32+32 = 8,224  → 21,024; two blocks 42,048;
# final norm 64; head 32·97 = 3,104  → N = 45,216.  Embedding table 97·32 = 3,104 → total 48,320.
N = 45_216


def test_parameter_counts_by_hand():
    dims = model_dims(tiny())
    assert (dims.matmul_params, dims.total_params, dims.trainable_params) == (N, 48_320, 48_320)
    assert (dims.n_layer, dims.d_model) == (2, 32)


def test_flops_match_the_formula_by_hand():
    dims = model_dims(tiny())
    # 64 tokens in sequences of 16: forward 2·N·64 + 2·2·16·32·64 = 5,787,648 + 131,072.
    assert forward_flops(dims, tokens=64, context=16) == 5_918_720
    assert training_flops(dims, tokens=64, context=16) == 17_756_160  # 3 × forward = 6N·64 + 6·2·16·32·64


def test_frozen_parts_are_charged_only_the_backward_they_need():
    from ckptlab.models import lora
    from ckptlab.models.methods import select_trainable

    full = model_dims(tiny())
    assert (full.backward_params, full.backward_layers, full.weight_grad_params) == (N, 2, N)
    head = tiny()
    select_trainable(head, "head")
    # no activation gradient at all; weight gradients of the 32 × 97 head only
    dims = model_dims(head)
    assert (dims.backward_params, dims.backward_layers, dims.weight_grad_params) == (0, 0, 3_104)
    assert training_flops(dims, tokens=64, context=16) == (2 * N + 2 * 3_104) * 64 + 2 * 2 * 32 * 16 * 64
    last = tiny()
    select_trainable(last, "last_k", last_k=1)
    # gradients pass through the head, the final norm and block 1: N − block 0; the same ones train
    dims = model_dims(last)
    assert (dims.backward_params, dims.backward_layers, dims.weight_grad_params) == (N - 21_024, 1, N - 21_024)
    assert training_flops(dims, tokens=64, context=16) == (2 * N + 4 * (N - 21_024)) * 64 + (4 + 4) * 32 * 16 * 64
    adapted = lora.wrap(tiny(), lora.LoraConfig(r=2), ["query_key_value"])
    # rank-2 adapters on query_key_value (32 → 96) of both blocks: (32·2 + 2·96) · 2 = 512 parameters,
    # in the forward and the whole backward pass; only they get weight gradients
    dims = model_dims(adapted)
    assert dims.matmul_params == N + 512 and dims.weight_grad_params == 512
    assert (dims.backward_params, dims.backward_layers) == (N + 512, 2)
    assert training_flops(dims, tokens=64, context=16) < training_flops(full, tokens=64, context=16)


def test_a_tied_head_is_still_counted_as_a_matmul():
    untied, tied = model_dims(tiny("llama")), model_dims(tiny("llama", tie_word_embeddings=True))
    assert tied.total_params == untied.total_params - VOCAB * 32
    assert tied.matmul_params == untied.matmul_params


def test_every_run_records_tokens_flops_params_time_and_energy(tmp_path):
    model = tiny()
    model.gpt_neox.embed_in.weight.requires_grad_(False)
    source = sft.SftBatches(random_rows(16, (6, 14), 3), seed=0, pad_id=1)
    config = TrainConfig(
        max_steps=3,
        micro_batch_size=2,
        grad_accum_steps=2,
        progress=False,
        val_every=0,
        save_every=0,
        device_power_w=100.0,
    )
    run = RunDir(tmp_path / "run")
    train(
        model=model,
        save_model=lambda folder: None,
        train_data=source,
        val_data=None,
        config=config,
        lr_at=lambda s: 1e-3,
        kept=[],
        run=run,
        fingerprints={},
        resume_from=None,
        allow_changed=[],
        dist=distributed.Dist(),
    )
    compute = json.loads(run.manifest.read_text())["compute"]
    batches = [source.batch(range(i, i + 2)) for i in range(0, 12, 2)]  # 3 steps × 2 micro-batches of 2
    tokens = sum(b["input_ids"].numel() for b in batches)
    positions = sum(b["input_ids"].numel() * b["input_ids"].shape[1] for b in batches)
    assert compute["tokens"] == tokens and compute["target_tokens"] == 3 * 12  # 3 targets per sequence
    assert compute["flops"] == 6 * N * tokens + 6 * 2 * 32 * positions
    assert (compute["trainable_params"], compute["total_params"]) == (48_320 - 3_104, 48_320)
    assert compute["wall_s"] > 0 and compute["device"].startswith("cpu") and compute["device_power_w"] == 100.0
    assert compute["energy_kwh"] == pytest.approx(100.0 * compute["wall_s"] / 3.6e6, rel=1e-3)


def test_device_power_must_not_be_negative():
    with pytest.raises(ConfigError, match="train.device_power_w"):
        TrainConfig(device_power_w=-1.0)
