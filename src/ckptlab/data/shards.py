"""Token shards: raw memmap files of token ids, a `manifest.json`, and the held-out split.

A prepared data directory holds:

    manifest.json        what is here and how it was made (layout below); written last
    tokenizer/           the tokenizer, HF format
    train-00000.bin ...  token ids, uint16 when the vocabulary fits (<= 65535) else uint32;
    val-00000.bin ...    every document is followed by the end-of-text id

The manifest (no timestamps, so the same inputs give the same bytes):

    format, format_version, dtype, vocab_size, eos_id, tokenizer_dir, tokenizer_fingerprint,
    config            the prepare config that matters for the content (not out/overwrite)
    sources           [{source, sha256, documents, tokens}]
    splits            {train: {documents, tokens, shards: [{file, tokens, sha256}]}, val: {...}}
    data_fingerprint  a short sha256 over every shard's name and hash

The directory is built beside its target under a hidden temporary name and renamed into place only
once complete, so a directory named like the target is always whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ckptlab.errors import DataError
from ckptlab.files import fsync_path, fsync_tree

FORMAT = "ckptlab-prepared-data"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in it, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


def is_held_out(document_sha256: bytes, seed: int, val_fraction: float) -> bool:
    """Whether a document is held out for validation: decided by a hash of (seed, document).

    The same document lands in the same split whatever the order or number of other documents.
    """
    if val_fraction <= 0:
        return False
    digest = hashlib.sha256(seed.to_bytes(8, "little", signed=True) + document_sha256).digest()
    return int.from_bytes(digest[:8], "little") < val_fraction * 2**64


class ShardWriter:
    """Writes one split's token stream into files of at most `shard_tokens` tokens each."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.directory, self.split, self.dtype, self.shard_tokens = (
            directory,
            split,
            dtype,
            shard_tokens,
        )
        self.shards: list[dict[str, Any]] = []
        self.documents = 0
        self.tokens = 0
        self._handle: Any = None
        self._digest: Any = None
        self._count = 0

    def write(self, tokens: np.ndarray, documents: int) -> None:
        """Append `tokens` (already ending in the end-of-text id) holding `documents` documents."""
        tokens = np.ascontiguousarray(tokens, dtype=self.dtype)
        self.documents += documents
        self.tokens += len(tokens)
        while len(tokens):
            if self._handle is None:
                self._open_next()
            chunk, tokens = (
                tokens[: self.shard_tokens - self._count],
                tokens[self.shard_tokens - self._count :],
            )
            data = chunk.tobytes()
            self._handle.write(data)
            self._digest.update(data)
            self._count += len(chunk)
            if self._count == self.shard_tokens:
                self._finish()

    def close(self) -> dict[str, Any]:
        """Finish the last shard; return this split's manifest entry."""
        if self._handle is not None:
            self._finish()
        return {"documents": self.documents, "tokens": self.tokens, "shards": self.shards}

    def abort(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _open_next(self) -> None:
        name = f"{self.split}-{len(self.shards):05d}.bin"
        self._handle = open(self.directory / name, "wb")
        self._digest = hashlib.sha256()
        self._count = 0
        self.shards.append({"file": name, "tokens": 0, "sha256": ""})

    def _finish(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        self._handle = None
        self.shards[-1].update(tokens=self._count, sha256=self._digest.hexdigest())


def data_fingerprint(splits: dict[str, Any]) -> str:
    """A short sha256 over every shard's split, name and hash: equal means identical token data."""
    digest = hashlib.sha256()
    for split in sorted(splits):
        for shard in splits[split]["shards"]:
            digest.update(f"{split}/{shard['file']} {shard['sha256']}\n".encode())
    return digest.hexdigest()[:16]


def check_output_dir(target: Path, overwrite: bool) -> None:
    """Refuse a target that holds prepared data (unless `overwrite`) or anything else."""
    if not target.exists():
        return
    if not target.is_dir():
        raise DataError(f"{target}: exists and is not a directory; choose another --out")
    if not any(target.iterdir()):
        return
    if not (target / MANIFEST).is_file():
        raise DataError(
            f"{target}: exists and is not a prepared data directory; refusing to replace it (choose another --out)"
        )
    if not overwrite:
        raise DataError(f"{target}: already holds prepared data; pass --overwrite true to replace it")


@contextlib.contextmanager
def atomic_output_dir(target: str | Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary directory beside `target`; when the block succeeds, move it into place.

    Every file is fsynced before the rename; on any error the temporary directory is removed and
    `target` is left as it was.
    """
    target = Path(target)
    check_output_dir(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    # os.mkdir, not mkdtemp: the finished directory gets the usual permissions, not 0700
    temp = target.parent / f".{target.name}.incomplete-{os.getpid()}-{secrets.token_hex(4)}"
    os.mkdir(temp)
    try:
        yield temp
        fsync_tree(temp)
        check_output_dir(target, overwrite)  # again: something may have appeared meanwhile
        replaced = None
        if target.exists():
            replaced = Path(tempfile.mkdtemp(prefix=f".{target.name}.replaced-", dir=target.parent))
            os.replace(target, replaced / target.name)
        os.replace(temp, target)
        fsync_path(target.parent)
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Write `manifest.json` (the last file written: its presence marks the data complete)."""
    with open(directory / MANIFEST, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(manifest, indent=2) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_manifest(directory: str | Path, verify_hashes: bool = False) -> dict[str, Any]:
    """Read and check a prepared data directory's manifest.

    Checks that every shard is present with the size the manifest gives; with `verify_hashes`, also
    that its sha256 matches (reads every byte).
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise DataError(f"{directory}: prepared data directory not found")
    if not path.is_file():
        raise DataError(f"{directory}: not a prepared data directory (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not a valid manifest ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not a ckptlab prepared-data manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{path}: format version {manifest.get('format_version')!r}, this ckptlab reads "
            f"{FORMAT_VERSION}; run `ckptlab prepare` again"
        )
    try:
        itemsize = np.dtype(manifest["dtype"]).itemsize
        for split in SPLITS:
            for shard in manifest["splits"][split]["shards"]:
                _check_shard(
                    directory / shard["file"],
                    int(shard["tokens"]),
                    itemsize,
                    shard["sha256"],
                    verify_hashes,
                )
    except (KeyError, TypeError) as error:
        raise DataError(f"{path}: malformed manifest (missing or wrong {error})") from None
    return manifest


def _check_shard(file: Path, tokens: int, itemsize: int, sha256: str, verify: bool) -> None:
    if not file.is_file():
        raise DataError(f"{file}: shard listed in {MANIFEST} is missing")
    size, expected = file.stat().st_size, tokens * itemsize
    if size != expected:
        raise DataError(
            f"{file}: expected {tokens} tokens ({expected} bytes), found {size} bytes; "
            "the prepared data is incomplete or corrupt"
        )
    if verify:
        digest = hashlib.sha256()
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != sha256:
            raise DataError(f"{file}: sha256 does not match {MANIFEST}; the prepared data is corrupt")


def open_split(directory: str | Path, split: str, manifest: dict[str, Any] | None = None) -> list[np.memmap]:
    """Read-only memmaps of a split's shards, in order (`manifest` saves reading it again)."""
    directory = Path(directory)
    manifest = manifest if manifest is not None else read_manifest(directory)
    if split not in manifest["splits"]:
        raise DataError(f"{directory}: no split '{split}' (splits: {', '.join(manifest['splits'])})")
    dtype = np.dtype(manifest["dtype"])
    return [
        np.memmap(directory / shard["file"], dtype=dtype, mode="r", shape=(int(shard["tokens"]),))
        for shard in manifest["splits"][split]["shards"]
    ]
