"""`ckptlab sweep` through the real CLI on one tiny sweep: 2 kept checkpoints × 1 fine-tune, each model
evaluated on 2 tasks × 3 templates (8 examples): skipping, status, failure isolation, SIGKILL and
re-run, the lock, bad input, and Ray against local."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import cli_env, run_cli

FINETUNE = {
    "task": "TASKS/world_nli.yaml",
    "train.max_steps": 4,
    "train.micro_batch_size": 4,
    "train.save_every": 2,
    "train.schedule.lr": 3.0e-3,
}


def sweep_yaml(root: Path, out: Path, finetunes: list[dict] | None = None, **extra) -> Path:
    tasks = str(root / "world" / "tasks")
    finetunes = finetunes or [{"name": "nli", "config": FINETUNE}]
    spec = {
        "name": "tiny",
        "out": str(out),
        "checkpoints": [{"run": str(root / "pre"), "steps": [15, 30]}],
        "finetunes": [
            {
                **f,
                "config": {k: (v.replace("TASKS", tasks) if isinstance(v, str) else v) for k, v in f["config"].items()},
            }
            for f in finetunes
        ],
        "evaluate": {
            "tasks": [f"{tasks}/world_nli.yaml", f"{tasks}/finance_sentiment.yaml"],
            "limit": 8,
            "bootstrap": 50,
        },
        **extra,
    }
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> SimpleNamespace:
    """A tiny world, a model pre-trained for 30 steps keeping steps 15 and 30, and one complete sweep."""
    root = tmp_path_factory.mktemp("sweep")
    run_cli("world", "--size", "tiny", "--out", str(root / "world"))
    run_cli(
        "prepare",
        "--sources",
        str(root / "world" / "corpus" / "general.txt"),
        "--out",
        str(root / "data"),
        "--vocab_size",
        "512",
        "--val_fraction",
        "0.1",
    )
    run_cli(
        "pretrain",
        "--data",
        str(root / "data"),
        "--out",
        str(root / "pre"),
        "--model.size",
        "tiny",
        "--model.context_length",
        "256",
        "--train.micro_batch_size",
        "8",
        "--train.max_steps",
        "30",
        "--train.progress",
        "false",
        "--train.schedule.lr",
        "3e-3",
        "--train.schedule.min_lr",
        "3e-4",
        "--train.schedule.warmup_steps",
        "3",
        "--keep.schedule",
        "list",
        "--keep.steps",
        "15",
        "30",
        "--train.val_every",
        "0",
    )
    out = root / "reference"
    config = sweep_yaml(root, out)
    started = time.perf_counter()
    proc = run_cli("sweep", "--config", str(config))
    return SimpleNamespace(
        root=root,
        out=out,
        config=config,
        stdout=proc.stdout,
        seconds=time.perf_counter() - started,
        table=(out / "results.csv").read_text(),
    )


def rows(table: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(table)))


def test_sweep_runs_every_job_and_writes_the_results_table(tiny):
    assert "6/6 jobs done, 0 failed, 0 blocked" in tiny.stdout
    table = rows(tiny.table)
    # 4 models × 2 tasks × 3 templates × 2 metrics, plus prompt-sensitivity rows (template `*`).
    assert {(r["role"], r["checkpoint"]) for r in table} == {
        ("base", "step-00000015"),
        ("base", "step-00000030"),
        ("finetuned", "step-00000015"),
        ("finetuned", "step-00000030"),
    }
    per_template = [r for r in table if r["template"] != "*"]
    assert len(per_template) == 4 * 2 * 3 * 2
    finetuned = next(r for r in table if r["role"] == "finetuned" and r["checkpoint"] == "step-00000030")
    base = next(r for r in table if r["role"] == "base" and r["checkpoint"] == "step-00000030")
    assert finetuned["finetune"] == "nli" and finetuned["finetune_task"] == "world_nli"
    assert finetuned["method"] == "full" and finetuned["step"] == "30" and finetuned["parent_fp"] == base["model_fp"]
    assert json.loads(finetuned["compute"])["tokens"] > 0
    lines = tiny.table.splitlines()
    assert len(lines) == len(set(lines)), "duplicate rows in results.csv"


def test_second_run_executes_nothing_and_keeps_the_table(tiny):
    proc = run_cli("sweep", "--config", str(tiny.config))
    assert "executed 0 job(s)" in proc.stdout
    assert (tiny.out / "results.csv").read_text() == tiny.table
    status = run_cli("sweep", "status", "--config", str(tiny.config)).stdout
    assert "done 6, running 0, pending 0, failed 0, blocked 0" in status


def test_a_failed_finetune_blocks_only_its_dependents(tiny, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny.root / "world" / "tasks" / "world_nli", broken / "world_nli")
    spec = yaml.safe_load((tiny.root / "world" / "tasks" / "world_nli.yaml").read_text())
    spec["task"] = "broken_nli"
    (broken / "broken_nli.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    with open(broken / "world_nli" / "train.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"id": "bad", "premise": "No label here.", "hypothesis": "None."}\n')
    out = tmp_path / "out"
    shutil.copytree(tiny.out, out)  # the reference jobs keep their ids: done, so skipped
    (out / "results.csv").unlink()
    bad = {"task": str(broken / "broken_nli.yaml"), "train.max_steps": 2}
    config = sweep_yaml(tiny.root, out, [{"name": "nli", "config": FINETUNE}, {"name": "bad", "config": bad}])
    proc = run_cli("sweep", "--config", str(config), check=False)
    assert proc.returncode == 1, proc.stderr
    assert "executed 0 job(s), 2 failed" in proc.stdout
    status = run_cli("sweep", "status", "--config", str(config)).stdout
    assert "done 6, running 0, pending 0, failed 2, blocked 2" in status
    failed = [line for line in status.splitlines() if line.strip().startswith("failed ")]
    assert len(failed) == 2 and all("bad@step-" in line and "label" in line for line in failed), status
    assert sum("blocked  evaluate  bad@step-" in line for line in status.splitlines()) == 2
    assert rows((out / "results.csv").read_text()) == rows(tiny.table)


def test_a_chain_fine_tunes_the_fine_tuned_model_and_the_report_shows_it(tiny, tmp_path):
    out = tmp_path / "chain"
    shutil.copytree(tiny.out, out)  # the reference jobs keep their ids: done, so skipped
    again = {**FINETUNE, "train.max_steps": 2}
    chain = [
        {"name": "nli", "config": FINETUNE},
        {"name": "again", "after": "nli", "config": again, "from": ["step-00000030"]},
    ]
    config = sweep_yaml(tiny.root, out, chain)
    proc = run_cli("sweep", "--config", str(config))
    assert "executed 2 job(s)" in proc.stdout and "8/8 jobs done" in proc.stdout
    table = rows((out / "results.csv").read_text())
    first = next(r for r in table if r["finetune"] == "nli" and r["step"] == "30")
    second = next(r for r in table if r["finetune"] == "again")
    assert (second["role"], second["finetune_task"], second["checkpoint"]) == (
        "finetuned",
        "world_nli",
        "step-00000030",
    )
    assert second["parent_fp"] == first["model_fp"] and second["model_fp"] != first["model_fp"]
    base = next(r for r in table if r["role"] == "base" and r["step"] == "30")
    assert json.loads(base["compute"])["flops"] > 0  # pre-training compute up to the checkpoint
    run_cli("report", str(out), "--bootstrap", "20")
    with open(out / "report" / "tables" / "sequential.csv", newline="", encoding="utf-8") as handle:
        sequential = list(csv.DictReader(handle))
    assert {(r["chain"], r["trained_by"]) for r in sequential if r["task"] == "world_nli"} == {
        ("again (world_nli, after nli)", "first"),
        ("again (world_nli, after nli)", "second"),
    }
    with open(out / "report" / "tables" / "frontier.csv", newline="", encoding="utf-8") as handle:
        frontier = list(csv.DictReader(handle))
    assert {r["pretrain_flops_from"] for r in frontier} == {"run record"} and len(frontier) == 5 * 2
    bad = sweep_yaml(tiny.root, tmp_path / "bad", [{"name": "again", "after": "nope", "config": again}])
    proc = run_cli("sweep", "--config", str(bad), check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "finetunes (again).after: no finetunes entry 'nope'" in proc.stderr


def test_seed_replicates_train_one_model_per_seed_and_the_report_averages_them(tiny, tmp_path):
    out = tmp_path / "seeds"
    replicated = [
        {"name": "nli", "config": {**FINETUNE, "train.max_steps": 2}, "from": ["step-00000030"], "seeds": [0, 1]}
    ]
    proc = run_cli("sweep", "--config", str(sweep_yaml(tiny.root, out, replicated)))
    assert "executed 6 job(s)" in proc.stdout  # 2 base evaluations, 2 fine-tunes and their evaluations
    table = rows((out / "results.csv").read_text())
    tuned = {r["variant"]: r["model_fp"] for r in table if r["role"] == "finetuned"}
    assert sorted(tuned) == ["seed=0", "seed=1"] and len(set(tuned.values())) == 2  # two different models
    assert {r["finetune"] for r in table if r["role"] == "finetuned"} == {"nli"}
    assert sorted(p.name.split("-")[1] for p in (out / "jobs").glob("finetune-*")) == ["nli", "nli"]
    run_cli("report", str(out), "--bootstrap", "20")
    with open(out / "report" / "tables" / "seeds.csv", newline="", encoding="utf-8") as handle:
        seeds = list(csv.DictReader(handle))
    assert {(r["model"], r["seeds"]) for r in seeds} == {("nli @ step-00000030 (full, mean of 2 seeds)", "2")}
    with open(out / "report" / "tables" / "scores.csv", newline="", encoding="utf-8") as handle:
        scores = list(csv.DictReader(handle))
    assert {r["variant"] for r in scores if r["role"] == "finetuned"} == {"mean of 2 seeds"}


@pytest.mark.slow
def test_killed_three_times_then_rerun_gives_the_same_table(tiny, tmp_path):
    out = tmp_path / "killed"
    config = sweep_yaml(tiny.root, out)
    rng = random.Random()
    seen = []
    for _ in range(3):
        # A random point: some way into the k-th job this run starts (a job already done is skipped).
        k, delay = rng.randint(1, 3), rng.uniform(0.0, 3.0)
        proc = subprocess.Popen(
            [sys.executable, "-m", "ckptlab", "sweep", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=cli_env(),
        )
        starts = 0
        for line in proc.stdout:
            starts += "] start " in line
            if starts == k:
                break
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        seen.append((k, round(delay, 2), len(list(out.glob("jobs/*/done.json")))))
    run_cli("sweep", "--config", str(config))
    table = (out / "results.csv").read_text()
    assert table == tiny.table, f"results differ after SIGKILL at (k-th job, delay, jobs done) {seen}"
    lines = table.splitlines()
    assert len(lines) == len(set(lines))


def test_killed_mid_training_and_mid_evaluation_resumes_exactly(tiny, tmp_path):
    out = tmp_path / "faults"
    config = sweep_yaml(tiny.root, out)
    # SIGKILL inside the first fine-tune after its step-2 checkpoint, then inside an evaluation
    # after 20 examples were scored (the fault hooks of the training loop and the evaluation runner).
    for fault in ("kill:step=3", "kill:examples=20"):
        proc = run_cli("sweep", "--config", str(config), check=False, CKPTLAB_FAULT=fault)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        if fault.startswith("kill:step"):
            assert list(out.glob("jobs/finetune-*/run/checkpoints/step-00000002")), "no partial fine-tune"
    run_cli("sweep", "--config", str(config))
    assert (out / "results.csv").read_text() == tiny.table


def test_second_sweep_on_the_same_directory_refuses_while_the_lock_is_held(tiny, tmp_path):
    from ckptlab.sweeps.state import SweepLock

    out = tmp_path / "locked"
    shutil.copytree(tiny.out, out)
    config = sweep_yaml(tiny.root, out)
    with SweepLock(out) as lock:
        lock.acquire()
        proc = run_cli("sweep", "--config", str(config), check=False)
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and "sweep.lock" in proc.stderr and f"pid {os.getpid()}" in proc.stderr
        status = run_cli("sweep", "status", "--config", str(config)).stdout  # status never takes the lock
        assert f"running now (pid {os.getpid()})" in status
        waiting = subprocess.Popen(
            [sys.executable, "-m", "ckptlab", "sweep", "--config", str(config), "--wait"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        time.sleep(3)
        assert waiting.poll() is None, "the --wait sweep did not wait for the lock"
    stdout, _ = waiting.communicate(timeout=120)
    assert waiting.returncode == 0 and "waiting for" in stdout and "executed 0 job(s)" in stdout


@pytest.mark.parametrize(
    "problem, expected",
    [
        ("name: [unclosed\n", "invalid YAML"),
        ("finetunes: [{name: x, config: {train.lrr: 1}}]\n", "finetunes[0] (x).config: unknown config key 'train.lrr'"),
        ("finetunes: [{name: x, config: {out: elsewhere}}]\n", "finetunes[0] (x).config.out: set by the sweep"),
        ("finetunes: [{name: x, config: {}, form: [a]}]\n", "unknown key 'finetunes[0].form'"),
        ("checkpoints: [{run: RUN, steps: [7]}]\n", "kept no checkpoint at step 7"),
    ],
)
def test_bad_sweep_yaml_is_one_line_and_exit_2(tiny, tmp_path, problem, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(f"out: {tmp_path / 'out'}\n" + problem.replace("RUN", str(tiny.root / "pre")), encoding="utf-8")
    proc = run_cli("sweep", "--config", str(path), check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert expected in proc.stderr
    assert not (tmp_path / "out" / "jobs").exists()


def test_ray_executor_gives_the_same_table_as_local(tiny, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "ray"
    # Ray's sockets live under its temp dir: keep the path short.
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    try:
        config = sweep_yaml(tiny.root, out)
        proc = run_cli(
            "sweep",
            "--config",
            str(config),
            "--executor",
            "ray",
            "--ray_num_cpus",
            "2",
            "--ray_temp_dir",
            temp,
            RAY_AUTH_MODE="disabled",
            timeout=600,
        )
        assert "6/6 jobs done" in proc.stdout
        assert (out / "results.csv").read_text() == tiny.table
    finally:
        shutil.rmtree(temp, ignore_errors=True)
