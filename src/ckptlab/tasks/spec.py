"""Task files: load, validate, fingerprint, and read the examples to score and the few-shot pool.

A task file is YAML, one per task (the format the world generator writes, plus optional keys; see
docs/evaluation.md). Everything that can be wrong with a task — a template naming a missing field,
a label word missing from the choices, an empty split, a non-UTF-8 file, a row with too few
columns — is found here, before any model loads, and reported as one line naming task, template,
file and line.

The fingerprint hashes everything that changes scores: the templates, choices, label mapping,
splits, few-shot settings, the bytes of the data files read, and `SCORING_VERSION`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ckptlab.errors import DataError, UserError
from ckptlab.files import parse_yaml, read_text
from ckptlab.tasks import lm_eval
from ckptlab.tasks import templates as tpl
from ckptlab.tasks.records import (
    DATA_DIR_VARIABLE,
    FORMATS,
    DataUnavailable,
    default_data_dir,
    read_hf,
    read_local,
    resolve_path,
    where,
)
from ckptlab.tasks.types import Example, SplitFile, TaskData, TaskError, TaskSpec

__all__ = ["Example", "SplitFile", "TaskData", "TaskError", "TaskSpec"]

#: Bump when scoring or prompt assembly changes meaning: cached results then stop matching.
#: 2: trailing whitespace of a prompt moves to the continuation, acc_norm divides by the choice's own
#: characters (both as lm-evaluation-harness does), and the prompt format (BOS, chat template) is keyed.
SCORING_VERSION = 2
TYPES = ("classification", "generation")
METRICS = {"classification": ("accuracy", "accuracy_norm", "macro_f1", "mcc"), "generation": ("rouge_l", "exact_match")}
KNOWN_KEYS = {
    "task",
    "version",
    "description",
    "domain",
    "type",
    "data",
    "fields",
    "label_field",
    "choices",
    "choices_field",
    "target_field",
    "templates",
    "metrics",
    "generation",
    "fewshot",
    "probes_pretraining_knowledge",
    "eval_split",
    "id_field",
    "label_map",
    "target_delimiter",
    "fewshot_delimiter",
    "hf",
}
DATA_OPTIONS = {"format", "header", "columns"}
HF_KEYS = {"path", "name", "splits", "columns", "label_map"}


def shipped_tasks() -> dict[str, Path]:
    """Task files shipped with ckptlab, by name."""
    folder = resources.files("ckptlab") / "tasks"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def find_task_files(names: list[str], task_dirs: list[str] | None = None) -> list[Path]:
    """Task files for names (`rte`), task YAML paths, folders of task YAMLs (or a world's folder)."""
    shipped = shipped_tasks()
    found: list[Path] = []
    for name in names:
        path = Path(name).expanduser()
        if name == "shipped":
            found.extend(shipped[n] for n in sorted(shipped))
        elif path.is_file():
            found.append(path)
        elif path.is_dir():
            folder = path / "tasks" if not list(path.glob("*.yaml")) and (path / "tasks").is_dir() else path
            files = sorted(folder.glob("*.yaml"))
            if not files:
                raise UserError(f"--tasks {name}: folder holds no task files (*.yaml)")
            found.extend(files)
        elif name in shipped:
            found.append(shipped[name])
        else:
            hits = [Path(d) / f"{name}.yaml" for d in task_dirs or [] if (Path(d) / f"{name}.yaml").is_file()]
            if not hits:
                raise UserError(
                    f"--tasks {name}: not a task file, a folder, or a shipped task "
                    f"(shipped: {', '.join(sorted(shipped))}; add --task_dirs to find others by name)"
                )
            found.append(hits[0])
    return list(dict.fromkeys(p.resolve() for p in found))


def _line_map(text: str) -> dict[str, int]:
    """1-based line of each top-level key and of each `templates.<name>` / `label_map.<key>`."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            lines[key.value] = key.start_mark.line + 1
            if isinstance(value, yaml.MappingNode):
                for sub, _ in value.value:
                    lines[f"{key.value}.{sub.value}"] = sub.start_mark.line + 1
    return lines


def read_task_file(path: Path, data_dir: Path | None = None) -> TaskSpec:
    """Parse and validate one task file (its data is read later, by `load_task_data`)."""
    path = Path(path)
    text = read_text(path, TaskError, f"task file {path}:")
    raw = parse_yaml(text, f"task file {path}", TaskError, loader=lm_eval.yaml_loader())
    if not isinstance(raw, dict):
        raise TaskError(f"task file {path}: expected a mapping of task keys")
    data_dir = data_dir if data_dir is not None else default_data_dir()
    if lm_eval.is_lm_eval_task(raw):
        return lm_eval.parse(raw, path, _line_map(text), data_dir)
    return parse_task(raw, path, _line_map(text), data_dir)


def parse_task(raw: dict[str, Any], path: Path, lines: dict[str, int], data_dir: Path | None) -> TaskSpec:
    """Build a TaskSpec from a task file's mapping, checking every key."""
    name = str(raw.get("task") or path.stem)

    def fail(key: str, message: str, template: str | None = None) -> TaskError:
        line = lines.get(key) or lines.get(key.split(".")[0])  # the key's line in the task file
        return TaskError(f"{where(name, template, path, line)}: {message}")

    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown key '{unknown[0]}' (known keys: {', '.join(sorted(KNOWN_KEYS))})")
    kind = raw.get("type")
    if kind not in TYPES:
        raise fail("type", f"type must be one of {', '.join(TYPES)}, got {kind!r}")
    fields = raw.get("fields")
    if not isinstance(fields, list) or not fields or not all(isinstance(f, str) for f in fields):
        raise fail("fields", "fields must be a non-empty list of field names")
    templates = raw.get("templates")
    if not isinstance(templates, dict) or not templates:
        raise fail("templates", "templates must be a mapping of template name -> template (at least one)")
    for tname, text in templates.items():
        if not isinstance(text, str):
            raise fail(f"templates.{tname}", "a template must be a string", template=str(tname))
        try:
            names = tpl.field_names(text)
        except ValueError as error:
            raise fail(f"templates.{tname}", str(error), template=str(tname)) from None
        missing = sorted(names - set(fields))
        if missing:
            raise fail(
                f"templates.{tname}",
                f"names field '{missing[0]}', which is not among the task's fields ({', '.join(fields)})",
                template=str(tname),
            )
    metrics = raw.get("metrics") or list(METRICS[kind][:1])
    bad = [m for m in metrics if m not in METRICS[kind]]
    if bad:
        raise fail("metrics", f"metric '{bad[0]}' is not one of {', '.join(METRICS[kind])} ({kind} tasks)")
    spec = TaskSpec(
        name=name,
        path=path,
        type=kind,
        fields=list(fields),
        templates={str(k): v for k, v in templates.items()},
        metrics=list(metrics),
        splits={},
        eval_split="",
        version=raw.get("version", 1),
        raw=raw,
        lines=lines,
        id_field=raw.get("id_field"),
        hf=raw.get("hf"),
        target_delimiter=str(raw.get("target_delimiter", " ")),
        fewshot_delimiter=str(raw.get("fewshot_delimiter", "\n\n")),
    )
    if kind == "classification":
        _parse_classification(spec, raw, fail)
    else:
        spec.target_field = raw.get("target_field")
        if not spec.target_field:
            raise fail("target_field", "a generation task needs target_field")
        generation = raw.get("generation") or {}
        spec.max_new_tokens = int(generation.get("max_new_tokens", 32))
        spec.stop = [str(s) for s in generation.get("stop") or []]
        if spec.max_new_tokens < 1:
            raise fail("generation", "generation.max_new_tokens must be positive")
    _parse_data(spec, raw, fail, data_dir)
    return spec


def _parse_classification(spec: TaskSpec, raw: dict[str, Any], fail: Any) -> None:
    spec.label_field = raw.get("label_field")
    if not spec.label_field:
        raise fail("label_field", "a classification task needs label_field")
    choices, choices_field = raw.get("choices"), raw.get("choices_field")
    if (choices is None) == (choices_field is None):
        raise fail("choices", "give exactly one of choices (a list of label words) and choices_field")
    if choices is not None:
        if not isinstance(choices, list) or len(choices) < 2:
            raise fail("choices", "choices must be a list of at least two label words")
        spec.choices = [str(c) for c in choices]
    spec.choices_field = choices_field
    label_map = raw.get("label_map")
    if label_map is not None:
        if not isinstance(label_map, dict):
            raise fail("label_map", "label_map must map label values in the data to label words")
        spec.label_map = {str(k): str(v) for k, v in label_map.items()}
        for key, word in spec.label_map.items():
            if spec.choices is not None and word not in spec.choices:
                raise fail(
                    f"label_map.{key}",
                    f"label word '{word}' (for label {key}) is missing from choices ({', '.join(spec.choices)})",
                )


def _parse_data(spec: TaskSpec, raw: dict[str, Any], fail: Any, data_dir: Path | None) -> None:
    data = raw.get("data") or {}
    if not isinstance(data, dict) or (not data and not spec.hf):
        raise fail("data", "data must be a mapping of split name -> file (or give an hf: block)")
    fmt: str = data.get("format", "jsonl")  # one of FORMATS, checked below
    if fmt not in FORMATS:
        raise fail("data", f"data.format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    for split, value in data.items():
        if split in DATA_OPTIONS:
            continue
        options: dict[str, Any] = value if isinstance(value, dict) else {"path": value}
        if not isinstance(options.get("path"), str):
            raise fail(f"data.{split}", f"data.{split} must be a path or a mapping with path")
        split_fmt = options.get("format", fmt)
        if split_fmt not in FORMATS:  # else an unknown format would be read as CSV
            raise fail(
                f"data.{split}.format", f"data.{split}.format must be one of {', '.join(FORMATS)}, got {split_fmt!r}"
            )
        columns = options.get("columns", data.get("columns"))
        spec.splits[split] = SplitFile(
            raw=options["path"],
            path=resolve_path(options["path"], spec.path, data_dir),
            format=split_fmt,
            header=bool(options.get("header", data.get("header", True))),
            columns=[str(c) for c in columns] if columns else None,
        )
    if spec.hf is not None:
        if not isinstance(spec.hf, dict) or "path" not in spec.hf:
            raise fail("hf", "hf must be a mapping with at least path (the dataset id)")
        extra = sorted(set(spec.hf) - HF_KEYS)
        if extra:
            raise fail("hf", f"unknown key 'hf.{extra[0]}' (known: {', '.join(sorted(HF_KEYS))})")
    available = set(spec.splits) | set((spec.hf or {}).get("splits", {}))
    spec.eval_split = raw.get("eval_split") or ("test" if "test" in available else "validation")
    if spec.eval_split not in available:
        raise fail(
            "eval_split",
            f"the scored split '{spec.eval_split}' is not among the data splits ({', '.join(sorted(available))})",
        )
    fewshot = raw.get("fewshot") or {}
    spec.fewshot_split = fewshot.get("split", "train")
    spec.fewshot_seed = int(fewshot.get("seed", 1234))
    spec.fewshot_shots = [int(k) for k in fewshot.get("shots", [0])]
    spec.fewshot_sampling = str(fewshot.get("sampling", "per_example"))
    if spec.fewshot_sampling not in tpl.SAMPLINGS:
        choices = ", ".join(tpl.SAMPLINGS)
        raise fail("fewshot", f"fewshot.sampling must be one of {choices}, got {spec.fewshot_sampling!r}")
    if spec.fewshot_split not in available:
        spec.fewshot_split = None  # no demonstrations available: only 0-shot runs
    if spec.fewshot_split == spec.eval_split:
        raise fail("fewshot", f"few-shot demonstrations must not come from the scored split '{spec.eval_split}'")


def _template_using(spec: TaskSpec, name: str) -> str | None:
    for tname, text in spec.templates.items():
        if name in tpl.field_names(text):
            return tname
    return None


def _examples(spec: TaskSpec, split: str, records: list[tuple[int, dict[str, Any]]], file: str) -> list[Example]:
    out = []
    for index, (line, record) in enumerate(records):

        def fail(message: str, template: str | None = None) -> DataError:
            return DataError(f"{where(spec.name, template, file, line)}: {message}")  # noqa: B023 - used in this pass

        for name in spec.fields:
            if record.get(name) is None:
                raise fail(
                    f"field '{name}' is missing (the record has: {', '.join(map(str, record))})",
                    _template_using(spec, name),
                )
        choices = spec.choices
        if spec.answers is not None:
            try:
                choices, gold = spec.answers.resolve(record, spec.choices)
            except Exception as error:  # noqa: BLE001 - a template or value error is the record's or the task's
                detail = str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}"
                raise fail(detail) from None
        elif spec.type == "classification":
            if spec.label_field is None or record.get(spec.label_field) is None:
                raise fail(f"label field '{spec.label_field}' is missing")
            gold = str(record[spec.label_field])
            if spec.label_map is not None:
                if gold not in spec.label_map:
                    raise fail(f"label '{gold}' has no entry in label_map ({', '.join(spec.label_map)})")
                gold = spec.label_map[gold]
            if spec.choices_field:
                options = record.get(spec.choices_field)
                if not isinstance(options, list) or len(options) < 2:
                    raise fail(f"'{spec.choices_field}' must be a list of at least two options")
                choices = [str(o) for o in options]
            if gold not in (choices or []):
                raise fail(f"label word '{gold}' is missing from the choices ({', '.join(choices or [])})")
        else:
            if spec.target_field is None or record.get(spec.target_field) is None:
                raise fail(f"target field '{spec.target_field}' is missing")
            gold = str(record[spec.target_field])
        if spec.id_field and spec.id_field in record:
            example_id = str(record[spec.id_field])
        else:
            example_id = str(record["id"]) if "id" in record else f"{split}-{index:06d}"
        out.append(Example(example_id, index, {n: record[n] for n in spec.fields}, gold, choices, file, line))
    seen: set[str] = set()
    for example in out:
        if example.id in seen:
            raise DataError(f"{where(spec.name, file=file, line=example.line)}: example id '{example.id}' occurs twice")
        seen.add(example.id)
    return out


def _read_split(spec: TaskSpec, split: str) -> tuple[list[Example], str, str]:
    """Examples of one split, from its local file when it exists, else from the hf: block."""
    source = spec.splits.get(split)
    if source is not None and source.path is not None and source.path.is_file():
        records, digest = read_local(source.path, source.format, source.header, source.columns, spec.name)
        if spec.source_format == "lm-eval" and source.format == "csv":
            records = lm_eval.infer_column_types(records)
        label = str(source.path)
    elif spec.hf is not None and (split in spec.hf.get("splits", {}) or source is not None):
        hf = spec.hf  # the same block after `replace` below, still known to be there
        records, digest = read_hf(hf, split, spec.name)
        if hf.get("label_map") is not None:
            spec = replace(spec, label_map={str(k): str(v) for k, v in hf["label_map"].items()})
        label = f"hf:{hf['path']}[{hf.get('splits', {}).get(split, split)}]"
    else:
        shown = (source.path or source.raw) if source else f"split '{split}'"
        raise DataUnavailable(
            f"{where(spec.name, file=shown)}: data file not found (set {DATA_DIR_VARIABLE} "
            "to the folder holding the data, or add an hf: block to the task file)"
        )
    if not records:
        raise DataError(f"{where(spec.name, file=label)}: split '{split}' is empty (no rows)")
    return _examples(spec, split, records, label), digest, label


def load_task_data(spec: TaskSpec, split: str | None = None) -> TaskData:
    """Read and check the scored split and the few-shot pool; fingerprint the task.

    Each split comes from its local file when that exists, otherwise from the task's `hf:` block.
    A few-shot pool that cannot be had here (`fewshot_unavailable`) only disables k > 0; malformed
    data is an error. The pool is read even for 0-shot runs so that the fingerprint (which covers
    it) does not depend on which shots a run asked for.
    """
    split = split or spec.eval_split
    available = set(spec.splits) | set((spec.hf or {}).get("splits", {}))
    if split not in available:
        raise TaskError(
            f"{where(spec.name, file=spec.path)}: no split '{split}' (splits: {', '.join(sorted(available))})"
        )
    examples, digest, label = _read_split(spec, split)
    digests = {split: digest}
    fewshot: list[Example] = []
    unavailable = None if spec.fewshot_split else "the task has no few-shot split"
    if spec.fewshot_split == split:  # demonstrations never come from the split being scored
        unavailable = f"the few-shot split '{split}' is the scored split"
    elif spec.fewshot_split:
        try:
            fewshot, digests[spec.fewshot_split], _ = _read_split(spec, spec.fewshot_split)
        except DataUnavailable as error:
            unavailable = str(error)
    checked = {**spec.templates, "description": spec.preamble} if spec.preamble else spec.templates
    for tname, template in checked.items():
        for example in examples + fewshot[:1]:
            try:
                tpl.render(template, example.fields)
            except Exception as error:  # noqa: BLE001 - any rendering failure is the template's fault
                raise TaskError(
                    f"{where(spec.name, tname, example.file, example.line)}: cannot render "
                    f"({type(error).__name__}: {error})"
                ) from None
    data = TaskData(
        spec, split, examples, fewshot, fingerprint(spec, split, digests), "hf" if label.startswith("hf:") else "local"
    )
    data.fewshot_unavailable = unavailable if not fewshot else None
    return data


def fingerprint(spec: TaskSpec, split: str, data_digests: dict[str, str]) -> str:
    """A short hash of everything about a task that changes its scores."""
    keys = (
        "type",
        "fields",
        "label_field",
        "choices",
        "choices_field",
        "target_field",
        "label_map",
        "id_field",
        "max_new_tokens",
        "stop",
        "fewshot_split",
        "fewshot_seed",
        "fewshot_sampling",
        "target_delimiter",
        "fewshot_delimiter",
        "templates",
        "version",
        "preamble",
        "answers",
        "strict_exact_match",
    )
    payload = {key: getattr(spec, key) for key in keys}
    payload.update(name=spec.name, split=split, data=data_digests, scoring_version=SCORING_VERSION)
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
