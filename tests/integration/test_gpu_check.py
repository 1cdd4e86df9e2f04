"""benchmarks/gpu_check.py, the one command run when a GPU is at hand, runs end to end on a CPU
(`--device cpu --quick`): the checks call the real CLI with the options they will use on a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_runs_its_checks_on_a_cpu(tmp_path):
    out = tmp_path / "check.json"
    only = "environment,pretrain_resume,finetune_full,evaluate_vs_cpu,fsdp_2_processes"
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--quick", "--only", only]
        + ["--work", str(tmp_path / "work"), "--out", str(out)],
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    records = {r["check"]: r for r in json.loads(out.read_text())}
    assert [r["status"] for r in records.values()] == ["ok", "ok", "ok", "ok", "skipped"]
    assert records["pretrain_resume"]["resume_max_abs_loss_diff"] == 0.0  # killed, resumed, bitwise equal
    assert records["finetune_full"]["precision"] == "fp32" and records["finetune_full"]["tokens_per_s"] > 0
    assert records["finetune_full"]["mfu"] > 0
    assert records["evaluate_vs_cpu"]["examples"] > 0 and 0 <= records["evaluate_vs_cpu"]["prediction_agreement"] <= 1
    assert "check" in proc.stdout and "MFU" in proc.stdout  # the printed table
