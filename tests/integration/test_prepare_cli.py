"""`ckptlab prepare` through the real CLI in a subprocess: success, bad input, a light --help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "corpus"
SHAKESPEARE = Path("/work/shared/data/tinyshakespeare/input.txt")


def ckptlab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ckptlab", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one line, no traceback
    assert lines[0].startswith("ckptlab prepare: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def assert_no_output(parent: Path) -> None:
    """Nothing that looks like prepared data, and no half-written temporary directory."""
    assert not list(parent.rglob("manifest.json"))
    assert not [p for p in parent.iterdir() if p.name.startswith(".")]
    assert not (parent / "out").exists()


def test_prepare_fixtures(tmp_path):
    result = ckptlab(
        "prepare",
        "--sources", f"{FIXTURES / 'tiny.txt'},{FIXTURES / 'tiny.jsonl'}",
        "--out", "out", "--vocab_size", "300", "--val_fraction", "0.2",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "val" in result.stdout and "out" in result.stdout
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["documents"] + manifest["splits"]["val"]["documents"] == 48
    assert (tmp_path / "out" / "tokenizer" / "tokenizer.json").is_file()
    again = ckptlab("prepare", "--sources", str(FIXTURES / "tiny.txt"), "--out", "out", cwd=tmp_path)
    assert_user_error(again, "already holds prepared data", "--overwrite true")


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="tinyshakespeare is not available here")
def test_prepare_tinyshakespeare(tmp_path):
    result = ckptlab(
        "prepare",
        "--sources",
        str(SHAKESPEARE),
        "--out",
        "shakespeare",
        "--vocab_size",
        "512",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "shakespeare" / "manifest.json").read_text())
    assert manifest["dtype"] == "uint16" and manifest["vocab_size"] == 512
    assert manifest["splits"]["val"]["documents"] > 100
    assert manifest["splits"]["train"]["tokens"] > 300_000


def test_non_utf8_file(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9 au lait\n".encode("latin-1"))
    result = ckptlab("prepare", "--sources", "latin1.txt", "--out", "out", cwd=tmp_path)
    assert_user_error(result, "latin1.txt:1: not UTF-8 text", "byte offset 3")
    assert_no_output(tmp_path)


def test_bad_jsonl_line(tmp_path):
    (tmp_path / "records.jsonl").write_text('{"text": "fine"}\n{"text": "also fine"}\n{"text": oops}\n')
    result = ckptlab("prepare", "--sources", "records.jsonl", "--out", "out", cwd=tmp_path)
    assert_user_error(result, "records.jsonl:3: not valid JSON")
    assert_no_output(tmp_path)


def test_missing_field_and_missing_file(tmp_path):
    (tmp_path / "records.jsonl").write_text('{"body": "text under another name"}\n')
    result = ckptlab("prepare", "--sources", "records.jsonl", "--out", "out", cwd=tmp_path)
    assert_user_error(result, "records.jsonl:1: missing text field 'text'")
    result = ckptlab("prepare", "--sources", "missing.txt", "--out", "out", cwd=tmp_path)
    assert_user_error(result, "missing.txt: file not found")
    result = ckptlab("prepare", "--out", "out", cwd=tmp_path)
    assert_user_error(result, "give at least one source with --sources")
    assert_no_output(tmp_path)


def test_failure_while_writing_leaves_no_output(tmp_path):
    result = ckptlab(
        "prepare",
        "--sources",
        str(FIXTURES / "tiny.txt"),
        "--out",
        "out",
        "--tokenizer",
        "./no-such-dir",
        cwd=tmp_path,
    )
    assert_user_error(result, "no-such-dir: tokenizer directory not found")
    assert_no_output(tmp_path)


def test_help_does_not_import_torch(tmp_path):
    code = (
        "import sys; from ckptlab.cli import main; main(['prepare', '--help']); "
        "assert not {'torch', 'transformers', 'numpy'} & set(sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for key in ("--sources", "--text_unit", "--val_fraction", "--shard_tokens", "--overwrite"):
        assert key in result.stdout
