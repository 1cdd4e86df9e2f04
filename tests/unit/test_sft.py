"""Fine-tuning data: rendering, prompt masking, truncation, packing, epoch order, replay, loop invariants."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_models import one_thread  # noqa: F401

from ckptlab.commands.finetune import FinetuneConfig
from ckptlab.config import load
from ckptlab.data import sft
from ckptlab.data.mixture import Mixture
from ckptlab.data.tokenizer import train_tokenizer
from ckptlab.errors import ConfigError, DataError, UserError
from ckptlab.models.hf import ModelConfig, build_model
from ckptlab.runs.run_dir import RunDir, read_metrics
from ckptlab.tasks.spec import load_task_data, read_task_file
from ckptlab.train import distributed
from ckptlab.train.config import TrainConfig
from ckptlab.train.loop import train
from ckptlab.train.schedules import ScheduleConfig, lr_at

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
EOS = 0


WORDS = ["river", "bridge", "baker", "bread", "tower", "bells", "ferry", "boat", "green", "reeds", "maps", "houses"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    text = (FIXTURES / "corpus" / "tiny.txt").read_text(encoding="utf-8")
    return train_tokenizer(text.split("\n\n"), 300, tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A 3-way classification task whose prompts vary from 2 to 9 words."""
    root = tmp_path_factory.mktemp("task")
    rng = np.random.default_rng(0)
    labels = ["yes", "no", "maybe"]
    for split, count in (("train", 24), ("validation", 6)):
        rows = [
            {"id": f"{split}-{i}", "text": " ".join(rng.choice(WORDS, size=2 + i % 8)), "label": labels[i % 3]}
            for i in range(count)
        ]
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (root / "toy.yaml").write_text(
        "task: toy\ntype: classification\nfields: [text]\nlabel_field: label\nchoices: ['yes', 'no', 'maybe']\n"
        "data: {train: train.jsonl, validation: validation.jsonl}\neval_split: validation\n"
        "templates:\n  train_format: \"### Input: {text}\\n### Output:\"\n  bare: '{text}'\n",
        encoding="utf-8",
    )
    return read_task_file(root / "toy.yaml")


def tokenized_task(task, tokenizer, split="train", template="train_format", max_length=128):
    examples = load_task_data(task, split).examples
    out = [
        sft.truncate(sft.tokenize(sft.render_task_example(task, template, e), tokenizer, EOS), max_length)
        for e in examples
    ]
    return examples, out


def tiny_model(vocab: int, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(
        ModelConfig(size="tiny", hidden_size=32, num_heads=2, context_length=128),
        vocab_size=vocab,
        bos_token_id=EOS,
        eos_token_id=EOS,
        pad_token_id=1,
    )


# --- rendering and masking -----------------------------------------------------------------------


def test_task_targets_are_the_continuation_evaluation_scores_then_eos(task, tokenizer):
    from ckptlab.evaluation import scoring
    from ckptlab.tasks import templates

    examples, tokenized = tokenized_task(task, tokenizer)
    prompts = [templates.render(task.templates["train_format"], e.fields) for e in examples]
    requests = scoring.encode_requests(tokenizer, prompts, [[e.gold] for e in examples], task.target_delimiter)
    for request, example in zip(requests, tokenized):
        n = len(request.context)
        assert example.ids[:n].tolist() == request.context and not example.target[:n].any()
        assert example.ids[n:].tolist() == request.continuations[0] + [EOS] and example.target[n:].all()
    assert tokenizer.decode(tokenized[0].ids[tokenized[0].target][:-1]) == " yes"


def test_alpaca_prompt_with_and_without_input():
    with_input = sft.render_instruction({"instruction": "Add.", "input": "2 and 3", "output": "5"})
    assert with_input[0].text.endswith("### Instruction:\nAdd.\n\n### Input:\n2 and 3\n\n### Response:\n")
    assert with_input[0].text.startswith("Below is an instruction that describes a task, paired with an input")
    assert (with_input[1].text, with_input[1].target, with_input[1].eos) == ("5", True, True)
    bare = sft.render_instruction({"instruction": "Say hi.", "input": "", "output": "hi"})
    assert "### Input" not in bare[0].text and bare[0].text.endswith("### Instruction:\nSay hi.\n\n### Response:\n")
    as_chat = sft.instruction_as_chat({"instruction": "Add.", "input": "2 and 3", "output": "5"})
    assert as_chat == [{"role": "user", "content": "Add.\n\n2 and 3"}, {"role": "assistant", "content": "5"}]


CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Who bakes?"},
    {"role": "assistant", "content": "The baker."},
    {"role": "user", "content": "When?"},
    {"role": "assistant", "content": "Before dawn."},
]


