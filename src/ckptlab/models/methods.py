"""What trains when a model is fine-tuned: every weight, the last k blocks, or the head; and its dropout.

- `full`: every parameter.
- `last_k`: the last k transformer blocks, the final norm and the output head; everything below
  (embeddings, earlier blocks) is frozen.
- `head`: the output head (LM head) only.
- `lora` (`ckptlab.models.lora`): adapter matrices; the base is frozen by peft.

A model whose head shares its matrix with the input embedding (tied embeddings, e.g. SmolLM2,
Llama-style small models) has its head **untied** for `last_k` and `head`: the head becomes its own
copy of the embedding matrix and trains, the input embedding stays frozen, and checkpoints are
saved untied (`tie_word_embeddings: false`, a separate `lm_head.weight`). Training a tied head
would otherwise move the input embeddings too, which is not "the head only".

Frozen parameters have `requires_grad` False: the optimizer never sees them, so they stay bit
for bit as loaded.
"""

from __future__ import annotations

import functools
from typing import Any

from ckptlab.errors import UserError

PARTIAL_METHODS = ("last_k", "head")


def transformer_blocks(model: Any) -> Any:
    """The ModuleList of the model's transformer blocks (as many as config.num_hidden_layers)."""
    import torch

    count = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise UserError(f"method: cannot find the {count} transformer blocks of this {model.config.model_type} model")


def final_norm(model: Any) -> Any | None:
    """The norm after the last block (gpt_neox final_layer_norm, llama norm, gpt2 ln_f), if there is one."""
    for _, module in model.base_model.named_children():
        if "norm" in type(module).__name__.lower():
            return module
    return None


def output_head(model: Any) -> Any:
    """The LM head, or a classifier's output layer (the last linear child: BERT's classifier, Llama's score)."""
    import torch

    head = model.get_output_embeddings()
    if head is not None:
        return head
    linear = [module for _, module in model.named_children() if isinstance(module, torch.nn.Linear)]
    if not linear:
        raise UserError(f"method: cannot find the output head of this {model.config.model_type} model")
    return linear[-1]


def untie_head(model: Any) -> bool:
    """Give a tied output head its own copy of the embedding matrix; True when it was tied."""
    import torch

    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or embedding is None or head.weight is not embedding.weight:
        return False
    head.weight = torch.nn.Parameter(head.weight.detach().clone())
    model.config.tie_word_embeddings = False  # saved untied, loaded untied
    return True


def select_trainable(model: Any, method: str, last_k: int | None = None) -> dict[str, Any]:
    """Freeze what `method` does not train (full, last_k, head); return what trains, for run.json.

    Raises:
        UserError: last_k is more than the model's blocks.
    """
    if method == "full":
        for param in model.parameters():
            param.requires_grad_(True)
        return {"method": "full"}
    if method not in PARTIAL_METHODS:
        raise ValueError(f"select_trainable: unknown method {method!r}")
    blocks = transformer_blocks(model)
    if method == "last_k" and (last_k is None or not 1 <= last_k <= len(blocks)):
        raise UserError(f"last_k: expected 1 ≤ k ≤ {len(blocks)} (the model's transformer blocks), got {last_k}")
    untied = untie_head(model)
    for param in model.parameters():
        param.requires_grad_(False)
    trained = [output_head(model)]
    record: dict[str, Any] = {"method": method, "untied_head": untied}
    if method == "last_k":
        assert last_k is not None  # checked above
        trained += list(blocks[len(blocks) - last_k :])
        norm = final_norm(model)
        trained += [norm] if norm is not None else []
        record.update(last_k=last_k, blocks=list(range(len(blocks) - last_k, len(blocks))), final_norm=norm is not None)
    for module in trained:
        for param in module.parameters():
            param.requires_grad_(True)
    return record


