"""Checkpoints count only when complete; corrupt ones are named and skipped."""

import json

import pytest

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