def test_chat_without_template_uses_tulu_format_and_trains_on_assistant_turns_only(tokenizer):
    tokenized = sft.tokenize(sft.render_chat(CHAT, tokenizer), tokenizer, EOS)
    text = tokenizer.decode(tokenized.ids)
    assert text == (
        "<|system|>\nBe brief.\n<|user|>\nWho bakes?\n<|assistant|>\nThe baker.<|endoftext|>\n"
        "<|user|>\nWhen?\n<|assistant|>\nBefore dawn.<|endoftext|>\n"
    )
    targets = tokenizer.decode(tokenized.ids[tokenized.target])
    assert targets == "The baker.<|endoftext|>Before dawn.<|endoftext|>"


def test_chat_template_of_the_tokenizer_is_used_and_masks_all_but_assistant_turns(tokenizer):
    import copy

    chat_tokenizer = copy.deepcopy(tokenizer)
    chat_tokenizer.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% if m['role'] == 'assistant' %}{{ eos_token }}"
        "{% endif %}{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    tokenized = sft.tokenize(sft.render_chat(CHAT, chat_tokenizer), chat_tokenizer, EOS)
    assert chat_tokenizer.decode(tokenized.ids).startswith(
        "[system] Be brief.\n[user] Who bakes?\n[assistant] The baker."
    )
    assert (
        chat_tokenizer.decode(tokenized.ids[tokenized.target]) == "The baker.<|endoftext|>\nBefore dawn.<|endoftext|>\n"
    )


def test_prompt_tokens_contribute_zero_loss(task, tokenizer):
    """Labels are -100 on the prompt; the loss is the targets' negative log-likelihood given the prompt."""
    _, tokenized = tokenized_task(task, tokenizer)
    rows = tokenized[:6]
    batch = sft.rows_to_batch(rows, pad_id=1)
    model = tiny_model(len(tokenizer)).eval()

    def loss_and_grads(labels):
        model.zero_grad()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    # Every label position is -100 exactly where the next token is a prompt token or padding.
    for r, row in enumerate(rows):
        n = len(row.ids) - 1
        expected = np.where(row.target[1:], row.ids[1:], -100)
        assert batch["labels"][r, :n].tolist() == expected.tolist() and (batch["labels"][r, n:] == -100).all()
    loss, grads = loss_and_grads(batch["labels"])
    # Changing the prompt tokens on the label side only (the inputs stay) changes neither labels nor gradients.
    perturbed = [sft.Tokenized(row.ids.copy(), row.target) for row in rows]
    for row in perturbed:
        prompt = ~row.target
        prompt[0] = False  # the first token is an input only
        row.ids[prompt] = (row.ids[prompt] + 7) % len(tokenizer)
    relabelled = sft.rows_to_batch(perturbed, pad_id=1)["labels"]
    assert torch.equal(relabelled, batch["labels"])
    loss2, grads2 = loss_and_grads(relabelled)
    assert loss2 == loss and all(torch.equal(a, b) for a, b in zip(grads, grads2))
    # The same loss from the targets' log-likelihoods given the prompts, one example at a time.
    with torch.no_grad():
        total = 0.0
        for row in rows:
            logits = model(input_ids=torch.from_numpy(row.ids[None, :-1])).logits[0].log_softmax(-1)
            picked = logits[torch.arange(len(row.ids) - 1), torch.from_numpy(row.ids[1:])]
            total -= picked[torch.from_numpy(row.target[1:])].sum().item()
    assert loss.item() == pytest.approx(total, rel=1e-5)
    # The test can fail: unmasking the prompt changes the loss.
    unmasked = torch.where(batch["attention_mask"].bool(), batch["input_ids"].roll(-1, dims=1), -100)
    assert loss_and_grads(unmasked)[0] != loss


def run_sft_loop(rows, root: Path, *, micro: int, accum: int, vocab: int, steps: int = 3, mixture=None, replay=None):
    model = tiny_model(vocab)
    config = TrainConfig(
        max_steps=steps,
        micro_batch_size=micro,
        grad_accum_steps=accum,
        progress=False,
        val_every=0,
        save_every=0,
        weight_decay=0.0,
        schedule=ScheduleConfig(lr=3e-3, warmup_steps=1),
    )
    run = RunDir(root)
    train(
        model=model,
        save_model=lambda folder: None,
        train_data=sft.SftBatches(rows, seed=0, pad_id=1, mixture=mixture, replay=replay),
        val_data=None,
        config=config,
        lr_at=lambda s: lr_at(s, config.schedule, steps),
        kept=[],
        run=run,
        fingerprints={},
        resume_from=None,
        allow_changed=[],
        dist=distributed.Dist(),
    )
    return [r["loss"] for r in read_metrics(run.metrics)]


