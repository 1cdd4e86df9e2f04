"""The parsed forms of a task: its spec, its examples, and the data read for one scored split."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptlab.errors import UserError


class TaskError(UserError):
    """A task file that is malformed or inconsistent with its data."""


@dataclass
class SplitFile:
    """Where one split's records come from locally."""

    raw: str
    path: Path | None
    format: str
    header: bool
    columns: list[str] | None


@dataclass
class TaskSpec:
    """A parsed, validated task file."""

    name: str
    path: Path
    type: str
    fields: list[str]
    templates: dict[str, str]
    metrics: list[str]
    splits: dict[str, SplitFile]
    eval_split: str
    version: Any = 1
    label_field: str | None = None
    choices: list[str] | None = None
    choices_field: str | None = None
    target_field: str | None = None
    label_map: dict[str, str] | None = None
    id_field: str | None = None
    max_new_tokens: int = 32
    stop: list[str] = field(default_factory=list)
    fewshot_split: str | None = "train"
    fewshot_seed: int = 1234
    fewshot_shots: list[int] = field(default_factory=lambda: [0])
    fewshot_sampling: str = "per_example"
    """Which demonstrations precede an example: per_example (k drawn per example, seeded by its id), shared (one
    seeded draw of k for every example) or first_n (the pool's first k rows, lm-eval's `first_n`)."""
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    hf: dict[str, Any] | None = None
    preamble: str = ""
    """Text (a template over the example's fields) put before the demonstrations and the prompt (lm-eval's
    description)."""
    answers: Any = None
    """For an lm-eval task, its doc_to_choice / doc_to_target (`lm_eval.Answers`), resolved per record."""
    strict_exact_match: bool = False
    """exact_match compares texts as they are (lm-eval) instead of with whitespace collapsed."""
    source_format: str = "ckptlab"
    """The task file's format: ckptlab or lm-eval."""
    raw: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)


@dataclass
class Example:
    """One scored (or demonstration) example."""

    id: str
    index: int
    fields: dict[str, Any]
    gold: str
    choices: list[str] | None
    file: str
    line: int


@dataclass
class TaskData:
    """A task with the examples of its scored split and its few-shot pool, and its fingerprint."""

    spec: TaskSpec
    split: str
    examples: list[Example]
    fewshot: list[Example]
    fingerprint: str
    source: str
    fewshot_unavailable: str | None = None
    """Why k > 0 cannot run here (no few-shot split, or its data cannot be had), else None."""
