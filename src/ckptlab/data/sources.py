"""Text sources: plain-text files, JSON Lines files, directories of them, and HF datasets.

A source is written as one string:

- a plain-text file (any name not ending in .jsonl or .json): its documents are paragraphs
  separated by blank lines (`text_unit="paragraph"`), single lines (`"line"`), or the whole file
  (`"file"`);
- a JSON Lines file (.jsonl, or .json): one document per line, taken from the field `text_field`;
  blank lines are skipped. A .json file holding one JSON array of objects is read as well;
- a directory: every .txt, .jsonl and .json file below it (hidden ones excepted), in sorted path
  order;
- `hf:NAME[:CONFIG]:SPLIT`: a dataset on the Hugging Face hub, read with `datasets.load_dataset`
  (needs the `datasets` package: `pip install 'ckptlab[hub]'`).

Every problem with the input is a `DataError` whose one-line message names the file and the line.
Documents that are empty or only whitespace are skipped.
"""

from __future__ import annotations

import codecs
import hashlib
import json
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

from ckptlab.errors import ConfigError, DataError

TEXT_UNITS = ("paragraph", "line", "file")
JSON_SUFFIXES = (".jsonl", ".json")
DIRECTORY_SUFFIXES = (".txt", ".jsonl", ".json")
HF_PREFIX = "hf:"


def iter_documents(source: str, text_field: str = "text", text_unit: str = "paragraph") -> Iterator[str]:
    """Yield the documents of one source, in a fixed order.

    Args:
        source: a file, a directory, or `hf:NAME[:CONFIG]:SPLIT` (see the module docstring).
        text_field: the field holding the text in JSON Lines files and HF datasets.
        text_unit: how a plain-text file splits into documents: "paragraph", "line" or "file".

    Raises:
        DataError: a missing file, a file with no text, bytes that are not UTF-8, a line that is not
            JSON or lacks the text field. The message names the file and line.
    """
    if text_unit not in TEXT_UNITS:
        raise ConfigError(
            f"config key 'text_unit': expected one of {', '.join(map(repr, TEXT_UNITS))}, got {text_unit!r}"
        )
    hf = parse_hf_source(source)
    if hf is not None:
        yield from _iter_hf(source, *hf, text_field=text_field)
        return
    for path in source_files(source):
        yield from _iter_file(path, text_field, text_unit)


def parse_hf_source(source: str) -> tuple[str, str | None, str] | None:
    """(name, config or None, split) of an `hf:NAME[:CONFIG]:SPLIT` source; None for a path."""
    if not source.startswith(HF_PREFIX):
        return None
    parts = source[len(HF_PREFIX) :].split(":")
    if len(parts) == 2:
        name, config, split = parts[0], None, parts[1]
    elif len(parts) == 3:
        name, config, split = parts
    else:
        name = config = split = ""
    if not name or not split or config == "":
        raise DataError(f"{source}: expected hf:NAME[:CONFIG]:SPLIT, e.g. hf:wikitext:wikitext-2-raw-v1:train")
    return name, config, split


def source_files(source: str) -> list[Path]:
    """The files a file or directory source reads, in reading order."""
    path = Path(source)
    if path.is_dir():
        files = [
            p
            for p in path.rglob("*")
            if p.suffix.lower() in DIRECTORY_SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
            and p.is_file()
        ]
        if not files:
            raise DataError(f"{source}: no .txt, .jsonl or .json files in this directory")
        return sorted(files, key=lambda p: p.relative_to(path).as_posix())
    if not path.exists():
        raise DataError(f"{source}: file not found")
    return [path]


def source_sha256(source: str) -> str | None:
    """sha256 of a file source's bytes; of its files' names and hashes for a directory.

    None for an HF dataset: its identity is the hash of its documents, which the caller computes
    while reading them.
    """
    if parse_hf_source(source) is not None:
        return None
    files = source_files(source)
    if not Path(source).is_dir():
        return _file_sha256(files[0])
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.relative_to(source).as_posix()}\0{_file_sha256(file)}\n".encode())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None
    return digest.hexdigest()


