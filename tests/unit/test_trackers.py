"""Experiment trackers (`report_to`), offline: W&B in offline mode, MLflow on a file store, TensorBoard
event files; each read back the way its own tools read it, and a tiny training run through all three."""

from __future__ import annotations

import importlib.util
import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_models import one_thread, random_rows, tiny_model  # noqa: F401

from ckptlab.data import sft
from ckptlab.errors import ConfigError, UserError
from ckptlab.runs.run_dir import RunDir, read_metrics
from ckptlab.runs.trackers import STATE_FILE, check_trackers, flatten_config, log_evaluation, open_trackers
from ckptlab.train import distributed
from ckptlab.train.config import TrainConfig
from ckptlab.train.loop import train

# Found, not imported: importing mlflow and wandb at collection would slow every test run by seconds.
needs_trackers = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("wandb", "mlflow", "tensorboard")),
    reason="the tracker extras are not installed (pip install -e '.[test]')",
)


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """Nothing may reach the network or the user's home: W&B offline, MLflow on a file store under tmp_path."""
    for name in (
        "WANDB_PROJECT",
        "WANDB_ENTITY",
        "WANDB_API_KEY",
        "WANDB_RUN_ID",
        "WANDB_RESUME",
        "MLFLOW_EXPERIMENT_NAME",
    ):
        monkeypatch.delenv(name, raising=False)
    wandb_env = {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path / "wandb_dir"),
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",  # W&B would otherwise wrap sys.stdout under pytest's capture
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb_data"),
        "WANDB_ARTIFACT_DIR": str(tmp_path / "wandb_artifacts"),
    }
    for name, value in wandb_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # MLflow 3 sends usage records unless told not to
    # Set, then removed: the code under test sets it itself, and monkeypatch restores it afterwards.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True, scope="module")
def wandb_service():
    """Stop W&B's background service when the module's tests are done, so pytest exits promptly."""
    yield
    if sys.modules.get("wandb") is not None:
        sys.modules["wandb"].teardown()


# --- reading what the trackers wrote, as their own tools do ---------------------------------------


def wandb_records(wandb_dir: Path):
    """The records of every offline run under `wandb_dir`, oldest run first.

    A `.wandb` file is a LevelDB log (32 KiB blocks of records: crc32, length, type) after a 7-byte
    W&B header, each record a `wandb_internal_pb2.Record`; wandb 0.31 has no public reader of it.
    """
    from wandb.proto import wandb_internal_pb2

    for path in sorted(wandb_dir.glob("wandb/offline-run-*/run-*.wandb")):
        data = path.read_bytes()
        assert data[:4] == b":W&B"
        position, block, payload = 7, 32768, b""
        while position + 7 <= len(data):
            if block - position % block < 7:  # a block's tail too short for a header is padding
                position += block - position % block
                continue
            _, length, kind = struct.unpack("<IHB", data[position : position + 7])
            chunk = data[position + 7 : position + 7 + length]
            position += 7 + length
            if kind == 0:
                continue
            payload = chunk if kind in (1, 2) else payload + chunk  # FULL, FIRST / MIDDLE, LAST
            if kind in (1, 4):
                record = wandb_internal_pb2.Record()
                record.ParseFromString(payload)
                yield path.parent.name, record


