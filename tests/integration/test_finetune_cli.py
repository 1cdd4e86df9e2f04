"""`ckptlab finetune` through the real CLI, fine-tuning a tiny model pre-trained on the built-in world."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import cli_env, run_cli

SENTIMENT = "finance_sentiment"
# Global batch 8 as 4 × 2 accumulated; resume checkpoints every 2 steps.
SHORT = [
    "--train.micro_batch_size",
    "4",
    "--train.grad_accum_steps",
    "2",
    "--train.max_steps",
    "6",
    "--train.save_every",
    "2",
    "--train.progress",
    "false",
    "--train.schedule.lr",
    "3e-3",
]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> SimpleNamespace:
    """The tiny world and a tiny model pre-trained for 60 steps (context 256) on its general corpus."""
    root = tmp_path_factory.mktemp("finetune")
    world, general, pre = root / "world", root / "general", root / "pre"
    run_cli("world", "--size", "tiny", "--out", str(world))
    run_cli(
        "prepare",
        "--sources",
        str(world / "corpus" / "general.txt"),
        "--out",
        str(general),
        "--vocab_size",
        "512",
        "--val_fraction",
        "0.1",
    )
    run_cli(
        "pretrain",
        "--data",
        str(general),
        "--out",
        str(pre),
        "--model.size",
        "tiny",
        "--model.context_length",
        "256",
        "--train.micro_batch_size",
        "8",
        "--train.max_steps",
        "60",
        "--train.progress",
        "false",
        "--train.schedule.lr",
        "3e-3",
        "--train.schedule.min_lr",
        "3e-4",
        "--train.schedule.warmup_steps",
        "5",
        "--keep.schedule",
        "none",
        "--train.val_every",
        "0",
    )
    return SimpleNamespace(
        root=root, world=world, general=general, pre=pre, checkpoint=pre / "checkpoints" / "step-00000060"
    )


def task_file(base, name: str = SENTIMENT) -> str:
    return str(base.world / "tasks" / f"{name}.yaml")


def finetune(base, out: Path, *extra: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    return run_cli("finetune", "--init_from", str(base.pre), "--out", str(out), *extra, check=check, **env)


def records(run: Path) -> list[dict]:
    """Every metrics line without its timing (the rest is deterministic, floats exact)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "tokens_per_s"} for row in rows]


def accuracy(model_dir: Path, task_path: str, split: str = "test") -> float:
    """Accuracy by the log-likelihood of each choice, with ckptlab's evaluation scorer."""
    from ckptlab.evaluation import scoring
    from ckptlab.models.hf import load_model, load_tokenizer
    from ckptlab.tasks import templates
    from ckptlab.tasks.spec import load_task_data, read_task_file

    spec = read_task_file(Path(task_path))
    examples = load_task_data(spec, split).examples
    model, tokenizer = load_model(str(model_dir)).eval(), load_tokenizer(str(model_dir))
    prompts = [templates.render(spec.templates["train_format"], e.fields) for e in examples]
    requests = scoring.encode_requests(tokenizer, prompts, [e.choices for e in examples], spec.target_delimiter)
    scores = scoring.score_full(model, requests, tokenizer.pad_token_id)
    picked = [e.choices[max(range(len(s)), key=s.__getitem__)] for e, s in zip(examples, scores)]
    return sum(p == e.gold for p, e in zip(picked, examples)) / len(examples)


@pytest.fixture(scope="module")
def sentiment(base, tmp_path_factory) -> Path:
    """Full fine-tuning on the world's finance sentiment task, 15 epochs, keeping the starting model (step 0)."""
    run = tmp_path_factory.mktemp("sentiment") / "run"
    finetune(
        base,
        run,
        "--task",
        task_file(base),
        "--epochs",
        "15",
        "--train.schedule.lr",
        "3e-3",
        "--train.progress",
        "false",
        "--keep.schedule",
        "list",
        "--keep.steps",
        "0",
    )
    return run


def test_finetuning_lowers_validation_loss_and_raises_accuracy(base, sentiment):
    manifest = json.loads((sentiment / "run.json").read_text())
    assert manifest["status"] == "complete" and manifest["finetune"]["examples"]["train"] == 48
    final = manifest["final"]
    assert final["step"] == 90 == manifest["finetune"]["max_steps"]  # 15 epochs × 48 examples / batch 8
    start = next(c for c in manifest["checkpoints"] if c["step"] == 0)
    assert final["val_loss"] < 0.5 * start["val_loss"]
    rows = records(sentiment)
    assert [r["step"] for r in rows if "val_loss" in r] == list(range(6, 91, 6))  # once per epoch, and at the end
    assert rows[-1]["epoch"] == 15.0 and rows[0]["lr"] < rows[2]["lr"] and rows[-1]["lr"] == 0.0  # warm-up, decay to 0
    before = accuracy(sentiment / start["path"], task_file(base))
    after = accuracy(sentiment / final["model"], task_file(base))
    assert after >= before + 0.15, (before, after)


