"""Data-parallel set-up under `torchrun`: gloo on CPU, NCCL on CUDA; DDP or FSDP2; precision.

One process per device. With DDP every rank holds the whole model and DDP averages gradients; with
FSDP2 (`fully_shard`, per transformer block, then the root) parameters, gradients and AdamW state
are sharded and gathered whole only to write a checkpoint, so checkpoints load anywhere, with any
number of processes, with or without FSDP. Outside `torchrun` (no WORLD_SIZE in the environment)
everything here is a no-op with world size 1.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist


@dataclass
class Dist:
    """Where this process stands in the data-parallel group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """`auto` picks CUDA when present; `cuda` uses this process's local rank."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(requested)


def setup(requested_device: str) -> Dist:
    """Join the process group when launched by torchrun; pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(requested_device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def teardown(state: Dist) -> None:
    if state.enabled and dist.is_initialized():
        dist.destroy_process_group()


def resolve_precision(requested: str, device: torch.device) -> Literal["fp32", "bf16"]:
    """`auto` is bf16 autocast on CUDA and fp32 on CPU (where bf16 shifts scores; docs/design.md)."""
    if requested == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return "bf16" if requested == "bf16" else "fp32"


def set_tf32(enabled: bool) -> tuple[bool, bool]:
    """Allow TF32 in CUDA matmuls and cuDNN (or not); returns the previous (matmul, cudnn) flags to restore."""
    previous = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    return previous


def restore_tf32(previous: tuple[bool, bool]) -> None:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def enable_activation_checkpointing(model: Any) -> None:
    """Non-reentrant checkpointing of every block (HF models, peft-wrapped ones included).

    Non-reentrant: gradients reach LoRA adapters and partly frozen blocks without the inputs needing
    `requires_grad`, and the recomputation replays the dropout masks of the forward pass.
    """
    from ckptlab.errors import ConfigError

    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise ConfigError(f"train.activation_checkpointing: {type(model).__name__} does not support it")


def shard(model: torch.nn.Module, dist_state: Dist, precision: str) -> torch.nn.Module:
    """FSDP2: each transformer block is one unit (gathered for its forward and backward), then the root.

    Blocks are found by the classes HF names in `_no_split_modules`, else as the ModuleList of
    `num_hidden_layers` layers. bf16 keeps fp32 master weights and reduces gradients in fp32.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(dist_state.device.type, (dist_state.world_size,))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    options: dict[str, Any] = {"mesh": mesh, "mp_policy": policy} if precision == "bf16" else {"mesh": mesh}
    for block in _blocks(model):
        fully_shard(block, **options)
    fully_shard(model, **options)
    return model


def _blocks(model: torch.nn.Module) -> Sequence[torch.nn.Module]:
    from ckptlab.models.methods import transformer_blocks

    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    blocks = [module for module in model.modules() if type(module).__name__ in names]
    return blocks or list(transformer_blocks(model))


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _full_options(cpu_offload: bool = False) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload)


def full_model_state(model: torch.nn.Module) -> dict[str, Any]:
    """The whole model's state dict on the CPU of rank 0 (empty on the others); every rank must call it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_options(cpu_offload=True))


def _names_in_order(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the order `optimizer.state_dict()` numbers them."""
    names = {id(param): name for name, param in model.named_parameters()}
    return [names[id(param)] for group in optimizer.param_groups for param in group["params"]]


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The whole (unsharded) AdamW state on rank 0, numbered as `optimizer.state_dict()` numbers it.

    Numbered, not keyed by name, so a checkpoint written under FSDP resumes under DDP or on one
    process with a plain `load_state_dict`, as one written without FSDP does. Every rank must call it.
    """
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    by_name: Any = get_optimizer_state_dict(model, optimizer, options=_full_options(cpu_offload=True))
    state = optimizer.state_dict()
    names = _names_in_order(model, optimizer)
    state["state"] = {i: by_name["state"][name] for i, name in enumerate(names) if name in by_name.get("state", {})}
    return state


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, state: dict[str, Any], sharded_model: torch.nn.Module | None
) -> None:
    """Load a numbered (`optimizer.state_dict()`-style) full state; under FSDP each rank keeps its shard."""
    if sharded_model is None:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    names = _names_in_order(sharded_model, optimizer)
    by_name: Any = {
        "state": {names[int(i)]: value for i, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [names[int(i)] for i in group["params"]]} for group in state["param_groups"]
        ],
    }
    # Every rank read the whole state from the checkpoint: each takes its own shard of it.
    set_optimizer_state_dict(sharded_model, optimizer, by_name, options=_full_options())