def wandb_items(items) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def wandb_history(wandb_dir: Path) -> list[dict]:
    # W&B's service process writes the offline run file; on a loaded machine the last records can land a
    # moment after finish() returns, so wait a little for them before reading.
    deadline = time.monotonic() + 20
    while not _wandb_history(wandb_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    return _wandb_history(wandb_dir)


def _wandb_history(wandb_dir: Path) -> list[dict]:
    return [
        wandb_items(r.history.item) for _, r in wandb_records(wandb_dir) if r.WhichOneof("record_type") == "history"
    ]


def wandb_config(wandb_dir: Path) -> dict:
    config: dict = {}
    for _, record in wandb_records(wandb_dir):
        if record.WhichOneof("record_type") == "run":
            config.update(wandb_items(record.run.config.update))
    return config


def wandb_summary(wandb_dir: Path) -> dict:
    summary: dict = {}
    for _, record in wandb_records(wandb_dir):
        if record.WhichOneof("record_type") == "summary":
            summary.update(wandb_items(record.summary.update))
    return summary


def mlflow_run(tmp_path: Path, state_dir: Path):
    from mlflow.tracking import MlflowClient

    state = json.loads((state_dir / STATE_FILE).read_text())["mlflow"]
    client = MlflowClient((tmp_path / "mlruns").as_uri())
    return client, client.get_run(state["run_id"])


def tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


# --- names and packages ---------------------------------------------------------------------------


def test_an_unknown_tracker_names_the_key():
    with pytest.raises(ConfigError, match=r"^train\.report_to: unknown tracker 'neptune' \(expected any of"):
        check_trackers(["wandb", "neptune"], "train.report_to")
    from ckptlab.commands.finetune import FinetuneConfig
    from ckptlab.config import load

    with pytest.raises(ConfigError, match=r"train\.report_to\[0\]"):
        load(FinetuneConfig, ["--train.report_to", "neptune"])
    assert load(FinetuneConfig, ["--train.report_to", "wandb", "mlflow"]).train.report_to == ["wandb", "mlflow"]
    assert load(FinetuneConfig, ["--train.report_to", "wandb,mlflow"]).train.report_to == ["wandb", "mlflow"]


@pytest.mark.parametrize("name", ["tensorboard", "wandb", "mlflow"])
def test_a_missing_package_is_one_line_naming_the_extra(name, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, name, None)  # what `import name` and find_spec see for a missing package
    with pytest.raises(UserError) as raised:
        open_trackers([name], "run", tmp_path, key="train.report_to")
    message = str(raised.value)
    assert "\n" not in message and message.startswith("train.report_to: ")
    assert f"pip install 'ckptlab[{name}]'" in message


def test_the_wandb_tracker_itself_names_the_extra_when_its_import_fails(monkeypatch, tmp_path):
    from ckptlab.runs.trackers import WandbTracker

    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(UserError, match=r"pip install 'ckptlab\[wandb\]'"):
        WandbTracker("run", tmp_path, {}, {}, "report_to")


def test_help_lists_report_to_and_imports_no_tracker():
    code = (
        "import sys; from ckptlab.cli import main; code = main(['finetune', '--help']); "
        "loaded = [m for m in ('wandb', 'mlflow', 'tensorboard') if m in sys.modules]; "
        "assert code == 0 and not loaded, loaded"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--train.report_to" in proc.stdout and "'wandb'" in proc.stdout


def test_tensorboard_true_means_report_to_tensorboard():
    assert TrainConfig(tensorboard=True).trackers() == ["tensorboard"]
    assert TrainConfig(tensorboard=True, report_to=["wandb", "tensorboard"]).trackers() == ["wandb", "tensorboard"]
    assert TrainConfig().trackers() == []


def test_the_config_is_flattened_to_dotted_keys():
    nested = {"out": "runs/a", "train": {"lr": 0.1, "schedule": {"kind": "cosine"}, "report_to": ["wandb"]}, "e": {}}
    assert flatten_config(nested) == {
        "out": "runs/a",
        "train.lr": 0.1,
        "train.schedule.kind": "cosine",
        "train.report_to": ["wandb"],
        "e": {},
    }


def test_report_to_does_not_change_a_sweep_job_id():
    from ckptlab.sweeps.plan import NOT_HASHED_TRAIN

    assert "report_to" in NOT_HASHED_TRAIN


# --- each tracker, read back ----------------------------------------------------------------------

CONFIG = {"out": "runs/a", "train": {"lr": 0.1, "note": "x" * 7000, "report_to": ["mlflow"]}}


def log_three_steps(names, tmp_path, start=1, state=True):
    trackers = open_trackers(
        names,
        "run-a",
        tmp_path / "run",
        CONFIG,
        state_file=tmp_path / "run" / STATE_FILE if state else None,
        start_step=start - 1,
    )
    for step in range(start, start + 3):
        for tracker in trackers:
            tracker.log_metrics({"train/loss": 1.0 / step, "train/lr": 0.1}, step)
    for tracker in trackers:
        tracker.log_summary({"compute/flops": 1e9, "compute/device": "cpu"}, start + 2)
        tracker.close()


@needs_trackers
def test_mlflow_keeps_params_metric_history_and_summary_and_a_resume_continues_the_run(tmp_path):
    log_three_steps(["mlflow"], tmp_path)
    client, run = mlflow_run(tmp_path, tmp_path / "run")
    assert run.info.run_name == "run-a" and run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.1" and run.data.params["train.report_to"] == '["mlflow"]'
    assert len(run.data.params["train.note"]) == 6000  # MLflow's limit: truncated, not refused
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert run.data.metrics["compute/flops"] == 1e9 and run.data.tags["compute/device"] == "cpu"
    first_id = run.info.run_id

    log_three_steps(["mlflow"], tmp_path, start=4)  # the same run directory: the run continues
    client, run = mlflow_run(tmp_path, tmp_path / "run")
    assert run.info.run_id == first_id and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(first_id, "train/loss")] == [1, 2, 3, 4, 5, 6]


@needs_trackers
def test_mlflow_defaults_to_a_file_store_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    (tmp_path / "elsewhere").mkdir()
    log_three_steps(["mlflow"], tmp_path)
    state = json.loads((tmp_path / "run" / STATE_FILE).read_text())["mlflow"]
    assert state["tracking_uri"] == (tmp_path / "mlruns").as_uri()
    assert list((tmp_path / "mlruns").glob("*/*/metrics/train/loss"))
    # Resumed from another directory: the run continues in the store it started in.
    monkeypatch.chdir(tmp_path / "elsewhere")
    log_three_steps(["mlflow"], tmp_path, start=4)
    assert json.loads((tmp_path / "run" / STATE_FILE).read_text())["mlflow"] == state
    assert not (tmp_path / "elsewhere" / "mlruns").exists()


@needs_trackers
def test_wandb_offline_writes_the_scalars_config_and_summary_and_a_resume_keeps_the_id(tmp_path):
    log_three_steps(["wandb"], tmp_path)
    wandb_dir = tmp_path / "wandb_dir"
    history = wandb_history(wandb_dir)
    assert [(h["step"], h["train/loss"]) for h in history] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    config = wandb_config(wandb_dir)
    assert config["train.lr"] == 0.1 and config["out"] == "runs/a"
    summary = wandb_summary(wandb_dir)
    assert summary["compute/flops"] == 1e9 and summary["compute/device"] == "cpu"
    state = json.loads((tmp_path / "run" / STATE_FILE).read_text())["wandb"]
    assert state["project"] == "ckptlab"

    log_three_steps(["wandb"], tmp_path, start=4)
    runs = sorted(path.name for path in wandb_dir.glob("wandb/offline-run-*"))
    assert len(runs) == 2 and all(f"-{state['id']}" in name for name in runs)  # same second: a -1 suffix
    assert [h["step"] for h in wandb_history(wandb_dir)] == [1, 2, 3, 4, 5, 6]


@needs_trackers
def test_wandb_project_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "mine")
    log_three_steps(["wandb"], tmp_path)
    assert json.loads((tmp_path / "run" / STATE_FILE).read_text())["wandb"]["project"] == "mine"


