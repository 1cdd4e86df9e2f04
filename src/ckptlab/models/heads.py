"""Models with a task head in place of (or beside) the LM head: masked-LM encoders for
`ckptlab cpt --objective mlm` and sequence classifiers for `ckptlab finetune --objective classification`.
"""

from __future__ import annotations

from typing import Any

from ckptlab.errors import UserError


def require_masked_lm(model_config: Any, init_from: str) -> None:
    """Raise a one-line UserError unless the model is an encoder with a masked-LM head class."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    model_type = getattr(model_config, "model_type", "?")
    if model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES or getattr(model_config, "is_decoder", False):
        raise UserError(
            f"objective: mlm needs an encoder with a masked-LM head (bert, roberta, ...); {init_from} is a "
            f"{model_type} causal LM (continue it with --objective causal)"
        )


def load_masked_lm(source: str, trust_remote_code: bool = False) -> Any:
    """The model at `source` (a directory or hub id) with its masked-LM head, fp32 (`trust_remote_code`: let a
    repository's own model code run).

    A sentence-embedding checkpoint (e.g. all-MiniLM-L6-v2) has no MLM head: transformers initialises
    the head's transform and bias (the output matrix is tied to the word embeddings) and warns.
    """
    import torch
    from transformers import AutoModelForMaskedLM

    from ckptlab.models.hf import remote_code_kwargs
    from ckptlab.models.init_from import model_directory

    return AutoModelForMaskedLM.from_pretrained(
        model_directory(source), dtype=torch.float32, **remote_code_kwargs(trust_remote_code)
    )


def load_classifier(source: str, num_labels: int, trust_remote_code: bool = False) -> Any:
    """The model at `source` (directory or hub id) with a sequence-classification head of `num_labels`."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from ckptlab.models.hf import remote_code_kwargs
    from ckptlab.models.init_from import model_directory

    remote = remote_code_kwargs(trust_remote_code)
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            model_directory(source), num_labels=num_labels, dtype=torch.float32, **remote
        )
    except ValueError as error:
        raise UserError(
            f"objective: classification: {source} has no sequence-classification class ({str(error).splitlines()[0]})"
        ) from None
