"""LoRA through `peft`: which modules to adapt, wrapping a model, and writing checkpoints that load anywhere.

Only the adapter matrices train (peft freezes the base); `lora_B` starts at zero, so at
initialisation the adapted model computes exactly what the base model does. A checkpoint folder
holds the *merged* model as a plain HF directory (base + B·A·alpha/r folded into the weights: any
tool loads it without peft) and the adapter itself under `adapter/` (peft's format), from which a
resumed run rebuilds the trainable model on top of the same base.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptlab.errors import ConfigError, UserError

ADAPTER_DIR = "adapter"
#: Defaults by architecture (attention projections, as in the LoRA paper and peft). Architectures
#: not listed take peft's own default, when it has one.
DEFAULT_TARGETS: dict[str, list[str]] = {
    "gpt_neox": ["query_key_value"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "olmo": ["q_proj", "v_proj"],
    "olmo2": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "gpt2": ["c_attn"],
}


@dataclass
class LoraConfig:
    """Low-rank adapters (peft LoRA)."""

    r: int = 8
    """Rank of the adapter matrices."""
    alpha: float = 16.0
    """Scaling numerator: the update is B·A·alpha/r."""
    dropout: float = 0.05
    """Dropout on the adapter's input during training."""
    target_modules: list[str] = field(default_factory=list)
    """Names of the linear modules to adapt (e.g. query_key_value,dense); empty = by architecture (gpt_neox:
    query_key_value; llama, qwen2, mistral: q_proj,v_proj); all-linear = every linear layer but the output head."""

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError(f"lora.r: expected a positive integer, got {self.r}")
        if self.alpha <= 0:
            raise ConfigError(f"lora.alpha: expected a number > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout: expected 0 ≤ x < 1, got {self.dropout}")


def linear_module_names(model: Any) -> list[str]:
    """The distinct last names of the model's linear layers (what `target_modules` can name)."""
    import torch

    kinds: tuple[type, ...] = (torch.nn.Linear,)
    try:
        from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers

        kinds += (Conv1D,)
    except ImportError:
        pass
    return sorted(
        {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if name and isinstance(module, kinds)}
    )


def resolve_targets(model: Any, requested: list[str]) -> list[str] | str:
    """The modules to adapt: `requested` checked against the model, or the architecture's default.

    Raises:
        UserError: a requested name is not a linear module of the model (the message lists them).
    """
    available = linear_module_names(model)
    model_type = getattr(model.config, "model_type", "?")
    if requested == ["all-linear"]:
        return "all-linear"
    if not requested:
        requested = DEFAULT_TARGETS.get(model_type) or _peft_default(model_type)
        if not requested:
            raise UserError(
                f"lora.target_modules: no default for architecture {model_type}; name the modules to adapt "
                f"(its linear modules: {', '.join(available)})"
            )
    missing = [name for name in requested if name not in available]
    if missing:
        raise UserError(
            f"lora.target_modules: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
            f"{'a linear module' if len(missing) == 1 else 'linear modules'} of this {model_type} model "
            f"(its linear modules: {', '.join(available)})"
        )
    return list(requested)


def _peft_default(model_type: str) -> list[str]:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping

    return list(mapping.get(model_type, []))


def _peft_config(config: LoraConfig, targets: list[str] | str) -> Any:
    from peft import LoraConfig as PeftLoraConfig

    # peft annotates lora_alpha as int but only divides by it (scaling = lora_alpha / r): a float alpha works.
    return PeftLoraConfig(
        r=config.r,
        lora_alpha=config.alpha,  # type: ignore[arg-type]
        lora_dropout=config.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # peft 0.21 asks transformers 5 for `is_gradient_checkpointing`, which warns that the name is
    # deprecated: noise in every LoRA run's log, about code that is not ours.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def wrap(model: Any, config: LoraConfig, targets: list[str] | str) -> Any:
    """`model` with fresh adapters on `targets` (A drawn from the torch RNG, B = 0); the base is frozen."""
    from peft import get_peft_model

    with _quiet():
        return get_peft_model(model, _peft_config(config, targets))


def load_adapter(model: Any, adapter_dir: str | Path) -> Any:
    """`model` with the trainable adapter saved in `adapter_dir` (a resumed run's)."""
    from peft import PeftModel

    with _quiet():
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)


def merged_copy(peft_model: Any) -> Any:
    """A plain HF model with the adapter folded into the weights; `peft_model` itself is untouched.

    Merging a copy (not merging in place and unmerging) keeps the training model's base weights
    bit-identical; the cost is one extra copy of the model in memory while a checkpoint is written.
    """
    return copy.deepcopy(peft_model).merge_and_unload()


def save(peft_model: Any, tokenizer: Any, folder: str | Path) -> None:
    """Write the merged model (HF directory) into `folder` and the adapter into `folder/adapter`."""
    from ckptlab.models.hf import save_model_dir

    folder = Path(folder)
    save_model_dir(merged_copy(peft_model), tokenizer, folder)
    peft_model.save_pretrained(str(folder / ADAPTER_DIR))


def trainable_parameters(model: Any) -> dict[str, Any]:
    """Names → tensors of the parameters that train."""
    return {name: param for name, param in model.named_parameters() if param.requires_grad}


def base_identity(source: str, checkpoint: Path | None) -> str:
    """A short hash of the base model's weights and config.

    A resumed LoRA run rebuilds the base from `init_from`, so a base that changed since (a run
    directory whose newest checkpoint moved on, a retrained directory) must be noticed. A ckptlab
    checkpoint's manifest already holds its files' SHA-256; a hub id is identified by its revision.
    """
    import hashlib
    import json

    from ckptlab.models.hf import parse_source
    from ckptlab.runs import checkpoint as ckpt

    if checkpoint is not None:
        files = ckpt.read_manifest(checkpoint)["files"]
        listing = {
            name: entry["sha256"]
            for name, entry in files.items()
            if name not in (ckpt.TRAINING_STATE, ckpt.MANIFEST) and "/" not in name
        }
    else:
        parsed = parse_source(source)
        if parsed.kind == "hub":
            listing = {"hub": f"{parsed.repo_id}@{parsed.revision or 'main'}"}
        else:
            path = Path(parsed.path or "")
            paths = (
                [path]
                if path.is_file()
                else sorted(
                    p for p in path.iterdir() if p.name == "config.json" or p.suffix in (".safetensors", ".bin")
                )
            )
            listing = {p.name: ckpt.sha256_file(p) for p in paths}
    return hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()[:16]