def set_dropout(model: Any, probability: float) -> list[str]:
    """Set every dropout probability of an HF model (config and modules); returns the config keys set.

    Modules read their probabilities when built, so the config alone would not change a loaded
    model: `nn.Dropout` modules get `p`, attention modules their `attention_dropout` (GPT-NeoX,
    Llama, Qwen, ...). Apply before wrapping with LoRA, whose adapter dropout is its own setting.
    """
    import torch

    from ckptlab.models.hf import DROPOUT_KEYS

    keys = [key for key in DROPOUT_KEYS if hasattr(model.config, key)]
    for key in keys:
        setattr(model.config, key, probability)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = probability
        value = getattr(module, "attention_dropout", None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            module.attention_dropout = probability
    return keys


def make_model(
    method: str,
    *,
    init_source: str,
    tokenizer: Any,
    resume_from: Any,
    seed: int,
    last_k: int | None,
    dropout: float | None,
    lora_config: Any,
    fingerprints: dict[str, str],
    num_labels: int | None = None,
    trust_remote_code: bool = False,
) -> tuple[Any, dict[str, Any], Any]:
    """(model to train with only `method`'s parameters trainable, what trains (for run.json), save_model callback).

    A resumed run loads the checkpoint's weights (LoRA: the base from `init_source` and the
    checkpoint's adapter); the torch RNG is seeded before anything random (LoRA's A matrices, a new
    classifier). With `num_labels` the model is a sequence classifier (`ckptlab.data.classification`).
    `trust_remote_code` lets a causal LM's own repository code run (`ckptlab.models.hf.load_model`).
    """
    import torch

    from ckptlab.errors import CheckpointError
    from ckptlab.models import lora
    from ckptlab.models.hf import load_model, remote_code_kwargs, save_model_dir

    remote = remote_code_kwargs(trust_remote_code)
    if method != "lora":
        if resume_from is not None:
            from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

            auto = AutoModelForCausalLM if num_labels is None else AutoModelForSequenceClassification
            model = auto.from_pretrained(resume_from, dtype=torch.float32, **remote)
        elif num_labels is not None:
            from ckptlab.models.heads import load_classifier

            torch.manual_seed(seed)  # the classifier's initial weights
            model = load_classifier(init_source, num_labels, trust_remote_code)
        else:
            model = load_model(init_source, trust_remote_code=trust_remote_code)
        if dropout is not None:
            set_dropout(model, dropout)
        record = select_trainable(model, method, last_k)
        torch.manual_seed(seed)
        # A partial, not a lambda: under FSDP the loop passes the gathered weights as `state_dict=`.
        return model, record, functools.partial(save_model_dir, model, tokenizer)
    base = load_model(init_source, trust_remote_code=trust_remote_code)
    if dropout is not None:
        set_dropout(base, dropout)  # before the adapters, whose dropout is lora.dropout
    targets = lora.resolve_targets(base, lora_config.target_modules)
    fingerprints["lora"] = (
        f"r={lora_config.r},alpha={lora_config.alpha},dropout={lora_config.dropout},targets={targets}"
    )
    if resume_from is not None:
        adapter = resume_from / lora.ADAPTER_DIR
        if not (adapter / "adapter_config.json").is_file():
            raise CheckpointError(f"{resume_from}: no LoRA adapter ({lora.ADAPTER_DIR}/) to resume from")
        model = lora.load_adapter(base, adapter)
    else:
        torch.manual_seed(seed)  # the adapters' A matrices are drawn here
        model = lora.wrap(base, lora_config, targets)
    return model, {"method": "lora", "target_modules": targets}, lambda folder: lora.save(model, tokenizer, folder)


def anchor_reference(init_source: str, method: str, trust_remote_code: bool = False) -> dict[str, Any]:
    """θ₀ of L2-SP for a resumed run: the init model's weights by name (a tied head untied as training untied it)."""
    from ckptlab.models.hf import load_model

    reference = load_model(init_source, trust_remote_code=trust_remote_code)
    if method in PARTIAL_METHODS:
        untie_head(reference)
    return reference.state_dict()
