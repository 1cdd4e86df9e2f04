"""Sequence-classification fine-tuning (`ckptlab finetune --objective classification`), evaluated by accuracy.

For encoders (BERT, MiniLM, ... continued with `ckptlab cpt --objective mlm`) and any model type
with a sequence-classification class. Each example of a classification task is its rendered prompt,
tokenized *with* the tokenizer's special tokens ([CLS] ... [SEP]) and cut at `max_length`, and its
label is the index of the gold answer among the task's `choices`; the model is loaded with
`AutoModelForSequenceClassification` (`num_labels` = the number of choices; the classifier is new).
Batches are a pure function of the sample index (epochs of seeded orders, as for language-model
fine-tuning) and run on the one loop: its cross-entropy takes the [batch, labels] logits as one
position per sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ckptlab.errors import UserError


@dataclass
class Example:
    ids: Any
    """Token ids of the prompt, special tokens included."""
    label: int
    """Index of the gold answer among the task's choices."""


def examples(spec: Any, template: str, task_examples: Sequence[Any], tokenizer: Any, max_length: int) -> list[Example]:
    """The task's examples as (token ids, label index); a gold answer outside `choices` is an error."""
    import numpy as np

    from ckptlab.tasks.templates import render

    choices = list(spec.choices or [])
    if len(choices) < 2:
        raise UserError(
            f"objective: classification needs a classification task with choices; task {spec.name} has none"
        )
    out = []
    for example in task_examples:
        if example.gold not in choices:
            raise UserError(
                f"task {spec.name}, example {example.id}: gold answer {example.gold!r} is not one of its choices"
            )
        ids = tokenizer(render(spec.templates[template], example.fields), truncation=True, max_length=max_length)[
            "input_ids"
        ]
        out.append(Example(np.asarray(ids, dtype=np.int64), choices.index(example.gold)))
    return out


def fingerprint(rows: Sequence[Example], settings: dict[str, Any]) -> str:
    """A short hash of the training examples (ids and labels) and of the settings."""
    import hashlib
    import json

    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for row in rows:
        digest.update(row.ids.tobytes())
        digest.update(f"|{row.label}|".encode())
    return digest.hexdigest()[:16]


def _padded(rows: Sequence[Example | None], pad_id: int) -> dict[str, Any]:
    """Right-padded inputs and a [batch, 1] label column; a None row is a filler with no label."""
    import numpy as np
    import torch

    width = max(len(r.ids) if r is not None else 1 for r in rows)
    inputs = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    labels = np.full((len(rows), 1), -100, dtype=np.int64)
    for i, row in enumerate(rows):
        if row is None:
            mask[i, 0] = 1  # a filler still attends to one token (no fully masked row)
            continue
        inputs[i, : len(row.ids)], mask[i, : len(row.ids)], labels[i, 0] = row.ids, 1, row.label
    return {
        "input_ids": torch.from_numpy(inputs),
        "attention_mask": torch.from_numpy(mask),
        "labels": torch.from_numpy(labels),
    }


class ClassificationBatches:
    """Training batches: sample k is example `order(k // n)[k mod n]` (a seeded permutation per epoch)."""

    def __init__(self, rows: Sequence[Example], seed: int, pad_id: int) -> None:
        from ckptlab.data.sft import EpochOrder

        self.rows, self.pad_id = list(rows), pad_id
        self.order = EpochOrder(len(self.rows), seed)

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        return _padded([self.rows[self.order(i)] for i in indices], self.pad_id)


class ClassificationValidation:
    """Validation batches over a fixed list; indices past the end are fillers with no label."""

    def __init__(self, rows: Sequence[Example], pad_id: int) -> None:
        self.rows, self.pad_id = list(rows), pad_id

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        return _padded([self.rows[i] if i < len(self.rows) else None for i in indices], self.pad_id)


def accuracy(model: Any, rows: Sequence[Example], pad_id: int, batch_size: int = 32) -> float | None:
    """Share of `rows` whose highest-scoring label is the gold one (None without rows)."""
    import torch

    if not rows:
        return None
    model.eval()
    device = next(model.parameters()).device
    right = 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = _padded(rows[start : start + batch_size], pad_id)
            logits = model(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).logits
            right += int((logits.argmax(-1).cpu() == batch["labels"][:, 0]).sum())
    return right / len(rows)
