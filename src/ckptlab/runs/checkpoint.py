"""Checkpoints that are trusted only when complete.

A checkpoint is a directory `step-00001000/` holding a loadable HF model directory (config,
safetensors weights, tokenizer), the training state (`training_state.pt`: optimizer, step, data
position, RNG states, fingerprints) and, written last, `checkpoint.json`: the list of its files with
their sizes and SHA-256. Everything is first written into a hidden temporary directory beside it,
fsynced, and renamed into place, so a crash leaves either the old state or the complete new one.
A directory without a valid `checkpoint.json`, or whose files disagree with it, is not a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ckptlab.errors import CheckpointError
from ckptlab.files import atomic_write_text, fsync_path

MANIFEST = "checkpoint.json"
TRAINING_STATE = "training_state.pt"
FORMAT_VERSION = 1


def step_dirname(step: int) -> str:
    """`step-00001000`: zero-padded so that names sort in step order."""
    return f"step-{step:08d}"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_checkpoint(parent: Path, step: int, write_files: Callable[[Path], None], meta: dict[str, Any]) -> Path:
    """Write checkpoint `step` under `parent` atomically and return its path.

    Args:
        parent: the run's checkpoints directory.
        step: optimizer steps completed when the checkpoint is taken.
        write_files: fills the temporary directory (model, tokenizer, training state).
        meta: extra fields recorded in the manifest (tokens seen, kept or not, fingerprints).
    """
    parent.mkdir(parents=True, exist_ok=True)
    final = parent / step_dirname(step)
    tmp = parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write_files(tmp)
    files = {}
    for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
        fsync_path(path)
        files[path.relative_to(tmp).as_posix()] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    manifest = {"format_version": FORMAT_VERSION, "step": step, **meta, "files": files}
    atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    fsync_path(tmp)
    if final.exists():  # the same step written again (e.g. a resumed run that stops at once)
        trash = parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_path(parent)
    return final


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of checkpoint `path`; CheckpointError if it is missing or unreadable."""
    manifest_path = Path(path) / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: incomplete checkpoint (no {MANIFEST})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{manifest_path}: corrupt checkpoint manifest ({error})") from None
    if not isinstance(manifest, dict) or "files" not in manifest or "step" not in manifest:
        raise CheckpointError(f"{manifest_path}: corrupt checkpoint manifest (missing 'files' or 'step')")
    return manifest


def verify_checkpoint(path: Path, deep: bool = True) -> dict[str, Any]:
    """Check every file of checkpoint `path` against its manifest; return the manifest.

    Raises CheckpointError naming the first missing, truncated or corrupt file. `deep` also
    compares SHA-256 (a flipped byte keeps the size); without it only sizes are checked.
    """
    manifest = read_manifest(path)
    for name, expected in manifest["files"].items():
        file = Path(path) / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing file of checkpoint")
        size = file.stat().st_size
        if size != expected["bytes"]:
            raise CheckpointError(f"{file}: truncated or altered ({size} bytes, manifest says {expected['bytes']})")
        if deep and sha256_file(file) != expected["sha256"]:
            raise CheckpointError(f"{file}: corrupt (SHA-256 differs from the checkpoint manifest)")
    return manifest


def list_step_dirs(parent: Path) -> list[Path]:
    """Checkpoint-looking directories under `parent`, newest step first (complete or not)."""
    if not parent.is_dir():
        return []
    found = [p for p in parent.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]), reverse=True)


def latest_complete(parent: Path, warn: Callable[[str], None] | None = None) -> Path | None:
    """The newest checkpoint under `parent` that verifies; skipped broken ones are reported via `warn`."""
    warn = warn or (lambda message: print(message, file=sys.stderr))
    for path in list_step_dirs(parent):
        try:
            verify_checkpoint(path)
        except CheckpointError as error:
            warn(f"ckptlab: warning: skipping {error}; falling back to an earlier checkpoint")
            continue
        return path
    return None


def remove_stale_temporaries(parent: Path) -> None:
    """Delete temporary directories left by a writer that died mid-checkpoint."""
    if parent.is_dir():
        for path in parent.iterdir():
            if path.name.startswith(".step-") and (".tmp-" in path.name or ".old-" in path.name):
                shutil.rmtree(path, ignore_errors=True)


def load_training_state(checkpoint: Path) -> dict[str, Any]:
    """The training state of a checkpoint (optimizer, RNG, data position, callbacks' states).

    Read with `weights_only=True`: tensors and plain data only. A checkpoint may come from anyone
    (`--init_from` takes any directory), and unpickling arbitrary objects could run their code.
    """
    import pickle

    import torch

    path = Path(checkpoint) / TRAINING_STATE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).splitlines()[0]
        raise CheckpointError(f"{path}: holds more than tensors and plain data; not loaded ({reason})") from None
    except (OSError, RuntimeError, EOFError) as error:
        raise CheckpointError(f"{path}: unreadable training state ({str(error).splitlines()[0]})") from None
