"""`ckptlab prepare`: tokenize text sources into token shards with a manifest and a held-out split.

    ckptlab prepare --sources data/corpus.txt,data/extra.jsonl --out data/prepared --vocab_size 8192

Reads the sources three times: first to check every file and decide which documents are held out,
then (when training a tokenizer) to train it on the training documents only, then to tokenize.
The output directory (layout in `ckptlab.data.shards`) appears only once complete. The same inputs
and config give byte-identical shards, tokenizer and manifest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from ckptlab.errors import ConfigError

BATCH_DOCUMENTS = 1024  # documents tokenized together (the tokenizer runs a batch in parallel)


@dataclass
class PrepareConfig:
    sources: list[str] = field(default_factory=list)
    """Text sources, comma-separated: .txt or .jsonl files, directories, hf:NAME[:CONFIG]:SPLIT."""
    out: str = "data/prepared"
    """Output directory: token shards, manifest.json and the tokenizer."""
    text_field: str = "text"
    """Field holding the text in JSON Lines files and HF datasets."""
    text_unit: Literal["paragraph", "line", "file"] = "paragraph"
    """How a text file splits into documents: blank-line-separated paragraphs, lines, or all."""
    tokenizer: str = ""
    """An existing tokenizer (a directory or a hub id[@revision]); empty trains a byte-level BPE."""
    vocab_size: int = 8192
    """Vocabulary size of the trained BPE (ignored when --tokenizer is given)."""
    val_fraction: float = 0.05
    """Fraction of documents held out for validation, chosen by a hash of (seed, document)."""
    seed: int = 0
    """Seed of the held-out split."""
    shard_tokens: int = 2**26
    """Most tokens in one shard file."""
    overwrite: bool = False
    """Replace an existing prepared data directory at --out."""


def prepare(config: PrepareConfig) -> int:
    """Tokenize `config.sources` into `config.out`; print a summary. Returns the exit code."""
    _validate(config)
    from pathlib import Path

    from ckptlab.data import shards
    from ckptlab.data import tokenizer as tokenizers

    out = Path(config.out)
    shards.check_output_dir(out, config.overwrite)  # before the slow work, not only after it
    plan = _plan(config)
    with shards.atomic_output_dir(out, config.overwrite) as temp:
        tokenizer_dir = temp / shards.TOKENIZER_DIR
        if config.tokenizer:
            print(f"loading tokenizer {config.tokenizer}", flush=True)
            tokenizer = tokenizers.load_tokenizer(config.tokenizer)
            tokenizers.save_tokenizer(tokenizer, tokenizer_dir)
        else:
            print(f"training a byte-level BPE tokenizer (vocab_size {config.vocab_size})", flush=True)
            train_documents = (doc for doc, split in _documents(config, plan) if split == "train")
            tokenizer = tokenizers.train_tokenizer(train_documents, config.vocab_size, tokenizer_dir)
        # Encoders (BERT, MiniLM) have no end-of-text token: their separator ends each document.
        eos_id = next(
            (t for t in (tokenizer.eos_token_id, getattr(tokenizer, "sep_token_id", None)) if t is not None), None
        )
        if eos_id is None:
            raise ConfigError(
                f"tokenizer '{config.tokenizer}': has no end-of-text token (eos_token) or separator (sep_token)"
            )
        vocab_size, eos_id = len(tokenizer), int(eos_id)
        dtype = shards.token_dtype(vocab_size)
        print(f"tokenizing {plan['documents']:,} documents", flush=True)
        source_entries, splits = _write_shards(config, plan, tokenizer, temp, dtype, vocab_size, eos_id)
        manifest = {
            "format": shards.FORMAT,
            "format_version": shards.FORMAT_VERSION,
            "dtype": dtype.name,
            "vocab_size": vocab_size,
            "eos_id": eos_id,
            "tokenizer_dir": shards.TOKENIZER_DIR,
            "tokenizer_fingerprint": tokenizers.tokenizer_fingerprint(tokenizer_dir),
            # where the output goes and whether it may replace another do not change its content
            "config": {k: v for k, v in dataclasses.asdict(config).items() if k not in ("out", "overwrite")},
            "sources": source_entries,
            "splits": splits,
            "data_fingerprint": shards.data_fingerprint(splits),
        }
        shards.write_manifest(temp, manifest)
    for split in shards.SPLITS:
        info = splits[split]
        print(
            f"{split:<5} {info['documents']:>10,} documents {info['tokens']:>14,} tokens "
            f"{len(info['shards']):>4} shard(s)"
        )
    print(f"vocab {vocab_size:,} ({dtype.name}), data fingerprint {manifest['data_fingerprint']} -> {out}")
    return 0


def _validate(config: PrepareConfig) -> None:
    if not config.sources:
        raise ConfigError("prepare: give at least one source with --sources")
    if not 0 <= config.val_fraction < 1:
        raise ConfigError(f"config key 'val_fraction': expected a number in [0, 1), got {config.val_fraction}")
    if config.shard_tokens < 1:
        raise ConfigError(f"config key 'shard_tokens': expected a positive integer, got {config.shard_tokens}")
    if not config.tokenizer:
        from ckptlab.data.tokenizer import MIN_VOCAB_SIZE

        if config.vocab_size < MIN_VOCAB_SIZE:
            raise ConfigError(
                f"config key 'vocab_size': expected at least {MIN_VOCAB_SIZE} "
                f"(256 bytes + 2 special tokens), got {config.vocab_size}"
            )


def _plan(config: PrepareConfig) -> dict[str, Any]:
    """First pass: read every source (any bad input fails here), count documents, fix the split.

    Documents are held out by hash; when that leaves validation empty (val_fraction > 0, at least
    two documents) the last document is moved to it, and when it leaves training empty the first
    document is moved to training.
    """
    import hashlib

    from ckptlab.data import shards, sources

    print(f"reading {len(config.sources)} source(s)", flush=True)
    per_source = []
    index = held_out = 0
    first_val = None
    for source in config.sources:
        file_sha = sources.source_sha256(source)
        stream = hashlib.sha256()
        count = 0
        for document in sources.iter_documents(source, config.text_field, config.text_unit):
            sha = hashlib.sha256(document.encode()).digest()
            stream.update(sha)
            if shards.is_held_out(sha, config.seed, config.val_fraction):
                held_out += 1
                first_val = index if first_val is None else first_val
            count += 1
            index += 1
        per_source.append({"source": source, "sha256": file_sha or stream.hexdigest(), "documents": count})
    forced: dict[int, str] = {}
    if config.val_fraction > 0 and index >= 2 and held_out == 0:
        forced[index - 1] = "val"
    elif held_out == index and first_val is not None:
        forced[first_val] = "train"
    return {"sources": per_source, "documents": index, "forced": forced}


def _documents(config: PrepareConfig, plan: dict[str, Any]):
    """Every document with its split, in reading order; checks the sources did not change."""
    import hashlib

    from ckptlab.data import shards, sources
    from ckptlab.errors import DataError

    index = 0
    for source, expected in zip(config.sources, plan["sources"]):
        count = 0
        for document in sources.iter_documents(source, config.text_field, config.text_unit):
            split = plan["forced"].get(index)
            if split is None:
                sha = hashlib.sha256(document.encode()).digest()
                split = "val" if shards.is_held_out(sha, config.seed, config.val_fraction) else "train"
            yield document, split
            count += 1
            index += 1
        if count != expected["documents"]:
            raise DataError(f"{source}: changed while being prepared ({expected['documents']} documents, then {count})")


def _encoder(tokenizer):
    """A function from a list of texts to lists of ids, without special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        from tokenizers import Tokenizer

        # A tokenizer.json may pad and truncate every encoding (sentence-transformers models pad and
        # cut at 128 tokens): documents must be tokenized whole, without padding. A copy is changed.
        backend = Tokenizer.from_str(backend.to_str())
        backend.no_padding()
        backend.no_truncation()
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        return lambda texts: [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    if backend is not None:
        return lambda texts: [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]


def _write_shards(config, plan, tokenizer, directory, dtype, vocab_size: int, eos_id: int):
    """Last pass: tokenize in batches, append the end-of-text id to each document, write shards."""
    import numpy as np

    from ckptlab.data.shards import ShardWriter
    from ckptlab.errors import DataError

    encode = _encoder(tokenizer)
    writers = {split: ShardWriter(directory, split, dtype, config.shard_tokens) for split in ("train", "val")}
    source_tokens = [0] * len(config.sources)
    boundaries = np.cumsum([s["documents"] for s in plan["sources"]])
    end_of_text = np.array([eos_id], dtype=np.int64)

    def flush(batch: list[tuple[str, str]], first_index: int) -> None:
        ids = encode([text for text, _ in batch])
        parts: dict[str, list[np.ndarray]] = {"train": [], "val": []}
        for offset, ((_, split), doc_ids) in enumerate(zip(batch, ids)):
            source = int(np.searchsorted(boundaries, first_index + offset, side="right"))
            source_tokens[source] += len(doc_ids) + 1
            parts[split] += [np.asarray(doc_ids, dtype=np.int64), end_of_text]
        for split, arrays in parts.items():
            if not arrays:
                continue
            tokens = np.concatenate(arrays)
            if tokens.max() >= vocab_size or tokens.min() < 0:
                raise DataError(
                    f"tokenizer '{config.tokenizer}': produced an id outside its vocabulary of {vocab_size}"
                )
            writers[split].write(tokens, documents=len(arrays) // 2)

    try:
        batch: list[tuple[str, str]] = []
        first_index = 0
        for item in _documents(config, plan):
            batch.append(item)
            if len(batch) == BATCH_DOCUMENTS:
                flush(batch, first_index)
                first_index += len(batch)
                batch = []
        flush(batch, first_index)
        splits = {split: writer.close() for split, writer in writers.items()}
    finally:
        for writer in writers.values():
            writer.abort()
    source_entries = [{**entry, "tokens": tokens} for entry, tokens in zip(plan["sources"], source_tokens)]
    return source_entries, splits
