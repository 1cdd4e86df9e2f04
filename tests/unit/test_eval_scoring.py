"""Scoring invariants on tiny models built in code: batching, padding and the shared prompt change nothing."""

from __future__ import annotations

import itertools
import random

import pytest

torch = pytest.importorskip("torch")

from ckptlab.data.tokenizer import train_tokenizer  # noqa: E402
from ckptlab.evaluation import generation, scoring  # noqa: E402
from ckptlab.models.hf import ModelConfig, build_model  # noqa: E402

WORDS = ["the", "cat", "dog", "sat", "ran", "on", "mat", "park", "a", "big", "small", "."]
SENTENCES = [" ".join(random.Random(i).choices(WORDS, k=12)) for i in range(60)] + [
    "positive negative yes no entailment neutral contradiction"
] * 5


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer(SENTENCES, 300, tmp_path_factory.mktemp("tok"))


def tiny(tokenizer, architecture="gpt_neox", seed=0):
    torch.manual_seed(seed)
    config = ModelConfig(architecture=architecture, size="tiny", context_length=64)
    return build_model(config, len(tokenizer), 0, 0, 1).eval()


def requests(tokenizer, n=24, seed=0):
    rng = random.Random(seed)
    prompts = [" ".join(rng.choices(WORDS, k=rng.randint(1, 30))) for _ in range(n)]
    options = [["positive", "negative"], ["yes", "no", "entailment contradiction neutral"], ["neutral", "cat dog"]]
    return scoring.encode_requests(tokenizer, prompts, [options[i % 3] for i in range(n)])


def flat(scores):
    return list(itertools.chain.from_iterable(scores))


def batched(scorer, model, reqs, batch_size):
    out = [None] * len(reqs)
    for batch in scoring.plan_batches([len(r.context) for r in reqs], batch_size):
        for i, s in zip(batch, scorer(model, [reqs[i] for i in batch], 1)):
            out[i] = s
    return out


def reference(model, request):
    """Log-likelihood summed token by token from plain, unpadded, full-logit forward passes."""
    totals = []
    for continuation in request.continuations:
        ids = torch.tensor([request.context + continuation])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        start = len(request.context)
        totals.append(sum(logprobs[start - 1 + k, t].item() for k, t in enumerate(continuation)))
    return totals


@pytest.mark.parametrize("architecture", ["gpt_neox", "llama"])
def test_batched_left_padded_equals_one_at_a_time(tokenizer, architecture):
    model = tiny(tokenizer, architecture)
    reqs = requests(tokenizer)
    assert len({len(r.context) for r in reqs}) > 5  # real padding happens
    assert any(len(c) > 1 for r in reqs for c in r.continuations)  # multi-token choices use the KV cache
    one_at_a_time = [reference(model, r) for r in reqs]
    for scorer in (scoring.score_shared, scoring.score_full):
        for batch_size in (1, 5, 24):
            got = batched(scorer, model, reqs, batch_size)
            assert flat(got) == pytest.approx(flat(one_at_a_time), abs=1e-5), (scorer.__name__, batch_size)


def test_scores_identical_across_runs_and_close_across_batch_sizes(tokenizer):
    model = tiny(tokenizer)
    reqs = requests(tokenizer, seed=1)
    first = batched(scoring.score_shared, model, reqs, 8)
    assert batched(scoring.score_shared, model, reqs, 8) == first  # bit-identical
    for batch_size in (3, 16):
        assert flat(batched(scoring.score_shared, model, reqs, batch_size)) == pytest.approx(flat(first), abs=1e-5)


def test_scores_are_not_trivially_equal(tokenizer):
    # Guards the invariant tests above: different models and choices do give different numbers.
    reqs = requests(tokenizer, n=6)
    a = flat(batched(scoring.score_shared, tiny(tokenizer, seed=0), reqs, 6))
    b = flat(batched(scoring.score_shared, tiny(tokenizer, seed=1), reqs, 6))
    assert max(abs(x - y) for x, y in zip(a, b)) > 1e-3 and len(set(a)) > len(a) // 2


