"""The `ckptlab` command: a table of verbs, each a module with a config dataclass and a function.

Verb modules are imported only when their verb runs (or its help is asked for), and they import
torch and transformers inside their functions, so `ckptlab --help` and `ckptlab VERB --help` answer
without loading either.
"""

from __future__ import annotations

import importlib
import os
import sys

from ckptlab import __version__
from ckptlab.errors import TrainingDiverged, UserError

# verb -> (module, config class, function, one-line summary)
VERBS: dict[str, tuple[str, str, str, str]] = {
    "demo": (
        "ckptlab.demo",
        "DemoConfig",
        "demo",
        "The whole study on built-in data: world → pretrain → sweep of fine-tunes and evaluations → report; resumable.",
    ),
    "world": (
        "ckptlab.world",
        "WorldConfig",
        "world",
        "Generate the built-in synthetic world: general and domain corpora, and labelled tasks.",
    ),
    "prepare": (
        "ckptlab.prepare",
        "PrepareConfig",
        "prepare",
        "Tokenize text sources into memmap token shards with a manifest and a held-out split.",
    ),
    "pretrain": (
        "ckptlab.pretrain",
        "PretrainConfig",
        "pretrain",
        "Pre-train a causal LM from scratch, keeping intermediate checkpoints; resumable.",
    ),
    "cpt": ("ckptlab.cpt", "CptConfig", "cpt", "Continue pre-training any checkpoint: staged blends, LR re-warm/decay, replay; resumable."),
    "finetune": ("ckptlab.finetune", "FinetuneConfig", "finetune", "Fine-tune a checkpoint on a task or instruction data: full or LoRA, prompt-masked, replay; resumable."),
    "evaluate": (
        "ckptlab.evaluate",
        "EvaluateConfig",
        "evaluate",
        "Evaluate models × tasks × templates × shots: cached by model content, with bootstrap CIs.",
    ),
    "report": (
        "ckptlab.report",
        "ReportConfig",
        "report",
        "Analyse a sweep (ckptlab report SWEEP): heatmaps, gains, forgetting, prompt sensitivity, findings with CIs.",
    ),
    "sweep": (
        "ckptlab.sweep",
        "SweepConfig",
        "sweep",
        "Checkpoints × fine-tunes × cpt × evaluations as one resumable job graph, local or on Ray; `sweep status`.",
    ),
}


def _usage() -> str:
    width = max(len(v) for v in VERBS)
    rows = "\n".join(f"  {verb:<{width}}  {VERBS[verb][3]}" for verb in VERBS)
    return (
        "usage: ckptlab VERB [--config FILE.yaml] [--KEY VALUE ...]\n\n"
        "Pre-train with kept checkpoints, continue pre-training, fine-tune, evaluate, report.\n\n"
        f"verbs:\n{rows}\n\n"
        "`ckptlab VERB --help` lists a verb's config keys. Docs: docs/ in the repository.\n"
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(_usage())
        return 0
    if argv[0] == "--version":
        print(f"ckptlab {__version__}")
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"ckptlab: error: unknown verb '{verb}' (verbs: {', '.join(VERBS)})", file=sys.stderr)
        return 2
    module_name, config_name, function_name, summary = VERBS[verb]
    # Hugging Face draws a progress bar for every weight load and save ("Loading weights",
    # "Writing model shards"): noise in a log that already has ckptlab's own progress bar.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    module = importlib.import_module(module_name)
    config_cls = getattr(module, config_name)
    from ckptlab import config as configlib

    if rest and not rest[0].startswith("-") and "command" in getattr(config_cls, "__dataclass_fields__", {}):
        rest = ["--command", *rest]  # `ckptlab sweep status ...`: a leading word is the verb's command
    if any(a in ("-h", "--help") for a in rest):
        sys.stdout.write(configlib.format_help(config_cls, f"ckptlab {verb}", summary))
        return 0
    positional = getattr(config_cls, "POSITIONAL", None)
    if positional and rest and not rest[0].startswith("-"):
        rest = [f"--{positional}", *rest]  # `ckptlab report SWEEP ...` = `ckptlab report --sweep SWEEP ...`
    try:
        config = configlib.load(config_cls, rest)
        result = getattr(module, function_name)(config)
    except (UserError, TrainingDiverged) as error:
        print(f"ckptlab {verb}: error: {error}", file=sys.stderr)
        return error.exit_code
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