@needs_trackers
@pytest.mark.parametrize("mode", ["online", "not-a-mode"])
def test_wandb_refusing_to_start_is_one_line_saying_how_to_log_offline(mode, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", mode)  # online with no API key anywhere: refused before any connection
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "5")
    with pytest.raises(UserError) as raised:
        open_trackers(["wandb"], "run", tmp_path, key="train.report_to")
    assert str(raised.value).startswith("train.report_to wandb: ") and "\n" not in str(raised.value)


@needs_trackers
def test_mlflow_refusing_to_start_is_one_line_naming_the_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "false")  # the user's own choice wins over ckptlab's default
    with pytest.raises(UserError) as raised:
        open_trackers(["mlflow"], "run", tmp_path, key="train.report_to")
    message = str(raised.value)
    assert message.startswith(f"train.report_to mlflow ({(tmp_path / 'mlruns').as_uri()}): ") and "\n" not in message


@needs_trackers
def test_tensorboard_writes_scalars_and_the_summary(tmp_path):
    log_three_steps(["tensorboard"], tmp_path, state=False)
    scalars = tensorboard_scalars(tmp_path / "run" / "tensorboard")
    assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3]
    assert scalars["compute/flops"] == [(3, 1e9)]
    assert not (tmp_path / "run" / STATE_FILE).exists()


# --- evaluation -----------------------------------------------------------------------------------


def metric_row(model: str, value: float, **extra) -> dict:
    return {
        "task": "rte",
        "template": "plain",
        "shots": 0,
        "metric": "acc",
        "value": value,
        "ci_low": value - 0.1,
        "ci_high": value + 0.1,
        "n": 100,
        "model_label": model,
        "model_fp": f"fp-{model}",
        **extra,
    }