def test_continuation_tokens_follow_the_context_tokens(tokenizer):
    (request,) = scoring.encode_requests(tokenizer, ["the cat sat"], [["positive", "cat dog"]])
    assert request.context == tokenizer("the cat sat", add_special_tokens=False)["input_ids"]
    whole = tokenizer("the cat sat cat dog", add_special_tokens=False)["input_ids"]
    assert request.continuations[1] == whole[len(request.context) :]


def test_long_prompts_are_truncated_on_the_left(tokenizer):
    model = tiny(tokenizer)  # 64 positions
    long_prompt = " ".join(["the cat sat on the mat ."] * 40)
    (request,) = scoring.encode_requests(tokenizer, [long_prompt], [["yes", "no"]])
    assert len(request.context) > 64
    scores = scoring.score_shared(model, [request], 1)
    room = 64 - max(len(c) for c in request.continuations)
    kept = scoring.Request(request.context[-room:], request.continuations)
    assert scores[0] == pytest.approx(reference(model, kept), abs=1e-5)


def test_plan_batches_is_a_pure_function_covering_every_example():
    lengths = [5, 9, 9, 1, 7, 3, 9]
    plan = scoring.plan_batches(lengths, 3)
    assert plan == scoring.plan_batches(lengths, 3) == [[1, 2, 6], [4, 0, 5], [3]]
    assert sorted(itertools.chain.from_iterable(plan)) == list(range(7))


def test_greedy_generation_batched_equals_one_at_a_time(tokenizer):
    model = tiny(tokenizer, "llama")
    prompts = ["the cat", "a big dog ran on the", "small"]
    contexts = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    together = generation.generate_batch(model, tokenizer, contexts, 6, [], 1)
    alone = [generation.generate_batch(model, tokenizer, [c], 6, [], 1)[0] for c in contexts]
    assert together == alone and any(together)


def test_cut_at_stop():
    assert generation.cut_at_stop(" Paris.\nQuestion: x", ["\n"]) == "Paris."
    assert generation.cut_at_stop("a b ### c", ["\n", "###"]) == "a b"
    assert generation.cut_at_stop(" plain ", []) == "plain"


def per_choice_scores(model, requests, pad_id, full=False):
    """The scorers as they were before batching the host transfers: one `.item()` per choice and row.

    Kept verbatim in spirit so that any change in the numbers the batched gather produces fails here.
    """
    device = next(model.parameters()).device
    max_length = scoring.model_max_length(model)
    trimmed = [scoring.truncate(r.context, max(len(c) for c in r.continuations), max_length) for r in requests]
    with torch.no_grad():
        if full:
            owners = [(i, j, c) for i, r in enumerate(requests) for j, c in enumerate(r.continuations)]
            ids, mask, positions = scoring.left_pad([trimmed[i] + c for i, _, c in owners], pad_id, device)
            keep = max(len(c) for _, _, c in owners) + 1
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
            logprobs = torch.log_softmax(logits.double(), dim=-1)
            scores = [[0.0] * len(r.continuations) for r in requests]
            for row, (i, j, c) in enumerate(owners):
                steps = torch.arange(keep - 1 - len(c), keep - 1)
                scores[i][j] = logprobs[row, steps, torch.tensor(c)].sum().item()
            return scores
        ids, mask, positions = scoring.left_pad(trimmed, pad_id, device)
        rows = [(i, j) for i, r in enumerate(requests) for j, c in enumerate(r.continuations) if len(c) > 1]
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=bool(rows), logits_to_keep=1)
        first = torch.log_softmax(out.logits[:, -1, :].double(), dim=-1)
        scores = [[first[i, c[0]].item() for c in r.continuations] for i, r in enumerate(requests)]
        if not rows:
            return scores
        index = torch.tensor([i for i, _ in rows])
        out.past_key_values.batch_select_indices(index)
        tails = [requests[i].continuations[j][:-1] for i, j in rows]
        width = max(len(t) for t in tails)
        tail_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        tail_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, tail in enumerate(tails):
            tail_ids[r, : len(tail)] = torch.tensor(tail)
            tail_mask[r, : len(tail)] = 1
        out = model(
            input_ids=tail_ids,
            attention_mask=torch.cat([mask[index], tail_mask], dim=1),
            position_ids=mask[index].sum(-1, keepdim=True) + torch.arange(width),
            past_key_values=out.past_key_values,
            use_cache=False,
        )
        logprobs = torch.log_softmax(out.logits.double(), dim=-1)
        for r, (i, j) in enumerate(rows):
            targets = torch.tensor(requests[i].continuations[j][1:])
            scores[i][j] += logprobs[r, torch.arange(len(targets)), targets].sum().item()
    return scores


