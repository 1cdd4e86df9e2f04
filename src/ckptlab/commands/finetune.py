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

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ckptlab.errors import ConfigError, UserError
from ckptlab.models.lora import LoraConfig
from ckptlab.runs.run_dir import RunDir
from ckptlab.train.callbacks.early_stopping import EarlyStoppingConfig
from ckptlab.train.config import TrainConfig, TrainingVerbConfig
from ckptlab.train.schedules import KeepConfig, ScheduleConfig, ScheduleName


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

    # None until resolved from the data (the run uses a copy with ints), hence the narrowed override.
    max_steps: int | None = None  # type: ignore[assignment]
    """Optimizer steps; null = enough steps for `epochs` passes over the training examples."""
    schedule: FinetuneSchedule = field(default_factory=FinetuneSchedule)
    """Learning-rate schedule."""
    weight_decay: float = 0.0
    """AdamW weight decay on matrices (0, as Sun & Dredze 2024)."""
    beta2: float = 0.999
    """AdamW β2."""
    val_every: int | None = None  # type: ignore[assignment]
    """Validation loss every this many steps and at the end; null = once per epoch; 0 = never."""
    val_batches: int | None = None  # type: ignore[assignment]
    """Micro-batches of validation examples per validation; null = the whole validation set."""


@dataclass
class FinetuneKeep(KeepConfig):
    """Which steps keep a checkpoint (by default only the final one)."""

    schedule: Literal["log", "every", "list", "none"] = "none"
    """none: only the final step (default); list: `steps` (add 0 to keep the starting model); every, log: as in
    pre-training."""


@dataclass
class FinetuneConfig(TrainingVerbConfig):
    """Supervised fine-tuning of an existing checkpoint."""

    init_from: str = ""
    """Model to fine-tune: a ckptlab checkpoint or run directory (newest checkpoint), an HF directory, a hub
    id[@revision], or a .gguf file."""
    trust_remote_code: bool = False
    """Let a hub model run its own code from its repository (off: such a model is refused with this key named)."""
    task: str = ""
    """Task to train on: a shipped task name or a task YAML path (e.g. WORLD/tasks/world_nli.yaml); or give --data."""
    template: str = ""
    """Template of the task that renders the prompts; empty = train_format (else the task's first template)."""
    data: str = ""
    """Instruction JSONL instead of a task: Alpaca-style instruction/input/output records or chat `messages` records."""
    instruction_format: Literal["alpaca", "chat"] = "alpaca"
    """Prompt of instruction records: alpaca (Alpaca's prompt); chat (one user turn, rendered as chat records are: the
    tokenizer's chat template, else Tulu's format)."""
    val_data: str = ""
    """Instruction JSONL for the validation loss with --data; empty = hold out val_fraction of --data."""
    train_split: str = "train"
    """Task split to train on."""
    val_split: str = "validation"
    """Task split for the validation loss; when the task has no such split, val_fraction of train_split is held out."""
    val_fraction: float = 0.05
    """Share of training examples held out for validation when there is no validation split or file."""
    objective: Literal["lm", "classification"] = "lm"
    """lm: the answer tokens are loss targets (causal LMs); classification: a sequence-classification head over a
    classification task's choices (encoders such as BERT/MiniLM, or any model with such a class), evaluated by
    accuracy."""
    method: Literal["full", "lora", "last_k", "head"] = "full"
    """full: every weight trains; lora: low-rank adapters (peft), the base frozen; last_k: the last `last_k`
    transformer blocks, the final norm and the LM head; head: the LM head only (a head tied to the input embedding
    is untied first)."""
    last_k: int | None = None
    """Transformer blocks that train with method last_k (the last ones; 1 ≤ last_k ≤ the model's blocks)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA settings (method lora)."""
    dropout: float | None = None
    """Dropout probability set on the model for fine-tuning (its attention and hidden dropout; GPT-NeoX, Llama, GPT-2,
    ...); null keeps the model's own."""
    anchor_weight: float = 0.0
    """L2-SP: add anchor_weight · Σ‖θ − θ₀‖² over the trainable weights, θ₀ = init_from's weights (0 = off)."""
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    """Stop when the validation loss stops improving; the best checkpoint becomes the final model."""
    out: str = "runs/finetune"
    """Run directory: config.yaml, metrics.jsonl, run.json and checkpoints/ go here."""
    epochs: float = 3.0
    """Passes over the training examples (ignored when train.max_steps is given)."""
    max_length: int | None = None
    """Tokens per training sequence (the model's input); longer examples are cut at the end; null =
    max_position_embeddings."""
    packing: bool = False
    """Concatenate whole examples into sequences of up to max_length tokens instead of padding each one."""
    replay: str = ""
    """Prepared pre-training data (`ckptlab prepare --tokenizer MODEL`) replayed during fine-tuning to limit
    forgetting."""
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

    def __post_init__(self) -> None:
        super().__post_init__()
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
        if self.objective == "classification" and (
            not self.task or self.replay or self.packing or self.method == "lora"
        ):
            raise ConfigError("objective: classification takes a --task (no --data, replay, packing or method lora)")
        if self.anchor_weight > 0 and self.method == "lora":
            raise ConfigError(
                "anchor_weight: not with method lora (its trainable weights are adapters, not pre-trained weights)"
            )
        if self.train.parallelism == "fsdp" and (self.method == "lora" or self.anchor_weight > 0):
            what = "method lora" if self.method == "lora" else "anchor_weight > 0"
            raise ConfigError(f"train.parallelism: fsdp does not support {what}; use ddp")


