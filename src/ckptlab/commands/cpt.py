"""`ckptlab cpt`: continue pre-training any checkpoint on blends of prepared data, with replay.

Example (`configs/cpt_domain_reuse_replay.yaml` opens with the command that runs it):

    ckptlab prepare --sources domain.txt --out data/domain --tokenizer runs/tiny/checkpoints/step-00000200
    ckptlab cpt --init_from runs/tiny/checkpoints/step-00000200 --out runs/cpt \\
        --blend data/domain --replay data/general --replay_fraction 0.25 --recipe reuse

The data are a staged mixture (`ckptlab.data.mixture`): `blend` before the switch step and
`second_blend` from it on, with `replay_fraction` of every batch read from `replay`. The switch is
a step, the first step whose LR is at or below `switch_at_lr`, or (recipe reuse) the first step at
or below `reuse.switch_at_lr_fraction` of the peak LR. It runs on the one training loop
(`ckptlab.train.loop.train`); `--resume` continues exactly as pre-training does. Each metrics line
names the blend its step read, and `run.json` records the switch step under `cpt`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ckptlab.data import mlm
from ckptlab.errors import ConfigError, UserError
from ckptlab.models import heads
from ckptlab.models.init_from import InitModel, read_model_config, resolve_init, tokenizer_identity
from ckptlab.runs.run_dir import RunDir
from ckptlab.train.config import TrainConfig, TrainingVerbConfig

BLEND_NAMES = ("blend", "second_blend")


@dataclass
class BlendSource:
    """One weighted source of a blend."""

    data: str = ""
    """Prepared data directory (`ckptlab prepare --tokenizer MODEL`); its train split is read."""
    weight: float = 1.0
    """Relative weight within the blend (a blend's weights share out what replay leaves)."""

    @classmethod
    def from_cli(cls, text: str, key: str) -> dict[str, Any]:
        """The command-line form of one source, `DIR` or `DIR=WEIGHT`, as config keys."""
        data, _, weight = text.rpartition("=") if "=" in text else (text, "", "1")
        try:
            return {"data": data, "weight": float(weight)}
        except ValueError:
            raise ConfigError(f"{key}: '{text}' is not DIR or DIR=WEIGHT (WEIGHT a number)") from None


@dataclass
class ReuseConfig:
    """Constants of the *Reuse, Don't Retrain* recipe (Parmar et al. 2024)."""

    start_lr: float | None = None
    """Starting (= peak) LR, no warm-up; null reads train.schedule.min_lr of the ckptlab run that wrote init_from."""
    decay_to_fraction: float = 0.01
    """Cosine-decay to this fraction of the starting LR at the last step."""
    switch_at_lr_fraction: float = 0.2
    """Switch to second_blend at the first step whose LR is at or below this fraction of the peak."""


@dataclass
class CptConfig(TrainingVerbConfig):
    """Continued pre-training from an existing checkpoint."""

    init_from: str = ""
    """Model to continue: a ckptlab checkpoint or run directory, an HF directory, a hub id[@revision], or a .gguf
    file."""
    trust_remote_code: bool = False
    """Let a hub model run its own code from its repository (off: such a model is refused with this key named)."""
    out: str = "runs/cpt"
    """Run directory: config.yaml, metrics.jsonl, run.json and checkpoints/ go here."""
    blend: list[BlendSource] = field(default_factory=list)
    """Sources read before the switch: a list of {data, weight}, or DIR[=WEIGHT],DIR[=WEIGHT] on the command line."""
    second_blend: list[BlendSource] = field(default_factory=list)
    """Sources read from the switch on (same forms as blend); empty = no switch."""
    switch_step: int | None = None
    """Switch after this many optimizer steps: steps 1..switch_step (as metrics.jsonl counts) read blend, later ones
    second_blend."""
    switch_at_lr: float | None = None
    """Switch at the first step whose LR is at or below this value (after any warm-up has risen above it)."""
    replay: str = ""
    """Prepared directory of the original pre-training data, replayed in every blend to limit forgetting."""
    replay_fraction: float = 0.0
    """Share of every batch's samples read from replay (e.g. 0.01-0.05 for mild shifts, 0.25 for strong ones)."""
    recipe: Literal["none", "reuse"] = "none"
    """none: train.schedule as given; reuse: Parmar et al. 2024's schedule (replaces train.schedule) and blend
    switch."""
    reuse: ReuseConfig = field(default_factory=ReuseConfig)
    """Constants of recipe reuse."""
    reset_optimizer: bool = False
    """Start AdamW with fresh moments; by default a ckptlab checkpoint's optimizer state is carried over."""
    context_length: int | None = None
    """Tokens per training sample; null = the model's max_position_embeddings."""
    objective: Literal["causal", "mlm"] = "causal"
    """causal: next-token prediction (causal LMs); mlm: masked-language modelling of an encoder (BERT, RoBERTa,
    MiniLM), BERT's 80/10/10 masking."""
    mlm_probability: float = 0.15
    """Share of every sequence's tokens (not special tokens or padding) masked with objective mlm."""
    validate_on: str = ""
    """Prepared directory whose val split gives the validation loss; empty = the first source of the last blend."""
    resume: bool = False
    """Continue from the newest complete checkpoint in `out` (starts from init_from if there is none)."""

    def __post_init__(self) -> None:
        _check_blend(self.blend, "blend")
        _check_blend(self.second_blend, "second_blend")
        super().__post_init__()
        if not (0.0 <= self.replay_fraction < 1.0):
            raise ConfigError(f"replay_fraction: expected 0 ≤ x < 1, got {self.replay_fraction}")
        if self.replay_fraction > 0 and not self.replay:
            raise ConfigError("replay_fraction: set, but no replay data; give the pre-training data with --replay")
        if self.replay and self.replay_fraction == 0:
            raise ConfigError("replay: given, but replay_fraction is 0; set --replay_fraction (e.g. 0.05)")
        if self.switch_step is not None and self.switch_at_lr is not None:
            raise ConfigError("switch_step and switch_at_lr: give one of them, not both")
        if self.switch_step is not None and not 0 <= self.switch_step <= self.train.max_steps:
            raise ConfigError(
                f"switch_step: expected 0 ≤ step ≤ train.max_steps ({self.train.max_steps}), got {self.switch_step}"
            )
        if self.switch_at_lr is not None and self.switch_at_lr < 0:
            raise ConfigError(f"switch_at_lr: expected a learning rate ≥ 0, got {self.switch_at_lr}")
        has_switch = self.switch_step is not None or self.switch_at_lr is not None
        if has_switch and not self.second_blend:
            raise ConfigError("switch_step/switch_at_lr: given, but there is no second_blend to switch to")
        if self.second_blend and not has_switch and self.recipe != "reuse":
            raise ConfigError(
                "second_blend: say when to switch with switch_step or switch_at_lr (or use --recipe reuse)"
            )
        if self.reuse.start_lr is not None and self.reuse.start_lr <= 0:
            raise ConfigError(f"reuse.start_lr: expected a learning rate > 0, got {self.reuse.start_lr}")
        for name in ("decay_to_fraction", "switch_at_lr_fraction"):
            value = getattr(self.reuse, name)
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"reuse.{name}: expected 0 < x ≤ 1, got {value}")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ConfigError(f"mlm_probability: expected 0 < x < 1, got {self.mlm_probability}")
        if self.context_length is not None and self.context_length < 1:
            raise ConfigError(f"context_length: expected a positive integer, got {self.context_length}")


