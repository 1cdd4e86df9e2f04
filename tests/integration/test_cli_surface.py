"""The CLI surface: fast --help for every verb (no torch import), and every shipped preset parses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ckptlab import config as configlib
from ckptlab.commands import VERBS, VerbTable

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "numpy", "tokenizers")


@pytest.mark.parametrize("argv", [["--help"]] + [[verb, "--help"] for verb in VERBS])
def test_help_imports_nothing_heavy(argv):
    code = (
        f"import sys; from ckptlab.cli import main; code = main({argv!r}); "
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]; "
        "assert code == 0 and not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage: ckptlab" in proc.stdout


def test_verb_help_shows_field_docstrings():
    proc = subprocess.run([sys.executable, "-m", "ckptlab", "pretrain", "--help"], capture_output=True, text=True)
    assert "--train.schedule.lr" in proc.stdout and "Peak learning rate" in proc.stdout
    assert "--keep.schedule" in proc.stdout and "Pythia" in proc.stdout


def test_unknown_verb_exit_2():
    proc = subprocess.run([sys.executable, "-m", "ckptlab", "pretrian"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown verb 'pretrian'" in proc.stderr


PRESETS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS, ids=[p.name for p in PRESETS])
def test_every_preset_parses_and_opens_with_its_command(preset):
    first = preset.read_text().splitlines()[0]
    assert first.startswith("# ckptlab "), f"{preset.name} must open with the command that runs it"
    verb = first.split()[2]
    configlib.load(VerbTable().config_class(verb), ["--config", str(preset)])