@needs_trackers
def test_log_evaluation_logs_the_table_and_one_scalar_per_row_and_model(tmp_path):
    rows = [
        metric_row("a", 0.5),
        metric_row("b", 0.7),
        {**metric_row("a", 0.1), "template": "*", "metric": "acc:spread", "ci_low": None, "ci_high": None},
    ]
    log_evaluation(["wandb", "mlflow", "tensorboard"], rows, "eval-rte", tmp_path / "eval", {"tasks": ["rte"]})

    from mlflow.tracking import MlflowClient

    client = MlflowClient((tmp_path / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("ckptlab").experiment_id])
    assert run.info.run_name == "eval-rte" and run.data.params["tasks"] == '["rte"]'
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "rte/plain/0/acc")] == [
        (0, 0.5),
        (1, 0.7),
    ]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "rte/plain/0/acc_ci_low")] == [0.4, 0.6]
    assert "rte/_/0/acc_spread" in run.data.metrics  # characters MLflow refuses become _
    table = json.loads(
        Path(client.download_artifacts(run.info.run_id, "evaluation/metrics.json", str(tmp_path))).read_text()
    )
    assert table["columns"][:4] == ["task", "template", "shots", "metric"] and len(table["data"]) == 3

    history = wandb_history(tmp_path / "wandb_dir")
    values = [(h["step"], h["rte/plain/0/acc"]) for h in history if "rte/plain/0/acc" in h]
    assert values == [(0, 0.5), (1, 0.7)]
    (table_file,) = (tmp_path / "wandb_dir").glob(
        "wandb/offline-run-*/files/media/table/evaluation/metrics_*.table.json"
    )
    assert len(json.loads(table_file.read_text())["data"]) == 3

    scalars = tensorboard_scalars(tmp_path / "eval" / "tensorboard")
    assert scalars["rte/plain/0/acc"] == [(0, 0.5), (1, pytest.approx(0.7))]


@needs_trackers
def test_log_evaluation_plots_rows_at_their_checkpoint_step_when_it_tells_the_models_apart(tmp_path):
    rows = [metric_row("a", 0.5, step=100), metric_row("b", 0.7, step=200)]
    log_evaluation(["tensorboard"], rows, "eval", tmp_path / "steps")
    assert [s for s, _ in tensorboard_scalars(tmp_path / "steps" / "tensorboard")["rte/plain/0/acc"]] == [100, 200]
    # Two runs' checkpoints at one step: each model keeps its own point, at its position.
    rows = [metric_row("a", 0.5, step=100), metric_row("b", 0.7, step=100), metric_row("c", 0.6)]
    log_evaluation(["tensorboard"], rows, "eval", tmp_path / "positions")
    assert [s for s, _ in tensorboard_scalars(tmp_path / "positions" / "tensorboard")["rte/plain/0/acc"]] == [0, 1, 2]


def test_log_evaluation_to_no_tracker_imports_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    log_evaluation([], [metric_row("a", 0.5)], "eval", tmp_path)
    assert not any(tmp_path.iterdir())


# --- a training run -------------------------------------------------------------------------------


def fit(root: Path, steps: int, resume_from=None, **options):
    model = tiny_model(intermediate_size=64)
    config = TrainConfig(
        max_steps=steps,
        micro_batch_size=4,
        progress=False,
        val_every=2,
        val_batches=1,
        save_every=2,
        **options,
    )
    run = RunDir(root)
    train(
        model=model,
        save_model=lambda folder: model.save_pretrained(folder),
        train_data=sft.SftBatches(random_rows(16, (12, 12)), seed=0, pad_id=1),
        val_data=sft.ValidationBatches(random_rows(4, (12, 12), seed=1), pad_id=1),
        config=config,
        lr_at=lambda step: 1e-2,
        kept=[],
        run=run,
        fingerprints={},
        resume_from=resume_from,
        allow_changed=[],
        dist=distributed.Dist(),
    )
    return run


