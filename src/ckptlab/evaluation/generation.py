"""Greedy generation in left-padded batches with the KV cache (Hugging Face `generate`).

Each batch stops early once every row has produced a stop string (or the end-of-text token);
the decoded text is then cut at the first stop string and (except for lm-eval tasks) stripped.
The model runs in the evaluation's dtype; `generate` upcasts each step's logits to fp32 before
the greedy pick.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ckptlab.evaluation.scoring import left_pad, model_max_length


def cut_at_stop(text: str, stop: Sequence[str], strip: bool = True) -> str:
    """The text before the first occurrence of any stop string, stripped unless `strip` is false."""
    end = len(text)
    for marker in stop:
        if marker:
            at = text.find(marker)
            if at != -1:
                end = min(end, at)
    return text[:end].strip() if strip else text[:end]


def generate_batch(
    model: Any,
    tokenizer: Any,
    contexts: Sequence[list[int]],
    max_new_tokens: int,
    stop: Sequence[str],
    pad_id: int,
    strip: bool = True,
) -> list[str]:
    """Greedy continuations of tokenized prompts (one batch), cut at the stop strings (and stripped, unless
    `strip` is false: lm-eval tasks compare the text as generated)."""
    import torch
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    room = max(1, model_max_length(model) - max_new_tokens)
    # generate() derives position ids from the mask itself, so left_pad's positions are not passed.
    ids, mask, _ = left_pad([c[-room:] for c in contexts], pad_id, device)
    width = ids.shape[1]
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else model.config.eos_token_id
    config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_id,
        eos_token_id=eos,
        stop_strings=[s for s in stop if s] or None,
    )
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            generation_config=config,
            tokenizer=tokenizer if config.stop_strings else None,
        )
    texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return [cut_at_stop(text, stop, strip) for text in texts]
