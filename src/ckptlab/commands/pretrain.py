"""`ckptlab pretrain`: pre-train a causal LM from scratch on prepared shards, keeping checkpoints.

Example (`configs/pretrain_tiny.yaml` opens with the command that runs it):

    ckptlab prepare --sources corpus.txt --out data/corpus --vocab_size 1024
    ckptlab pretrain --data data/corpus --out runs/tiny --model.size tiny --train.max_steps 200

Kept checkpoints (`--keep.schedule log --keep.every 1000`, as Pythia) are listed in RUN/run.json;
each is a loadable HF directory. `--resume` continues from the newest complete checkpoint.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptlab.errors import UserError
from ckptlab.models.hf import ModelConfig
from ckptlab.train.config import TrainingVerbConfig


@dataclass
class PretrainConfig(TrainingVerbConfig):
    """Pre-training from scratch."""

    data: str = ""
    """Prepared data directory (the output of `ckptlab prepare`): shards, manifest and tokenizer."""
    out: str = "runs/pretrain"
    """Run directory: config.yaml, metrics.jsonl, run.json and checkpoints/ go here."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model built from scratch; the vocabulary comes from the data's tokenizer."""


def pretrain(config: PretrainConfig) -> int:
    """Run (or resume) pre-training as configured; returns the process exit code."""
    if not config.data:
        raise UserError("pretrain: give the prepared data directory with --data (see `ckptlab prepare`)")
    import torch

    from ckptlab import config as configlib
    from ckptlab.data.batches import WindowBatches
    from ckptlab.data.shards import read_manifest
    from ckptlab.data.tokenizer import load_tokenizer, tokenizer_fingerprint
    from ckptlab.data.windows import TokenWindows
    from ckptlab.models.hf import build_hf_config, build_model, count_parameters, save_model_dir, shape_fingerprint
    from ckptlab.runs.run_dir import RunDir
    from ckptlab.train.schedules import kept_steps
    from ckptlab.train.verb_setup import check_length_fits, distributed_run, main_process_printer, train_verb

    say = main_process_printer()
    with distributed_run(config.train.device) as dist:
        data_dir = Path(config.data)
        manifest = read_manifest(data_dir)
        tokenizer_dir = data_dir / "tokenizer"
        tokenizer = load_tokenizer(tokenizer_dir)
        context = config.model.context_length
        train_windows = TokenWindows(data_dir, "train", context, config.train.seed)
        val_windows = None
        if manifest["splits"].get("val", {}).get("tokens", 0) > context and config.train.val_every:
            val_windows = TokenWindows(data_dir, "val", context, seed=0)

        run = RunDir(config.out)
        run.refuse_unless_resuming(config.resume)
        resume_from = run.resume_point("step 0", say, dist.is_main) if config.resume else None

        token_ids = dict(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        # The fingerprints describe what this invocation asks for; on resume they are compared with
        # the checkpoint's before its weights are loaded.
        hf_config = build_hf_config(config.model, vocab_size=manifest["vocab_size"], **token_ids)
        check_length_fits(hf_config, "model.context_length", context, set_in="model.hf_overrides")
        fingerprints = {
            "data": train_windows.fingerprint,
            "tokenizer": tokenizer_fingerprint(tokenizer_dir),
            "model": shape_fingerprint(hf_config),
        }
        model: Any  # a transformers model (untyped here)
        if resume_from is not None:
            from transformers import AutoModelForCausalLM

            run.accept_resume(resume_from, fingerprints, config.allow_changed, dist.is_main)
            model = AutoModelForCausalLM.from_pretrained(resume_from, dtype=torch.float32)
        else:
            torch.manual_seed(config.train.seed)
            model = build_model(config.model, vocab_size=manifest["vocab_size"], **token_ids)
        model.to(dist.device)
        if dist.is_main:
            run.save_config(configlib.to_dict(config))
        kept = kept_steps(config.keep, config.train.max_steps)
        global_batch = config.train.global_batch(dist.world_size)
        say(
            f"pretrain: {count_parameters(model, trainable_only=True):,} of {count_parameters(model):,} "
            f"parameters train, "
            f"{len(train_windows):,} windows of {context} tokens, "
            f"global batch {global_batch}, {config.train.max_steps} steps on {dist.device} "
            f"(x{dist.world_size}), {len(kept)} kept checkpoints"
        )
        say(f"run manifest: {run.manifest}")
        result = train_verb(
            config,
            model=model,
            save_model=functools.partial(save_model_dir, model, tokenizer),
            train_data=WindowBatches(train_windows),
            val_data=WindowBatches(val_windows) if val_windows is not None else None,
            run=run,
            fingerprints=fingerprints,
            resume_from=resume_from,
            dist=dist,
            log=say,
        )
        kept_paths = [c for c in result.checkpoints if c["kept"]]
        say(
            f"{result.status} at step {result.step} (loss {result.last_loss}); "
            f"{len(kept_paths)} kept checkpoints listed in {run.manifest}"
        )
        return 0
