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
- **Backward** = activation gradients + weight gradients, each 2 FLOPs per multiply-add. With
  every weight trainable that is 2·N + 2·N (and 4·n_layer·T·d_model for attention): 3 × forward,
  Kaplan's 6·N. With frozen parts the count follows what the backward pass really computes:
  activation gradients flow only from the head down to the lowest block holding a trainable
  parameter (none at all when only the head trains: its gradient needs only the loss's gradient at
  the logits), and weight gradients are computed only for trainable matmul parameters (LoRA's
  adapters, the last k blocks and the head). So per token

      2·N + 2·N_backward + 2·N_trainable  (+ 2·n_layer·T·d_model + 4·n_layer_backward·T·d_model)

  where N_backward counts the matmul parameters from the lowest trainable block up (N for full
  fine-tuning and LoRA, the last k blocks + head for `last_k`, 0 for `head`), n_layer_backward the
  blocks it spans, and N_trainable the trainable matmul parameters. Full fine-tuning and
  pre-training give exactly 6·N. A model whose blocks cannot be found is charged the full count.
- Tokens include padding: padded positions are computed like any other.

Energy is an estimate: `device_power_w` (per process) × processes × wall time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

#: Power drawn per device when `train.device_power_w` is not given (a desktop CPU's TDP; an H100 SXM's).
DEFAULT_POWER_W = {"cpu": 65.0, "cuda": 700.0}
CONVENTION = (
    "kaplan2020, backward as computed: (2*N + 2*N_backward + 2*N_trainable)*tokens + (2*n_layer + "
    "4*n_layer_backward)*d_model*sum(b*T^2); N = parameters except embedding tables (head counted); "
    "= 6*N*tokens + 6*n_layer*d_model*sum(b*T^2) when every weight trains"
)


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
    backward_params: int
    """N_backward: matmul parameters that activation gradients pass through (N when every weight trains)."""
    backward_layers: int
    """Blocks that activation gradients pass through (n_layer when every weight trains)."""
    weight_grad_params: int
    """N_trainable: trainable matmul parameters, whose weight gradients are computed."""

    def training_flops(self, tokens: float, token_positions: float) -> float:
        """Forward + backward FLOPs over `tokens` tokens that attend over `token_positions` (Σ b·T²) in all."""
        per_token = 2.0 * (self.matmul_params + self.backward_params + self.weight_grad_params)
        per_position = (2.0 * self.n_layer + 4.0 * self.backward_layers) * self.d_model
        return per_token * tokens + per_position * token_positions


def model_dims(model: Any) -> ModelDims:
    """The FLOP-relevant sizes of an HF model (a peft-wrapped one included)."""
    import torch

    unique = {id(p): p for p in model.parameters()}
    tables = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters(recurse=False)}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied_head = head is not None and id(head.weight) in tables

    def matmul_of(params: dict[int, Any], trainable_only: bool = False) -> int:
        count = sum(p.numel() for i, p in params.items() if i not in tables and (p.requires_grad or not trainable_only))
        if (
            head is not None
            and tied_head
            and id(head.weight) in params
            and (head.weight.requires_grad or not trainable_only)
        ):
            count += head.weight.numel()  # a tied head is still a d_model × vocab matmul per token
        return count

    matmul = matmul_of(unique)
    config = model.config
    n_layer = _first(config, ("num_hidden_layers", "n_layer", "num_layers"))
    d_model = _first(config, ("hidden_size", "n_embd", "d_model"))
    backward_params, backward_layers = _backward_extent(model, unique, tables, head, matmul_of) or (matmul, n_layer)
    return ModelDims(
        matmul_params=matmul,
        n_layer=n_layer,
        d_model=d_model,
        trainable_params=sum(p.numel() for p in unique.values() if p.requires_grad),
        total_params=sum(p.numel() for p in unique.values()),
        backward_params=backward_params,
        backward_layers=backward_layers,
        weight_grad_params=matmul_of(unique, trainable_only=True),
    )


def _backward_extent(
    model: Any, unique: dict[int, Any], tables: set[int], head: Any, matmul_of: Any
) -> tuple[int, int] | None:
    """(N_backward, blocks) that activation gradients pass through; None = all of them."""
    from ckptlab.errors import UserError
    from ckptlab.models.methods import transformer_blocks

    if any(unique[i].requires_grad for i in tables if i in unique):
        return None  # a trainable embedding needs gradients all the way down
    try:
        blocks = transformer_blocks(model)
    except UserError:
        return None  # blocks not found: charge the full count
    trainable = [i for i, block in enumerate(blocks) if any(p.requires_grad for p in block.parameters())]
    if trainable:
        below = {id(p): p for block in blocks[: min(trainable)] for p in block.parameters()}
        return matmul_of(unique) - matmul_of(below), len(blocks) - min(trainable)
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    if any(p.requires_grad for i, p in unique.items() if i not in head_ids):
        # e.g. the final norm alone: gradients pass through the head only
        return matmul_of({i: unique[i] for i in head_ids if i in unique}), 0
    return 0, 0  # the head alone: its weight gradient needs only the loss gradient at the logits


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
    """FLOPs of forward + backward over `tokens` tokens in sequences of `context` tokens (3 × forward
    when every weight trains)."""
    return dims.training_flops(tokens, tokens * context)


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
        return {
            "tokens": self.tokens,
            "target_tokens": self.target_tokens,
            "token_positions": self.token_positions,
            "wall_s": self.wall_s(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.tokens, self.target_tokens = state["tokens"], state["target_tokens"]
        self.token_positions, self.wall_before = state["token_positions"], state["wall_s"]
        self.started = time.perf_counter()

    def flops(self) -> float:
        return self.dims.training_flops(self.tokens, self.token_positions)

    def record(self) -> dict[str, Any]:
        wall = round(self.wall_s(), 3)
        energy_j = self.power_w * self.processes * wall
        return {
            "tokens": self.tokens,
            "target_tokens": self.target_tokens,
            "flops": self.flops(),
            "flops_convention": CONVENTION,
            "matmul_params": self.dims.matmul_params,
            "n_layer": self.dims.n_layer,
            "d_model": self.dims.d_model,
            "trainable_params": self.dims.trainable_params,
            "total_params": self.dims.total_params,
            "backward_params": self.dims.backward_params,
            "weight_grad_params": self.dims.weight_grad_params,
            "wall_s": wall,
            "device": self.device,
            "processes": self.processes,
            "device_power_w": self.power_w,
            "energy_kwh": round(energy_j / 3.6e6, 9),
        }


def _device_name(device: Any) -> str:
    if getattr(device, "type", "cpu") == "cuda":
        import torch

        return f"{device} ({torch.cuda.get_device_name(device)})"
    import platform

    return f"cpu ({platform.processor() or platform.machine()})"
