"""`ckptlab finetune`: supervised fine-tuning of any checkpoint on a task or on instruction data.

Example (`configs/finetune_world_nli.yaml` opens with the command that runs it):

    ckptlab finetune --init_from runs/tiny --task world/tasks/world_nli.yaml --out runs/ft-nli
    ckptlab finetune --init_from runs/tiny --data world/instruct/mixture.jsonl --method lora --out runs/ft-lora

Examples are rendered and tokenized by `ckptlab.data.sft` (loss on target tokens only), batched as a
pure function of the global sample index (epochs of seeded orders, optional replay of pre-training
windows mixed by `ckptlab.data.mixture`), and trained on the one loop (`ckptlab.train.loop.train`),
so checkpoints, `--resume`, SIGTERM and NaN behave as in pre-training. Defaults follow Sun & Dredze
2024: full fine-tuning, 3 epochs, linear decay to 0 after a 3% warm-up, no weight decay (the peak LR
default is 2e-5 for small models; they used 2e-6 for OLMo-1B). `run.json` names the fine-tuned model
under `final`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ckptlab.errors import ConfigError, UserError
from ckptlab.lora import LoraConfig
from ckptlab.train.loop import TrainConfig, check_allow_changed
from ckptlab.train.regularisation import EarlyStoppingConfig
from ckptlab.train.run_dir import RunDir
from ckptlab.train.schedules import KeepConfig, ScheduleConfig, ScheduleName

# The config layer resolves the inherited annotations of TrainConfig, ScheduleConfig and KeepConfig
# in this module's namespace: Literal, ScheduleConfig and ScheduleName must stay imported here.


@dataclass
class FinetuneSchedule(ScheduleConfig):
    """How the learning rate moves with the optimizer step (fine-tuning defaults)."""

    name: ScheduleName = "linear"
    """linear (default): warm-up then linear decay to min_lr; cosine, constant, wsd, infinite as in pre-training."""
    lr: float = 2e-5
    """Peak learning rate (Sun & Dredze 2024 used 2e-6 for OLMo-1B; small models want more)."""
    min_lr: float = 0.0
    """Learning rate at the last step."""
    warmup_fraction: float = 0.03
    """Warm-up as a fraction of the total steps (used when warmup_steps is 0)."""


@dataclass
class FinetuneTrainConfig(TrainConfig):
    """Optimisation and bookkeeping (fine-tuning defaults)."""

    max_steps: int | None = None
    """Optimizer steps; null = enough steps for `epochs` passes over the training examples."""
    schedule: FinetuneSchedule = field(default_factory=FinetuneSchedule)
    """Learning-rate schedule."""
    weight_decay: float = 0.0
    """AdamW weight decay on matrices (0, as Sun & Dredze 2024)."""
    beta2: float = 0.999
    """AdamW β2."""
    val_every: int | None = None
    """Validation loss every this many steps and at the end; null = once per epoch; 0 = never."""
    val_batches: int | None = None
    """Micro-batches of validation examples per validation; null = the whole validation set."""

    def __post_init__(self) -> None:
        given = {name: getattr(self, name) for name in ("max_steps", "val_every", "val_batches")}
        for name, value in given.items():
            if value is None:
                setattr(self, name, 1)  # resolved later from the data; checked here as if given
        super().__post_init__()
        for name, value in given.items():
            setattr(self, name, value)


@dataclass
class FinetuneKeep(KeepConfig):
    """Which steps keep a checkpoint (by default only the final one)."""

    schedule: Literal["log", "every", "list", "none"] = "none"
    """none: only the final step (default); list: `steps` (add 0 to keep the starting model); every, log: as in pre-training."""


@dataclass
class FinetuneConfig:
    """Supervised fine-tuning of an existing checkpoint."""

    init_from: str = ""
    """Model to fine-tune: a ckptlab checkpoint or run directory (newest checkpoint), an HF directory, a hub id[@revision], or a .gguf file."""
    task: str = ""
    """Task to train on: a shipped task name or a task YAML path (e.g. WORLD/tasks/world_nli.yaml); or give --data."""
    template: str = ""
    """Template of the task that renders the prompts; empty = train_format (else the task's first template)."""
    data: str = ""
    """Instruction JSONL instead of a task: Alpaca-style instruction/input/output records or chat `messages` records."""
    instruction_format: Literal["alpaca", "chat"] = "alpaca"
    """Prompt of instruction records: alpaca (Alpaca's prompt); chat (one user turn, rendered as chat records are: the tokenizer's chat template, else Tulu's format)."""
    val_data: str = ""
    """Instruction JSONL for the validation loss with --data; empty = hold out val_fraction of --data."""
    train_split: str = "train"
    """Task split to train on."""
    val_split: str = "validation"
    """Task split for the validation loss; when the task has no such split, val_fraction of train_split is held out."""
    val_fraction: float = 0.05
    """Share of training examples held out for validation when there is no validation split or file."""
    method: Literal["full", "lora", "last_k", "head"] = "full"
    """full: every weight trains; lora: low-rank adapters (peft), the base frozen; last_k: the last `last_k` transformer blocks, the final norm and the LM head; head: the LM head only (a head tied to the input embedding is untied first)."""
    last_k: int | None = None
    """Transformer blocks that train with method last_k (the last ones; 1 ≤ last_k ≤ the model's blocks)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA settings (method lora)."""
    dropout: float | None = None
    """Dropout probability set on the model for fine-tuning (its attention and hidden dropout; GPT-NeoX, Llama, GPT-2, ...); null keeps the model's own."""
    anchor_weight: float = 0.0
    """L2-SP: add anchor_weight · Σ‖θ − θ₀‖² over the trainable weights, θ₀ = init_from's weights (0 = off)."""
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    """Stop when the validation loss stops improving; the best checkpoint becomes the final model."""
    out: str = "runs/finetune"
    """Run directory: config.yaml, metrics.jsonl, run.json and checkpoints/ go here."""
    epochs: float = 3.0
    """Passes over the training examples (ignored when train.max_steps is given)."""
    max_length: int | None = None
    """Tokens per training sequence (the model's input); longer examples are cut at the end; null = max_position_embeddings."""
    packing: bool = False
    """Concatenate whole examples into sequences of up to max_length tokens instead of padding each one."""
    replay: str = ""
    """Prepared pre-training data (`ckptlab prepare --tokenizer MODEL`) replayed during fine-tuning to limit forgetting."""
    replay_fraction: float = 0.0
    """Share of every batch's sequences that are replay windows (e.g. 0.05-0.5); every token of a window is a target."""
    replay_length: int | None = None
    """Tokens per replay window; null = max_length."""
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)
    """Optimisation, schedule, precision and bookkeeping."""
    keep: FinetuneKeep = field(default_factory=FinetuneKeep)
    """Which steps keep a checkpoint."""
    resume: bool = False
    """Continue from the newest complete checkpoint in `out` (starts from init_from if there is none)."""
    allow_changed: list[str] = field(default_factory=list)
    """On resume, accept these changes since the checkpoint: data, tokenizer, model, batch."""

    def __post_init__(self) -> None:
        check_allow_changed(self.allow_changed)
        if self.task and self.data:
            raise ConfigError("task and data: give one of them (a task, or an instruction JSONL file), not both")
        if self.val_data and not self.data:
            raise ConfigError("val_data: only used with --data (a task validates on its val_split)")
        if not (math.isfinite(self.epochs) and self.epochs > 0):
            raise ConfigError(f"epochs: expected a number > 0, got {self.epochs}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction: expected 0 ≤ x < 1, got {self.val_fraction}")
        for name in ("max_length", "replay_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name}: expected a positive integer, got {value}")
        if not 0.0 <= self.replay_fraction < 1.0:
            raise ConfigError(f"replay_fraction: expected 0 ≤ x < 1, got {self.replay_fraction}")
        if self.replay_fraction > 0 and not self.replay:
            raise ConfigError("replay_fraction: set, but no replay data; give the pre-training data with --replay")
        if self.replay and self.replay_fraction == 0:
            raise ConfigError("replay: given, but replay_fraction is 0; set --replay_fraction (e.g. 0.1)")
        if self.last_k is not None and self.last_k < 1:
            raise ConfigError(f"last_k: expected a positive integer (transformer blocks to train), got {self.last_k}")
        if self.method == "last_k" and self.last_k is None:
            raise ConfigError("last_k: method last_k needs the number of blocks to train (--last_k K)")
        if self.last_k is not None and self.method != "last_k":
            raise ConfigError(f"last_k: only used with --method last_k (method is {self.method})")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout: expected 0 ≤ x < 1, got {self.dropout}")
        if not (math.isfinite(self.anchor_weight) and self.anchor_weight >= 0):
            raise ConfigError(f"anchor_weight: expected a number ≥ 0, got {self.anchor_weight}")
        if self.anchor_weight > 0 and self.method == "lora":
            raise ConfigError("anchor_weight: not with method lora (its trainable weights are adapters, not pre-trained weights)")