def test_batch_8x1_equals_batch_1x8_with_masked_prompts_of_varying_lengths(task, tokenizer, tmp_path):
    _, rows = tokenized_task(task, tokenizer)
    assert len({int((~row.target).sum()) for row in rows}) > 5  # prompts of many lengths
    whole = run_sft_loop(rows, tmp_path / "a", micro=8, accum=1, vocab=len(tokenizer))
    accumulated = run_sft_loop(rows, tmp_path / "b", micro=1, accum=8, vocab=len(tokenizer))
    assert len(whole) == 3 and accumulated == pytest.approx(whole, rel=1e-5)


# --- truncation, packing, order, validation -----------------------------------------------------


def test_truncation_cuts_the_end_and_drops_examples_without_target():
    example = sft.Tokenized(np.arange(10), np.array([False] * 6 + [True] * 4))
    cut = sft.truncate(example, 7)
    assert cut.ids.tolist() == list(range(8)) and cut.target.sum() == 2
    assert sft.truncate(example, 5) is None  # only prompt left
    assert sft.truncate(example, 6).target.sum() == 1  # one target token, predicted from the prompt
    assert (
        sft.truncate(sft.Tokenized(np.arange(3), np.array([True, False, False])), 8) is None
    )  # first token is input only


def test_empty_gold_gives_an_example_without_target(task, tokenizer):
    example = load_task_data(task, "train").examples[0]
    example.gold = "  "
    tokenized = sft.tokenize(sft.render_task_example(task, "train_format", example), tokenizer, EOS)
    assert not tokenized.target.any() and sft.truncate(tokenized, 128) is None


def test_packing_keeps_whole_examples_within_max_length(task, tokenizer):
    _, rows = tokenized_task(task, tokenizer)
    packs = sft.pack(rows, max_length=128, seed=3)
    assert len(packs) < len(rows) and all(len(p.ids) <= 129 for p in packs)
    assert sum(len(p.ids) for p in packs) == sum(len(r.ids) for r in rows)
    assert sum(int(p.target.sum()) for p in packs) == sum(int(r.target.sum()) for r in rows)
    # Every example appears once, whole: packs split at end-of-sequence tokens give back the examples.
    pieces = sorted(tuple(piece) for p in packs for piece in np.split(p.ids, np.flatnonzero(p.ids == EOS)[:-1] + 1))
    assert pieces == sorted(tuple(r.ids) for r in rows)
    assert [p.ids.tolist() for p in sft.pack(rows, 128, seed=3)] == [p.ids.tolist() for p in packs]


def test_epoch_order_is_a_fresh_permutation_every_epoch_and_pure():
    order = sft.EpochOrder(7, seed=5)
    epochs = [[order(e * 7 + k) for k in range(7)] for e in range(3)]
    assert all(sorted(e) == list(range(7)) for e in epochs) and epochs[0] != epochs[1]
    assert [sft.EpochOrder(7, seed=5)(k) for k in (20, 3, 15)] == [order(20), order(3), order(15)]


def test_validation_filler_rows_change_nothing(task, tokenizer):
    _, rows = tokenized_task(task, tokenizer, split="validation")
    model = tiny_model(len(tokenizer)).eval()
    val = sft.ValidationBatches(rows, pad_id=1)

    def mean_loss(batch):
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"]
        return (
            F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
            / (labels != -100).sum()
        )

    padded = mean_loss(val.batch(range(0, 10)))  # 6 examples + 4 fillers
    assert torch.isfinite(padded) and padded.item() == pytest.approx(mean_loss(val.batch(range(6))).item(), rel=1e-5)


# --- replay ------------------------------------------------------------------------------------


class CountingWindows:
    """Replay windows whose tokens name the window: window k is [k, k, ..., k] (length 9)."""

    def window(self, k: int) -> np.ndarray:
        return np.full(9, 1000 + k, dtype=np.int64)