@pytest.fixture(scope="module")
def replayed(base, tmp_path_factory) -> Path:
    """Six steps with a quarter of every batch replayed from the pre-training data."""
    run = tmp_path_factory.mktemp("replayed") / "run"
    finetune(
        base,
        run,
        "--task",
        task_file(base),
        *SHORT,
        "--replay",
        str(base.general),
        "--replay_fraction",
        "0.25",
        "--replay_length",
        "64",
    )
    return run


def test_replay_share_of_every_step(replayed):
    rows = records(replayed)
    assert [r["replay_samples"] for r in rows] == [2] * 6
    manifest = json.loads((replayed / "run.json").read_text())["finetune"]
    assert manifest["replay"]["fraction"] == 0.25 and manifest["replay"]["window"] == 64
    assert rows[-1]["epoch"] == 0.75  # 6 steps × 6 task examples / 48


def test_killed_mid_accumulation_and_resumed_is_bitwise_identical_with_replay(base, replayed, tmp_path):
    run = tmp_path / "run"
    args = (
        "--task",
        task_file(base),
        *SHORT,
        "--replay",
        str(base.general),
        "--replay_fraction",
        "0.25",
        "--replay_length",
        "64",
    )
    killed = finetune(base, run, *args, check=False, CKPTLAB_FAULT="kill:step=3,micro=1")
    assert killed.returncode == -signal.SIGKILL
    assert max(int(p.name[5:]) for p in (run / "checkpoints").glob("step-*")) == 2
    finetune(base, run, *args, "--resume")
    assert records(run) == records(replayed)


