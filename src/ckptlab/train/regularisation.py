"""Regularisers of fine-tuning that the loop calls: L2-SP (a pull toward the pre-trained weights) and early stopping.

Both are off unless asked for, and the loop then runs exactly as without them.

**L2-SP** (Li, Grandvalet & Davoine 2018): the objective gains `anchor_weight · Σ‖θ − θ₀‖²` over the
trainable parameters, θ₀ their values in the model fine-tuning starts from. Its gradient
`2 · anchor_weight · (θ − θ₀)` is added to the accumulated gradients once per optimizer step, before
clipping (the same gradient as adding the term to the loss, without a second graph). The penalty
is not part of the logged `loss` (which stays the data loss, comparable with validation); metrics
lines carry it as `anchor_penalty`. θ₀ lives on the training device, one copy of the trainable
parameters; a resumed run reloads it from `init_from`.

**Early stopping** watches the validation loss: a validation *improves* when its loss is below the
best so far by more than `min_delta`; after `patience` validations in a row without improving, the
run stops. The loop writes a checkpoint at every improving validation and keeps it (marked
`"best": true` in run.json) until a better one replaces it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ckptlab.errors import ConfigError


@dataclass
class EarlyStoppingConfig:
    """Stop when the validation loss stops improving."""

    patience: int | None = None
    """Stop after this many validations in a row without a new best validation loss; null = never stop early."""
    min_delta: float = 0.0
    """A validation loss improves on the best only when lower by more than this."""

    def __post_init__(self) -> None:
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"early_stopping.patience: expected a positive integer (validations without improvement), got {self.patience}")
        if not (math.isfinite(self.min_delta) and self.min_delta >= 0):
            raise ConfigError(f"early_stopping.min_delta: expected a number ≥ 0, got {self.min_delta}")


class EarlyStopping:
    """The best validation loss so far and how many validations have not improved on it."""

    metric = "val_loss"

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        self.patience, self.min_delta = patience, min_delta
        self.best: float | None = None
        self.best_step: int | None = None
        self.bad_validations = 0
        self.stopped_at: int | None = None

    def observe(self, step: int, value: float | None) -> tuple[bool, bool]:
        """(improved, stop) after the validation at `step`; a missing loss counts as no improvement."""
        if value is not None and math.isfinite(value) and (self.best is None or value < self.best - self.min_delta):
            self.best, self.best_step, self.bad_validations = value, step, 0
            return True, False
        self.bad_validations += 1
        stop = self.bad_validations >= self.patience
        if stop:
            self.stopped_at = step
        return False, stop

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "bad_validations": self.bad_validations,
                "stopped_at": self.stopped_at}

    def load_state(self, state: dict[str, Any]) -> None:
        self.best, self.best_step = state["best"], state["best_step"]
        self.bad_validations, self.stopped_at = state["bad_validations"], state["stopped_at"]

    def record(self) -> dict[str, Any]:
        return {"metric": self.metric, "patience": self.patience, "min_delta": self.min_delta,
                "best_step": self.best_step, "best_val_loss": self.best, "bad_validations": self.bad_validations,
                "stopped_at": self.stopped_at}


class L2SP:
    """`weight · Σ‖θ − θ₀‖²` over the trainable parameters of `model`.

    Args:
        weight: anchor weight (> 0).
        model: the model being trained; its trainable parameters are anchored.
        reference: name → tensor of θ₀ (e.g. the init_from model's state dict, for a resumed run);
            None takes the model's current values (a run starting at init_from).
    """

    def __init__(self, weight: float, model: Any, reference: dict[str, Any] | None = None) -> None:
        import torch

        self.weight = weight
        self.params: list[Any] = []
        self.anchors: list[Any] = []
        with torch.no_grad():
            for name, param in model.named_parameters():
                if not param.requires_grad:
                    continue
                source = param if reference is None else reference[name]
                self.params.append(param)
                self.anchors.append(source.detach().to(device=param.device, dtype=param.dtype, copy=True))

    def add_gradient(self) -> float:
        """Add the penalty's gradient to the parameters' `.grad`; return the penalty at the current weights."""
        import torch

        total = 0.0
        with torch.no_grad():
            for param, anchor in zip(self.params, self.anchors):
                delta = param - anchor
                total += float(delta.pow(2).sum(dtype=torch.float64))
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
                param.grad.add_(delta, alpha=2.0 * self.weight)
        return self.weight * total
