"""The training loop in-process on a tiny model: invariants, golden losses, checkpoint fidelity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ckptlab.commands.prepare import PrepareConfig, prepare
from ckptlab.config import load
from ckptlab.data.batches import WindowBatches
from ckptlab.data.tokenizer import load_tokenizer
from ckptlab.data.windows import TokenWindows
from ckptlab.models.hf import ModelConfig, build_model, save_model_dir
from ckptlab.runs.run_dir import RunDir, read_metrics
from ckptlab.train import distributed
from ckptlab.train.config import TrainConfig
from ckptlab.train.loop import train
from ckptlab.train.schedules import ScheduleConfig, lr_at

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GOLDEN = FIXTURES / "golden_pretrain_losses.json"
CONTEXT = 16


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("loop") / "data"
    prepare(
        PrepareConfig(
            sources=[str(FIXTURES / "corpus" / "tiny.txt")], out=str(out), vocab_size=300, val_fraction=0.2, seed=0
        )
    )
    return out


def run_loop(data_dir: Path, root: Path, *, micro: int, accum: int, steps: int = 4, kept=(), **train_kwargs):
    tokenizer = load_tokenizer(data_dir / "tokenizer")
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(size="tiny", hidden_size=32, num_heads=2, context_length=CONTEXT),
        vocab_size=len(tokenizer),
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    )
    config = TrainConfig(
        max_steps=steps,
        micro_batch_size=micro,
        grad_accum_steps=accum,
        progress=False,
        val_every=0,
        save_every=0,
        schedule=ScheduleConfig(lr=3e-3, warmup_steps=1),
        **train_kwargs,
    )
    run = RunDir(root)
    result = train(
        model=model,
        save_model=lambda folder: save_model_dir(model, tokenizer, folder),
        train_data=WindowBatches(TokenWindows(data_dir, "train", CONTEXT, seed=0)),
        val_data=None,
        config=config,
        lr_at=lambda s: lr_at(s, config.schedule, steps),
        kept=list(kept),
        run=run,
        fingerprints={},
        resume_from=None,
        allow_changed=[],
        dist=distributed.Dist(),
    )
    return model, result, [r["loss"] for r in read_metrics(run.metrics)]


def test_batch_8x1_equals_batch_1x8_accumulated(data_dir, tmp_path):
    _, _, whole = run_loop(data_dir, tmp_path / "a", micro=8, accum=1)
    _, _, accumulated = run_loop(data_dir, tmp_path / "b", micro=1, accum=8)
    assert len(whole) == 4
    assert accumulated == pytest.approx(whole, rel=1e-5)


def test_golden_losses(data_dir, tmp_path):
    """Reason to change: only a deliberate change of init, data order, loss or optimizer (say which)."""
    _, _, losses = run_loop(data_dir, tmp_path / "g", micro=4, accum=2, steps=5)
    golden = json.loads(GOLDEN.read_text())
    assert losses == pytest.approx(golden["losses"], rel=1e-4)


def test_kept_checkpoint_gives_the_training_logits(data_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    model, result, _ = run_loop(data_dir, tmp_path / "k", micro=2, accum=1, steps=3, kept=[3])
    assert result.status == "complete" and [c["step"] for c in result.checkpoints] == [3]
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "k" / result.checkpoints[0]["path"]).eval()
    inputs = torch.randint(0, 300, (2, CONTEXT))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=inputs).logits, loaded(input_ids=inputs).logits)


def test_bf16_autocast_and_tensorboard(data_dir, tmp_path):
    pytest.importorskip("tensorboard")
    _, result, losses = run_loop(
        data_dir, tmp_path / "bf", micro=4, accum=1, steps=2, precision="bf16", tensorboard=True
    )
    assert result.step == 2 and all(loss == loss for loss in losses)  # finite, not NaN
    assert list((tmp_path / "bf" / "tensorboard").glob("events.out.tfevents.*"))


def test_frozen_parameters_stay_bit_identical(data_dir, tmp_path):
    tokenizer = load_tokenizer(data_dir / "tokenizer")
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(size="tiny", context_length=CONTEXT),
        vocab_size=len(tokenizer),
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    )
    frozen = model.gpt_neox.embed_in.weight
    frozen.requires_grad_(False)
    before = frozen.detach().clone()
    config = TrainConfig(max_steps=2, micro_batch_size=2, progress=False, val_every=0, save_every=0)
    train(
        model=model,
        save_model=lambda f: None,
        train_data=WindowBatches(TokenWindows(data_dir, "train", CONTEXT, 0)),
        val_data=None,
        config=config,
        lr_at=lambda s: 1e-2,
        kept=[],
        run=RunDir(tmp_path / "f"),
        fingerprints={},
        resume_from=None,
        allow_changed=[],
        dist=distributed.Dist(),
    )
    assert torch.equal(frozen, before)


def test_train_config_validation_names_the_key():
    from ckptlab.errors import ConfigError

    with pytest.raises(ConfigError, match="train.micro_batch_size"):
        load(TrainConfig, ["--micro_batch_size", "0"])
    with pytest.raises(ConfigError, match="train.device"):
        TrainConfig(device="tpu")


@pytest.mark.slow
def test_torch_compile_matches_eager(data_dir, tmp_path):
    _, _, eager = run_loop(data_dir, tmp_path / "eager", micro=4, accum=1, steps=3)
    _, _, compiled = run_loop(data_dir, tmp_path / "compiled", micro=4, accum=1, steps=3, compile=True)
    assert compiled == pytest.approx(eager, rel=1e-4)


def test_activation_checkpointing_keeps_the_losses_and_precision_auto_is_fp32_on_cpu(data_dir, tmp_path):
    _, _, plain = run_loop(data_dir, tmp_path / "plain", micro=2, accum=2, steps=3)
    _, _, checkpointed = run_loop(data_dir, tmp_path / "ac", micro=2, accum=2, steps=3, activation_checkpointing=True)
    assert checkpointed == pytest.approx(plain, rel=1e-6)
    record = json.loads((tmp_path / "ac" / "run.json").read_text())["training"]
    assert record == {
        "precision": "fp32",
        "precision_requested": "auto",
        "tf32": False,
        "parallelism": "none",
        "activation_checkpointing": True,
    }


def test_fsdp_on_one_process_says_it_trains_unsharded(data_dir, tmp_path, capsys):
    _, _, plain = run_loop(data_dir, tmp_path / "plain", micro=2, accum=1, steps=2)
    _, _, fsdp = run_loop(data_dir, tmp_path / "fsdp", micro=2, accum=1, steps=2, parallelism="fsdp")
    assert fsdp == plain
    assert "train.parallelism fsdp: one process, nothing to shard" in capsys.readouterr().out
    assert json.loads((tmp_path / "fsdp" / "run.json").read_text())["training"]["parallelism"] == "none"
