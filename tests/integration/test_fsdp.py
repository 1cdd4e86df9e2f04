"""FSDP2 pre-training under torchrun (gloo on CPU): same losses as one process with the same global batch,
consolidated checkpoints, and resume on the same or a smaller number of processes."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import TINY_PRETRAIN, losses, run_cli, torchrun

# 3 validation batches, not a multiple of the processes: FSDP validation must still run in lockstep.
COMMON = [*TINY_PRETRAIN, "--train.val_batches", "3", "--train.save_every", "2"]


@pytest.fixture(scope="module")
def single(prepared, tmp_path_factory):
    """One process, micro-batch 4: the reference losses."""
    out = tmp_path_factory.mktemp("fsdp") / "single"
    run_cli("pretrain", "--data", str(prepared), "--out", str(out), *COMMON, "--train.micro_batch_size", "4")
    return losses(out)


def assert_same_losses(got, expected):
    assert [s for s, _ in got] == [s for s, _ in expected] == list(range(1, 7))
    for (_, a), (_, b) in zip(expected, got):
        assert b == pytest.approx(a, rel=1e-5)


@pytest.mark.slow
def test_fsdp_two_processes_match_one_and_write_consolidated_checkpoints(prepared, single, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "fsdp"
    args = ["--data", str(prepared), "--out", str(out), *COMMON, "--train.micro_batch_size", "2"]
    proc = torchrun("pretrain", *args, "--train.parallelism", "fsdp")
    assert "(x2)" in proc.stdout
    assert_same_losses(losses(out), single)
    run = json.loads((out / "run.json").read_text())
    assert run["training"]["parallelism"] == "fsdp" and run["training"]["precision"] == "fp32"
    # A plain HF directory with every weight whole, loadable without FSDP; AdamW state whole and numbered.
    final = out / run["checkpoints"][-1]["path"]
    model = AutoModelForCausalLM.from_pretrained(final)
    assert json.loads((final / "config.json").read_text())["architectures"] == [type(model).__name__]
    state = torch.load(final / "training_state.pt", weights_only=True)
    shapes = [tuple(p.shape) for p in model.parameters()]
    moments = [tuple(s["exp_avg"].shape) for _, s in sorted(state["optimizer"]["state"].items())]
    assert sorted(moments) == sorted(shapes)


@pytest.mark.slow
def test_fsdp_resume_exact_on_two_processes_and_on_one(prepared, single, tmp_path):
    killed = tmp_path / "killed"
    args = ["--data", str(prepared), *COMMON]
    crash = torchrun(
        *["pretrain", *args, "--out", str(killed), "--train.micro_batch_size", "2", "--train.parallelism", "fsdp"],
        check=False,
        CKPTLAB_FAULT="kill:step=5,micro=0",
    )
    assert crash.returncode != 0
    shutil.copytree(killed, tmp_path / "on_one")

    two = ["--out", str(killed), "--train.micro_batch_size", "2", "--train.parallelism", "fsdp", "--resume"]
    resumed = torchrun("pretrain", *args, *two)
    assert "(step 4)" in resumed.stdout  # it really resumed, from the step-4 checkpoint
    assert_same_losses(losses(killed), single)

    # The same checkpoint on one process: the global batch is kept by accumulating twice as much.
    one = ["--out", str(tmp_path / "on_one"), "--train.micro_batch_size", "2", "--train.grad_accum_steps", "2"]
    resumed = run_cli("pretrain", *args, *one, "--resume")
    assert "(step 4)" in resumed.stdout
    assert_same_losses(losses(tmp_path / "on_one"), single)