@pytest.mark.parametrize("fraction, global_batch", [(0.25, 8), (0.1, 8), (0.5, 6), (0.3, 5)])
def test_replay_fraction_holds_within_one_sample_over_every_window_of_steps(task, tokenizer, fraction, global_batch):
    _, rows = tokenized_task(task, tokenizer)
    mixture = Mixture([[1.0, 0.0]], replay_source=1, replay_fraction=fraction)
    batches = sft.SftBatches(rows, seed=0, pad_id=1, mixture=mixture, replay=CountingWindows())
    steps = 40
    per_step = []
    replayed_windows = []
    for step in range(steps):
        batch = batches.batch(range(step * global_batch, (step + 1) * global_batch))
        replay_rows = batch["input_ids"][:, 0] >= 1000
        per_step.append(int(replay_rows.sum()))
        replayed_windows += batch["input_ids"][replay_rows, 0].tolist()
        # Replay rows are all targets (up to their own length); SFT rows keep their prompts masked.
        assert (batch["labels"][replay_rows, :8] >= 1000).all()
    for size in range(1, steps + 1):
        for start in range(0, steps - size + 1):
            count = sum(per_step[start : start + size])
            assert abs(count - size * global_batch * fraction) <= 1, (size, start)
    assert replayed_windows == [1000 + k for k in range(len(replayed_windows))]  # windows read in order, none twice


def test_replay_batches_are_the_same_after_a_restart(task, tokenizer):
    """A resumed run builds its batch source afresh: batch k must not depend on what was read before."""
    _, rows = tokenized_task(task, tokenizer)
    mixture = Mixture([[1.0, 0.0]], replay_source=1, replay_fraction=0.25)
    first = sft.SftBatches(rows, seed=0, pad_id=1, mixture=mixture, replay=CountingWindows())
    straight = [first.batch(range(s * 8, s * 8 + 8)) for s in range(10)]
    again = sft.SftBatches(
        rows,
        seed=0,
        pad_id=1,
        mixture=Mixture([[1.0, 0.0]], replay_source=1, replay_fraction=0.25),
        replay=CountingWindows(),
    )
    for step in (7, 3, 9):
        for key in ("input_ids", "labels", "attention_mask"):
            assert torch.equal(again.batch(range(step * 8, step * 8 + 8))[key], straight[step][key])


# --- config and instruction files ----------------------------------------------------------------


def test_finetune_defaults_follow_sun_and_dredze_and_survive_partial_overrides():
    config = load(FinetuneConfig, ["--train.schedule.warmup_steps", "0", "--train.micro_batch_size", "4"])
    schedule = config.train.schedule
    assert (schedule.name, schedule.lr, schedule.min_lr, schedule.warmup_fraction) == ("linear", 2e-5, 0.0, 0.03)
    assert config.train.weight_decay == 0.0 and config.epochs == 3.0 and config.method == "full"
    assert config.train.max_steps is None and config.train.micro_batch_size == 4 and config.keep.schedule == "none"
    assert lr_at(0, schedule, 100) == pytest.approx(2e-5 / 3) and lr_at(99, schedule, 100) == 0.0
    with pytest.raises(ConfigError, match="task and data"):
        load(FinetuneConfig, ["--task", "a", "--data", "b.jsonl"])
    with pytest.raises(ConfigError, match="train.max_steps"):
        load(FinetuneConfig, ["--train.max_steps", "0"])
    with pytest.raises(ConfigError, match="replay_fraction"):
        load(FinetuneConfig, ["--replay_fraction", "0.2"])


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "line 2: invalid JSON"),
        ('{"instruction": "x"}', "line 2: expected keys instruction, output"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "line 2: 'messages' has no assistant turn"),
        ('{"messages": [{"role": "robot", "content": "hi"}]}', "line 2: messages[0]: expected"),
    ],
)
def test_bad_instruction_records_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "data.jsonl"
    path.write_text('{"instruction": "a", "input": "", "output": "b"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        sft.read_records(path)


def test_template_checks(task, tmp_path):
    with pytest.raises(UserError, match=r"'nope' is not a template of task toy \(its templates: train_format, bare\)"):
        sft.choose_template(task, "nope")
    assert sft.choose_template(task, "") == "train_format" and sft.choose_template(task, "bare") == "bare"
    leaky = tmp_path / "leaky.yaml"
    leaky.write_text(
        task.path.read_text()
        .replace("fields: [text]", "fields: [text, label]")
        .replace("bare: '{text}'", "bare: '{text} {label}'"),
        encoding="utf-8",
    )
    spec = read_task_file(leaky)
    spec.splits = task.splits
    with pytest.raises(UserError, match="template bare: the prompt shows the answer field 'label'"):
        sft.check_task_for_training(spec, "bare")
