"""Batch sources for the training loop: pure functions from global sample indices to tensors."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch


class WindowBatches:
    """Language-modelling batches from fixed-length token windows: every next token is a target."""

    def __init__(self, windows: Any) -> None:
        self.windows = windows

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        tokens = torch.from_numpy(np.stack([self.windows.window(i) for i in indices]).astype(np.int64))
        return {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}
