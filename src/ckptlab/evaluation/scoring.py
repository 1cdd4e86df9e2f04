"""Log-likelihood scoring of label words: batched, left-padded, logits only where the answer is.

For each example the prompt (context) is run once, left-padded within its batch, with
`position_ids = attention_mask.cumsum(-1) - 1` so that padding does not shift positions, and
`logits_to_keep=1`: the last position's next-token distribution scores the first token of every
choice. Choices longer than one token continue from the prompt's KV cache (selected per choice row),
so the shared prompt is never recomputed per choice. `score_full` is the plain alternative (one
sequence per example × choice, logits kept for the answer positions only); it is the reference the
tests and benchmarks compare against.

Continuation tokens follow lm-evaluation-harness (`encode_requests`): trailing whitespace of the
prompt moves to the continuation, and the continuation is what context + delimiter + choice has
beyond the context's own tokens. The same batch plan gives bit-identical scores run after run.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Request:
    """One example to score: the prompt's tokens and each choice's continuation tokens."""

    context: list[int]
    continuations: list[list[int]]


def model_max_length(model: Any, default: int = 2048) -> int:
    """The longest sequence the model takes (its position table), or `default`."""
    config = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


def encode_requests(
    tokenizer: Any,
    prompts: Sequence[str],
    choices: Sequence[Sequence[str]],
    delimiter: str = " ",
    prefixes: Sequence[Sequence[int]] | None = None,
) -> list[Request]:
    """Tokenize prompts and their choices as lm-evaluation-harness does.

    Whitespace that ends a prompt moves to the front of each continuation (so " positive" is one
    word's tokens, not a space token then a word); each prompt's `prefixes` entry (e.g. [BOS]) goes
    before both the context and the whole sequence, and the continuation is what the whole
    sequence has beyond the context's tokens. Only when that is nothing (a tokenizer that merges
    across the join) is the continuation tokenized on its own. An empty context is the prefix, or
    else the tokenizer's BOS (or EOS) token alone.
    """
    prefixes = prefixes or [[] for _ in prompts]
    contexts_text, continuations_text = [], []
    for prompt, options in zip(prompts, choices):
        stripped = prompt.rstrip()
        contexts_text.append(stripped)
        continuations_text.append([prompt[len(stripped) :] + delimiter + choice for choice in options])
    contexts = tokenizer(contexts_text, add_special_tokens=False)["input_ids"]
    joined = [context + tail for context, tails in zip(contexts_text, continuations_text) for tail in tails]
    wholes = tokenizer(joined, add_special_tokens=False)["input_ids"] if joined else []
    requests, at = [], 0
    for context_text, context, tails, prefix in zip(contexts_text, contexts, continuations_text, prefixes):
        lead = list(prefix)
        if not context_text and not lead:
            lead = [next(t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id, 0) if t is not None)]
        continuations = []
        for tail in tails:
            whole = wholes[at]
            at += 1
            continuation = list(whole[len(context) :])
            if not continuation:
                continuation = list(tokenizer(tail, add_special_tokens=False)["input_ids"])
            if not continuation:
                raise ValueError(f"choice {tail!r} tokenizes to nothing")
            continuations.append(continuation)
        requests.append(Request(lead + list(context), continuations))
    return requests


def truncate(context: list[int], longest_continuation: int, max_length: int) -> list[int]:
    """Drop tokens from the left of the context so that context + continuation fits the model."""
    room = max(1, max_length - longest_continuation)
    return context[-room:] if len(context) > room else context


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: Any) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


#: A unit's common token prefix is computed once (and its KV cache reused) from this many tokens on.
MIN_PREFIX_TOKENS = 8


@dataclass
class Prefix:
    """Tokens that every request of a unit starts with, and the model's KV cache over them (batch of one)."""

    tokens: list[int]
    cache: Any