def finetune(config: FinetuneConfig) -> int:
    """Run (or resume) fine-tuning as configured; returns the process exit code."""
    if not config.init_from:
        raise UserError("finetune: give the model to fine-tune with --init_from (a checkpoint, run, HF directory or hub id)")
    if not config.task and not config.data:
        raise UserError("finetune: give what to train on: --task NAME|TASK.yaml, or --data FILE.jsonl (instruction records)")
    import os

    from ckptlab.init_model import resolve_init

    # Checks that need neither torch nor the model come first, so a mistyped path fails at once.
    main_process = os.environ.get("RANK", "0") == "0"
    say = print if main_process else (lambda *a, **k: None)
    init = resolve_init(config.init_from)
    source = _open_source(config)
    if config.replay:
        from ckptlab.data.shards import read_manifest
        from ckptlab.errors import DataError

        try:
            read_manifest(config.replay)
        except DataError as error:
            raise DataError(f"replay: {error}") from None
    run = FinetuneRunDir(config.out)
    run.refuse_unless_resuming(config.resume)

    import torch

    from ckptlab import config as configlib
    from ckptlab import methods
    from ckptlab.init_model import read_model_config, tokenizer_identity
    from ckptlab.model import count_parameters, load_tokenizer, shape_fingerprint
    from ckptlab.train import distributed
    from ckptlab.train.loop import train
    from ckptlab.train.schedules import kept_steps, lr_at

    torch.set_flush_denormal(True)
    dist = distributed.setup(config.train.device)
    try:
        tokenizer = load_tokenizer(init.source)
        model_config = read_model_config(init.source)
        max_positions = getattr(model_config, "max_position_embeddings", None)
        max_length = config.max_length or max_positions
        if max_length is None:
            raise ConfigError(f"max_length: {init.source} does not say its maximum length; give --max_length")
        for key, value in (("max_length", max_length), ("replay_length", config.replay_length)):
            if value is not None and max_positions is not None and value > max_positions:
                raise UserError(f"{key} {value} is longer than the model allows (max_position_embeddings {max_positions})")
        data = _build_data(config, source, tokenizer, model_config, max_length, dist.world_size, say)
        config.train.max_steps, config.train.val_every, config.train.val_batches = (
            data.max_steps, data.val_every, data.val_batches)

        fingerprints = {"data": data.fingerprint, "tokenizer": tokenizer_identity(tokenizer),
                        "model": shape_fingerprint(model_config),
                        "method": f"last_k={config.last_k}" if config.method == "last_k" else config.method}
        resume_from = run.resume_point(init.source, say) if config.resume else None
        if config.method == "lora" or config.anchor_weight > 0:
            from ckptlab.lora import base_identity

            # A resumed run rebuilds the base (LoRA) or θ₀ (L2-SP) from init_from: it must not have changed.
            fingerprints["init"] = base_identity(init.source, init.checkpoint)
        model, trains, save_model = methods.make_model(
            config.method, init_source=init.source, tokenizer=tokenizer, resume_from=resume_from, seed=config.train.seed,
            last_k=config.last_k, dropout=config.dropout, lora_config=config.lora, fingerprints=fingerprints)
        if resume_from is not None:
            run.accept_resume(resume_from, fingerprints, config.allow_changed, dist.is_main)
        model.to(dist.device)
        anchor, early = _regularisers(config, model, init.source, resume_from, data)
        trainable = count_parameters(model, trainable_only=True)
        run.record = {
            "init_from": config.init_from, "init_checkpoint": init.source, "method": config.method,
            "lora": ({"r": config.lora.r, "alpha": config.lora.alpha, "dropout": config.lora.dropout,
                      "target_modules": trains["target_modules"]} if config.method == "lora" else None),
            "trainable": {**trains, "params": trainable, "total_params": count_parameters(model)},
            "dropout": config.dropout, "anchor_weight": config.anchor_weight,
            **source.describe(config), **data.record,
        }
        if dist.is_main:
            run.save_config(configlib.to_dict(config))
        kept = kept_steps(config.keep, data.max_steps)
        say(
            f"finetune ({config.method}): {trainable:,} of {count_parameters(model):,} parameters train, from "
            f"{init.source}; {data.train_count} training sequences ({data.skipped} skipped), {data.val_count} "
            f"validation, global batch {data.global_batch}, {data.max_steps} steps ({data.epochs:.2f} epochs) on "
            f"{dist.device} (x{dist.world_size})"
        )
        if data.skipped:
            say(f"  skipped {data.skipped} training example(s) whose target is empty after truncation to {max_length} tokens")
        say(f"run manifest: {run.manifest}")
        result = train(
            model=model,
            save_model=save_model,
            train_data=data.train,
            val_data=data.val,
            config=config.train,
            lr_at=lambda step: lr_at(step, config.train.schedule, data.max_steps),
            kept=kept,
            run=run,
            fingerprints=fingerprints,
            resume_from=resume_from,
            allow_changed=config.allow_changed,
            dist=dist,
            log=say,
            step_fields=data.step_fields,
            anchor=anchor,
            early_stopping=early,
        )
        if result.status == "complete" and dist.is_main:
            # With early stopping the final model is the best checkpoint by validation loss.
            chosen = result.best_step if result.best_step is not None else result.step
            entry = next(c for c in result.checkpoints if c["step"] == chosen)
            run.final = {"step": entry["step"], "model": entry["path"], "val_loss": entry.get("val_loss"),
                         "adapter": f"{entry['path']}/adapter" if config.method == "lora" else None,
                         "selected": "best_val_loss" if result.best_step is not None else "last_step",
                         "last_step": result.step, "stop_reason": result.stop_reason}
            run.write_run_manifest(run.read_run_manifest())
            say(f"complete at step {result.step} (loss {result.last_loss}); fine-tuned model: {run.root / entry['path']}")
        else:
            say(f"{result.status} at step {result.step} (loss {result.last_loss}); checkpoints listed in {run.manifest}")
        return 0
    finally:
        distributed.teardown(dist)


