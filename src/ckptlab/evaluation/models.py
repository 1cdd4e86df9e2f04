"""Which models an evaluation covers, and each model's content fingerprint.

`--model` takes a checkpoint directory, a run directory (its checkpoints listed in `run.json`), an
HF model directory, a `.gguf` file, a hub id `org/name@revision` or a hub GGUF `org/name@revision:file.gguf`.
The fingerprint hashes what decides the model's outputs — weights, config and tokenizer files — never
the path: a kept checkpoint's `checkpoint.json` already holds every file's SHA-256, a hub revision's
hashes are published by the hub (nothing is downloaded), other directories and GGUF files are hashed
(once per file version, remembered in the results store).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckptlab.errors import UserError
from ckptlab.runs.checkpoint import MANIFEST, TRAINING_STATE
from ckptlab.runs.run_dir import RUN_MANIFEST

# Files of a checkpoint directory that do not change the model's outputs.
NOT_MODEL_FILES = {TRAINING_STATE, MANIFEST}
CHECKPOINT_MODES = ("kept", "all", "latest")


@dataclass
class ModelRef:
    """One model to evaluate."""

    source: str
    """What `ckptlab.models.hf.load_model` is given."""
    label: str
    """A short human name: `RUN/step-00001000`, the directory name, or the hub id."""
    kind: str
    """checkpoint, directory, gguf or hub."""
    run: str | None = None
    step: int | None = None
    tokens_seen: int | None = None


def _checkpoint_ref(path: Path) -> ModelRef:
    from ckptlab.runs.checkpoint import verify_checkpoint

    manifest = verify_checkpoint(path, deep=False)
    run = path.parent.parent if path.parent.name == "checkpoints" else None
    label = f"{run.name}/{path.name}" if run else path.name
    return ModelRef(
        str(path),
        label,
        "checkpoint",
        run=str(run) if run else None,
        step=int(manifest["step"]),
        tokens_seen=manifest.get("tokens_seen"),
    )


def resolve_models(sources: list[str], checkpoints: str = "kept") -> list[ModelRef]:
    """Expand `--model` values into models (a run directory into its checkpoints).

    Raises:
        UserError: a source that is not a model, a run without the requested checkpoints.
    """
    from ckptlab.models.hf import parse_source
    from ckptlab.models.hub import parse_revision
    from ckptlab.runs.run_dir import RunDir

    if checkpoints not in CHECKPOINT_MODES:
        raise UserError(f"--checkpoints {checkpoints}: expected one of {', '.join(CHECKPOINT_MODES)}")
    refs: list[ModelRef] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir() and (path / RUN_MANIFEST).is_file():
            run = RunDir(path)
            listed = run.read_run_manifest().get("checkpoints", [])
            chosen = {
                "kept": [c for c in listed if c.get("kept")],
                "all": listed,
                "latest": sorted(listed, key=lambda c: c["step"])[-1:],
            }[checkpoints]
            if not chosen:
                raise UserError(f"--model {source}: run.json lists no {checkpoints} checkpoints")
            refs.extend(_checkpoint_ref(run.root / c["path"]) for c in sorted(chosen, key=lambda c: c["step"]))
        elif path.is_dir() and (path / MANIFEST).is_file():
            refs.append(_checkpoint_ref(path))
        else:
            parsed = parse_source(source)
            if parsed.kind == "directory":
                refs.append(ModelRef(str(path), path.name, "directory"))
            elif parsed.kind == "gguf":
                refs.append(ModelRef(str(path), path.stem, "gguf"))
            else:
                revision = parse_revision(parsed.revision or "")
                refs.append(ModelRef(source, source, "hub", step=revision.step, tokens_seen=revision.tokens))
    return refs


def _sha256_file(path: Path) -> str:
    from ckptlab.runs.checkpoint import sha256_file

    return sha256_file(path)


def _directory_files(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.rglob("*")
        if p.is_file()
        and p.name not in NOT_MODEL_FILES
        and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    )


def content_hash(ref: ModelRef, file_sha256: Any = None) -> str:
    """SHA-256 over (file name, file SHA-256) of everything that decides the model's outputs.

    `file_sha256(path, compute)` may memoise per-file hashes (the results store does).
    """
    memo = file_sha256 or (lambda path, compute: compute(path))
    if ref.kind == "checkpoint":
        from ckptlab.runs.checkpoint import read_manifest

        files = read_manifest(Path(ref.source))["files"]
        listing = {name: entry["sha256"] for name, entry in files.items() if Path(name).name not in NOT_MODEL_FILES}
    elif ref.kind == "gguf":
        path = Path(ref.source)
        listing = {"model.gguf": memo(path.resolve(), _sha256_file)}  # the name does not matter
    elif ref.kind == "hub":
        return _hub_content_hash(ref)
    else:
        directory = Path(ref.source)
        listing = {
            p.relative_to(directory).as_posix(): memo(p.resolve(), _sha256_file) for p in _directory_files(directory)
        }
    if not listing:
        raise UserError(f"--model {ref.source}: no model files to fingerprint")
    return hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()


def _hub_content_hash(ref: ModelRef) -> str:
    """The hub's published hashes of the files loading reads (LFS SHA-256, git blob id otherwise): no
    download, and the same answer offline from a cached snapshot. The source is pinned to the commit
    that was fingerprinted, so the model scored is the model named. Unlike a directory's, the hash of a
    non-LFS file is its git blob id, so a hub model and a local copy of it get different fingerprints;
    a single GGUF file is keyed as a local one is, so the two agree."""
    from ckptlab.models.hf import parse_source
    from ckptlab.models.hub import fingerprint, hub_files

    parsed = parse_source(ref.source)
    assert parsed.repo_id is not None  # a hub source has a repo id
    found = hub_files(parsed.repo_id, parsed.revision, parsed.file)
    ref.source = f"{parsed.repo_id}@{found.commit}" + (f":{parsed.file}" if parsed.file else "")
    return fingerprint({"model.gguf": found.files[parsed.file]} if parsed.file else found.files)


def eval_precision(dtype: str, device: str) -> tuple[str, str]:
    """(dtype, device) as an evaluation runs them, `auto` resolved.

    Device auto is CUDA when available. Dtype auto is bfloat16 on a CUDA device with native bf16 (the
    scorers upcast logits before the log-softmax, and `generate` picks tokens from fp32 logits),
    float32 elsewhere: on CPU bf16 scores move with batch composition and decoding is slower.
    """
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "float32"
        if device.startswith("cuda"):
            import torch

            dtype = "bfloat16" if torch.cuda.is_bf16_supported(including_emulation=False) else "float32"
    return dtype, device


def model_fingerprint(content: str, dtype: str = "float32") -> str:
    """The model key of the cache: content hash, plus the dtype (as `eval_precision` resolves it) when not fp32.

    The dtype is part of the key so that bf16 and fp32 scores of one model are never mixed in the cache.
    """
    return content[:16] + ("" if dtype == "float32" else f"-{dtype}")


def load_for_eval(
    source: str, dtype: str, device: str, say: Callable[[str], None], trust_remote_code: bool = False
) -> tuple[Any, Any]:
    """The model at `source` on `device` in `dtype`, in eval mode, and its tokenizer (`trust_remote_code`:
    let a hub model's own code run)."""
    from ckptlab.models.hf import load_model, load_tokenizer

    dtype, device = eval_precision(dtype, device)
    started = time.perf_counter()
    # Any: transformers wraps PreTrainedModel.to with functools.wraps, which mypy reads as an unbound method.
    loaded: Any = load_model(source, dtype=dtype, trust_remote_code=trust_remote_code)
    model = loaded.to(device).eval()
    tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
    say(f"loaded {source} on {device} ({dtype}) in {time.perf_counter() - started:.1f} s")
    return model, tokenizer