@needs_trackers
def test_a_training_run_logs_every_metrics_line_and_a_resume_continues_the_same_runs(tmp_path):
    run = fit(tmp_path / "run", 4, report_to=["wandb", "mlflow"], tensorboard=True)
    lines = read_metrics(run.metrics)
    losses = [(r["step"], r["loss"]) for r in lines]
    val_losses = [(r["step"], r["val_loss"]) for r in lines if "val_loss" in r]
    assert [s for s, _ in losses] == [1, 2, 3, 4] and [s for s, _ in val_losses] == [2, 4]

    wandb_dir = tmp_path / "wandb_dir"
    history = wandb_history(wandb_dir)
    assert [(h["step"], h["train/loss"]) for h in history] == losses
    assert [(h["step"], h["train/val_loss"]) for h in history if "train/val_loss" in h] == val_losses
    assert {"train/lr", "train/grad_norm", "train/tokens_seen", "train/tokens_per_s"} <= set(history[0])
    assert wandb_config(wandb_dir)["train.max_steps"] == 4
    assert wandb_summary(wandb_dir)["compute/flops"] == json.loads(run.manifest.read_text())["compute"]["flops"]

    client, mlflow = mlflow_run(tmp_path, run.root)
    assert [(m.step, m.value) for m in client.get_metric_history(mlflow.info.run_id, "train/loss")] == losses
    assert [(m.step, m.value) for m in client.get_metric_history(mlflow.info.run_id, "train/val_loss")] == val_losses
    assert mlflow.data.params["train.report_to"] == '["wandb", "mlflow"]'
    assert mlflow.data.metrics["compute/tokens"] == json.loads(run.manifest.read_text())["compute"]["tokens"]
    assert mlflow.info.status == "FINISHED" and mlflow.info.run_name == "run"
    assert [s for s, _ in tensorboard_scalars(run.root / "tensorboard")["train/loss"]] == [1, 2, 3, 4]
    ids = json.loads((run.root / STATE_FILE).read_text())

    # Killed after step 4, resumed from step 2: steps 3 and 4 are logged again, to the same runs.
    run.truncate_metrics(2)
    fit(
        tmp_path / "run",
        4,
        resume_from=run.checkpoints / "step-00000002",
        report_to=["wandb", "mlflow"],
        tensorboard=True,
    )
    assert json.loads((run.root / STATE_FILE).read_text()) == ids
    resumed = [(r["step"], r["loss"]) for r in read_metrics(run.metrics)]
    assert [s for s, _ in resumed] == [1, 2, 3, 4]
    history = client.get_metric_history(mlflow.info.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2, 3, 4, 3, 4]
    assert {m.step: m.value for m in history} == dict(resumed)  # the last value of a step is the kept one
    assert [h["step"] for h in wandb_history(wandb_dir)] == [1, 2, 3, 4, 3, 4]
    # TensorBoard drops the first copies of the redone steps (purge_step).
    assert [s for s, _ in tensorboard_scalars(run.root / "tensorboard")["train/loss"]] == [1, 2, 3, 4]


@needs_trackers
def test_a_run_that_raises_is_marked_failed(tmp_path, monkeypatch):
    from ckptlab.errors import TrainingDiverged

    monkeypatch.setenv("CKPTLAB_FAULT", "nan:step=2")
    with pytest.raises(TrainingDiverged):
        fit(tmp_path / "run", 4, report_to=["mlflow"])
    _, mlflow = mlflow_run(tmp_path, tmp_path / "run")
    assert mlflow.info.status == "FAILED"


def test_a_missing_tracker_package_fails_before_the_first_step(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(UserError, match=r"^train\.report_to: mlflow needs .* pip install 'ckptlab\[mlflow\]'$"):
        fit(tmp_path / "run", 2, report_to=["mlflow"])
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@needs_trackers
def test_evaluate_logs_its_metric_rows_with_intervals_to_mlflow(tmp_path):
    """`ckptlab.evaluate(..., report_to=[mlflow])`: one tracker run holding every metric row and its CI."""
    import torch
    from mlflow.tracking import MlflowClient

    import ckptlab
    from ckptlab.data.tokenizer import train_tokenizer
    from ckptlab.models.hf import ModelConfig, build_model, save_model_dir

    pairs = [("good", "yes"), ("bad", "no")] * 6
    rows = [{"id": f"r{i}", "text": text, "label": label} for i, (text, label) in enumerate(pairs)]
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    (tmp_path / "task.yaml").write_text(
        "task: mini\ntype: classification\ndata: {test: test.jsonl}\nfields: [text]\nlabel_field: label\n"
        "choices: ['yes', 'no']\ntemplates: {a: 'Text: {text}. Good?', b: '{text} ->'}\n",
        encoding="utf-8",
    )
    tokenizer = train_tokenizer(["Text: good. bad. Good? yes no ->"] * 20, 280, tmp_path / "tok")
    torch.manual_seed(0)
    model = build_model(ModelConfig(architecture="llama", size="tiny", context_length=64), len(tokenizer), 0, 0, 1)
    save_model_dir(model, tokenizer, tmp_path / "model")
    results = ckptlab.evaluate(
        str(tmp_path / "model"),
        str(tmp_path / "task.yaml"),
        shots=0,
        bootstrap=20,
        batch_size=4,
        store=tmp_path / "results.sqlite",
        report_to=["mlflow"],
    )
    client = MlflowClient((tmp_path / "mlruns").as_uri())
    (run,) = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert run.info.run_name.startswith("evaluate-") and run.info.status == "FINISHED"
    for row in results:
        if row["template"] == "*":
            continue
        name = f"{row['task']}/{row['template']}/{row['shots']}/{row['metric']}"
        assert run.data.metrics[name] == pytest.approx(row["value"])
        assert run.data.metrics[f"{name}_ci_low"] == pytest.approx(row["ci_low"])
