"""The `ckptlab` command: a table of verbs, each a module with a config dataclass and a function.

Verb modules are imported only when their verb runs (or its help is asked for), and they import
torch and transformers inside their functions, so `ckptlab --help` and `ckptlab VERB --help` answer
without loading either.
"""

from __future__ import annotations

import os
import sys

from ckptlab import __version__
from ckptlab.commands import VERBS, VerbTable
from ckptlab.errors import TrainingDiverged, UserError


def _usage() -> str:
    width = max(len(v) for v in VERBS)
    rows = "\n".join(f"  {verb:<{width}}  {VERBS[verb].summary}" for verb in VERBS)
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
    entry, verbs = VERBS[verb], VerbTable()
    # Hugging Face draws a progress bar for every weight load and save ("Loading weights",
    # "Writing model shards"): noise in a log that already has ckptlab's own progress bar.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    config_cls = verbs.config_class(verb)
    from ckptlab import config as configlib

    if rest and not rest[0].startswith("-") and "command" in getattr(config_cls, "__dataclass_fields__", {}):
        rest = ["--command", *rest]  # `ckptlab sweep status ...`: a leading word is the verb's command
    if any(a in ("-h", "--help") for a in rest):
        sys.stdout.write(configlib.format_help(config_cls, f"ckptlab {verb}", entry.summary))
        return 0
    positional = getattr(config_cls, "POSITIONAL", None)
    if positional and rest and not rest[0].startswith("-"):
        rest = [f"--{positional}", *rest]  # `ckptlab report SWEEP ...` = `ckptlab report --sweep SWEEP ...`
    try:
        config = configlib.load(config_cls, rest)
        return verbs.run(verb, config)
    except (UserError, TrainingDiverged) as error:
        print(f"ckptlab {verb}: error: {error}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
