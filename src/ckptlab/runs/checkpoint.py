"""Checkpoints that are trusted only when complete.

A checkpoint is a directory `step-00001000/` holding a loadable HF model directory (config,
safetensors weights, tokenizer), the training state (`training_state.pt`: optimizer, step, data
position, RNG states, fingerprints) and, written last, `checkpoint.json`: the list of its files with
their sizes and SHA-256. Everything is first written into a hidden temporary directory beside it,
fsynced, and renamed into place, so a crash leaves either the old state or the complete new one.
A directory without a valid `checkpoint.json`, or whose files disagree with it, is not a checkpoint.

Writing is split in two so that training need not wait for the second half: `begin_checkpoint`
writes the files into the temporary directory, `complete_checkpoint` fsyncs and hashes them, writes
the manifest and renames the directory into place (a training run does this on a background thread).
A checkpoint whose manifest says `weights_only` holds no `training_state.pt`: loadable, evaluable,
fine-tunable, but not resumable (`drop_training_state` makes a superseded kept checkpoint so).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
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
    return complete_checkpoint(begin_checkpoint(parent, step, write_files), step, meta)


def begin_checkpoint(parent: Path, step: int, write_files: Callable[[Path], None]) -> Path:
    """Fill the hidden temporary directory of checkpoint `step` and return it; nothing counts as written yet.

    Once this returns the files no longer change, so `complete_checkpoint` may run on another thread
    while training goes on. A crash before it completes leaves only the temporary directory, which is
    never taken for a checkpoint and is removed by `remove_stale_temporaries`.
    """
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".{step_dirname(step)}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write_files(tmp)
    return tmp


def complete_checkpoint(tmp: Path, step: int, meta: dict[str, Any]) -> Path:
    """fsync and hash the files of `begin_checkpoint`'s directory, write the manifest last, rename it into place."""
    parent = tmp.parent
    final = parent / step_dirname(step)
    files = {}
    for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
        fsync_path(path)
        files[path.relative_to(tmp).as_posix()] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    _write_manifest(tmp, {"format_version": FORMAT_VERSION, "step": step, **meta, "files": files})
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


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def is_weights_only(manifest: dict[str, Any]) -> bool:
    """Whether the checkpoint's training state (optimizer, RNG, data position) was dropped: it cannot be resumed."""
    return bool(manifest.get("weights_only", False))


def drop_training_state(path: Path) -> None:
    """Make checkpoint `path` weights-only: unlist `training_state.pt` in its manifest, then delete the file.

    The atomic rewrite of the manifest is the one moment the checkpoint changes form, so a crash leaves
    either the complete checkpoint or the complete weights-only one, and both verify. A training state
    that a crash left behind is no longer listed, so it is neither verified nor loaded (see
    `load_training_state`), and calling this again deletes it. The rest of the training state (RNG,
    data position, callbacks' states) goes with the optimizer: it serves only to resume, which needs
    the optimizer too; the manifest keeps step, tokens and samples seen and the fingerprints.
    """
    manifest = read_manifest(path)
    if not is_weights_only(manifest):
        manifest["files"].pop(TRAINING_STATE, None)
        manifest["weights_only"] = True
        _write_manifest(Path(path), manifest)
    (Path(path) / TRAINING_STATE).unlink(missing_ok=True)
    fsync_path(path)


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
    """The newest checkpoint under `parent` that verifies and can be resumed; skipped ones are reported via `warn`."""
    warn = warn or (lambda message: print(message, file=sys.stderr))
    for path in list_step_dirs(parent):
        try:
            manifest = verify_checkpoint(path)
        except CheckpointError as error:
            warn(f"ckptlab: warning: skipping {error}; falling back to an earlier checkpoint")
            continue
        if is_weights_only(manifest):
            warn(f"ckptlab: warning: skipping {path}: weights-only (no {TRAINING_STATE}); falling back further")
            continue
        return path
    return None


STAMP = ".verified.json"
"""Beside a checkpoint's manifest: what its files looked like when they were last hashed (`verify_checkpoint_once`)."""
SETTLED_NS = 2_000_000_000
"""Files changed more recently are hashed but not stamped: file systems keep time in coarse ticks, and a second
change within the tick of the first would leave ctime as it was."""


def _identities(path: Path, names: list[str]) -> dict[str, list[int]]:
    stats = {name: (path / name).stat() for name in names}
    return {name: [s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino, s.st_dev] for name, s in stats.items()}


def verify_checkpoint_once(path: Path) -> dict[str, Any]:
    """`verify_checkpoint(path)`, hashing only files that changed since they were last hashed here.

    Sweeps start many jobs from one checkpoint; each would re-read gigabytes to hash them. A deep
    verification records in `.verified.json` every file's size, mtime, ctime, inode and device (the
    manifest's too). While all of them are unchanged the files are the ones that were hashed: writing,
    truncating or replacing a file changes its ctime (which, unlike mtime, no tool can set back) or its
    inode, and a copied checkpoint has new inodes, so any of these is hashed again. Sizes are checked
    every time. Only damage below the file system (a failing disk) passes unseen until the stamp goes;
    `verify_checkpoint` hashes unconditionally. A checkpoint that cannot be written to is hashed each time.
    """
    path = Path(path)
    manifest = verify_checkpoint(path, deep=False)
    names = [MANIFEST, *sorted(manifest["files"])]
    now = time.time_ns()
    before = _identities(path, names)
    try:
        if json.loads((path / STAMP).read_text(encoding="utf-8")) == before:
            return manifest
    except (OSError, ValueError):
        pass  # no stamp yet, or an unreadable one: hash
    manifest = verify_checkpoint(path)
    # Stamped only if nothing changed while it was hashed (a rewritten manifest has a new inode).
    settled = all(ctime < now - SETTLED_NS for _, _, ctime, _, _ in before.values())
    if settled and _identities(path, names) == before:
        with contextlib.suppress(OSError):  # a read-only checkpoint is hashed each time
            atomic_write_text(path / STAMP, json.dumps(before) + "\n")
    return manifest


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
    if (Path(checkpoint) / MANIFEST).is_file() and is_weights_only(read_manifest(checkpoint)):
        raise CheckpointError(f"{checkpoint}: weights-only checkpoint (no training state: optimizer, RNG, data)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).splitlines()[0]
        raise CheckpointError(f"{path}: holds more than tensors and plain data; not loaded ({reason})") from None
    except (OSError, RuntimeError, EOFError) as error:
        raise CheckpointError(f"{path}: unreadable training state ({str(error).splitlines()[0]})") from None
