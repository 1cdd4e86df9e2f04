"""L2-SP (Li, Grandvalet & Davoine 2018): a pull of fine-tuned weights toward the pre-trained ones.

The objective gains `anchor_weight · Σ‖θ − θ₀‖²` over the trainable parameters, θ₀ their values in
the model fine-tuning starts from. Its gradient `2 · anchor_weight · (θ − θ₀)` is added to the
accumulated gradients once per optimizer step, before clipping (the same gradient as adding the
term to the loss, without a second graph). The penalty is not part of the logged `loss` (which
stays the data loss, comparable with validation); metrics lines carry it as `anchor_penalty`. θ₀
lives on the training device, one copy of the trainable parameters; a resumed run reloads it from
`init_from`. Off unless asked for, and the loop then runs exactly as without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ckptlab.train.callbacks.base import Callback

if TYPE_CHECKING:
    import torch


class L2SP(Callback):
    """`weight · Σ‖θ − θ₀‖²` over the trainable parameters of `model`.

    Args:
        weight: anchor weight (> 0).
        model: the model being trained; its trainable parameters are anchored.
        reference: name → tensor of θ₀ (e.g. the init_from model's state dict, for a resumed run);
            None takes the model's current values (a run starting at init_from).
    """

    def __init__(
        self, weight: float, model: torch.nn.Module, reference: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        import torch

        self.weight = weight
        self.params: list[torch.nn.Parameter] = []
        self.anchors: list[torch.Tensor] = []
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

    def on_gradients(self) -> dict[str, float]:
        """Join the penalty's gradient to the step's; the metrics line gets the penalty."""
        return {"anchor_penalty": self.add_gradient()}