@pytest.mark.parametrize("architecture", ["gpt_neox", "llama"])
def test_one_host_transfer_per_batch_gives_bit_identical_scores(tokenizer, architecture):
    model = tiny(tokenizer, architecture)
    reqs = requests(tokenizer, n=30, seed=2)
    # Continuations of 1, 2 and 3+ tokens in one batch: the gather groups them by length.
    assert len({len(c) for r in reqs for c in r.continuations}) >= 3
    for batch in scoring.plan_batches([len(r.context) for r in reqs], 11):
        chosen = [reqs[i] for i in batch]
        assert scoring.score_shared(model, chosen, 1) == per_choice_scores(model, chosen, 1)
        assert scoring.score_full(model, chosen, 1) == per_choice_scores(model, chosen, 1, full=True)


def test_picked_sums_keeps_pick_order_across_length_groups():
    logprobs = torch.arange(2 * 4 * 3, dtype=torch.float64).reshape(2, 4, 3)
    picks = [(0, 1, [2, 0]), (1, 0, [1]), (1, 2, [0, 1]), (0, 3, [2])]
    got = scoring.picked_sums(logprobs, picks).tolist()
    want = [sum(logprobs[r, s + k, t].item() for k, t in enumerate(tokens)) for r, s, tokens in picks]
    assert got == want


@pytest.mark.parametrize("architecture", ["gpt_neox", "llama"])
def test_a_shared_prefix_scored_from_its_cache_equals_the_whole_context(tokenizer, architecture):
    """Prompts that start with the same demonstrations: with the prefix's KV cache computed once and
    repeated over each batch, every log-likelihood equals the unpadded full pass within 1e-5."""
    model = tiny(tokenizer, architecture)
    demos = "the cat sat on the mat . yes\n\na dog ran in the park . no\n\n"
    rng = random.Random(1)
    prompts = [demos + " ".join(rng.choices(WORDS, k=rng.randint(1, 12))) for _ in range(20)]
    options = [["yes", "no"], ["entailment contradiction", "neutral"]]
    reqs = scoring.encode_requests(tokenizer, prompts, [options[i % 2] for i in range(20)])
    length = scoring.common_prefix_length([r.context for r in reqs])
    assert length >= scoring.MIN_PREFIX_TOKENS and length < min(len(r.context) for r in reqs)
    prefix = scoring.compute_prefix(model, reqs[0].context[:length])
    assert prefix is not None
    one_at_a_time = [reference(model, r) for r in reqs]
    for batch_size in (1, 7, 20):
        got = [None] * len(reqs)
        for batch in scoring.plan_batches([len(r.context) for r in reqs], batch_size):
            for i, s in zip(batch, scoring.score_shared(model, [reqs[i] for i in batch], 1, prefix=prefix)):
                got[i] = s
        assert flat(got) == pytest.approx(flat(one_at_a_time), abs=1e-5), batch_size
    assert scoring.common_prefix_length([[1, 2, 3], [1, 2, 4]]) == 0  # under MIN_PREFIX_TOKENS
    assert scoring.common_prefix_length([list(range(20)), list(range(12))]) == 11  # one own token kept
