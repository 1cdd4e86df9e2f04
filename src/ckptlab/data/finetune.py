"""What `ckptlab finetune` trains on: the task or instruction records, rendered, tokenized and batched.

`open_source` reads the task file or the instruction JSONL before any model loads (so a mistyped
path fails at once); `build_data` renders and tokenizes the examples with the model's tokenizer,
holds out validation examples, packs, mixes in replay windows and works out the steps, as
docs/finetune.md describes. Every batch is a pure function of the global sample index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ckptlab.errors import UserError


class _TrainSettings(Protocol):
    @property
    def seed(self) -> int: ...
    @property
    def micro_batch_size(self) -> int: ...
    @property
    def grad_accum_steps(self) -> int: ...
    @property
    def max_steps(self) -> int | None: ...
    @property
    def val_every(self) -> int | None: ...
    @property
    def val_batches(self) -> int | None: ...

    def global_batch(self, processes: int) -> int: ...


class FinetuneConfig(Protocol):
    """What the data of a fine-tune are built from: the keys of `ckptlab finetune`'s config that this
    module reads (`ckptlab.commands.finetune.FinetuneConfig` has them; data sit below the commands).
    The keys are read-only properties: this module only reads them, and a read-only member lets the
    config narrow a type (a Literal for a str, an int for an int | None) and still satisfy it."""

    @property
    def init_from(self) -> str: ...
    @property
    def task(self) -> str: ...
    @property
    def template(self) -> str: ...
    @property
    def data(self) -> str: ...
    @property
    def instruction_format(self) -> str: ...
    @property
    def val_data(self) -> str: ...
    @property
    def train_split(self) -> str: ...
    @property
    def val_split(self) -> str: ...
    @property
    def val_fraction(self) -> float: ...
    @property
    def objective(self) -> str: ...
    @property
    def epochs(self) -> float: ...
    @property
    def packing(self) -> bool: ...
    @property
    def replay(self) -> str: ...
    @property
    def replay_fraction(self) -> float: ...
    @property
    def replay_length(self) -> int | None: ...

    @property
    def train(self) -> _TrainSettings: ...


@dataclass
class Source:
    """The task (spec + template) or the instruction file(s), opened before any model loads."""

    task: Any = None
    template: str = ""
    splits: set[str] = field(default_factory=set)
    """The task's splits (local files or its hf: block)."""
    records: list[tuple[int, dict[str, Any]]] | None = None
    val_records: list[tuple[int, dict[str, Any]]] | None = None

    def describe(self, config: FinetuneConfig) -> dict[str, Any]:
        if self.task is None:
            return {
                "data": config.data,
                "instruction_format": config.instruction_format,
                "val_data": config.val_data or None,
            }
        return {
            "task": self.task.name,
            "task_file": str(self.task.path),
            "template": self.template,
            "train_split": config.train_split,
            "val_split": self.val_split(config),
        }

    def val_split(self, config: FinetuneConfig) -> str | None:
        """The task split that validates, or None (then val_fraction of the training split is held out)."""
        usable = config.val_split and config.val_split in self.splits and config.val_split != config.train_split
        return config.val_split if usable else None


def open_source(config: FinetuneConfig) -> Source:
    from ckptlab.data import sft

    if config.data:
        records = sft.read_records(config.data)
        val_records = sft.read_records(config.val_data) if config.val_data else None
        return Source(records=records, val_records=val_records)
    from ckptlab.tasks.spec import read_task_file, shipped_tasks

    shipped = shipped_tasks()
    path = Path(config.task).expanduser()
    if not path.is_file():
        if config.task not in shipped:
            raise UserError(
                f"task: '{config.task}' is not a task YAML file or a shipped task (shipped: "
                f"{', '.join(sorted(shipped))})"
            )
        path = shipped[config.task]
    spec = read_task_file(path)
    template = sft.choose_template(spec, config.template)
    sft.check_task_for_training(spec, template)
    splits = set(spec.splits) | set((spec.hf or {}).get("splits", {}))
    if config.train_split not in splits:
        raise UserError(
            f"train_split: task {spec.name} has no split '{config.train_split}' (splits: {', '.join(sorted(splits))})"
        )
    return Source(task=spec, template=template, splits=splits)


