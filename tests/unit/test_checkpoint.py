"""Checkpoints count only when complete; corrupt ones are named and skipped."""

import json

import pytest
from tiny_models import one_thread  # noqa: F401 - the tiny training runs below

from ckptlab.errors import CheckpointError
from ckptlab.runs import checkpoint as ckpt


def _write(parent, step, payload=b"weights"):
    def files(folder):
        (folder / "model.safetensors").write_bytes(payload)
        (folder / "config.json").write_text("{}")

    return ckpt.write_checkpoint(parent, step, files, {"kept": True})


def test_write_verify_and_latest(tmp_path):
    a = _write(tmp_path, 10)
    b = _write(tmp_path, 20)
    assert a.name == "step-00000010" and b.name == "step-00000020"
    assert ckpt.verify_checkpoint(b)["step"] == 20
    assert ckpt.latest_complete(tmp_path) == b
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_truncated_file_falls_back_and_is_named(tmp_path):
    _write(tmp_path, 10)
    newest = _write(tmp_path, 20, payload=b"x" * 1000)
    (newest / "model.safetensors").write_bytes(b"x" * 10)
    with pytest.raises(CheckpointError, match=r"step-00000020/model.safetensors: truncated"):
        ckpt.verify_checkpoint(newest)
    warnings = []
    assert ckpt.latest_complete(tmp_path, warn=warnings.append).name == "step-00000010"
    assert "model.safetensors" in warnings[0]


def test_flipped_byte_is_corrupt(tmp_path):
    newest = _write(tmp_path, 5, payload=b"abcdef")
    (newest / "model.safetensors").write_bytes(b"abcdeX")
    with pytest.raises(CheckpointError, match="corrupt"):
        ckpt.verify_checkpoint(newest)
    assert ckpt.verify_checkpoint(newest, deep=False)["step"] == 5


def test_directory_without_manifest_is_incomplete(tmp_path):
    half = tmp_path / "step-00000030"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"partial")
    _write(tmp_path, 20)
    with pytest.raises(CheckpointError, match="incomplete checkpoint"):
        ckpt.verify_checkpoint(half)
    assert ckpt.latest_complete(tmp_path, warn=lambda m: None).name == "step-00000020"


