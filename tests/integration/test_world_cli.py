"""`ckptlab world` through the real CLI: writes a world, refuses to overwrite, one-line errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

from conftest import run_cli


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_world_is_written_and_not_overwritten_without_the_flag(tmp_path):
    out = tmp_path / "world"
    proc = run_cli("world", "--out", str(out), "--size", "tiny", "--seed", "5")
    manifest = json.loads((out / "world.json").read_text())
    assert manifest["size"] == "tiny" and manifest["seed"] == 5
    assert set(manifest["files"]) | {"world.json"} == set(tree(out))
    assert str(out / "world.json") in proc.stdout and "world_nli" in proc.stdout
    before = tree(out)

    again = run_cli("world", "--out", str(out), "--size", "tiny", check=False)
    assert again.returncode == 2, again.stderr
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and "already holds a world" in lines[0] and "--overwrite" in lines[0]
    assert tree(out) == before

    run_cli("world", "--out", str(out), "--size", "tiny", "--seed", "5", "--overwrite")
    assert tree(out) == before  # same seed: byte-identical
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left behind


def test_overwrite_refuses_a_directory_that_is_not_a_world(tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "keep.txt").write_text("mine\n")
    proc = run_cli("world", "--out", str(out), "--size", "tiny", "--overwrite", check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "world.json" in proc.stderr
    assert (out / "keep.txt").read_text() == "mine\n"


def test_unknown_size_is_one_line_naming_the_key(tmp_path):
    proc = run_cli("world", "--out", str(tmp_path / "w"), "--size", "huge", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "'size'" in lines[0] and "huge" in lines[0] and "tiny" in lines[0]
    assert not (tmp_path / "w").exists()


def test_demo_world_is_quick_and_about_two_megabytes(tmp_path):
    start = time.perf_counter()
    run_cli("world", "--out", str(tmp_path / "demo"), "--size", "demo")
    seconds = time.perf_counter() - start
    manifest = json.loads((tmp_path / "demo" / "world.json").read_text())
    general = manifest["counts"]["corpus"]["general"]["bytes"]
    assert 1_000_000 <= general <= 3_000_000
    assert seconds < 30, seconds
