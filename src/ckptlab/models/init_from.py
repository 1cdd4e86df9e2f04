"""The model a run starts from (`init_from`): resolving it, reading its config, identifying its tokenizer.

Shared by `ckptlab cpt` and `ckptlab finetune`: a ckptlab run directory resolves to its newest listed
checkpoint, a checkpoint is verified against its manifest (hashed once, not by every job of a sweep:
`ckptlab.runs.checkpoint.verify_checkpoint_once`), and anything else is an HF directory, a
hub id[@revision] or a .gguf file (`ckptlab.models.hf.parse_source`). Cheap to import (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckptlab.errors import UserError


@dataclass
class InitModel:
    """The resolved `init_from` of a run."""

    source: str
    """What `load_model` reads: a checkpoint directory, HF directory, hub id or .gguf file."""
    checkpoint: Path | None
    """The ckptlab checkpoint directory, when the source is one."""
    run_config: Path | None
    """config.yaml of the ckptlab run that wrote the checkpoint, when there is one."""


def resolve_init(init_from: str) -> InitModel:
    """A ckptlab run directory resolves to its newest listed checkpoint; checkpoints are verified (hashed once)."""
    from ckptlab.runs import checkpoint as ckpt
    from ckptlab.runs.run_dir import RUN_MANIFEST, RunDir

    path = Path(init_from).expanduser()
    if path.is_dir() and (path / RUN_MANIFEST).is_file() and not (path / ckpt.MANIFEST).is_file():
        entries = RunDir(path).read_run_manifest().get("checkpoints", [])
        if not entries:
            raise UserError(f"init_from {init_from}: the run lists no complete checkpoint in run.json")
        path = path / max(entries, key=lambda c: c["step"])["path"]
    if not (path.is_dir() and (path / ckpt.MANIFEST).is_file()):
        from ckptlab.models.hf import parse_source

        parse_source(init_from)  # a missing path fails here, before torch is imported
        return InitModel(source=init_from, checkpoint=None, run_config=None)
    ckpt.verify_checkpoint_once(path)
    run_config = path.parent.parent / "config.yaml"
    is_run = path.parent.name == "checkpoints" and run_config.is_file()
    return InitModel(source=str(path), checkpoint=path, run_config=run_config if is_run else None)


def model_directory(source: str) -> str:
    """The HF directory of a directory or hub-id source (downloaded or found in the cache)."""
    from ckptlab.models.hf import hub_snapshot, parse_source

    parsed = parse_source(source)
    if parsed.is_gguf:
        raise UserError(f"init_from {source}: a .gguf file holds a causal LM; give an HF directory or hub id")
    if parsed.kind == "directory":
        assert parsed.path is not None  # parse_source gives a directory its path
        directory = parsed.path
    else:
        assert parsed.repo_id is not None  # and a hub id (the only kind left) its repo id
        directory = hub_snapshot(parsed.repo_id, parsed.revision)
    if not (Path(directory) / "config.json").is_file():
        raise UserError(f"init_from {source}: {directory} has no config.json (not an HF model directory)")
    return str(directory)


def read_model_config(source: str, trust_remote_code: bool = False) -> Any:
    """The model's HF config without loading its weights (a .gguf file is read whole)."""
    from ckptlab.models.hf import load_error, load_model, parse_source, remote_code_kwargs

    if parse_source(source).is_gguf:
        return load_model(source).config
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_directory(source), **remote_code_kwargs(trust_remote_code))
    except (OSError, ValueError) as error:
        raise load_error(source, error) from None


def tokenizer_identity(tokenizer: Any) -> str:
    """A short hash of what decides tokenization (vocabulary, merges, normalisation, special tokens).

    Padding and truncation settings are left out: they change when a tokenizer is saved by another
    tool but do not change a single token id.
    """
    import hashlib
    import json

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("padding", None)
        spec.pop("truncation", None)
    else:
        spec = {"vocab": sorted(tokenizer.get_vocab().items())}
    spec["special"] = sorted(tokenizer.all_special_tokens)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