def finetune(config: FinetuneConfig) -> int:
    """Run (or resume) fine-tuning as configured; returns the process exit code."""
    if not config.init_from:
        raise UserError(
            "finetune: give the model to fine-tune with --init_from (a checkpoint, run, HF directory or hub id)"
        )
    if not config.task and not config.data:
        raise UserError(
            "finetune: give what to train on: --task NAME|TASK.yaml, or --data FILE.jsonl (instruction records)"
        )
    from ckptlab.data import finetune as finetune_data
    from ckptlab.models.init_from import resolve_init
    from ckptlab.train.verb_setup import (
        check_length_fits,
        check_prepared_data,
        distributed_run,
        main_process_printer,
        max_length_of,
        train_verb,
    )

    # Checks that need neither torch nor the model come first, so a mistyped path fails at once.
    say = main_process_printer()
    init = resolve_init(config.init_from)
    source = finetune_data.open_source(config)
    if config.replay:
        check_prepared_data("replay", config.replay)
    run = FinetuneRunDir(config.out)
    run.refuse_unless_resuming(config.resume)

    from ckptlab import config as configlib
    from ckptlab.models import methods
    from ckptlab.models.hf import count_parameters, load_tokenizer, shape_fingerprint
    from ckptlab.models.init_from import read_model_config, tokenizer_identity

    with distributed_run(config.train.device) as dist:
        tokenizer = load_tokenizer(init.source, trust_remote_code=config.trust_remote_code)
        model_config = read_model_config(init.source, trust_remote_code=config.trust_remote_code)
        max_length = max_length_of(model_config, "max_length", config.max_length, init.source)
        check_length_fits(model_config, "replay_length", config.replay_length)
        data = finetune_data.build_data(config, source, tokenizer, model_config, max_length, dist.world_size, say)
        # Steps and validation cadence follow from the data; the config as run (config.yaml) holds them.
        config = dataclasses.replace(
            config,
            train=dataclasses.replace(
                config.train, max_steps=data.max_steps, val_every=data.val_every, val_batches=data.val_batches
            ),
        )

        fingerprints = {
            "data": data.fingerprint,
            "tokenizer": tokenizer_identity(tokenizer),
            "model": shape_fingerprint(model_config),
            "method": f"last_k={config.last_k}" if config.method == "last_k" else config.method,
        }
        resume_from = run.resume_point(init.source, say, dist.is_main) if config.resume else None
        if config.method == "lora" or config.anchor_weight > 0:
            from ckptlab.models.lora import base_identity

            # A resumed run rebuilds the base (LoRA) or θ₀ (L2-SP) from init_from: it must not have changed.
            fingerprints["init"] = base_identity(init.source, init.checkpoint)
        model, trains, save_model = methods.make_model(
            config.method,
            init_source=init.source,
            tokenizer=tokenizer,
            resume_from=resume_from,
            seed=config.train.seed,
            last_k=config.last_k,
            dropout=config.dropout,
            lora_config=config.lora,
            fingerprints=fingerprints,
            num_labels=len(source.task.choices) if config.objective == "classification" else None,
            trust_remote_code=config.trust_remote_code,
        )
        if resume_from is not None:
            run.accept_resume(resume_from, fingerprints, config.allow_changed, dist.is_main)
        model.to(dist.device)
        anchor, early = _regularisers(config, model, init.source, resume_from, data)
        trainable = count_parameters(model, trainable_only=True)
        run.record = {
            "init_from": config.init_from,
            "init_checkpoint": init.source,
            "method": config.method,
            "lora": (
                {
                    "r": config.lora.r,
                    "alpha": config.lora.alpha,
                    "dropout": config.lora.dropout,
                    "target_modules": trains["target_modules"],
                }
                if config.method == "lora"
                else None
            ),
            "trainable": {**trains, "params": trainable, "total_params": count_parameters(model)},
            "objective": config.objective,
            "dropout": config.dropout,
            "anchor_weight": config.anchor_weight,
            **source.describe(config),
            **data.record,
        }
        if dist.is_main:
            run.save_config(configlib.to_dict(config))
        say(
            f"finetune ({config.method}): {trainable:,} of {count_parameters(model):,} parameters train, from "
            f"{init.source}; {data.train_count} training sequences ({data.skipped} skipped), {data.val_count} "
            f"validation, global batch {data.global_batch}, {data.max_steps} steps ({data.epochs:.2f} epochs) on "
            f"{dist.device} (x{dist.world_size})"
        )
        if data.skipped:
            say(
                f"  skipped {data.skipped} training example(s) whose target is empty after truncation to "
                f"{max_length} tokens"
            )
        say(f"run manifest: {run.manifest}")
        # config.train.max_steps was resolved from the data above.
        result = train_verb(
            config,
            model=model,
            save_model=save_model,
            train_data=data.train,
            val_data=data.val,
            run=run,
            fingerprints=fingerprints,
            resume_from=resume_from,
            dist=dist,
            log=say,
            step_fields=data.step_fields,
            callbacks=[c for c in (anchor, early) if c is not None],
        )
        if result.status == "complete" and dist.is_main:
            # With early stopping the final model is the best checkpoint by validation loss.
            chosen = result.best_step if result.best_step is not None else result.step
            entry = next(c for c in result.checkpoints if c["step"] == chosen)
            run.final = {
                "step": entry["step"],
                "model": entry["path"],
                "val_loss": entry.get("val_loss"),
                "adapter": f"{entry['path']}/adapter" if config.method == "lora" else None,
                "selected": "best_val_loss" if result.best_step is not None else "last_step",
                "last_step": result.step,
                "stop_reason": result.stop_reason,
            }
            if config.objective == "classification":
                from ckptlab.data import classification
                from ckptlab.models.heads import load_classifier

                chosen_model = load_classifier(
                    str(run.root / entry["path"]), len(source.task.choices), config.trust_remote_code
                )
                run.final["accuracy"] = classification.accuracy(chosen_model, data.val_rows, data.pad_id)
                say(f"validation accuracy of the fine-tuned model: {run.final['accuracy']}")
            run.write_run_manifest(run.read_run_manifest())
            say(
                f"complete at step {result.step} (loss {result.last_loss}); fine-tuned model: "
                f"{run.root / entry['path']}"
            )
        else:
            say(
                f"{result.status} at step {result.step} (loss {result.last_loss}); checkpoints listed in {run.manifest}"
            )
        return 0


def _regularisers(
    config: FinetuneConfig, model: Any, init_source: str, resume_from: Path | None, data: Any
) -> tuple[Any, Any]:
    """(L2-SP anchor or None, early stopping or None), as configured."""
    from ckptlab.models import methods
    from ckptlab.train.callbacks.early_stopping import EarlyStopping
    from ckptlab.train.callbacks.l2sp import L2SP

    anchor = early = None
    if config.anchor_weight > 0:
        # θ₀ = init_from's weights: the model itself when starting, reloaded from init_from when resuming.
        reference = None
        if resume_from is not None:
            reference = methods.anchor_reference(init_source, config.method, config.trust_remote_code)
        anchor = L2SP(config.anchor_weight, model, reference)
    if config.early_stopping.patience is not None:
        if data.val is None or not data.val_every:
            raise UserError(
                "early_stopping.patience: needs a validation loss (validation examples and train.val_every > 0)"
            )
        early = EarlyStopping(config.early_stopping.patience, config.early_stopping.min_delta)
    return anchor, early


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