def _check_blend(blend: list[BlendSource], key: str) -> None:
    """Every source names a directory and a finite weight ≥ 0; the weights have a positive sum."""
    for i, source in enumerate(blend):
        if not source.data:
            raise ConfigError(f"{key}[{i}].data: expected a prepared data directory")
        if not math.isfinite(source.weight) or source.weight < 0:
            raise ConfigError(f"{key}[{i}].weight: expected a finite number ≥ 0, got {source.weight}")
    if blend and sum(s.weight for s in blend) <= 0:
        raise ConfigError(f"{key}: weights sum to {sum(s.weight for s in blend)}; expected a positive sum")


def cpt(config: CptConfig) -> int:
    """Run (or resume) continued pre-training as configured; returns the process exit code."""
    if not config.init_from:
        raise UserError("cpt: give the model to continue with --init_from (a checkpoint, HF directory or hub id)")
    if not config.blend:
        raise UserError("cpt: give the data to continue on with --blend (prepared directories, see `ckptlab prepare`)")
    from ckptlab.train.verb_setup import (
        check_prepared_data,
        distributed_run,
        main_process_printer,
        max_length_of,
        train_verb,
    )

    # Checks that need neither torch nor the model come first, so a mistyped path fails at once.
    say = main_process_printer()
    init = resolve_init(config.init_from)
    config = _with_recipe(config, init, say)
    switch_step = _switch_step(config)
    for key, directory in _data_keys(config):
        check_prepared_data(key, directory)
    run = CptRunDir(config.out)
    run.refuse_unless_resuming(config.resume)

    import torch

    from ckptlab import config as configlib
    from ckptlab.models.hf import (
        count_parameters,
        load_model,
        load_tokenizer,
        remote_code_kwargs,
        save_model_dir,
        shape_fingerprint,
    )

    with distributed_run(config.train.device) as dist:
        global_batch = config.train.global_batch(dist.world_size)
        resume_from = run.resume_point(init.source, say, dist.is_main) if config.resume else None
        tokenizer = load_tokenizer(init.source, trust_remote_code=config.trust_remote_code)
        model_config = read_model_config(init.source, trust_remote_code=config.trust_remote_code)
        context = max_length_of(model_config, "context_length", config.context_length, init.source)
        data = _open_data(config, context, tokenizer, model_config, switch_step, global_batch, init.source)
        if config.objective == "mlm":
            data.train, data.val = _masked(config, tokenizer, model_config, data)

        fingerprints = {
            "data": data.fingerprint,
            "tokenizer": tokenizer_identity(tokenizer),
            "model": shape_fingerprint(model_config),
        }
        if config.objective == "mlm":
            fingerprints["objective"] = f"mlm={config.mlm_probability}"
        initial_optimizer_state, optimizer_note = None, "fresh (reset_optimizer)"
        model: Any  # a transformers model (untyped here)
        if resume_from is not None:
            from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

            run.accept_resume(resume_from, fingerprints, config.allow_changed, dist.is_main)
            auto = AutoModelForMaskedLM if config.objective == "mlm" else AutoModelForCausalLM
            remote = remote_code_kwargs(config.trust_remote_code)
            model = auto.from_pretrained(resume_from, dtype=torch.float32, **remote)
            optimizer_note = run.read_run_manifest().get("cpt", {}).get("optimizer_state", "restored on resume")
        else:
            trust = config.trust_remote_code
            model = (
                heads.load_masked_lm(init.source, trust)
                if config.objective == "mlm"
                else load_model(init.source, trust_remote_code=trust)
            )
            if not config.reset_optimizer:
                initial_optimizer_state, optimizer_note = _carried_optimizer_state(init, model, config.train)
        model.to(dist.device)
        torch.manual_seed(config.train.seed)
        run.record = {
            "init_from": config.init_from,
            "init_checkpoint": init.source,
            "recipe": config.recipe,
            "switch_step": switch_step,
            "switch_sample": data.switch_sample,
            "blends": data.stages,
            "replay": config.replay or None,
            "replay_fraction": config.replay_fraction,
            "optimizer_state": optimizer_note,
        }
        if dist.is_main:
            run.save_config(configlib.to_dict(config))
        say(
            f"cpt: {count_parameters(model, trainable_only=True):,} of {count_parameters(model):,} parameters "
            f"train, from "
            f"{init.source}, context {context}, global batch "
            f"{global_batch}, {config.train.max_steps} steps on {dist.device} (x{dist.world_size}); optimizer state "
            f"{optimizer_note}"
        )
        for stage in data.stages:
            mix = ", ".join(
                f"{s['data']}{' (replay)' if s.get('replay') else ''} {s['share']:.3f}" for s in stage["sources"]
            )
            say(f"  steps {stage['first_step']}-{stage['last_step']}: {stage['name']}: {mix}")
        say(f"run manifest: {run.manifest}")
        result = train_verb(
            config,
            model=model,
            save_model=functools.partial(save_model_dir, model, tokenizer),
            train_data=data.train,
            val_data=data.val,
            run=run,
            fingerprints=fingerprints,
            resume_from=resume_from,
            dist=dist,
            log=say,
            initial_optimizer_state=initial_optimizer_state,
            step_fields=lambda s: {"blend": BLEND_NAMES[int(switch_step is not None and s >= switch_step)]},
        )
        say(f"{result.status} at step {result.step} (loss {result.last_loss}); checkpoints listed in {run.manifest}")
        return 0