def _regularisers(config: FinetuneConfig, model: Any, init_source: str, resume_from: Path | None, data: Any) -> tuple[Any, Any]:
    """(L2-SP anchor or None, early stopping or None), as configured."""
    from ckptlab import methods
    from ckptlab.train.regularisation import L2SP, EarlyStopping

    anchor = early = None
    if config.anchor_weight > 0:
        # θ₀ = init_from's weights: the model itself when starting, reloaded from init_from when resuming.
        reference = methods.anchor_reference(init_source, config.method) if resume_from is not None else None
        anchor = L2SP(config.anchor_weight, model, reference)
    if config.early_stopping.patience is not None:
        if data.val is None or not data.val_every:
            raise UserError("early_stopping.patience: needs a validation loss (validation examples and train.val_every > 0)")
        early = EarlyStopping(config.early_stopping.patience, config.early_stopping.min_delta)
    return anchor, early


# --- what to train on ------------------------------------------------------------------------


@dataclass
class _Source:
    """The task (spec + template) or the instruction file(s), opened before any model loads."""

    task: Any = None
    template: str = ""
    splits: set[str] = field(default_factory=set)
    """The task's splits (local files or its hf: block)."""
    records: list[tuple[int, dict[str, Any]]] | None = None
    val_records: list[tuple[int, dict[str, Any]]] | None = None

    def describe(self, config: FinetuneConfig) -> dict[str, Any]:
        if self.task is None:
            return {"data": config.data, "instruction_format": config.instruction_format, "val_data": config.val_data or None}
        return {"task": self.task.name, "task_file": str(self.task.path), "template": self.template,
                "train_split": config.train_split, "val_split": self.val_split(config)}

    def val_split(self, config: FinetuneConfig) -> str | None:
        """The task split that validates, or None (then val_fraction of the training split is held out)."""
        usable = config.val_split and config.val_split in self.splits and config.val_split != config.train_split
        return config.val_split if usable else None


