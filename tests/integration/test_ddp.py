"""Data-parallel pre-training under torchrun (gloo on CPU) matches one process with the same global batch."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import cli_env, losses, run_cli

COMMON = [
    "--model.size",
    "tiny",
    "--model.context_length",
    "32",
    "--train.max_steps",
    "6",
    "--train.progress",
    "false",
    "--keep.schedule",
    "none",
    "--train.val_every",
    "3",
    "--train.schedule.lr",
    "3e-3",
]


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(prepared, tmp_path):
    single = tmp_path / "single"
    run_cli("pretrain", "--data", str(prepared), "--out", str(single), *COMMON, "--train.micro_batch_size", "4")
    ddp = tmp_path / "ddp"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "ckptlab",
            "pretrain",
            "--data",
            str(prepared),
            "--out",
            str(ddp),
            *COMMON,
            "--train.micro_batch_size",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=cli_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(x2)" in proc.stdout  # the run really had two processes
    one, two = losses(single), losses(ddp)
    assert [s for s, _ in one] == [s for s, _ in two] == list(range(1, 7))
    for (_, a), (_, b) in zip(one, two):
        assert b == pytest.approx(a, rel=1e-5)
