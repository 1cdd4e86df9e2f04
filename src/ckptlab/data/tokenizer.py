"""Tokenizers: train a byte-level BPE on the corpus, or load an existing one; save in HF format.

The trained tokenizer follows Pythia's: byte-level pre-tokenizer and decoder (every byte string is
encodable, so there is no unknown token), NFC normalisation, `<|endoftext|>` as id 0 (end of text,
also used as beginning of text) and `<|padding|>` as id 1. Training is deterministic: the same
documents in the same order give a byte-identical `tokenizer.json`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ckptlab.errors import ConfigError, DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN)
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)  # every byte, plus the special tokens


def train_tokenizer(documents: Iterable[str], vocab_size: int, out_dir: str | Path) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of at most `vocab_size` tokens and save it to `out_dir` (HF format).

    The vocabulary is smaller than `vocab_size` when the corpus runs out of pairs to merge.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < MIN_VOCAB_SIZE:
        raise ConfigError(
            f"config key 'vocab_size': expected at least {MIN_VOCAB_SIZE} "
            f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens), got {vocab_size}"
        )
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(documents, trainer)
    assert [bpe.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1], "special tokens must be ids 0, 1"
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN
    )
    save_tokenizer(tokenizer, out_dir)
    return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, out_dir: str | Path) -> None:
    """Save in HF format (tokenizer.json, tokenizer_config.json) so any HF tool can load it."""
    out_dir = Path(out_dir)
    tokenizer.save_pretrained(out_dir)
    config_path = out_dir / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        # transformers 5 writes its own class name, which transformers 4 cannot load; the generic
        # fast-tokenizer class loads the same tokenizer.json under both.
        if config.get("tokenizer_class") == "TokenizersBackend":
            config["tokenizer_class"] = "PreTrainedTokenizerFast"
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a directory (HF format) or a hub model id, optionally `id@revision`."""
    from transformers import AutoTokenizer

    text = str(path)
    local = Path(text).expanduser()
    if local.exists():
        name, revision = str(local), None
    elif text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1:
        raise DataError(f"{text}: tokenizer directory not found")
    else:
        name, _, revision = text.partition("@")
    try:
        return AutoTokenizer.from_pretrained(name, revision=revision or None)
    except (OSError, ValueError, KeyError, ImportError) as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{text}: could not load a tokenizer ({detail})") from None


def tokenizer_fingerprint(tokenizer_dir: str | Path) -> str:
    """A short sha256 of `tokenizer.json`: equal fingerprints mean identical tokenization."""
    path = Path(tokenizer_dir) / "tokenizer.json"
    try:
        data = path.read_bytes()
    except OSError:
        raise DataError(f"{tokenizer_dir}: no tokenizer.json (not a saved fast tokenizer)") from None
    return hashlib.sha256(data).hexdigest()[:16]