@pytest.fixture(scope="module")
def lora_run(base, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("lora") / "run"
    finetune(base, run, "--task", task_file(base), "--method", "lora", "--lora.r", "4", *SHORT)
    return run


def test_lora_writes_a_merged_model_and_the_adapter_and_changes_only_adapted_weights(base, lora_run):
    import torch
    from safetensors.torch import load_file

    manifest = json.loads((lora_run / "run.json").read_text())
    final = manifest["final"]
    assert final["adapter"] == f"{final['model']}/adapter"
    assert manifest["finetune"]["lora"]["target_modules"] == ["query_key_value"]
    assert (lora_run / final["adapter"] / "adapter_config.json").is_file()
    merged = load_file(lora_run / final["model"] / "model.safetensors")
    original = load_file(base.checkpoint / "model.safetensors")
    assert merged.keys() == original.keys()
    changed = {name for name in merged if not torch.equal(merged[name], original[name])}
    assert changed == {name for name in merged if name.endswith("query_key_value.weight")}


def test_lora_killed_and_resumed_is_bitwise_identical(base, lora_run, tmp_path):
    run = tmp_path / "run"
    args = ("--task", task_file(base), "--method", "lora", "--lora.r", "4", *SHORT)
    killed = finetune(base, run, *args, check=False, CKPTLAB_FAULT="kill:step=4,micro=0")
    assert killed.returncode == -signal.SIGKILL
    finetune(base, run, *args, "--resume")
    assert records(run) == records(lora_run)  # adapter, optimizer and dropout RNG restored exactly


def changed_weights(model_dir: Path, base) -> set[str]:
    import torch
    from safetensors.torch import load_file

    trained, original = load_file(model_dir / "model.safetensors"), load_file(base.checkpoint / "model.safetensors")
    assert trained.keys() == original.keys()
    return {name for name in trained if not torch.equal(trained[name], original[name])}


def test_last_k_changes_only_the_last_blocks_norm_and_head_and_records_its_cost(base, tmp_path):
    run = tmp_path / "run"
    proc = finetune(base, run, "--task", task_file(base), "--method", "last_k", "--last_k", "1", *SHORT)
    manifest = json.loads((run / "run.json").read_text())
    trains = manifest["finetune"]["trainable"]
    assert trains["blocks"] == [1] and trains["untied_head"] is False and trains["final_norm"] is True
    assert f"finetune (last_k): {trains['params']:,} of {trains['total_params']:,} parameters train" in proc.stdout
    compute = manifest["compute"]
    assert (compute["trainable_params"], compute["total_params"]) == (trains["params"], trains["total_params"])
    assert compute["tokens"] == records(run)[-1]["tokens_seen"] and compute["target_tokens"] > 0
    # the backward pass runs through the head, the final norm and block 1 only, and they are what trains
    assert compute["backward_params"] == compute["weight_grad_params"] < compute["matmul_params"]
    n, trained = compute["matmul_params"], compute["weight_grad_params"]
    assert compute["flops"] >= 2 * (n + 2 * trained) * compute["tokens"]  # the attention term comes on top
    assert 2 * (n + 2 * trained) < 6 * n  # per token, less than full fine-tuning's 6·N
    assert compute["energy_kwh"] > 0
    changed = changed_weights(run / manifest["final"]["model"], base)
    # (GPT-NeoX checkpoints name the head embed_out)
    assert changed and all(
        n.startswith(("gpt_neox.layers.1.", "gpt_neox.final_layer_norm.", "embed_out.")) for n in changed
    )


def test_head_changes_only_the_head_and_dropout_is_set(base, tmp_path):
    run = tmp_path / "run"
    finetune(base, run, "--task", task_file(base), "--method", "head", "--dropout", "0.2", *SHORT)
    manifest = json.loads((run / "run.json").read_text())
    final = run / manifest["final"]["model"]
    assert changed_weights(final, base) == {"embed_out.weight"}  # the head, as GPT-NeoX checkpoints name it
    config = json.loads((final / "config.json").read_text())
    assert config["hidden_dropout"] == config["attention_dropout"] == 0.2 and manifest["finetune"]["dropout"] == 0.2


def anchored_args(base) -> tuple[str, ...]:
    """L2-SP and early stopping watching a validation every step (6 steps, resume checkpoints every 2)."""
    return (
        "--task",
        task_file(base),
        *SHORT,
        "--anchor_weight",
        "5",
        "--early_stopping.patience",
        "2",
        "--train.val_every",
        "1",
        "--train.val_batches",
        "1",
    )


@pytest.fixture(scope="module")
def anchored(base, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("anchored") / "run"
    finetune(base, run, *anchored_args(base))
    return run


def test_anchor_and_early_stopping_are_recorded_and_the_final_model_is_the_best(anchored):
    manifest = json.loads((anchored / "run.json").read_text())
    rows = records(anchored)
    assert all(r["anchor_penalty"] >= 0 for r in rows) and rows[0]["anchor_penalty"] == 0.0
    early = manifest["early_stopping"]
    val = {r["step"]: r["val_loss"] for r in rows}
    assert early["best_val_loss"] == min(val.values()) and early["best_step"] == min(val, key=val.get)
    final = manifest["final"]
    assert final["step"] == early["best_step"] and final["selected"] == "best_val_loss"
    assert final["stop_reason"] == manifest["stop_reason"] in ("early_stopping", "max_steps")
    assert [c["step"] for c in manifest["checkpoints"] if c.get("best")] == [early["best_step"]]
    assert manifest["finetune"]["anchor_weight"] == 5.0


def test_anchored_run_killed_and_resumed_is_bitwise_identical(base, anchored, tmp_path):
    run = tmp_path / "run"
    killed = finetune(base, run, *anchored_args(base), check=False, CKPTLAB_FAULT="kill:step=3,micro=1")
    assert killed.returncode == -signal.SIGKILL
    finetune(base, run, *anchored_args(base), "--resume")  # θ₀ reloaded from init_from
    assert records(run) == records(anchored)
    done, whole = (json.loads((r / "run.json").read_text()) for r in (run, anchored))
    assert done["early_stopping"] == whole["early_stopping"] and done["final"]["step"] == whole["final"]["step"]


def test_world_instruction_mixture_works_out_of_the_box(base, tmp_path):
    run = tmp_path / "run"
    proc = finetune(
        base,
        run,
        "--data",
        str(base.world / "instruct" / "mixture.jsonl"),
        "--train.max_steps",
        "3",
        "--train.progress",
        "false",
        "--train.val_batches",
        "1",
    )
    manifest = json.loads((run / "run.json").read_text())
    examples = manifest["finetune"]["examples"]
    assert manifest["final"]["step"] == 3 and manifest["final"]["val_loss"] is not None
    assert examples["train"] + examples["validation"] + examples["validation_skipped"] == 192
    # Alpaca prompts of this tokenizer often exceed the model's 256 positions: counted, skipped, reported.
    assert examples["skipped"] > 0 and f"skipped {examples['skipped']} training example(s)" in proc.stdout


def test_nan_loss_stops_with_exit_3(base, tmp_path):
    run = tmp_path / "run"
    proc = finetune(base, run, "--task", task_file(base), *SHORT, check=False, CKPTLAB_FAULT="nan:step=2")
    assert proc.returncode == 3 and "loss is nan at step 3" in proc.stderr
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["status"] == "diverged" and "final" not in manifest


def test_sigterm_stops_at_a_checkpoint_without_a_final_model(base, tmp_path):
    run = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "ckptlab",
        "finetune",
        "--init_from",
        str(base.pre),
        "--out",
        str(run),
        "--task",
        task_file(base),
        "--train.max_steps",
        "2000",
        "--train.save_every",
        "0",
        "--train.val_every",
        "0",
        "--train.progress",
        "false",
    ]
    proc = subprocess.Popen(args, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text()):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["status"] == "stopped" and "final" not in manifest and "stop requested" in out
    assert [c["step"] for c in manifest["checkpoints"]] == [manifest["latest_step"]]


def _broken_task(base, tmp_path: Path, name: str, edit) -> str:
    """A copy of a world task file with absolute data paths, edited by `edit(text)`."""
    source = Path(task_file(base, name))
    text = source.read_text().replace(f" {name}/", f" {source.parent / name}/")
    path = tmp_path / f"{name}.yaml"
    path.write_text(edit(text))
    return str(path)


@pytest.mark.parametrize(
    "case, expected",
    [
        (
            "template",
            "template: 'nope' is not a template of task finance_sentiment (its templates: train_format, "
            "instruction, bare)",
        ),
        ("unknown_task", "task: 'no_such_task' is not a task YAML file or a shipped task"),
        ("missing_replay", "replay: {missing}: prepared data directory not found"),
        (
            "lora_targets",
            "lora.target_modules: q_proj is not a linear module of this gpt_neox model (its linear modules: ",
        ),
        (
            "all_truncated",
            "task finance_sentiment: all 48 training examples have an empty target after truncation to max_length 8",
        ),
        ("answer_shown", "template bare: the prompt shows the answer field 'label'"),
        ("no_gold", "a generation task needs target_field"),
        ("bad_record", "line 2: expected keys instruction, output (and optional input), or messages"),
        ("last_k_large", "last_k: expected 1 ≤ k ≤ 2 (the model's transformer blocks), got 3"),
        ("last_k_zero", "last_k: expected a positive integer (transformer blocks to train), got 0"),
        ("anchor_negative", "anchor_weight: expected a number ≥ 0, got -0.5"),
        (
            "patience_zero",
            "early_stopping.patience: expected a positive integer (validations without improvement), got 0",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2(base, tmp_path, case, expected):
    missing = tmp_path / "no-such-data"
    records_file = tmp_path / "bad.jsonl"
    records_file.write_text('{"instruction": "a", "output": "b"}\n{"prompt": "a"}\n')
    extra = {
        "template": ["--task", task_file(base), "--template", "nope"],
        "unknown_task": ["--task", "no_such_task"],
        "missing_replay": ["--task", task_file(base), "--replay", str(missing), "--replay_fraction", "0.1"],
        "lora_targets": ["--task", task_file(base), "--method", "lora", "--lora.target_modules", "q_proj"],
        "all_truncated": ["--task", task_file(base), "--max_length", "8"],
        "answer_shown": [
            "--task",
            _broken_task(
                base,
                tmp_path,
                SENTIMENT,
                lambda t: t.replace("fields: [sentence]", "fields: [sentence, label]").replace(
                    "bare: '{sentence}'", "bare: '{sentence} {label}'"
                ),
            ),
            "--template",
            "bare",
        ],
        "no_gold": [
            "--task",
            _broken_task(
                base,
                tmp_path,
                "world_summarization",
                lambda t: t.replace("target_field: summary", "target_field: null"),
            ),
        ],
        "bad_record": ["--data", str(records_file)],
        "last_k_large": ["--task", task_file(base), "--method", "last_k", "--last_k", "3"],
        "last_k_zero": ["--task", task_file(base), "--method", "last_k", "--last_k", "0"],
        "anchor_negative": ["--task", task_file(base), "--anchor_weight", "-0.5"],
        "patience_zero": ["--task", task_file(base), "--early_stopping.patience", "0"],
    }[case]
    run = tmp_path / "run"
    proc = finetune(base, run, *extra, "--train.progress", "false", check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected.format(missing=missing) in lines[0], proc.stderr
    assert not (run / "checkpoints").exists()
