"""Data-parallel pre-training under torchrun (gloo on CPU) matches one process with the same global batch."""

from __future__ import annotations

import pytest
from conftest import TINY_PRETRAIN, losses, run_cli, torchrun


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(prepared, tmp_path):
    single = tmp_path / "single"
    run_cli("pretrain", "--data", str(prepared), "--out", str(single), *TINY_PRETRAIN, "--train.micro_batch_size", "4")
    ddp = tmp_path / "ddp"
    proc = torchrun(
        "pretrain", "--data", str(prepared), "--out", str(ddp), *TINY_PRETRAIN, "--train.micro_batch_size", "2"
    )
    assert "(x2)" in proc.stdout  # the run really had two processes
    one, two = losses(single), losses(ddp)
    assert [s for s, _ in one] == [s for s, _ in two] == list(range(1, 7))
    for (_, a), (_, b) in zip(one, two):
        assert b == pytest.approx(a, rel=1e-5)
