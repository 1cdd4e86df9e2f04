"""The commands: one module per verb, each a config dataclass and a function that runs it.

`VERBS` is the one table of verbs: the command line (`ckptlab.cli`) reads it, and the `sweep`
command hands it to the sweep engine (`ckptlab.sweeps` sits below the commands, so it runs the
training verbs it is given instead of importing them). A verb's module is imported only when the
verb runs or its help is asked for, so `ckptlab --help` loads neither torch nor transformers.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Verb:
    """One verb: where its config and function live, and its one-line summary."""

    module: str
    """The module that holds the verb (imported when the verb runs)."""
    config: str
    """The name of the verb's config dataclass in that module."""
    function: str
    """The name of the function that runs the verb (config → exit code)."""
    summary: str
    """What the verb does, in one line (`ckptlab --help`)."""


VERBS: dict[str, Verb] = {
    "demo": Verb(
        "ckptlab.commands.demo",
        "DemoConfig",
        "demo",
        "The whole study on built-in data: world → pretrain → sweep of fine-tunes and evaluations → report; resumable.",
    ),
    "world": Verb(
        "ckptlab.commands.world",
        "WorldConfig",
        "world",
        "Generate the built-in synthetic world: general and domain corpora, and labelled tasks.",
    ),
    "prepare": Verb(
        "ckptlab.commands.prepare",
        "PrepareConfig",
        "prepare",
        "Tokenize text sources into memmap token shards with a manifest and a held-out split.",
    ),
    "pretrain": Verb(
        "ckptlab.commands.pretrain",
        "PretrainConfig",
        "pretrain",
        "Pre-train a causal LM from scratch, keeping intermediate checkpoints; resumable.",
    ),
    "cpt": Verb(
        "ckptlab.commands.cpt",
        "CptConfig",
        "cpt",
        "Continue pre-training any checkpoint: staged blends, LR re-warm/decay, replay; resumable.",
    ),
    "finetune": Verb(
        "ckptlab.commands.finetune",
        "FinetuneConfig",
        "finetune",
        "Fine-tune a checkpoint on a task or instruction data: full or LoRA, prompt-masked, replay; resumable.",
    ),
    "evaluate": Verb(
        "ckptlab.commands.evaluate",
        "EvaluateConfig",
        "evaluate",
        "Evaluate models × tasks × templates × shots: cached by model content, with bootstrap CIs.",
    ),
    "tasks": Verb(
        "ckptlab.commands.tasks",
        "TasksConfig",
        "tasks",
        "List or check task files (ckptlab's or lm-eval YAMLs) without a model; export them as lm-eval tasks.",
    ),
    "report": Verb(
        "ckptlab.commands.report",
        "ReportConfig",
        "report",
        "Analyse a sweep (ckptlab report SWEEP): heatmaps, gains, forgetting, prompt sensitivity, findings with CIs.",
    ),
    "sweep": Verb(
        "ckptlab.commands.sweep",
        "SweepConfig",
        "sweep",
        "Checkpoints × fine-tunes × cpt × evaluations as one resumable job graph, local or on Ray; `sweep status`.",
    ),
}


class VerbTable:
    """The verbs as the sweep engine uses them (plain data, so it travels to Ray workers)."""

    def config_class(self, verb: str) -> type:
        """The config dataclass of `verb`."""
        entry = VERBS[verb]
        return getattr(importlib.import_module(entry.module), entry.config)

    def run(self, verb: str, config: Any) -> int:
        """Run `verb` with a built config; returns its exit code."""
        entry = VERBS[verb]
        return int(getattr(importlib.import_module(entry.module), entry.function)(config) or 0)
