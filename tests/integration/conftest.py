"""Shared helpers of the integration tests: run the real CLI in a subprocess, make small corpora."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

NAMES = ["Ada", "Bram", "Cleo", "Dario", "Edda", "Farid", "Gala", "Hugo", "Ines", "Jonas"]
PLACES = ["Lisbon", "Oslo", "Quito", "Hanoi", "Dakar", "Lima", "Perth", "Riga"]
JOBS = ["baker", "pilot", "nurse", "judge", "farmer", "painter", "chemist", "teacher"]
TEMPLATES = [
    "{n} was born in {p}.",
    "{n} works as a {j} in {p}.",
    "The {j} {n} moved to {p} last year.",
    "In {p}, {n} became a well known {j}.",
    "{n}, a {j}, often visits {p}.",
]


def synthetic_corpus(path: Path, documents: int = 400, seed: int = 0) -> Path:
    """A small seeded corpus of short paragraphs (blank-line separated)."""
    rng = random.Random(seed)
    paragraphs = []
    for _ in range(documents):
        sentences = [
            rng.choice(TEMPLATES).format(n=rng.choice(NAMES), p=rng.choice(PLACES), j=rng.choice(JOBS))
            for _ in range(rng.randint(3, 7))
        ]
        paragraphs.append(" ".join(sentences))
    path.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return path


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    env.pop("CKPTLAB_FAULT", None)
    env.update(extra)
    return env


def run_cli(*args: str, check: bool = True, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Run `python -m ckptlab ARGS` and return the completed process."""
    proc = subprocess.run(
        [sys.executable, "-m", "ckptlab", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(**env),
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"ckptlab {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


TINY_PRETRAIN = [
    *("--model.size", "tiny", "--model.context_length", "32", "--train.max_steps", "6"),
    *("--train.progress", "false", "--keep.schedule", "none", "--train.val_every", "3"),
    *("--train.schedule.lr", "3e-3"),
]
"""Pre-training options of the multi-process tests: a tiny model, 6 steps, validation at 3 and 6."""


def torchrun(*args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """Run `python -m torch.distributed.run --standalone --nproc_per_node 2 -m ckptlab ARGS` (gloo on CPU)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*launcher, "-m", "ckptlab", *args], capture_output=True, text=True, timeout=600, env=cli_env(**env)
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun ckptlab {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) of every training step recorded in RUN/metrics.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r["loss"]) for r in rows]


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> Path:
    """A prepared data directory (vocab 512) shared by the pre-training tests."""
    root = tmp_path_factory.mktemp("prepared")
    corpus = synthetic_corpus(root / "corpus.txt")
    out = root / "data"
    run_cli("prepare", "--sources", str(corpus), "--out", str(out), "--vocab_size", "512", "--val_fraction", "0.1")
    return out
