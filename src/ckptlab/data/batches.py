"""Batch sources for the training loop: pure functions from global sample indices to tensors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


class WindowBatches:
    """Language-modelling batches from fixed-length token windows: every next token is a target."""

    def __init__(self, windows: Any) -> None:
        self.windows = windows

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        tokens = torch.from_numpy(np.stack([self.windows.window(i) for i in indices]).astype(np.int64))
        return {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}


class MixtureBatches:
    """Language-modelling batches drawn from several sources by a `ckptlab.data.mixture.Mixture`.

    Every next token is a target. Samples of one length stack as they are (the same tensors as
    `WindowBatches`); when sources give different lengths, shorter samples are right-padded with
    `pad_id`, their padded positions get label -100 and an `attention_mask` marks the real tokens.

    Args:
        mixture: maps a global sample index to (source, index within the source).
        sources: one sample source per mixture source, each with `window(i)` → token array.
        pad_id: token id written into padded positions (never a target).
    """

    def __init__(self, mixture: Any, sources: Sequence[Any], pad_id: int = 0) -> None:
        if len(sources) != mixture.num_sources:
            raise ValueError(f"the mixture has {mixture.num_sources} sources, {len(sources)} given")
        self.mixture = mixture
        self.sources = list(sources)
        self.pad_id = pad_id

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        samples = []
        for index in indices:
            source, position = self.mixture.locate(index)
            samples.append(np.asarray(self.sources[source].window(position), dtype=np.int64))
        longest = max(len(s) for s in samples)
        if all(len(s) == longest for s in samples):
            tokens = torch.from_numpy(np.stack(samples))
            return {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}
        inputs = np.full((len(samples), longest - 1), self.pad_id, dtype=np.int64)
        labels = np.full((len(samples), longest - 1), -100, dtype=np.int64)
        mask = np.zeros((len(samples), longest - 1), dtype=np.int64)
        for row, sample in enumerate(samples):
            inputs[row, : len(sample) - 1] = sample[:-1]
            labels[row, : len(sample) - 1] = sample[1:]
            mask[row, : len(sample) - 1] = 1
        return {
            "input_ids": torch.from_numpy(inputs),
            "labels": torch.from_numpy(labels),
            "attention_mask": torch.from_numpy(mask),
        }