def task_examples(config: FinetuneConfig, source: Source) -> tuple[list[Any], list[Any]]:
    """(training, validation) examples of the task: val_split, else val_fraction held out by a hash."""
    from ckptlab.data import sft
    from ckptlab.tasks.spec import load_task_data

    seed, spec, val_split = config.train.seed, source.task, source.val_split(config)
    examples = load_task_data(spec, config.train_split).examples
    if val_split is not None:
        return examples, load_task_data(spec, val_split).examples
    val = [e for e in examples if sft.held_out(seed, e.id, config.val_fraction)]
    return [e for e in examples if not sft.held_out(seed, e.id, config.val_fraction)], val


def rendered(config: FinetuneConfig, source: Source, tokenizer: Any) -> tuple[list[Any], list[Any]]:
    """(training, validation) examples as rendered segment lists."""
    from ckptlab.data import sft

    seed = config.train.seed
    if source.task is not None:
        examples, val = task_examples(config, source)
        render = lambda e: sft.render_task_example(source.task, source.template, e)  # noqa: E731
        return [render(e) for e in examples], [render(e) for e in val]

    def render_all(records: list[tuple[int, dict[str, Any]]], file: str) -> list[Any]:
        out = []
        for line, record in records:
            try:
                out.append(sft.render_record(record, tokenizer, config.instruction_format))
            except UserError as error:
                raise type(error)(f"{file}, line {line}: {error}") from None
        return out

    records = source.records or []
    if source.val_records is not None:
        return render_all(records, config.data), render_all(source.val_records, config.val_data)
    import json

    key = lambda record: json.dumps(record, sort_keys=True)  # noqa: E731
    train = [(n, r) for n, r in records if not sft.held_out(seed, key(r), config.val_fraction)]
    val = [(n, r) for n, r in records if sft.held_out(seed, key(r), config.val_fraction)]
    return render_all(train, config.data), render_all(val, config.data)


@dataclass
class FinetuneData:
    train: Any
    val: Any
    train_count: int
    skipped: int
    val_count: int
    global_batch: int
    max_steps: int
    val_every: int
    val_batches: int
    epochs: float
    fingerprint: str
    mixture: Any
    record: dict[str, Any]
    val_rows: list[Any] = field(default_factory=list)
    """The validation examples (classification accuracy is computed on them)."""
    pad_id: int = 0

    def step_fields(self, step: int) -> dict[str, Any]:
        """Metrics of 0-based step `step`: epochs of SFT examples read so far, replay samples in the step."""
        before, after = step * self.global_batch, (step + 1) * self.global_batch
        fields: dict[str, Any] = {"epoch": round(sft_samples(self.mixture, after) / self.train_count, 4)}
        if self.mixture is not None:
            read = sft_samples(self.mixture, after) - sft_samples(self.mixture, before)
            fields["replay_samples"] = self.global_batch - read
        return fields


def sft_samples(mixture: Any, samples: int) -> int:
    """How many of the first `samples` global samples are fine-tuning sequences (the rest are replay)."""
    return mixture.counts(samples)[0] if mixture is not None else samples


