"""`TokenWindows`: the pre-training sampler, a pure function of the global sample index.

A split's shards are cut into windows of `context_length + 1` tokens (inputs and shifted targets)
at stride `context_length`; a window never crosses a shard boundary. Global sample index `i` reads
window `order(epoch)[i % len]` with `epoch = i // len`, where `order(epoch)` is a permutation drawn
from `np.random.default_rng([seed, epoch])`. Nothing depends on what was read before, so a run that
resumes at step `s` reads exactly what it would have read: sample `j` of step `s` is
`window(s * global_batch + j)`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from ckptlab.data.shards import open_split, read_manifest
from ckptlab.errors import ConfigError, DataError


class TokenWindows:
    """Deterministic windows over one split of a prepared data directory.

    Args:
        data_dir: a directory written by `ckptlab prepare`.
        split: "train" or "val".
        context_length: tokens the model sees per sample; a window holds one more (the last target).
        seed: seeds the order of windows in every epoch.
    """

    def __init__(self, data_dir: str | Path, split: str, context_length: int, seed: int):
        if context_length < 1:
            raise ConfigError(f"context_length: expected a positive integer, got {context_length}")
        if seed < 0:
            raise ConfigError(f"seed: expected a non-negative integer, got {seed}")
        self.data_dir = Path(data_dir)
        self.split = split
        self.context_length = context_length
        self.seed = seed
        self.manifest: dict[str, Any] = read_manifest(self.data_dir)
        if split not in self.manifest["splits"]:
            raise DataError(f"{self.data_dir}: no split '{split}' (splits: {', '.join(self.manifest['splits'])})")
        info = self.manifest["splits"][split]
        self.num_tokens = int(info["tokens"])
        counts = [max(0, (int(shard["tokens"]) - 1) // context_length) for shard in info["shards"]]
        # first_window[k]: the global number of shard k's first window; the last entry: the total
        self._first_window = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self._num_windows = int(self._first_window[-1])
        if self._num_windows == 0:
            largest = max((int(shard["tokens"]) for shard in info["shards"]), default=0)
            raise DataError(
                f"{self.data_dir}: split '{split}' has {self.num_tokens} tokens "
                f"(largest shard {largest}), too few for one window: context_length "
                f"{context_length} needs at least "
                f"{context_length + 1} tokens in one shard"
            )
        key = f"{self.manifest['data_fingerprint']}:{split}:{context_length}:{seed}"
        self.fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
        self._shards: list[np.memmap] | None = None
        self._epoch = -1
        self._order: np.ndarray | None = None

    def __len__(self) -> int:
        """Windows per epoch."""
        return self._num_windows

    def window(self, index: int) -> np.ndarray:
        """The `context_length + 1` tokens (int64) of global sample `index` (any epoch)."""
        if index < 0:
            raise IndexError(f"sample index must be >= 0, got {index}")
        epoch, position = divmod(int(index), self._num_windows)
        number = int(self._order_of(epoch)[position])
        shard = int(np.searchsorted(self._first_window, number, side="right")) - 1
        start = (number - int(self._first_window[shard])) * self.context_length
        tokens = self._open()[shard][start : start + self.context_length + 1]
        return np.asarray(tokens, dtype=np.int64)

    def batch(self, first_index: int, size: int) -> np.ndarray:
        """Samples `first_index` to `first_index + size - 1`, shape (size, context_length + 1)."""
        return np.stack([self.window(first_index + offset) for offset in range(size)])

    def epoch_of(self, index: int) -> int:
        return int(index) // self._num_windows

    def _order_of(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch or self._order is None:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self._num_windows)
            self._epoch = epoch
        return self._order

    def _open(self) -> list[np.memmap]:
        if self._shards is None:
            self._shards = open_split(self.data_dir, self.split, self.manifest)
        return self._shards

    def __getstate__(self) -> dict[str, Any]:
        # Memmaps and the cached order are rebuilt on use; pickling them would copy the data
        # into every data-loader worker.
        state = dict(self.__dict__)
        state.update(_shards=None, _order=None, _epoch=-1)
        return state


def windows_for_model(
    key: str, data: str | Path, length: int, seed: int, tokenizer: Any, vocab_size: int, model_name: str
) -> TokenWindows:
    """The training windows of prepared directory `data` (named by config `key`) for a model: the data
    must have been tokenized with the model's tokenizer and fit its vocabulary."""
    from ckptlab.data.tokenizer import load_tokenizer
    from ckptlab.errors import UserError
    from ckptlab.models.init_from import tokenizer_identity

    path = Path(data).expanduser()
    try:
        windows = TokenWindows(path, "train", length, seed)
    except DataError as error:
        raise DataError(f"{key}: {error}") from None
    if tokenizer_identity(load_tokenizer(path / "tokenizer")) != tokenizer_identity(tokenizer):
        raise UserError(
            f"{key}: {data} was prepared with another tokenizer than the model's ({model_name}); "
            f"prepare it with `ckptlab prepare --tokenizer {model_name} ...`"
        )
    if int(windows.manifest["vocab_size"]) > int(vocab_size):
        raise UserError(
            f"{key}: {data} has a vocabulary of {windows.manifest['vocab_size']}, the model only {vocab_size}"
        )
    return windows
