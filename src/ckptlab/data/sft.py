"""Supervised fine-tuning data: render examples, tokenize with a target mask, truncate, pack, batch.

An example is rendered into *segments* of text, each either prompt or target. Tokenized, it is a
sequence of token ids with a boolean target mask; the batch row is `input_ids = ids[:-1]` and
`labels = ids[1:]` where the token is a target, -100 elsewhere (the loop's convention), so prompt
tokens never contribute to the loss.

Three kinds of examples:

- **task examples**: the prompt is the task's template rendered over the example's fields; the
  target is `target_delimiter + gold` followed by the tokenizer's end-of-sequence token. Prompt and
  target are tokenized as evaluation scores them (`ckptlab.evaluation.scoring.encode_requests`):
  the target's tokens are those of `prompt + target` after the prompt's own tokens.
- **instruction records** (Alpaca-style JSONL: `instruction`, optional `input`, `output`): the
  prompt is `ALPACA_PROMPT` (or `ALPACA_PROMPT_NO_INPUT` when `input` is empty), the target is
  `output` + end of sequence; or, in the `chat` format, one user turn and the assistant's output
  rendered as chat records are (`instruction_as_chat`).
- **chat records** (`messages`: a list of `{role, content}`, Tulu-style): rendered with the
  tokenizer's chat template when it has one, else with `CHAT_FALLBACK` (Tulu's format); only the
  assistant turns are targets.

Batches are pure functions of global sample indices (`SftBatches`): sample `i` is example
`order(epoch)[i mod N]` of epoch `i // N`, the order a permutation drawn from
`default_rng([seed, epoch])`; with replay, a `ckptlab.data.mixture.Mixture` first decides whether
sample `i` is an SFT example or a pre-training window.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ckptlab.errors import DataError, UserError
from ckptlab.files import json_lines, read_text

ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
#: Tulu's chat format, used when the tokenizer has no chat template: every turn is
#: `<|role|>\n` + content + `\n`; an assistant turn's content and the end-of-sequence token after
#: it are the targets (the role header is prompt).
CHAT_FALLBACK = "<|{role}|>\n"
CHAT_ROLES = ("system", "user", "assistant")
PACKING_STREAM = 0x5041434B  # seeds the order in which examples are packed, apart from epoch orders


@dataclass
class Segment:
    """A piece of a rendered example."""

    text: str
    target: bool
    eos: bool = False
    """Append the end-of-sequence token after this segment (with the segment's target flag)."""


@dataclass
class Tokenized:
    """An example as token ids and a target mask of the same length (int64 / bool arrays)."""

    ids: np.ndarray
    target: np.ndarray


# --- rendering ---------------------------------------------------------------------------------


def choose_template(spec: Any, name: str) -> str:
    """The template name to train with: `name`, else `train_format`, else the task's first template."""
    if name:
        if name not in spec.templates:
            raise UserError(
                f"template: '{name}' is not a template of task {spec.name} (its templates: {', '.join(spec.templates)})"
            )
        return name
    return "train_format" if "train_format" in spec.templates else next(iter(spec.templates))


def check_task_for_training(spec: Any, template: str) -> None:
    """A task can be trained on when it has a gold answer that the prompt does not show."""
    from ckptlab.tasks.templates import field_names

    answer = spec.label_field if spec.type == "classification" else spec.target_field
    if not answer:
        raise UserError(f"task {spec.name}: a {spec.type} task without a gold answer field cannot be fine-tuned on")
    if answer in field_names(spec.templates[template]):
        raise UserError(
            f"task {spec.name}, template {template}: the prompt shows the answer field '{answer}'; "
            "a training template must leave the answer out"
        )


def render_task_example(spec: Any, template: str, example: Any) -> list[Segment]:
    """Prompt = the rendered template; target = target_delimiter + gold, then end of sequence."""
    from ckptlab.tasks.templates import render

    prompt = render(spec.templates[template], example.fields)
    gold = str(example.gold)
    # An empty gold gives no target at all (not even the end of sequence): the example is skipped.
    return [
        Segment(prompt, False),
        Segment(spec.target_delimiter + gold if gold.strip() else "", bool(gold.strip()), eos=True),
    ]


def render_instruction(record: dict[str, Any]) -> list[Segment]:
    """An Alpaca-style record: instruction, optional input, output."""
    extra = str(record.get("input") or "")
    if extra.strip():
        prompt = ALPACA_PROMPT.format(instruction=record["instruction"], input=extra)
    else:
        prompt = ALPACA_PROMPT_NO_INPUT.format(instruction=record["instruction"])
    output = str(record["output"])
    return [Segment(prompt, False), Segment(output, bool(output.strip()), eos=True)]


def render_chat(messages: list[dict[str, Any]], tokenizer: Any) -> list[Segment]:
    """Chat turns with the tokenizer's chat template (else `CHAT_FALLBACK`); assistant turns are targets."""
    if getattr(tokenizer, "chat_template", None):
        return _render_with_chat_template(messages, tokenizer)
    segments: list[Segment] = []
    for message in messages:
        header = CHAT_FALLBACK.format(role=message["role"])
        if message["role"] == "assistant":
            segments += [Segment(header, False), Segment(str(message["content"]), True, eos=True), Segment("\n", False)]
        else:
            segments.append(Segment(header + str(message["content"]) + "\n", False))
    return segments


def _render_with_chat_template(messages: list[dict[str, Any]], tokenizer: Any) -> list[Segment]:
    # Each assistant turn is the text that rendering messages[:i + 1] adds to rendering messages[:i]
    # with the generation prompt; that needs a template whose renderings extend one another.
    def text(turns: list[dict[str, Any]], generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt)

    segments: list[Segment] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before, after = text(messages[:i], True), text(messages[: i + 1], False)
        if not (before.startswith(done) and after.startswith(before)):
            raise DataError(
                "the tokenizer's chat template does not render a conversation as a growing prefix, "
                "so assistant turns cannot be located"
            )
        segments += [Segment(before[len(done) :], False), Segment(after[len(before) :], True)]
        done = after
    return segments


def tokenize(segments: Sequence[Segment], tokenizer: Any, eos_id: int | None) -> Tokenized:
    """Token ids and target mask of rendered segments (no special tokens added but the eos asked for).

    A segment's tokens are those of (the text so far + segment) after the text so far's tokens, as
    evaluation tokenizes a continuation; when the text so far's tokens are not a prefix (a merge
    across the boundary), the segment is tokenized on its own. The text so far restarts after an
    inserted end-of-sequence token.
    """
    ids: list[int] = []
    target: list[bool] = []
    context_text = ""
    context_ids: list[int] = []
    for segment in segments:
        if segment.text:
            whole = tokenizer(context_text + segment.text, add_special_tokens=False)["input_ids"]
            if len(whole) >= len(context_ids) and whole[: len(context_ids)] == context_ids:
                new = list(whole[len(context_ids) :])
            else:
                new = list(tokenizer(segment.text, add_special_tokens=False)["input_ids"])
            ids += new
            target += [segment.target] * len(new)
            context_text, context_ids = context_text + segment.text, context_ids + new
        if segment.eos and eos_id is not None:
            ids.append(eos_id)
            target.append(segment.target)
            context_text, context_ids = "", []
    return Tokenized(np.asarray(ids, dtype=np.int64), np.asarray(target, dtype=bool))


def truncate(example: Tokenized, max_length: int) -> Tokenized | None:
    """Cut to `max_length + 1` tokens (the model sees all but the last); None if no target is left.

    The first token is never a target (nothing precedes it), so it does not count.
    """
    ids, target = example.ids[: max_length + 1], example.target[: max_length + 1]
    if len(ids) < 2 or not target[1:].any():
        return None
    return Tokenized(ids, target)


# --- instruction / chat files ------------------------------------------------------------------


def read_records(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line, record) of every non-blank line of an instruction JSONL file, each record checked."""
    path = Path(path)
    text = read_text(path, DataError, f"{path}: instruction data file")
    records = []
    for number, record in json_lines(text, lambda line: f"{path}, line {line}", DataError):
        problem = _record_problem(record)
        if problem:
            raise DataError(f"{path}, line {number}: {problem}")
        records.append((number, record))
    if not records:
        raise DataError(f"{path}: no records")
    return records


def _record_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return "expected a JSON object per line"
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            return "'messages' must be a non-empty list of {role, content}"
        for k, message in enumerate(messages):
            if (
                not isinstance(message, dict)
                or message.get("role") not in CHAT_ROLES
                or not isinstance(message.get("content"), str)
            ):
                return f"messages[{k}]: expected {{role: {'|'.join(CHAT_ROLES)}, content: text}}"
        if not any(m["role"] == "assistant" for m in messages):
            return "'messages' has no assistant turn to train on"
        return None
    if isinstance(record.get("instruction"), str) and isinstance(record.get("output"), str):
        if "input" in record and not isinstance(record["input"], (str, type(None))):
            return "'input' must be text"
        return None
    return (
        f"expected keys instruction, output (and optional input), or messages; the record has: "
        f"{', '.join(record) or 'nothing'}"
    )


def instruction_as_chat(record: dict[str, Any]) -> list[dict[str, str]]:
    """An instruction record as one user turn (instruction, a blank line, input) and the assistant's output."""
    extra = str(record.get("input") or "")
    user = record["instruction"] + ("\n\n" + extra if extra.strip() else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": str(record["output"])}]


def render_record(record: dict[str, Any], tokenizer: Any, instruction_format: str = "alpaca") -> list[Segment]:
    """A record of an instruction file: chat `messages`, or an instruction record in the given format."""
    if "messages" in record:
        return render_chat(record["messages"], tokenizer)
    if instruction_format == "chat":
        return render_chat(instruction_as_chat(record), tokenizer)
    return render_instruction(record)


def held_out(seed: int, key: str, fraction: float) -> bool:
    """Whether an example goes to validation: a hash of (seed, example), independent of order."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


# --- packing, order, batches -------------------------------------------------------------------


def pack(examples: Sequence[Tokenized], max_length: int, seed: int) -> list[Tokenized]:
    """Whole examples concatenated into sequences of at most `max_length + 1` tokens.

    Examples are taken in a seeded order and each goes into the current sequence if it fits, else
    starts the next one. Attention is not blocked at example boundaries (every example ends with
    the end-of-sequence token, as documents do in pre-training); targets stay each example's own.
    """
    order = np.random.default_rng([seed, PACKING_STREAM]).permutation(len(examples))
    packs: list[Tokenized] = []
    ids: list[np.ndarray] = []
    target: list[np.ndarray] = []
    size = 0
    for index in order:
        example = examples[int(index)]
        if ids and size + len(example.ids) > max_length + 1:
            packs.append(Tokenized(np.concatenate(ids), np.concatenate(target)))
            ids, target, size = [], [], 0
        ids.append(example.ids)
        target.append(example.target)
        size += len(example.ids)
    if ids:
        packs.append(Tokenized(np.concatenate(ids), np.concatenate(target)))
    return packs


class EpochOrder:
    """Sample `k` of a source of `n` items: item `permutation(seed, k // n)[k mod n]`."""

    def __init__(self, n: int, seed: int) -> None:
        if n < 1:
            raise ValueError("an epoch order needs at least one item")
        self.n, self.seed = n, seed
        self._epoch, self._order = -1, np.arange(0)

    def __call__(self, k: int) -> int:
        epoch, position = divmod(int(k), self.n)
        if epoch != self._epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._epoch = epoch
        return int(self._order[position])


def rows_to_batch(rows: Sequence[Tokenized], pad_id: int) -> dict[str, Any]:
    """Right-padded `input_ids`, `labels` (targets only, -100 elsewhere) and `attention_mask`."""
    import torch

    width = max(len(row.ids) - 1 for row in rows)
    inputs = np.full((len(rows), width), pad_id, dtype=np.int64)
    labels = np.full((len(rows), width), -100, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for r, row in enumerate(rows):
        n = len(row.ids) - 1
        inputs[r, :n] = row.ids[:-1]
        labels[r, :n] = np.where(row.target[1:], row.ids[1:], -100)
        mask[r, :n] = 1
    return {
        "input_ids": torch.from_numpy(inputs),
        "labels": torch.from_numpy(labels),
        "attention_mask": torch.from_numpy(mask),
    }


class SftBatches:
    """Training batches: global sample index → an SFT example (epochs of seeded orders) or a replay window.

    Args:
        examples: the tokenized (truncated, maybe packed) training sequences.
        seed: seeds the order of every epoch.
        pad_id: token id of padded positions (never attended to, never a target).
        mixture: with replay, a `Mixture` whose source 0 is the SFT examples and source 1 the replay
            windows; None without replay.
        replay: the replay source (`TokenWindows`: every next token is a target).
    """

    def __init__(
        self, examples: Sequence[Tokenized], seed: int, pad_id: int, mixture: Any = None, replay: Any = None
    ) -> None:
        self.examples = list(examples)
        self.order = EpochOrder(len(self.examples), seed)
        self.pad_id = pad_id
        self.mixture = mixture
        self.replay = replay

    def locate(self, index: int) -> tuple[int, int]:
        """(source, index within the source): source 0 = SFT examples, 1 = replay."""
        return self.mixture.locate(index) if self.mixture is not None else (0, int(index))

    def row(self, index: int) -> Tokenized:
        source, position = self.locate(index)
        if source == 0:
            return self.examples[self.order(position)]
        window = np.asarray(self.replay.window(position), dtype=np.int64)
        return Tokenized(window, np.ones(len(window), dtype=bool))

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        return rows_to_batch([self.row(i) for i in indices], self.pad_id)


class ValidationBatches:
    """Validation batches over a fixed list of examples; indices past the end are rows with no target."""

    def __init__(self, examples: Sequence[Tokenized], pad_id: int) -> None:
        self.examples = list(examples)
        self.pad_id = pad_id
        # A filler row still attends to one token, so no attention row is fully masked (NaN-free).
        self._filler = Tokenized(np.asarray([pad_id, pad_id], dtype=np.int64), np.zeros(2, dtype=bool))

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        rows = [self.examples[i] if i < len(self.examples) else self._filler for i in indices]
        return rows_to_batch(rows, self.pad_id)


def fingerprint(examples: Sequence[Tokenized], extra: dict[str, Any]) -> str:
    """A short hash of the training sequences (ids and targets) and of the settings in `extra`."""
    digest = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    for example in examples:
        digest.update(example.ids.tobytes())
        digest.update(example.target.tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]
