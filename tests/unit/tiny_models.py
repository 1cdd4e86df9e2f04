"""Tiny causal LMs built in code for the unit tests of training, and one intra-op thread while they run.

Import `one_thread` into a test module (`from tiny_models import one_thread  # noqa: F401`) to run
its tests with one thread.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ckptlab.models.hf import ModelConfig, build_model

VOCAB = 97


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads; on busy shared cores two threads spin (up to 30x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(
    architecture: str = "gpt_neox",
    *,
    vocab: int = VOCAB,
    seed: int = 0,
    hf_overrides: dict[str, Any] | None = None,
    **sizes: Any,
) -> Any:
    """A seeded model of width 32, 2 heads, 32 positions (2 blocks, MLP 256 unless `sizes` say otherwise)."""
    torch.manual_seed(seed)
    options = {"size": "tiny", "hidden_size": 32, "num_heads": 2, "context_length": 32, **sizes}
    return build_model(
        ModelConfig(architecture=architecture, hf_overrides=hf_overrides or {}, **options),
        vocab_size=vocab,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    )


def random_rows(count: int = 16, lengths: tuple[int, int] = (10, 20), targets: int = 4, seed: int = 0) -> list[Any]:
    """Fine-tuning rows of random tokens, `lengths` (inclusive) long, whose last `targets` tokens are targets."""
    import numpy as np

    from ckptlab.data import sft

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        length = int(rng.integers(lengths[0], lengths[1] + 1))
        out.append(sft.Tokenized(rng.integers(2, VOCAB, size=length), np.arange(length) >= length - targets))
    return out


def tokenizer_adding_bos(folder: Any, texts: list[str]) -> Any:
    """A tiny BPE tokenizer that, like Llama's, puts its BOS token before every text by default."""
    from tokenizers import processors

    from ckptlab.data.tokenizer import train_tokenizer

    tokenizer = train_tokenizer([*texts, "Question: Answer: The world"] * 20, 320, folder)
    bos = tokenizer.bos_token
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.bos_token_id)]
    )
    assert tokenizer("apple")["input_ids"][0] == tokenizer.bos_token_id
    return tokenizer