def _with_recipe(config: CptConfig, init: InitModel, say: Any) -> CptConfig:
    """The config as run: with recipe reuse, train.schedule replaced by Parmar et al.'s, starting at the
    pre-training run's min LR (what config.yaml records)."""
    if config.recipe != "reuse":
        return config
    from ckptlab.config import read_yaml
    from ckptlab.train.schedules import ScheduleConfig, reuse_schedule

    start = config.reuse.start_lr
    if start is None and init.run_config is not None:
        train = read_yaml(init.run_config).get("train")
        start = ((train or {}).get("schedule") or {}).get("min_lr") if isinstance(train, dict) else None
        if not isinstance(start, (int, float)) or start <= 0:
            raise ConfigError(
                f"reuse.start_lr: {init.run_config} has no positive train.schedule.min_lr; give --reuse.start_lr"
            )
        say(f"recipe reuse: starting at the pre-training run's min LR {start:g} ({init.run_config})")
    if start is None:
        raise ConfigError(
            f"reuse.start_lr: {config.init_from} is not a checkpoint of a ckptlab run; give the pre-training "
            "run's minimum learning rate with --reuse.start_lr"
        )
    if config.train.schedule != ScheduleConfig():
        say("recipe reuse: train.schedule is replaced by the recipe's schedule")
    schedule = reuse_schedule(float(start), config.reuse.decay_to_fraction)
    return dataclasses.replace(config, train=dataclasses.replace(config.train, schedule=schedule))