def _open_source(config: FinetuneConfig) -> _Source:
    from ckptlab.data import sft

    if config.data:
        records = sft.read_records(config.data)
        val_records = sft.read_records(config.val_data) if config.val_data else None
        return _Source(records=records, val_records=val_records)
    from ckptlab.evaluation.tasks import read_task_file, shipped_tasks

    shipped = shipped_tasks()
    path = Path(config.task).expanduser()
    if not path.is_file():
        if config.task not in shipped:
            raise UserError(f"task: '{config.task}' is not a task YAML file or a shipped task (shipped: {', '.join(sorted(shipped))})")
        path = shipped[config.task]
    spec = read_task_file(path)
    template = sft.choose_template(spec, config.template)
    sft.check_task_for_training(spec, template)
    splits = set(spec.splits) | set((spec.hf or {}).get("splits", {}))
    if config.train_split not in splits:
        raise UserError(f"train_split: task {spec.name} has no split '{config.train_split}' (splits: {', '.join(sorted(splits))})")
    return _Source(task=spec, template=template, splits=splits)


def _rendered(config: FinetuneConfig, source: _Source, tokenizer: Any) -> tuple[list[Any], list[Any]]:
    """(training, validation) examples as rendered segment lists."""
    from ckptlab.data import sft

    seed = config.train.seed
    if source.task is not None:
        from ckptlab.evaluation.tasks import load_task_data

        spec, val_split = source.task, source.val_split(config)
        examples = load_task_data(spec, config.train_split).examples
        if val_split is not None:
            val = load_task_data(spec, val_split).examples
        else:
            val = [e for e in examples if sft.held_out(seed, e.id, config.val_fraction)]
            examples = [e for e in examples if not sft.held_out(seed, e.id, config.val_fraction)]
        render = lambda e: sft.render_task_example(spec, source.template, e)  # noqa: E731
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
class _Data:
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

    def step_fields(self, step: int) -> dict[str, Any]:
        """Metrics of 0-based step `step`: epochs of SFT examples read so far, replay samples in the step."""
        before, after = step * self.global_batch, (step + 1) * self.global_batch
        fields: dict[str, Any] = {"epoch": round(_sft_samples(self.mixture, after) / self.train_count, 4)}
        if self.mixture is not None:
            read = _sft_samples(self.mixture, after) - _sft_samples(self.mixture, before)
            fields["replay_samples"] = self.global_batch - read
        return fields


