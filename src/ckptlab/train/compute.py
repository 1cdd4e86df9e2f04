"""Compute accounting: FLOPs by the Kaplan et al. (2020) convention, tokens, wall time and energy.

The convention (Kaplan et al. 2020, *Scaling Laws for Neural Language Models*, Table 1 and §2.1):

    forward FLOPs per token  = 2·N + 2·n_layer·T·d_model
    training FLOPs per token = 3 × forward = 6·N + 6·n_layer·T·d_model

- **N** counts the parameters that take part in a matrix multiply for every token: all parameters
  except the token (and learned position) embedding tables, which are looked up, not multiplied.
  The output head (de-embedding) *is* counted, also when it shares its matrix with the input
  embedding: Kaplan et al. leave it out of N as small for large models, but for the small models
  studied here it is often the largest matmul. Norms and biases are counted (negligible).
- **T** is the length of the sequences the token was processed in (the attention term: every token
  attends over T positions; Kaplan's n_ctx). A batch of b sequences of length T contributes
  b·T tokens and b·T² token-positions; causal masking is not halved, as in Kaplan et al.
- **Backward = 2 × forward** (activation gradients + weight gradients) for *every* method. With
  LoRA or frozen blocks the weight-gradient half is smaller and (for `last_k`, `head`) the backward
  pass stops at the lowest trainable block, so the number is an upper bound for those methods; we
  keep one convention so that runs of different methods compare on the same scale, and record
  `trainable_params` beside it.
- Tokens include padding: padded positions are computed like any other.

Energy is an estimate: `device_power_w` (per process) × processes × wall time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

#: Power drawn per device when `train.device_power_w` is not given (a desktop CPU's TDP; an H100 SXM's).
DEFAULT_POWER_W = {"cpu": 65.0, "cuda": 700.0}
CONVENTION = "kaplan2020: 6*N*tokens + 6*n_layer*d_model*sum(b*T^2); N = parameters except embedding tables (head counted)"


@dataclass(frozen=True)
class ModelDims:
    """What the FLOP formula needs to know of a model."""

    matmul_params: int
    """N: parameters used in a matrix multiply per token (all but embedding tables; the head counts)."""
    n_layer: int
    """Transformer blocks."""
    d_model: int
    """Width of the residual stream (Kaplan's d_attn = d_model for these models)."""
    trainable_params: int
    """Parameters that receive gradient updates."""
    total_params: int
    """All parameters, shared tensors counted once."""


def model_dims(model: Any) -> ModelDims:
    """The FLOP-relevant sizes of an HF model (a peft-wrapped one included)."""
    import torch

    unique = {id(p): p for p in model.parameters()}
    tables = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters(recurse=False)}
    matmul = sum(p.numel() for i, p in unique.items() if i not in tables)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and id(head.weight) in tables:
        matmul += head.weight.numel()  # a tied head is still a d_model × vocab matmul per token
    config = model.config
    n_layer = _first(config, ("num_hidden_layers", "n_layer", "num_layers"))
    d_model = _first(config, ("hidden_size", "n_embd", "d_model"))
    return ModelDims(matmul_params=matmul, n_layer=n_layer, d_model=d_model,
                     trainable_params=sum(p.numel() for p in unique.values() if p.requires_grad),
                     total_params=sum(p.numel() for p in unique.values()))


def _first(config: Any, names: tuple[str, ...]) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    text = getattr(config, "text_config", None)  # multimodal configs keep the LM's sizes here
    if text is not None:
        return _first(text, names)
    raise ValueError(f"the model config has none of {', '.join(names)}")


def forward_flops(dims: ModelDims, tokens: float, context: float) -> float:
    """FLOPs of a forward pass over `tokens` tokens in sequences of `context` tokens (evaluation, scoring)."""
    return 2.0 * dims.matmul_params * tokens + 2.0 * dims.n_layer * context * dims.d_model * tokens


def training_flops(dims: ModelDims, tokens: float, context: float) -> float:
    """FLOPs of forward + backward over `tokens` tokens in sequences of `context` tokens (3 × forward)."""
    return 3.0 * forward_flops(dims, tokens, context)


class ComputeMeter:
    """Counts a run's tokens and time and turns them into the `compute` record of run.json.

    The counters are part of the training state, so a resumed run continues them; time spent after
    the last checkpoint of a killed process is not part of the run's history and is not counted.
    """

    def __init__(self, model: Any, device: Any, processes: int, power_w: float | None) -> None:
        self.dims = model_dims(model)
        self.device = _device_name(device)
        self.processes = processes
        self.power_w = power_w if power_w is not None else DEFAULT_POWER_W.get(getattr(device, "type", "cpu"), 65.0)
        self.tokens = 0
        self.target_tokens = 0
        self.token_positions = 0
        """Σ b·T² over the micro-batches: the attention term's count."""
        self.wall_before = 0.0
        self.started = time.perf_counter()

    def add(self, tokens: int, target_tokens: int, token_positions: int) -> None:
        """Count one optimizer step (all processes' micro-batches)."""
        self.tokens += tokens
        self.target_tokens += target_tokens
        self.token_positions += token_positions

    def wall_s(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    def state(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "target_tokens": self.target_tokens,
                "token_positions": self.token_positions, "wall_s": self.wall_s()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.tokens, self.target_tokens = state["tokens"], state["target_tokens"]
        self.token_positions, self.wall_before = state["token_positions"], state["wall_s"]
        self.started = time.perf_counter()

    def flops(self) -> float:
        d = self.dims
        return 6.0 * d.matmul_params * self.tokens + 6.0 * d.n_layer * d.d_model * self.token_positions

    def record(self) -> dict[str, Any]:
        wall = round(self.wall_s(), 3)
        energy_j = self.power_w * self.processes * wall
        return {
            "tokens": self.tokens, "target_tokens": self.target_tokens, "flops": self.flops(),
            "flops_convention": CONVENTION, "matmul_params": self.dims.matmul_params,
            "n_layer": self.dims.n_layer, "d_model": self.dims.d_model,
            "trainable_params": self.dims.trainable_params, "total_params": self.dims.total_params,
            "wall_s": wall, "device": self.device, "processes": self.processes,
            "device_power_w": self.power_w, "energy_kwh": round(energy_j / 3.6e6, 9),
        }


def _device_name(device: Any) -> str:
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        return f"{device} ({torch.cuda.get_device_name(device)})"
    import platform

    return f"cpu ({platform.processor() or platform.machine()})"
