"""Files on disk: durable writes (fsync, atomic replace) and reading the text files users hand in
(UTF-8, YAML, JSON Lines) with errors that name the file and line.

Standard library and PyYAML only: every layer may use it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ckptlab.errors import UserError


def fsync_path(path: str | Path) -> None:
    """Flush a file's or a directory's entry to disk (a directory: the names in it survive a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root`."""
    for directory, _, names in os.walk(root):
        for name in names:
            fsync_path(os.path.join(directory, name))
        fsync_path(directory)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small file so that readers see the old content or the new one, never a torn mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def read_text(path: Path, error: type[UserError], name: str) -> str:
    """The UTF-8 text of `path`. `name` says what the file is, as messages begin ("task file F:",
    "F: config file"); a missing file, a directory or non-UTF-8 bytes raise `error`."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise error(f"{name} not found") from None
    except IsADirectoryError:
        raise error(f"{name} is a directory, expected a file") from None
    except UnicodeDecodeError:
        raise error(f"{name} is not UTF-8 text") from None


def parse_yaml(text: str, where: str, error: type[UserError], loader: Any = None) -> Any:
    """YAML `text` from the file named by `where`; a syntax error raises `error` naming its line.

    `loader` is a subclass of yaml.SafeLoader that reads extra tags (default: the safe loader itself).
    """
    try:
        return yaml.load(text, Loader=loader or yaml.SafeLoader)
    except yaml.YAMLError as problem:
        mark = getattr(problem, "problem_mark", None)
        at = f"{where}:{mark.line + 1}" if mark else where
        detail = getattr(problem, "problem", None) or str(problem).splitlines()[0]
        raise error(f"{at}: invalid YAML: {detail}") from None


def json_lines(text: str, where: Callable[[int], str], error: type[UserError]) -> list[tuple[int, Any]]:
    """(line number, value) of every non-blank line of JSON Lines `text`; a line that is not JSON raises
    `error` prefixed with `where(line number)`."""
    values = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            values.append((number, json.loads(line)))
        except json.JSONDecodeError as problem:
            raise error(f"{where(number)}: invalid JSON ({problem.msg})") from None
    return values