def _switch_step(config: CptConfig) -> int | None:
    """The first step that reads second_blend, or None without one."""
    from ckptlab.train.schedules import first_step_at_or_below, peak_lr

    if not config.second_blend:
        return None
    if config.switch_step is not None:
        return config.switch_step
    steps, schedule = config.train.max_steps, config.train.schedule
    if config.switch_at_lr is not None:
        threshold, key = config.switch_at_lr, "switch_at_lr"
    else:
        threshold, key = config.reuse.switch_at_lr_fraction * peak_lr(schedule, steps), "reuse.switch_at_lr_fraction"
    step = first_step_at_or_below(schedule, steps, threshold)
    if step is None:
        raise ConfigError(
            f"{key}: the LR does not fall to {threshold:g} within train.max_steps ({steps}); the blend would "
            f"never switch"
        )
    return step


def _masked(config: CptConfig, tokenizer: Any, model_config: Any, data: _Data) -> tuple[Any, Any]:
    """The training and validation batches re-masked for MLM (an encoder with a mask token only)."""
    heads.require_masked_lm(model_config, config.init_from)
    if tokenizer.mask_token_id is None:
        raise UserError(f"objective: mlm needs a tokenizer with a mask token; {config.init_from}'s has none")
    masking = dict(
        probability=config.mlm_probability,
        seed=config.train.seed,
        mask_id=tokenizer.mask_token_id,
        vocab_size=int(model_config.vocab_size),
        special_ids=tokenizer.all_special_ids,
    )
    val = mlm.MaskedBatches(data.val, **masking) if data.val is not None else None
    return mlm.MaskedBatches(data.train, **masking), val


def _data_keys(config: CptConfig) -> list[tuple[str, str]]:
    """(config key, directory) of every prepared data directory the run reads."""
    blends = [config.blend] + ([config.second_blend] if config.second_blend else [])
    keyed = [(f"{BLEND_NAMES[b]}[{i}].data", s.data) for b, blend in enumerate(blends) for i, s in enumerate(blend)]
    if config.replay:
        keyed.append(("replay", config.replay))
    if config.validate_on:
        keyed.append(("validate_on", config.validate_on))
    return keyed


@dataclass
class _Data:
    train: Any
    val: Any
    fingerprint: str
    switch_sample: int | None
    stages: list[dict[str, Any]]