def _iter_file(path: Path, text_field: str, text_unit: str) -> Iterator[str]:
    if path.suffix.lower() in JSON_SUFFIXES:
        documents = _iter_json(path, text_field)
    else:
        documents = _iter_text(path, text_unit)
    found = False
    for document in documents:
        found = True
        yield document
    if not found:
        raise DataError(f"{path}: no text found")


def _lines(path: Path) -> Generator[tuple[int, str], None, None]:
    """(line number, text without its line ending); undecodable bytes name line and byte offset."""
    try:
        handle = open(path, "rb")
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None
    with handle:
        offset = 0
        for number, raw in enumerate(handle, start=1):
            start = 3 if number == 1 and raw.startswith(codecs.BOM_UTF8) else 0
            try:
                line = raw[start:].decode("utf-8")
            except UnicodeDecodeError as error:
                bad = offset + start + error.start
                raise DataError(
                    f"{path}:{number}: not UTF-8 text (byte 0x{raw[start + error.start]:02x} "
                    f"at byte offset {bad}); convert the file to UTF-8"
                ) from None
            offset += len(raw)
            yield number, line.rstrip("\r\n")


def _iter_text(path: Path, text_unit: str) -> Iterator[str]:
    if text_unit == "line":
        for _, line in _lines(path):
            if line.strip():
                yield line
    elif text_unit == "paragraph":
        paragraph: list[str] = []
        for _, line in _lines(path):
            if line.strip():
                paragraph.append(line)
            elif paragraph:
                yield "\n".join(paragraph)
                paragraph = []
        if paragraph:
            yield "\n".join(paragraph)
    else:
        text = "\n".join(line for _, line in _lines(path)).strip("\n")
        if text.strip():
            yield text


def _iter_json(path: Path, text_field: str) -> Iterator[str]:
    lines = _lines(path)
    for number, line in lines:
        if not line.strip():
            continue
        if path.suffix.lower() == ".json" and line.lstrip().startswith("["):
            lines.close()
            yield from _iter_json_array(path, text_field)
            return
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{number}: not valid JSON: {error.msg} (column {error.colno})") from None
        text = _text_of(record, text_field, f"{path}:{number}")
        if text.strip():
            yield text


def _iter_json_array(path: Path, text_field: str) -> Iterator[str]:
    text = "\n".join(line for _, line in _lines(path))  # decoded line by line: errors name the line
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}: not valid JSON: {error.msg} (column {error.colno})") from None
    if not isinstance(records, list):
        raise DataError(f"{path}: expected JSON Lines or one JSON array of objects")
    for index, record in enumerate(records):
        text = _text_of(record, text_field, f"{path}: item {index}")
        if text.strip():
            yield text


def _text_of(record: Any, text_field: str, where: str) -> str:
    if not isinstance(record, dict):
        raise DataError(
            f"{where}: missing text field '{text_field}' (expected a JSON object, got {_json_kind(record)})"
        )
    if text_field not in record:
        fields = ", ".join(sorted(map(str, record))[:10]) or "none"
        raise DataError(
            f"{where}: missing text field '{text_field}' (fields here: {fields}; choose one with --text_field)"
        )
    text = record[text_field]
    if not isinstance(text, str):
        raise DataError(f"{where}: text field '{text_field}' is {_json_kind(text)}, not a string")
    return text


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _iter_hf(source: str, name: str, config: str | None, split: str, text_field: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"{source}: reading hub datasets needs the 'datasets' package (pip install 'ckptlab[hub]')"
        ) from None
    try:
        dataset = datasets.load_dataset(name, config, split=split)
    except Exception as error:  # noqa: BLE001 -- offline, unknown name or split: all the user's to fix
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{source}: could not load the dataset ({detail})") from None
    columns = getattr(dataset, "column_names", None)
    if columns is not None and text_field not in columns:
        raise DataError(
            f"{source}: missing text field '{text_field}' (columns: {', '.join(columns)}; choose one with --text_field)"
        )
    found = False
    for index, row in enumerate(dataset):
        text = _text_of(row, text_field, f"{source}: row {index}")
        if text.strip():
            found = True
            yield text
    if not found:
        raise DataError(f"{source}: no text found")
