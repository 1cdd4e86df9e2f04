"""Precision resolution, activation checkpointing, CUDA RNG restore with fewer devices, FSDP optimizer state."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from tiny_models import VOCAB, one_thread, tiny_model  # noqa: F401

from ckptlab.models import lora
from ckptlab.models.methods import set_dropout
from ckptlab.train import distributed
from ckptlab.train.checkpointing import rng_state, set_rng_state
from ckptlab.train.config import TrainConfig
from ckptlab.train.loop import make_optimizer

INPUTS = torch.randint(2, VOCAB, (3, 12), generator=torch.Generator().manual_seed(1))


def test_precision_auto_is_bf16_on_cuda_and_fp32_on_cpu():
    assert distributed.resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert distributed.resolve_precision("auto", torch.device("cuda", 0)) == "bf16"
    assert distributed.resolve_precision("fp32", torch.device("cuda", 0)) == "fp32"
    assert distributed.resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert TrainConfig().precision == "auto"


def loss_and_grads(model, checkpointing: bool):
    if checkpointing:
        distributed.enable_activation_checkpointing(model)
    model.train()
    torch.manual_seed(5)  # the dropout masks
    loss = model(input_ids=INPUTS, labels=INPUTS).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("use_lora", [False, True])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(use_lora):
    base = tiny_model()
    set_dropout(base, 0.1)  # the recomputed forward must replay the same dropout masks
    if use_lora:
        torch.manual_seed(0)
        base = lora.wrap(base, lora.LoraConfig(r=4, alpha=8, dropout=0.1), lora.resolve_targets(base, []))
    plain_loss, plain = loss_and_grads(copy.deepcopy(base), checkpointing=False)
    checkpointed = copy.deepcopy(base)
    loss, grads = loss_and_grads(checkpointed, checkpointing=True)
    hf_model = checkpointed.base_model.model if use_lora else checkpointed
    assert hf_model.is_activation_checkpointing
    assert loss == pytest.approx(plain_loss, abs=1e-6)
    assert grads.keys() == plain.keys() and (not use_lora or all("lora_" in name for name in grads))
    for name, grad in grads.items():
        assert torch.allclose(grad, plain[name], atol=1e-6), name
        # LoRA's B starts at zero, so A's first gradient is zero; every other one must flow.
        assert grad.abs().sum() > 0 or "lora_A" in name, name


class FakeCuda:
    """Stands in for torch.cuda on a machine with `devices` GPUs; records which generator was set."""

    def __init__(self, devices: int) -> None:
        self.devices, self.set_calls = devices, []

    def set_rng_state(self, state, device):
        if torch.device(device).index >= self.devices:
            raise RuntimeError("invalid device ordinal")
        self.set_calls.append((int(state[0]), torch.device(device).index))

    def set_rng_state_all(self, states):  # what restoring used to call: it fails with fewer devices
        for index, state in enumerate(states):
            self.set_rng_state(state, torch.device("cuda", index))


@pytest.fixture
def fake_cuda(monkeypatch):
    fake = FakeCuda(devices=2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_rng_state", fake.set_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", fake.set_rng_state_all)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: torch.tensor([40 + torch.device(device).index]))
    return fake


def test_rng_restore_with_more_saved_cuda_states_than_devices(fake_cuda):
    # An older checkpoint written on 8 GPUs holds 8 generator states; this machine has 2.
    saved = {"python": random.getstate(), "torch": torch.get_rng_state(), "cuda": [torch.tensor([i]) for i in range(8)]}
    with pytest.raises(RuntimeError):
        fake_cuda.set_rng_state_all(saved["cuda"])
    fake_cuda.set_calls.clear()
    set_rng_state(saved, torch.device("cuda", 1))
    assert fake_cuda.set_calls == [(1, 1)]  # only this process's device, from its own saved state
    fake_cuda.set_calls.clear()
    set_rng_state({**saved, "cuda": saved["cuda"][:1]}, torch.device("cuda", 1))
    assert fake_cuda.set_calls == [(0, 1)]  # a device the checkpoint did not have: rank 0's generator


def test_rng_state_saves_and_restores_this_device_only(fake_cuda):
    state = rng_state(torch.device("cuda", 1))
    assert "cuda" not in state and int(state["cuda_device"][0]) == 41
    set_rng_state(state, torch.device("cuda", 0))  # e.g. resumed by another rank or on fewer GPUs
    assert fake_cuda.set_calls == [(41, 0)]
    fake_cuda.set_calls.clear()
    set_rng_state(state, torch.device("cpu"))
    assert fake_cuda.set_calls == []


def test_cpu_rng_round_trip():
    state = rng_state(torch.device("cpu"))
    expected = (random.random(), torch.rand(3))
    set_rng_state(state, torch.device("cpu"))
    assert random.random() == expected[0] and torch.equal(torch.rand(3), expected[1])


@pytest.fixture
def one_process_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield distributed.Dist(world_size=1)
    dist.destroy_process_group()


def adam_state_after_a_step(model, config):
    optimizer = make_optimizer(model, config)
    model(input_ids=INPUTS, labels=INPUTS).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # as the loop leaves it
    return optimizer


def test_fsdp_optimizer_state_is_whole_and_numbered_like_a_plain_one(one_process_group):
    """FSDP's state saves as `optimizer.state_dict()` of the unsharded model does, and loads back from it (also the
    state cpt carries over from another run)."""
    config = TrainConfig()
    plain = tiny_model()
    sharded = distributed.shard(copy.deepcopy(plain), one_process_group, "fp32")
    assert distributed.is_sharded(sharded) and not distributed.is_sharded(plain)
    expected = adam_state_after_a_step(plain, config).state_dict()
    optimizer = adam_state_after_a_step(sharded, config)
    saved = distributed.full_optimizer_state(sharded, optimizer)
    assert saved["state"].keys() == expected["state"].keys()
    assert [g["params"] for g in saved["param_groups"]] == [g["params"] for g in expected["param_groups"]]
    for index, moments in expected["state"].items():
        assert torch.allclose(saved["state"][index]["exp_avg"], moments["exp_avg"], atol=1e-7)
    whole = distributed.full_model_state(sharded)
    assert all(torch.allclose(whole[k], v, atol=1e-7) for k, v in plain.state_dict().items())

    fresh = make_optimizer(sharded, config)
    distributed.load_optimizer_state(fresh, expected, sharded)
    reloaded = distributed.full_optimizer_state(sharded, fresh)
    for index, moments in expected["state"].items():
        assert torch.equal(reloaded["state"][index]["exp_avg_sq"], moments["exp_avg_sq"])


def test_fsdp_with_lora_or_an_anchor_is_refused_naming_the_key():
    from ckptlab.commands.finetune import FinetuneConfig, FinetuneTrainConfig
    from ckptlab.config import load
    from ckptlab.errors import ConfigError

    with pytest.raises(ConfigError, match="^train.parallelism: fsdp does not support method lora; use ddp$"):
        FinetuneConfig(method="lora", train=FinetuneTrainConfig(parallelism="fsdp"))
    with pytest.raises(ConfigError, match="anchor_weight > 0"):
        FinetuneConfig(anchor_weight=0.1, train=FinetuneTrainConfig(parallelism="fsdp"))
    with pytest.raises(ConfigError, match="'parallelism': expected one of 'ddp', 'fsdp'"):
        load(TrainConfig, ["--parallelism", "zero3"])