def _open_data(
    config: CptConfig,
    context: int,
    tokenizer: Any,
    model_config: Any,
    switch_step: int | None,
    global_batch: int,
    init_source: str,
) -> _Data:
    """The sources, their tokenizers checked against the model's, the mixture and the batch sources."""
    import hashlib
    import json

    from ckptlab.data.batches import MixtureBatches, WindowBatches
    from ckptlab.data.mixture import Mixture
    from ckptlab.data.windows import TokenWindows, windows_for_model
    from ckptlab.errors import DataError

    blends = [config.blend] + ([config.second_blend] if config.second_blend else [])
    keyed = [(key, data) for key, data in _data_keys(config) if key != "validate_on"]
    paths: list[Path] = []  # one source per distinct directory: its position runs on through every use
    windows: list[Any] = []
    for key, data in keyed:
        path = Path(data).expanduser().resolve()
        if path in paths:
            continue
        windows.append(
            windows_for_model(key, data, context, config.train.seed, tokenizer, model_config.vocab_size, init_source)
        )
        paths.append(path)

    def weights(blend: list[BlendSource]) -> list[float]:
        row = [0.0] * len(paths)
        for s in blend:
            row[paths.index(Path(s.data).expanduser().resolve())] += s.weight
        return row

    replay_source = paths.index(Path(config.replay).expanduser().resolve()) if config.replay else None
    switch_sample = None if switch_step is None else switch_step * global_batch
    mixture = Mixture(
        [weights(b) for b in blends],
        [] if switch_sample is None else [switch_sample],
        replay_source=replay_source,
        replay_fraction=config.replay_fraction,
    )
    # Steps as metrics.jsonl counts them (1-based): the first switch_step steps read `blend`.
    stages = []
    bounds = [0] + ([switch_step] if switch_step is not None else []) + [config.train.max_steps]
    for b, blend in enumerate(blends):
        total, rest = sum(s.weight for s in blend), 1.0 - config.replay_fraction
        shares = [{"data": s.data, "weight": s.weight, "share": rest * s.weight / total} for s in blend]
        if config.replay:
            shares.append({"data": config.replay, "weight": None, "share": config.replay_fraction, "replay": True})
        if bounds[b + 1] > bounds[b]:
            stages.append(
                {"name": BLEND_NAMES[b], "first_step": bounds[b] + 1, "last_step": bounds[b + 1], "sources": shares}
            )
    key = json.dumps(
        {
            "sources": [w.fingerprint for w in windows],
            "blends": [weights(b) for b in blends],
            "switch_sample": switch_sample,
            "replay_source": replay_source,
            "replay_fraction": config.replay_fraction,
        }
    )
    val = None
    val_dir = Path(config.validate_on or blends[-1][0].data)
    if config.train.val_every:
        try:
            val_windows = TokenWindows(val_dir, "val", context, seed=0)
        except DataError as error:
            if config.validate_on:
                raise DataError(f"validate_on: {error}") from None
            val_windows = None  # the default source has no held-out split long enough: no validation
        val = WindowBatches(val_windows) if val_windows is not None else None
    return _Data(
        train=MixtureBatches(mixture, windows, pad_id=tokenizer.pad_token_id or 0),
        val=val,
        fingerprint=hashlib.sha256(key.encode()).hexdigest()[:16],
        switch_sample=switch_sample,
        stages=stages,
    )


def _carried_optimizer_state(
    init: InitModel, model: Any, train_config: TrainConfig
) -> tuple[dict[str, Any] | None, str]:
    """The AdamW state of a ckptlab checkpoint, with this run's hyperparameters (betas, eps, decay)."""

    from ckptlab.errors import CheckpointError
    from ckptlab.runs.checkpoint import TRAINING_STATE, is_weights_only, load_training_state, read_manifest
    from ckptlab.train.loop import make_optimizer

    manifest = read_manifest(init.checkpoint) if init.checkpoint is not None else {"files": {}}
    if is_weights_only(manifest):
        # Kept checkpoints superseded by newer ones are weights-only unless the run set keep.optimizer_state.
        return None, (
            "fresh (init_from has no optimizer state: a weights-only kept checkpoint; a run keeps the moments in "
            "its kept checkpoints with --keep.optimizer_state true)"
        )
    if init.checkpoint is None or TRAINING_STATE not in manifest["files"]:
        return None, "fresh (init_from has no optimizer state)"
    saved = load_training_state(init.checkpoint)["optimizer"]
    fresh = make_optimizer(model, train_config)
    fresh_groups = fresh.state_dict()["param_groups"]
    if [len(g["params"]) for g in saved["param_groups"]] != [len(g["params"]) for g in fresh_groups]:
        raise CheckpointError(
            f"{init.checkpoint}: its optimizer state does not match the model's parameters; pass --reset_optimizer"
        )
    params = [p for group in fresh.param_groups for p in group["params"]]
    ids = [i for group in saved["param_groups"] for i in group["params"]]
    for param, index in zip(params, ids):
        moment = saved["state"].get(index, {}).get("exp_avg")
        if moment is not None and tuple(moment.shape) != tuple(param.shape):
            raise CheckpointError(
                f"{init.checkpoint}: its optimizer state does not match the model's parameter shapes; pass "
                f"--reset_optimizer"
            )
    # The saved groups carry the pre-training run's betas, eps and weight decay; this run's own win.
    groups = [
        {**fresh_group, "params": saved_group["params"]}
        for fresh_group, saved_group in zip(fresh_groups, saved["param_groups"])
    ]
    return {"state": saved["state"], "param_groups": groups}, f"carried over from {init.checkpoint}"


class CptRunDir(RunDir):
    """A run directory whose run.json also records, under `cpt`, the init model, blends and switch step."""

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        self.record: dict[str, Any] = {}

    def write_run_manifest(self, manifest: dict[str, Any]) -> None:
        super().write_run_manifest({**manifest, "cpt": self.record})
