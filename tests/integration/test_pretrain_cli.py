"""`ckptlab pretrain` through the real CLI: kept checkpoints, exact resume, nothing lost."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli_env, losses, run_cli

TINY = [
    "--model.size",
    "tiny",
    "--model.context_length",
    "32",
    "--train.micro_batch_size",
    "4",
    "--train.progress",
    "false",
    "--train.schedule.warmup_steps",
    "2",
    "--train.schedule.lr",
    "3e-3",
]


def pretrain(data: Path, out: Path, *extra: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    return run_cli("pretrain", "--data", str(data), "--out", str(out), *TINY, *extra, check=check, **env)


def step_dirs(run: Path) -> list[int]:
    return sorted(int(p.name[5:]) for p in (run / "checkpoints").glob("step-*"))


def test_kept_checkpoints_load_and_match_training(prepared, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ckptlab.data.batches import WindowBatches
    from ckptlab.data.windows import TokenWindows

    run = tmp_path / "run"
    proc = pretrain(
        prepared,
        run,
        "--train.max_steps",
        "12",
        "--keep.schedule",
        "log",
        "--keep.every",
        "8",
        "--train.val_every",
        "4",
        "--train.val_batches",
        "2",
        "--train.save_every",
        "5",
        "--train.resume_checkpoints",
        "1",
    )
    assert str(run / "run.json") in proc.stdout
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["status"] == "complete"
    kept = [c["step"] for c in manifest["checkpoints"] if c["kept"]]
    assert kept == [0, 1, 2, 4, 8, 12]
    assert step_dirs(run) == [0, 1, 2, 4, 8, 12]  # the step-10 resume checkpoint was superseded
    val = {
        r["step"]: r["val_loss"]
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if "val_loss" in r
    }
    windows = WindowBatches(TokenWindows(prepared, "val", 32, seed=0))
    for entry in manifest["checkpoints"]:
        path = run / entry["path"]
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        assert AutoTokenizer.from_pretrained(path).eos_token == "<|endoftext|>"
        if entry["step"] in val:
            total, count = 0.0, 0
            with torch.no_grad():
                for b in range(2):
                    batch = windows.batch(range(b * 4, b * 4 + 4))
                    logits = model(input_ids=batch["input_ids"]).logits
                    total += torch.nn.functional.cross_entropy(
                        logits.flatten(0, 1), batch["labels"].flatten(), reduction="sum"
                    ).item()
                    count += batch["labels"].numel()
            assert total / count == pytest.approx(val[entry["step"]], rel=1e-6), entry
    assert (run / "config.yaml").read_text().count("max_steps: 12") == 1


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory) -> list[tuple[int, float]]:
    """Per-step losses of an uninterrupted 14-step run with gradient accumulation 2."""
    run = tmp_path_factory.mktemp("reference") / "run"
    pretrain(
        prepared,
        run,
        "--train.max_steps",
        "14",
        "--train.grad_accum_steps",
        "2",
        "--train.save_every",
        "3",
        "--keep.schedule",
        "none",
    )
    result = losses(run)
    assert [s for s, _ in result] == list(range(1, 15))
    return result


ACCUM = [
    "--train.max_steps",
    "14",
    "--train.grad_accum_steps",
    "2",
    "--train.save_every",
    "3",
    "--keep.schedule",
    "none",
]


def test_sigkill_mid_accumulation_resumes_bitwise(prepared, tmp_path, reference):
    run = tmp_path / "run"
    killed = pretrain(prepared, run, *ACCUM, check=False, CKPTLAB_FAULT="kill:step=7,micro=1")
    assert killed.returncode == -signal.SIGKILL
    assert max(step_dirs(run)) == 6
    assert max(s for s, _ in losses(run)) == 7  # step 7 was logged but not checkpointed
    pretrain(prepared, run, *ACCUM, "--resume")
    assert losses(run) == reference  # bitwise: floats compared exactly


def test_sigkill_at_a_random_moment_resumes_bitwise(prepared, tmp_path, reference):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "ckptlab", "pretrain", "--data", str(prepared), "--out", str(run), *TINY, *ACCUM]
    proc = subprocess.Popen(args, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        metrics = run / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 4:
            break
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    pretrain(prepared, run, *ACCUM, "--resume")
    assert losses(run) == reference


def test_sigterm_writes_checkpoint_and_exits_zero(prepared, tmp_path, reference):
    run = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "ckptlab",
        "pretrain",
        "--data",
        str(prepared),
        "--out",
        str(run),
        *TINY,
        *ACCUM,
        "--train.save_every",
        "0",
    ]
    proc = subprocess.Popen(args, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        metrics = run / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    manifest = json.loads((run / "run.json").read_text())
    stopped_at = manifest["latest_step"]
    if stopped_at < 14:  # the run may have finished before the signal landed
        assert manifest["status"] == "stopped" and "stop requested" in out
    assert step_dirs(run) == [stopped_at]
    pretrain(prepared, run, *ACCUM, "--resume")
    assert losses(run) == reference


def test_corrupt_newest_checkpoint_is_named_and_skipped(prepared, tmp_path, reference):
    run = tmp_path / "run"
    pretrain(prepared, run, *ACCUM, check=False, CKPTLAB_FAULT="kill:step=10,micro=0")
    assert max(step_dirs(run)) == 9
    weights = run / "checkpoints" / "step-00000009" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    proc = pretrain(prepared, run, *ACCUM, "--resume")
    assert "step-00000009/model.safetensors: truncated" in proc.stderr
    assert "resuming from" in proc.stdout and "step-00000006" in proc.stdout
    assert losses(run) == reference


def test_nan_loss_stops_with_the_step_and_writes_nothing_after(prepared, tmp_path):
    run = tmp_path / "run"
    proc = pretrain(
        prepared,
        run,
        "--train.max_steps",
        "10",
        "--train.save_every",
        "1",
        "--keep.schedule",
        "none",
        check=False,
        CKPTLAB_FAULT="nan:step=5",
    )
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines()[-1] == (
        "ckptlab pretrain: error: loss is nan at step 6; stopped without writing a checkpoint"
    )
    assert max(step_dirs(run)) == 5
    assert max(s for s, _ in losses(run)) == 5
    assert json.loads((run / "run.json").read_text())["status"] == "diverged"


def test_resume_onto_other_data_is_refused_unless_allowed(prepared, tmp_path):
    from conftest import synthetic_corpus

    other = tmp_path / "other"
    run_cli(
        "prepare",
        "--sources",
        str(synthetic_corpus(tmp_path / "c.txt", seed=1)),
        "--out",
        str(other),
        "--tokenizer",
        str(prepared / "tokenizer"),
    )
    run = tmp_path / "run"
    pretrain(prepared, run, "--train.max_steps", "3", "--keep.schedule", "none")
    refused = pretrain(other, run, "--train.max_steps", "5", "--keep.schedule", "none", "--resume", check=False)
    assert refused.returncode == 2
    assert "different data" in refused.stderr and "--allow_changed data" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    pretrain(other, run, "--train.max_steps", "5", "--keep.schedule", "none", "--resume", "--allow_changed", "data")
    assert max(step_dirs(run)) == 5


def test_existing_run_without_resume_is_refused(prepared, tmp_path):
    run = tmp_path / "run"
    pretrain(prepared, run, "--train.max_steps", "1", "--keep.schedule", "none")
    proc = pretrain(prepared, run, "--train.max_steps", "1", check=False)
    assert proc.returncode == 2 and "already holds a run" in proc.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--train.lrr", "1"], "unknown config key 'train.lrr'"),
        (["--train.max_steps", "ten"], "config key 'train.max_steps': expected an integer"),
        (["--model.size", "huge"], "model.size"),
        (["--data", "/nonexistent/data"], "/nonexistent/data"),
        (["--model.context_length", "100000"], "needs at least"),
        (["--model.hf_overrides", "{max_position_embeddings: 16}"], "longer than the model allows"),
        (["--allow_changed", "everything"], "allow_changed: unknown item 'everything'"),
    ],
)
def test_bad_input_is_one_line_exit_2(prepared, tmp_path, args, expected):
    base = ["pretrain", "--data", str(prepared), "--out", str(tmp_path / "run"), "--train.progress", "false"]
    proc = run_cli(*base, *args, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resume_with_another_model_shape_is_refused(prepared, tmp_path):
    run = tmp_path / "run"
    pretrain(prepared, run, "--train.max_steps", "2", "--keep.schedule", "none")
    proc = pretrain(prepared, run, "--train.max_steps", "4", "--resume", "--model.num_layers", "3", check=False)
    assert proc.returncode == 2 and "different model" in proc.stderr and "--allow_changed model" in proc.stderr