def common_prefix_length(contexts: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all `contexts` share, keeping at least one token of each of its own (whose
    logits score the first answer token); 0 when that is under `MIN_PREFIX_TOKENS`."""
    if not contexts:
        return 0
    first, shortest = contexts[0], min(len(c) for c in contexts)
    length = shortest - 1
    for context in contexts[1:]:
        same = 0
        while same < length and context[same] == first[same]:
            same += 1
        length = same
    return length if length >= MIN_PREFIX_TOKENS else 0


def compute_prefix(model: Any, tokens: Sequence[int]) -> Prefix | None:
    """Run the prefix once; None when the model's cache cannot be repeated over a batch (then score plainly)."""
    import torch

    device = next(model.parameters()).device
    ids = torch.tensor([list(tokens)], dtype=torch.long, device=device)
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    cache = _cache_of(out)
    if cache is None or not hasattr(cache, "batch_repeat_interleave") or not hasattr(cache, "batch_select_indices"):
        return None
    return Prefix(list(tokens), cache)


def _cache_of(out: Any) -> Any:
    # transformers 5.24 names the returned cache `cache` (`past_key_values` is its deprecated alias).
    return out["cache"] if "cache" in out else getattr(out, "past_key_values", None)


@functools.cache
def _cache_argument(model_class: Any) -> str:
    """The forward argument that takes a KV cache: `cache` (transformers ≥ 5.24) or `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def score_shared(
    model: Any, requests: Sequence[Request], pad_id: int, max_length: int | None = None, prefix: Prefix | None = None
) -> list[list[float]]:
    """Log-likelihood of every continuation of every request; the prompt runs once per request.

    With `prefix` (tokens every request's context starts with, fitting the model with every
    context), only the rest of each context runs, against a copy of the prefix's KV cache repeated
    over the batch: the positions and attention are those of the whole context, so the scores are the
    plain ones up to float rounding.
    """
    import torch

    device = next(model.parameters()).device
    max_length = max_length or model_max_length(model)
    cache_argument = _cache_argument(model.__class__)
    held = len(prefix.tokens) if prefix is not None else 0
    if prefix is not None:
        contexts = [r.context[held:] for r in requests]
    else:
        contexts = [truncate(r.context, max(len(c) for c in r.continuations), max_length) for r in requests]
    ids, mask, positions = left_pad(contexts, pad_id, device)
    seen = torch.ones((len(requests), held), dtype=mask.dtype, device=device)  # the prefix, for every row
    cached: dict[str, Any] = {}
    if prefix is not None:
        cache = copy.deepcopy(prefix.cache)
        cache.batch_repeat_interleave(len(requests))
        cached[cache_argument] = cache
    rows = [(i, j) for i, r in enumerate(requests) for j, c in enumerate(r.continuations) if len(c) > 1]
    firsts = [(i, 0, [c[0]]) for i, r in enumerate(requests) for c in r.continuations]
    with torch.no_grad():
        out = model(
            input_ids=ids,
            attention_mask=torch.cat([seen, mask], dim=1),
            position_ids=positions + held,
            use_cache=bool(rows),
            logits_to_keep=1,
            **cached,
        )
        first = torch.log_softmax(out.logits[:, -1:, :].double(), dim=-1)
        picked = [picked_sums(first, firsts)]
        if rows:
            cache = _cache_of(out)
            index = torch.tensor([i for i, _ in rows], device=device)
            cache.batch_select_indices(index)
            tails = [requests[i].continuations[j][:-1] for i, j in rows]
            width = max(len(t) for t in tails)
            tail_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            tail_mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, tail in enumerate(tails):
                tail_ids[r, : len(tail)] = torch.tensor(tail, dtype=torch.long)
                tail_mask[r, : len(tail)] = 1
            tail_mask = tail_mask.to(device)
            full_mask = torch.cat([seen[index], mask[index], tail_mask], dim=1)
            tail_positions = held + mask[index].sum(-1, keepdim=True) + torch.arange(width, device=device)
            out = model(
                input_ids=tail_ids.to(device),
                attention_mask=full_mask,
                position_ids=tail_positions,
                use_cache=False,
                **{cache_argument: cache},
            )
            logprobs = torch.log_softmax(out.logits.double(), dim=-1)
            picked.append(
                picked_sums(logprobs, [(r, 0, requests[i].continuations[j][1:]) for r, (i, j) in enumerate(rows)])
            )
        values = iter(torch.cat(picked).tolist())  # the batch's only transfer to the host
    scores = [[next(values) for _ in r.continuations] for r in requests]
    for i, j in rows:
        scores[i][j] += next(values)
    return scores


def score_full(
    model: Any, requests: Sequence[Request], pad_id: int, max_length: int | None = None
) -> list[list[float]]:
    """Log-likelihoods with one left-padded sequence per (request, choice): the reference scorer."""
    import torch

    device = next(model.parameters()).device
    max_length = max_length or model_max_length(model)
    sequences, owners = [], []
    for i, r in enumerate(requests):
        context = truncate(r.context, max(len(c) for c in r.continuations), max_length)
        for j, continuation in enumerate(r.continuations):
            sequences.append(context + continuation)
            owners.append((i, j, continuation))
    ids, mask, positions = left_pad(sequences, pad_id, device)
    keep = max(len(c) for _, _, c in owners) + 1
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
        logprobs = torch.log_softmax(logits.double(), dim=-1)
        # Kept positions are the last `keep`; positions keep-1-m .. keep-2 predict the m answer tokens.
        values = iter(
            picked_sums(logprobs, [(row, keep - 1 - len(c), c) for row, (_, _, c) in enumerate(owners)]).tolist()
        )
    scores: list[list[float]] = [[0.0] * len(r.continuations) for r in requests]
    for i, j, _ in owners:
        scores[i][j] = next(values)
    return scores


def picked_sums(logprobs: Any, picks: Sequence[tuple[int, int, Sequence[int]]]) -> Any:
    """Per pick (row, start, tokens): the sum over k of logprobs[row, start + k, tokens[k]], as one tensor.

    Everything stays on the device (the caller moves the batch's numbers to the host once). Picks are
    gathered in groups of equal length, so each sum is a reduction over exactly that pick's values and
    comes out bit-identical to summing the pick alone; padding the short ones with zeros would not.
    """
    import torch

    device = logprobs.device
    by_length: dict[int, list[int]] = {}
    for n, (_, _, tokens) in enumerate(picks):
        by_length.setdefault(len(tokens), []).append(n)
    order, parts = [], []
    for length, members in by_length.items():
        rows = torch.tensor([picks[n][0] for n in members], device=device)
        starts = torch.tensor([picks[n][1] for n in members], device=device)
        steps = starts[:, None] + torch.arange(length, device=device)
        targets = torch.tensor([list(picks[n][2]) for n in members], device=device)
        parts.append(logprobs[rows[:, None], steps, targets].sum(-1))
        order.extend(members)
    sums = torch.cat(parts)
    out = torch.empty_like(sums)
    out[torch.tensor(order, device=device)] = sums
    return out


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches, longest first (less padding); a pure function of its inputs.

    The plan depends only on the lengths and the batch size, so a resumed evaluation re-forms
    exactly the batches an uninterrupted one would, and scores come out bit-identical.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


SCORERS: dict[str, Callable[..., list[list[float]]]] = {"shared": score_shared, "full": score_full}