def test_corrupt_manifest_is_named(tmp_path):
    path = _write(tmp_path, 1)
    (path / ckpt.MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt checkpoint manifest"):
        ckpt.verify_checkpoint(path)


def test_crash_inside_writer_leaves_no_checkpoint(tmp_path):
    def dies(folder):
        (folder / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        ckpt.write_checkpoint(tmp_path, 7, dies, {})
    assert ckpt.list_step_dirs(tmp_path) == []
    ckpt.remove_stale_temporaries(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_rewriting_a_step_replaces_it_whole(tmp_path):
    _write(tmp_path, 3, payload=b"old")
    path = _write(tmp_path, 3, payload=b"new!")
    assert (path / "model.safetensors").read_bytes() == b"new!"
    manifest = json.loads((path / ckpt.MANIFEST).read_text())
    assert manifest["files"]["model.safetensors"]["bytes"] == 4


def test_resume_without_a_checkpoint_starts_a_fresh_metrics_history(tmp_path):
    from ckptlab.runs.run_dir import RunDir, read_metrics

    run = RunDir(tmp_path / "run")
    run.root.mkdir(parents=True)
    run.metrics.write_text('{"step": 1, "loss": 5.0}\n{"step": 2, "loss": 4.0}\n', encoding="utf-8")
    said = []
    assert run.resume_point("step 0", said.append) is None
    assert read_metrics(run.metrics) == [] and "starting from step 0" in said[0]


class _Payload:
    """An object a hostile training_state.pt could pickle (unpickling it would run its code)."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def test_training_state_loads_only_tensors_and_plain_data(tmp_path, capsys):
    import torch

    torch.save(
        {"step": 3, "optimizer": {"state": {}, "param_groups": []}, "rng": torch.get_rng_state()},
        tmp_path / ckpt.TRAINING_STATE,
    )
    assert ckpt.load_training_state(tmp_path)["step"] == 3
    torch.save({"step": 3, "payload": _Payload()}, tmp_path / ckpt.TRAINING_STATE)
    with pytest.raises(CheckpointError, match=r"training_state.pt: holds more than tensors and plain data"):
        ckpt.load_training_state(tmp_path)
    assert "unpickled!" not in capsys.readouterr().out
    (tmp_path / ckpt.TRAINING_STATE).write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"training_state.pt: "):
        ckpt.load_training_state(tmp_path)


# --- weights-only kept checkpoints ------------------------------------------------------------------


class _Killed(BaseException):
    """The process dying at this point (a BaseException, as SIGKILL gives no chance to clean up either)."""


def _dies(*args, **kwargs):
    raise _Killed


def _full(parent, step):
    """A checkpoint with weights and a training state, as a training run writes it."""

    def files(folder):
        (folder / "model.safetensors").write_bytes(b"w" * 100)
        (folder / ckpt.TRAINING_STATE).write_bytes(b"s" * 200)

    return ckpt.write_checkpoint(parent, step, files, {"kept": True})


def test_dropping_the_training_state_leaves_a_verifiable_weights_only_checkpoint(tmp_path):
    older, newer = _full(tmp_path, 10), _full(tmp_path, 20)
    ckpt.drop_training_state(older)
    assert not (older / ckpt.TRAINING_STATE).exists()
    manifest = ckpt.verify_checkpoint(older)
    assert list(manifest["files"]) == ["model.safetensors"] and ckpt.is_weights_only(manifest)
    (newer / "model.safetensors").write_bytes(b"w" * 10)  # the newest breaks: resume may not take the weights-only one
    warnings = []
    assert ckpt.latest_complete(tmp_path, warn=warnings.append) is None
    assert "truncated" in warnings[0] and "weights-only" in warnings[1]
    with pytest.raises(CheckpointError, match="weights-only checkpoint"):
        ckpt.load_training_state(older)


def test_a_crash_at_any_point_of_dropping_the_training_state_leaves_a_checkpoint_that_verifies(tmp_path, monkeypatch):
    from pathlib import Path

    path = _full(tmp_path, 10)
    # Killed before the manifest is replaced: the complete checkpoint, still resumable.
    monkeypatch.setattr(ckpt, "atomic_write_text", _dies)
    with pytest.raises(_Killed):
        ckpt.drop_training_state(path)
    assert not ckpt.is_weights_only(ckpt.verify_checkpoint(path))
    monkeypatch.undo()
    # Killed after the manifest is replaced, before the file is deleted: weights-only, the leftover unlisted.
    monkeypatch.setattr(Path, "unlink", _dies)
    with pytest.raises(_Killed):
        ckpt.drop_training_state(path)
    monkeypatch.undo()
    assert (path / ckpt.TRAINING_STATE).exists() and ckpt.is_weights_only(ckpt.verify_checkpoint(path))
    with pytest.raises(CheckpointError, match="weights-only"):
        ckpt.load_training_state(path)  # the leftover is never loaded
    ckpt.drop_training_state(path)  # running again finishes the job
    assert not (path / ckpt.TRAINING_STATE).exists() and ckpt.verify_checkpoint(path)["step"] == 10


def test_a_crash_while_completing_leaves_only_a_temporary(tmp_path, monkeypatch):
    _full(tmp_path, 10)
    tmp = ckpt.begin_checkpoint(tmp_path, 20, lambda folder: (folder / "model.safetensors").write_bytes(b"x"))
    monkeypatch.setattr(ckpt, "sha256_file", _dies)
    with pytest.raises(_Killed):
        ckpt.complete_checkpoint(tmp, 20, {})
    monkeypatch.undo()
    assert [p.name for p in ckpt.list_step_dirs(tmp_path)] == ["step-00000010"]
    assert ckpt.latest_complete(tmp_path).name == "step-00000010"
    ckpt.remove_stale_temporaries(tmp_path)
    assert not tmp.exists()


# --- the start checkpoint is hashed once --------------------------------------------------------------


def test_init_checkpoint_is_hashed_once_but_a_changed_file_is_still_refused(tmp_path, monkeypatch):
    import time

    from ckptlab.models.init_from import resolve_init

    path = _write(tmp_path, 5, payload=b"abcdef")
    hashed = []
    real = ckpt.sha256_file
    monkeypatch.setattr(ckpt, "sha256_file", lambda file: hashed.append(file.name) or real(file))
    resolve_init(str(path))  # written just now: hashed, not stamped (a change in the same clock tick is invisible)
    assert sorted(hashed) == ["config.json", "model.safetensors"] and not (path / ckpt.STAMP).exists()
    monkeypatch.setattr(ckpt, "SETTLED_NS", 0)
    resolve_init(str(path))
    assert len(hashed) == 4 and (path / ckpt.STAMP).exists()
    for _ in range(3):
        resolve_init(str(path))  # the next jobs of a sweep: sizes and the stamp only
    assert len(hashed) == 4
    time.sleep(0.05)  # past a tick of the file system's clock
    (path / "model.safetensors").write_bytes(b"abcdeX")  # same size, new content
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt"):
        resolve_init(str(path))
    (path / "model.safetensors").write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="model.safetensors: truncated"):
        resolve_init(str(path))


# --- a training run: kept checkpoints lose their optimizer state, completion in the background ------------


class _Raise:
    """A callback that fails before a given step, as a bug or an out-of-memory error would."""

    state_key = None
    best_step = None

    def __init__(self, step):
        self.step = step

    def __getattr__(self, name):
        return lambda *args, **kwargs: {} if name in ("on_gradients", "run_record") else None

    def on_micro_batch(self, step, micro):
        if step == self.step:
            raise RuntimeError("failed mid-run")

    def on_loss(self, step, loss):
        return loss

    def on_train_start(self, step):
        return False


def _fit(root, steps, resume_from=None, callbacks=(), **options):
    from tiny_models import random_rows, tiny_model

    from ckptlab.data import sft
    from ckptlab.runs.run_dir import RunDir
    from ckptlab.train import distributed
    from ckptlab.train.config import TrainConfig
    from ckptlab.train.loop import train

    model = tiny_model(intermediate_size=64)
    if resume_from is not None:  # as the verbs do: the weights from the checkpoint, the rest from its training state
        from ckptlab.models.hf import load_model

        model = load_model(str(resume_from))
    config = TrainConfig(max_steps=steps, micro_batch_size=4, progress=False, val_every=0, save_every=1)
    run = RunDir(root)
    return train(
        model=model,
        save_model=lambda folder: model.save_pretrained(folder),
        train_data=sft.SftBatches(random_rows(16, (12, 12), 4, 0), seed=0, pad_id=1),
        val_data=None,
        config=config,
        lr_at=lambda s: 1e-2,
        kept=[0, 2],
        run=run,
        fingerprints={},
        resume_from=resume_from,
        allow_changed=[],
        dist=distributed.Dist(),
        callbacks=list(callbacks),
        **options,
    )


def _slow_completion(monkeypatch, seconds=0.3):
    """Completing a checkpoint takes a while, as hashing gigabytes does; training must not wait for it."""
    import time

    real = ckpt.complete_checkpoint

    def slow(*args):
        time.sleep(seconds)
        return real(*args)

    monkeypatch.setattr(ckpt, "complete_checkpoint", slow)


def _sizes(path):
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def test_kept_checkpoints_become_weights_only_once_superseded_and_resume_stays_exact(tmp_path, monkeypatch):
    from ckptlab.runs.run_dir import RunDir, read_metrics

    _slow_completion(monkeypatch, 0.05)
    whole = _fit(tmp_path / "whole", 5)
    listed = {c["step"]: c for c in whole.checkpoints}
    assert sorted(listed) == [0, 2, 4, 5]  # kept 0 and 2, the newest two resume checkpoints
    assert [s for s, c in listed.items() if c.get("optimizer_state") is False] == [0, 2]
    checkpoints = tmp_path / "whole" / "checkpoints"
    for step in (0, 2):
        manifest = ckpt.verify_checkpoint(checkpoints / ckpt.step_dirname(step))
        assert (
            ckpt.is_weights_only(manifest)
            and not (checkpoints / ckpt.step_dirname(step) / ckpt.TRAINING_STATE).exists()
        )
    for step in (4, 5):
        assert ckpt.TRAINING_STATE in ckpt.verify_checkpoint(checkpoints / ckpt.step_dirname(step))["files"]
    # AdamW's two moments are twice the weights: a weights-only checkpoint is about a third of a full one.
    assert _sizes(checkpoints / "step-00000002") / _sizes(checkpoints / "step-00000004") < 0.4

    # A run that fails after its step-3 checkpoint: the checkpoint still completes before the error surfaces.
    _slow_completion(monkeypatch, 0.3)
    failed = tmp_path / "failed"
    with pytest.raises(RuntimeError, match="failed mid-run"):
        _fit(failed, 5, callbacks=[_Raise(3)])
    assert ckpt.verify_checkpoint(failed / "checkpoints" / "step-00000003")["step"] == 3
    assert [c["step"] for c in RunDir(failed).read_run_manifest()["checkpoints"]] == [0, 2, 3]
    resume_from = RunDir(failed).resume_point("step 0")
    assert resume_from.name == "step-00000003"
    RunDir(failed).accept_resume(resume_from, {}, [], True)
    _fit(failed, 5, resume_from=resume_from)
    losses = [[r["loss"] for r in read_metrics(root / "metrics.jsonl")] for root in (failed, tmp_path / "whole")]
    assert losses[0] == losses[1] and len(losses[0]) == 5  # bitwise


def test_keep_optimizer_state_keeps_it_in_kept_checkpoints(tmp_path):
    result = _fit(tmp_path, 4, keep_optimizer_state=True)
    assert not [c for c in result.checkpoints if c.get("optimizer_state") is False]
    assert ckpt.TRAINING_STATE in ckpt.verify_checkpoint(tmp_path / "checkpoints" / "step-00000000")["files"]


def test_saving_returns_before_the_checkpoint_is_complete_and_the_end_of_the_run_waits(tmp_path, monkeypatch):
    import os
    import threading

    import torch

    from ckptlab.runs.run_dir import RunDir
    from ckptlab.train import distributed
    from ckptlab.train.checkpointing import Checkpointer, Position
    from ckptlab.train.config import TrainConfig

    release = threading.Event()
    real = ckpt.complete_checkpoint
    monkeypatch.setattr(ckpt, "complete_checkpoint", lambda *args: release.wait(10) and real(*args))
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    run = RunDir(tmp_path)
    saver = Checkpointer(
        run,
        lambda folder: torch.save(model.state_dict(), folder / "w.pt"),
        TrainConfig(),
        [],
        {},
        distributed.Dist(),
        [],
    )
    saver.save(Position(1, 4, 40), optimizer, None, "max_steps")
    assert ckpt.list_step_dirs(run.checkpoints) == [] and not run.manifest.exists()  # training goes on meanwhile
    assert [p.name for p in run.checkpoints.iterdir()] == [f".step-00000001.tmp-{os.getpid()}"]
    release.set()
    assert [c["step"] for c in saver.finish("complete", "max_steps")] == [1]
    assert ckpt.verify_checkpoint(run.checkpoints / "step-00000001")["samples_seen"] == 4
    assert RunDir(tmp_path).read_run_manifest()["status"] == "complete"


def test_a_failure_completing_a_checkpoint_surfaces_at_the_next_wait(tmp_path, monkeypatch):
    import torch

    from ckptlab.runs.run_dir import RunDir
    from ckptlab.train import distributed
    from ckptlab.train.checkpointing import Checkpointer, Position
    from ckptlab.train.config import TrainConfig

    monkeypatch.setattr(ckpt, "sha256_file", lambda path: (_ for _ in ()).throw(OSError("disk full")))
    model = torch.nn.Linear(2, 2)
    saver = Checkpointer(RunDir(tmp_path), lambda folder: None, TrainConfig(), [], {}, distributed.Dist(), [])
    saver.save(Position(1, 4, 40), torch.optim.AdamW(model.parameters()), None, "max_steps")
    with pytest.raises(OSError, match="disk full"):
        saver.wait_for_finalize()
    saver.wait_for_finalize()  # raised once
    assert ckpt.list_step_dirs(tmp_path / "checkpoints") == []


def test_cpt_from_a_weights_only_checkpoint_starts_adamw_fresh_and_says_why(tmp_path):
    from ckptlab.commands.cpt import _carried_optimizer_state
    from ckptlab.models.init_from import InitModel

    path = _full(tmp_path, 10)
    ckpt.drop_training_state(path)
    (path / ckpt.TRAINING_STATE).write_bytes(b"a leftover")  # as a crash between the two steps leaves it
    state, note = _carried_optimizer_state(InitModel(str(path), path, None), None, None)
    assert state is None and "weights-only" in note and "--keep.optimizer_state true" in note