def _sft_samples(mixture: Any, samples: int) -> int:
    """How many of the first `samples` global samples are fine-tuning sequences (the rest are replay)."""
    return mixture.counts(samples)[0] if mixture is not None else samples


def _build_data(config: FinetuneConfig, source: _Source, tokenizer: Any, model_config: Any, max_length: int,
                world_size: int, say: Any) -> _Data:
    from ckptlab.data import sft
    from ckptlab.errors import DataError

    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        say("note: the tokenizer has no end-of-sequence token; targets end without one")
    pad_id = next((t for t in (tokenizer.pad_token_id, eos_id) if t is not None), 0)
    rendered_train, rendered_val = _rendered(config, source, tokenizer)

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
        raise DataError(f"{what}: all {skipped} training examples have an empty target after truncation to "
                        f"max_length {max_length} tokens; {hint}")
    if config.packing:
        train_examples = sft.pack(train_examples, max_length, config.train.seed)
    n = len(train_examples)

    mixture, replay = None, None
    replay_record = None
    if config.replay:
        replay, mixture, replay_record = _open_replay(config, tokenizer, model_config, max_length)
    global_batch = config.train.micro_batch_size * config.train.grad_accum_steps * world_size

    def steps_for(sft_needed: int) -> int:
        """The fewest steps whose batches hold `sft_needed` SFT samples."""
        steps = max(1, math.ceil(sft_needed / (global_batch * (1.0 - config.replay_fraction))))
        while _sft_samples(mixture, steps * global_batch) < sft_needed:
            steps += 1
        while steps > 1 and _sft_samples(mixture, (steps - 1) * global_batch) >= sft_needed:
            steps -= 1
        return steps

    max_steps = config.train.max_steps or steps_for(math.ceil(config.epochs * n))
    val_every = config.train.val_every if config.train.val_every is not None else steps_for(n)
    val_batches = config.train.val_batches
    if val_batches is None:
        val_batches = math.ceil(len(val_examples) / config.train.micro_batch_size)
    if not val_examples:
        say("note: no validation examples (no validation split, or val_fraction 0): no validation loss")
    train_data = sft.SftBatches(train_examples, config.train.seed, pad_id, mixture=mixture, replay=replay)
    val_data = sft.ValidationBatches(val_examples, pad_id) if val_examples else None
    settings = {"seed": config.train.seed, "max_length": max_length, "packing": config.packing, "replay": replay_record}
    epochs = _sft_samples(mixture, max_steps * global_batch) / n
    record = {
        "examples": {"train": len(rendered_train), "skipped": skipped, "validation": len(val_examples),
                     "validation_skipped": val_skipped},
        "sequences": n, "max_length": max_length, "packing": config.packing, "epochs": round(epochs, 4),
        "max_steps": max_steps, "replay": replay_record,
    }
    return _Data(train=train_data, val=val_data, train_count=n, skipped=skipped, val_count=len(val_examples),
                 global_batch=global_batch, max_steps=max_steps, val_every=val_every, val_batches=val_batches,
                 epochs=epochs, fingerprint=sft.fingerprint(train_examples, settings), mixture=mixture, record=record)


