"""Reading a task's records: local JSONL / TSV / CSV files, or a Hugging Face dataset for users online.

Every record comes with the file and line it came from, so a bad row is reported as
`file F, line N`. TSV is split on tabs only (quotes are ordinary characters: MRPC's text holds
unbalanced quotes); CSV follows the csv module's quoting. A UTF-8 byte-order mark is dropped.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

from ckptlab.errors import DataError
from ckptlab.files import json_lines

FORMATS = ("jsonl", "tsv", "csv")
DATA_DIR_VARIABLE = "CKPTLAB_DATA_DIR"

Record = tuple[int, dict[str, Any]]  # (line number, field -> value)


class DataUnavailable(DataError):
    """A split's data cannot be had here (no local file, no `datasets`, no network); not malformed."""


def where(task: str, template: str | None = None, file: Any = None, line: int | None = None) -> str:
    """The prefix of an error message: `task T, template P, file F, line N`."""
    parts = [f"task {task}"]
    if template:
        parts.append(f"template {template}")
    if file:
        parts.append(f"file {file}")
    if line:
        parts.append(f"line {line}")
    return ", ".join(parts)


def default_data_dir() -> Path | None:
    """The folder `${CKPTLAB_DATA_DIR}` stands for in task files.

    The first existing of: the environment variable, `../shared/data` from the working directory,
    and `../shared/data` beside the source checkout. None when none exists.
    """
    repo_root = Path(__file__).resolve().parents[3]
    candidates = [
        os.environ.get(DATA_DIR_VARIABLE),
        Path.cwd() / ".." / "shared" / "data",
        repo_root / ".." / "shared" / "data",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate).resolve()
    return None


def resolve_path(raw: str, task_file: Path, data_dir: Path | None) -> Path | None:
    """A data path with `${CKPTLAB_DATA_DIR}` expanded, relative to the task file; None if unresolvable."""
    marker = "${" + DATA_DIR_VARIABLE + "}"
    if marker in raw:
        if data_dir is None:
            return None
        raw = raw.replace(marker, str(data_dir))
    path = Path(os.path.expanduser(raw))
    return path if path.is_absolute() else (task_file.parent / path)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _decode(data: bytes, path: Path, task: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(
            f"{where(task, file=path, line=line)}: not UTF-8 text (byte 0x{data[error.start]:02x})"
        ) from None
    return text[1:] if text.startswith("\ufeff") else text


def read_local(path: Path, fmt: str, header: bool, columns: list[str] | None, task: str) -> tuple[list[Record], str]:
    """Records of one local file and the SHA-256 of its bytes.

    Raises:
        DataError: the file is missing, not UTF-8, malformed, or a row has too few or too many columns.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataUnavailable(f"{where(task, file=path)}: no such file") from None
    except OSError as error:
        raise DataError(f"{where(task, file=path)}: cannot read ({error.strerror})") from None
    text = _decode(data, path, task)
    if fmt == "jsonl":
        records = _read_jsonl(text, path, task)
    else:
        records = _read_table(text, fmt, header, columns, path, task)
    return records, sha256_bytes(data)


def _read_jsonl(text: str, path: Path, task: str) -> list[Record]:
    records = []
    for number, value in json_lines(text, lambda line: where(task, file=path, line=line), DataError):
        if not isinstance(value, dict):
            raise DataError(f"{where(task, file=path, line=number)}: expected a JSON object per line")
        records.append((number, value))
    return records


def _rows(text: str, fmt: str) -> list[tuple[int, list[str]]]:
    if fmt == "tsv":
        return [
            (n, line.rstrip("\r").split("\t")) for n, line in enumerate(text.split("\n"), start=1) if line.rstrip("\r")
        ]
    reader = csv.reader(io.StringIO(text))
    rows = []
    for row in reader:
        if row:
            rows.append((reader.line_num, row))
    return rows


def _read_table(text: str, fmt: str, header: bool, columns: list[str] | None, path: Path, task: str) -> list[Record]:
    try:
        rows = _rows(text, fmt)
    except csv.Error as error:
        raise DataError(f"{where(task, file=path)}: malformed CSV ({error})") from None
    if header:
        if not rows:
            return []
        names = columns or [name.strip() for name in rows[0][1]]
        rows = rows[1:]
    elif columns:
        names = columns
    else:
        raise DataError(f"{where(task, file=path)}: a {fmt} file without a header row needs `columns` in the task file")
    kind = "tab-separated" if fmt == "tsv" else "comma-separated"
    records = []
    for number, row in rows:
        if len(row) != len(names):
            few = "too few" if len(row) < len(names) else "too many"
            raise DataError(
                f"{where(task, file=path, line=number)}: {few} columns: expected {len(names)} {kind} "
                f"columns ({', '.join(names)}), found {len(row)}"
            )
        records.append((number, {name: cell.strip() for name, cell in zip(names, row)}))
    return records


def read_hf(hf: dict[str, Any], split: str, task: str) -> tuple[list[Record], str]:
    """Records of one split of a Hugging Face dataset (needs `datasets` and, once, the network).

    `hf` is the task file's `hf:` block: `path`, optional `name`, `splits` (task split -> dataset
    split) and `columns` (task field -> dataset column). Line numbers are 1-based row numbers.
    """
    try:
        import datasets
    except ImportError:
        raise DataUnavailable(
            f"{where(task)}: local data files are missing and the `datasets` package is not installed "
            f"to fetch {hf['path']} (pip install datasets, or set {DATA_DIR_VARIABLE})"
        ) from None
    hf_split = hf.get("splits", {}).get(split, split)
    label = f"hf:{hf['path']}" + (f"/{hf['name']}" if hf.get("name") else "") + f"[{hf_split}]"
    try:
        rows = datasets.load_dataset(hf["path"], hf.get("name"), split=hf_split)
    except Exception as error:  # datasets raises many types (network, missing config, ...)
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataUnavailable(f"{where(task, file=label)}: cannot load ({message})") from None
    mapping = hf.get("columns") or {}
    records = []
    for number, row in enumerate(rows, start=1):
        row = dict(row)
        record = {field: row[column] for field, column in mapping.items() if column in row}
        for column, value in row.items():
            record.setdefault(column, value)
        records.append((number, record))
    digest = sha256_bytes(json.dumps([r for _, r in records], sort_keys=True, default=str).encode())
    return records, digest