def build_data(
    config: FinetuneConfig,
    source: Source,
    tokenizer: Any,
    model_config: Any,
    max_length: int,
    world_size: int,
    say: Any,
) -> FinetuneData:
    from ckptlab.data import classification, sft
    from ckptlab.errors import DataError

    eos_id = tokenizer.eos_token_id
    if eos_id is None and config.objective == "lm":
        say("note: the tokenizer has no end-of-sequence token; targets end without one")
    pad_id = next((t for t in (tokenizer.pad_token_id, eos_id) if t is not None), 0)
    # Lists of classification.Example or of sft.Tokenized: the objective decides which, here and where they
    # are batched below. mypy cannot tie the two checks together (and narrows a list[Any] on assignment).
    train_examples: Any
    val_examples: Any
    if config.objective == "classification":
        train_raw, val_raw = task_examples(config, source)
        train_examples, val_examples, skipped, val_skipped = (
            classification.examples(source.task, source.template, train_raw, tokenizer, max_length),
            classification.examples(source.task, source.template, val_raw, tokenizer, max_length),
            0,
            0,
        )
        rendered_train: list[Any] = train_raw
    else:
        rendered_train, rendered_val = rendered(config, source, tokenizer)

        def tokenized(rendered: list[Any]) -> tuple[list[Any], int]:
            kept = [sft.truncate(sft.tokenize(segments, tokenizer, eos_id), max_length) for segments in rendered]
            return [k for k in kept if k is not None], sum(k is None for k in kept)

        train_examples, skipped = tokenized(rendered_train)
        val_examples, val_skipped = tokenized(rendered_val)
    what = f"task {source.task.name}" if source.task is not None else config.data
    if not train_examples:
        hint = "raise --max_length or shorten the prompts"
        if source.task is None and config.instruction_format == "alpaca":
            hint += " (--instruction_format chat writes much shorter prompts than Alpaca's)"
        raise DataError(
            f"{what}: all {skipped} training examples have an empty target after truncation to "
            f"max_length {max_length} tokens; {hint}"
        )
    if config.packing:
        train_examples = sft.pack(train_examples, max_length, config.train.seed)
    n = len(train_examples)

    mixture, replay = None, None
    replay_record = None
    if config.replay:
        replay, mixture, replay_record = open_replay(config, tokenizer, model_config, max_length)
    global_batch = config.train.global_batch(world_size)

    def steps_for(sft_needed: int) -> int:
        """The fewest steps whose batches hold `sft_needed` SFT samples."""
        steps = max(1, math.ceil(sft_needed / (global_batch * (1.0 - config.replay_fraction))))
        while sft_samples(mixture, steps * global_batch) < sft_needed:
            steps += 1
        while steps > 1 and sft_samples(mixture, (steps - 1) * global_batch) >= sft_needed:
            steps -= 1
        return steps

    max_steps = config.train.max_steps or steps_for(math.ceil(config.epochs * n))
    val_every = config.train.val_every if config.train.val_every is not None else steps_for(n)
    val_batches = config.train.val_batches
    if val_batches is None:
        val_batches = math.ceil(len(val_examples) / config.train.micro_batch_size)
    if not val_examples:
        say("note: no validation examples (no validation split, or val_fraction 0): no validation loss")
    settings = {"seed": config.train.seed, "max_length": max_length, "packing": config.packing, "replay": replay_record}
    if config.objective == "classification":
        train_data: Any = classification.ClassificationBatches(train_examples, config.train.seed, pad_id)
        val_data: Any = classification.ClassificationValidation(val_examples, pad_id) if val_examples else None
        fingerprint = classification.fingerprint(train_examples, settings)
    else:
        train_data = sft.SftBatches(train_examples, config.train.seed, pad_id, mixture=mixture, replay=replay)
        val_data = sft.ValidationBatches(val_examples, pad_id) if val_examples else None
        fingerprint = sft.fingerprint(train_examples, settings)
    epochs = sft_samples(mixture, max_steps * global_batch) / n
    record = {
        "examples": {
            "train": len(rendered_train),
            "skipped": skipped,
            "validation": len(val_examples),
            "validation_skipped": val_skipped,
        },
        "sequences": n,
        "max_length": max_length,
        "packing": config.packing,
        "epochs": round(epochs, 4),
        "max_steps": max_steps,
        "replay": replay_record,
    }
    return FinetuneData(
        train=train_data,
        val=val_data,
        train_count=n,
        skipped=skipped,
        val_count=len(val_examples),
        global_batch=global_batch,
        max_steps=max_steps,
        val_every=val_every,
        val_batches=val_batches,
        epochs=epochs,
        fingerprint=fingerprint,
        mixture=mixture,
        record=record,
        val_rows=val_examples,
        pad_id=pad_id,
    )


def open_replay(
    config: FinetuneConfig, tokenizer: Any, model_config: Any, max_length: int
) -> tuple[Any, Any, dict[str, Any]]:
    """The replay windows (checked against the model's tokenizer) and the mixture SFT | replay."""
    from ckptlab.data.mixture import Mixture
    from ckptlab.data.windows import windows_for_model

    length = config.replay_length or max_length
    windows = windows_for_model(
        "replay", config.replay, length, config.train.seed, tokenizer, model_config.vocab_size, config.init_from
    )
    mixture = Mixture([[1.0, 0.0]], replay_source=1, replay_fraction=config.replay_fraction)
    record = {
        "data": config.replay,
        "fraction": config.replay_fraction,
        "window": length,
        "fingerprint": windows.fingerprint,
    }
    return windows, mixture, record