def _open_replay(config: FinetuneConfig, tokenizer: Any, model_config: Any, max_length: int) -> tuple[Any, Any, dict[str, Any]]:
    """The replay windows (checked against the model's tokenizer) and the mixture SFT | replay."""
    from ckptlab.init_model import tokenizer_identity
    from ckptlab.data.mixture import Mixture
    from ckptlab.data.tokenizer import load_tokenizer as load_data_tokenizer
    from ckptlab.data.windows import TokenWindows
    from ckptlab.errors import DataError

    path = Path(config.replay).expanduser()
    length = config.replay_length or max_length
    try:
        windows = TokenWindows(path, "train", length, config.train.seed)
    except DataError as error:
        raise DataError(f"replay: {error}") from None
    if tokenizer_identity(load_data_tokenizer(path / "tokenizer")) != tokenizer_identity(tokenizer):
        raise UserError(f"replay: {config.replay} was prepared with another tokenizer than the model's ({config.init_from}); "
                        f"prepare it with `ckptlab prepare --tokenizer {config.init_from} ...`")
    if int(windows.manifest["vocab_size"]) > int(model_config.vocab_size):
        raise UserError(f"replay: {config.replay} has a vocabulary of {windows.manifest['vocab_size']}, the model only {model_config.vocab_size}")
    mixture = Mixture([[1.0, 0.0]], replay_source=1, replay_fraction=config.replay_fraction)
    record = {"data": config.replay, "fraction": config.replay_fraction, "window": length,
              "fingerprint": windows.fingerprint}
    return windows, mixture, record


# --- the model ---------------------------------------------------------------------------------


class FinetuneRunDir(RunDir):
    """A run directory whose run.json also records the fine-tuning under `finetune`, and `final`."""

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        self.record: dict[str, Any] = {}
        self.final: dict[str, Any] | None = None

    def write_run_manifest(self, manifest: dict[str, Any]) -> None:
        extra: dict[str, Any] = {"finetune": self.record}
        if self.final is not None:
            extra["final"] = self.final
        super().write_run_manifest({**manifest, **extra})
