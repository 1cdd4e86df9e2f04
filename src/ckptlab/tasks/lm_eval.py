"""lm-evaluation-harness task YAMLs, read as ckptlab tasks.

The subset read is lm-eval 0.4's `multiple_choice` and `generate_until` tasks written in YAML alone:
`dataset_path` (`json` or `csv` with `dataset_kwargs.data_files`, or a hub dataset id with
`dataset_name`), the four split keys, `doc_to_text` / `doc_to_choice` / `doc_to_target` (a field
name, a Jinja template, a list, or an index), `description`, both delimiters, `num_fewshot`,
`metric_list` (acc, acc_norm, exact_match), `generation_kwargs` (`until`, `max_gen_toks`, greedy)
and `include:` of a base file. Metadata keys (`tag`, `task_alias`, `metadata`, decontamination
keys) are accepted and have no effect. Any other key is an error naming it, and so is
`!function`: ckptlab never runs code named by a task file.

The prompt is assembled as lm-eval assembles it (description, demonstrations joined by the
few-shot delimiter, the example, then target delimiter + choice), and field values are read as
lm-eval reads them (a field name returns the value itself; a rendered target made of digits is an
index into the choices; CSV columns of whole numbers are integers, as pandas reads them).
Few-shot demonstrations are drawn by ckptlab's own rule (seeded per example), not lm-eval's
sampler, so k > 0 prompts differ from lm-eval's; 0-shot prompts are identical.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ckptlab.files import parse_yaml, read_text
from ckptlab.tasks import templates as tpl
from ckptlab.tasks.records import Record, resolve_path, where
from ckptlab.tasks.types import SplitFile, TaskError, TaskSpec

#: Keys that make a YAML file an lm-eval task rather than a ckptlab one.
MARKERS = {"dataset_path", "doc_to_text", "output_type", "include", "metric_list", "test_split"}
SUPPORTED = {
    "task",
    "dataset_path",
    "dataset_name",
    "dataset_kwargs",
    "output_type",
    "training_split",
    "validation_split",
    "test_split",
    "fewshot_split",
    "doc_to_text",
    "doc_to_choice",
    "doc_to_target",
    "description",
    "target_delimiter",
    "fewshot_delimiter",
    "num_fewshot",
    "metric_list",
    "generation_kwargs",
    "include",
    "repeats",
    "fewshot_config",
}
#: Accepted and without effect on scores.
INERT = {"tag", "group", "task_alias", "metadata", "should_decontaminate", "doc_to_decontamination_query"}
OUTPUT_TYPES = {"multiple_choice": "classification", "generate_until": "generation"}
METRICS = {"acc": "accuracy", "acc_norm": "accuracy_norm", "exact_match": "exact_match"}
DEFAULT_METRICS = {"multiple_choice": ["acc", "acc_norm"], "generate_until": ["exact_match"]}
LOCAL_BUILDERS = {"json": "jsonl", "csv": "csv"}
GREEDY = {"do_sample": False, "temperature": 0.0}
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's HF model default


class CodeReference(str):
    """A `!function module.name` value: Python code the task file names (never run)."""


class _Loader(yaml.SafeLoader):
    """YAML's safe loader that reads lm-eval's `!function` tag as a `CodeReference` (so it can be refused by key)."""


_Loader.add_constructor("!function", lambda loader, node: CodeReference(loader.construct_scalar(node)))  # type: ignore[arg-type]


def yaml_loader() -> type[yaml.SafeLoader]:
    return _Loader


def is_lm_eval_task(raw: dict[str, Any]) -> bool:
    return bool(MARKERS & set(raw))


def with_includes(raw: dict[str, Any], path: Path, lines: dict[str, int], fail: Any) -> dict[str, Any]:
    """The task's keys over those of its `include:` chain (a base file's path is relative to the including file)."""
    seen = {path.resolve()}
    merged = dict(raw)
    while "include" in merged:
        target = merged.pop("include")
        if not isinstance(target, str):
            raise fail("include", "include must be the path of a base YAML file")
        base_path = (path.parent / target).resolve()
        if base_path in seen:
            raise fail("include", f"include of {target} loops back to a file already included")
        seen.add(base_path)
        text = read_text(base_path, TaskError, f"task file {path}: include {target}:")
        base = parse_yaml(text, f"task file {base_path}", TaskError, loader=_Loader)
        if not isinstance(base, dict):
            raise fail("include", f"{base_path} is not a mapping of task keys")
        path = base_path
        merged = {**base, **merged}
    return merged


def parse(raw: dict[str, Any], path: Path, lines: dict[str, int], data_dir: Path | None) -> TaskSpec:
    """A TaskSpec from an lm-eval task mapping (includes resolved here), every key checked."""
    name = str(raw.get("task") or path.stem)

    def fail(key: str, message: str) -> TaskError:
        return TaskError(f"{where(name, file=path, line=lines.get(key.split('.')[0]))}: {message} (lm-eval task)")

    raw = with_includes(raw, path, lines, fail)
    name = str(raw.get("task") or path.stem)
    for key, value in raw.items():
        for inner_key, inner in _walk(key, value):
            if isinstance(inner, CodeReference):
                raise fail(
                    key,
                    f"{inner_key}: !function {inner} names Python code, which ckptlab does not run; "
                    "write it as a Jinja template or a field name",
                )
        if key not in SUPPORTED | INERT:
            raise fail(key, f"key '{key}' is outside the lm-eval subset ckptlab reads ({', '.join(sorted(SUPPORTED))})")
    output_type = raw.get("output_type", "generate_until")
    if output_type not in OUTPUT_TYPES:
        raise fail("output_type", f"output_type {output_type!r} is not read (supported: {', '.join(OUTPUT_TYPES)})")
    if int(raw.get("repeats", 1)) != 1:
        raise fail("repeats", "repeats other than 1 are not supported")
    kind = OUTPUT_TYPES[output_type]
    text = raw.get("doc_to_text")
    if not isinstance(text, str):
        raise fail("doc_to_text", "doc_to_text must be a field name or a Jinja template")
    preamble = raw.get("description") or ""
    if not isinstance(preamble, str):
        raise fail("description", "description must be text (a Jinja template)")
    choice = raw.get("doc_to_choice")
    target = raw.get("doc_to_target")
    if kind == "classification" and choice is None:
        raise fail("doc_to_choice", "a multiple_choice task needs doc_to_choice")
    if target is None or isinstance(target, bool) or not isinstance(target, (str, int)):
        raise fail("doc_to_target", "doc_to_target must be a field name, a Jinja template or a choice index")
    if isinstance(choice, dict):
        choice = [str(v) for v in choice.values()]
    if choice is not None and not isinstance(choice, (str, list)):
        raise fail("doc_to_choice", "doc_to_choice must be a list, a field name or a Jinja template")
    answers = Answers(choice, target)
    fields: set[str] = set()
    for key, piece in (
        ("doc_to_text", text),
        ("description", preamble),
        ("doc_to_choice", choice),
        ("doc_to_target", target),
    ):
        if isinstance(piece, str):
            try:
                fields |= _names(piece)
            except ValueError as error:
                raise fail(key, str(error)) from None
    spec = TaskSpec(
        name=name,
        path=path,
        type=kind,
        fields=sorted(fields),
        templates={"default": as_jinja(text)},
        metrics=_metrics(raw, output_type, fail),
        splits={},
        eval_split="",
        version=(raw.get("metadata") or {}).get("version", 1) if isinstance(raw.get("metadata"), dict) else 1,
        raw=raw,
        lines=lines,
        target_delimiter=str(raw.get("target_delimiter", " ")),
        fewshot_delimiter=str(raw.get("fewshot_delimiter", "\n\n")),
        preamble=as_jinja(preamble) if preamble else "",
        answers=answers,
        source_format="lm-eval",
    )
    if isinstance(choice, list):
        spec.choices = [str(c) for c in choice]
    if kind == "generation":
        _generation(spec, raw, fail)
    _data(spec, raw, fail, data_dir)
    shots = raw.get("num_fewshot", 0)
    if not isinstance(shots, int) or shots < 0:
        raise fail("num_fewshot", f"num_fewshot must be a whole number ≥ 0, got {shots!r}")
    spec.fewshot_shots = [shots]
    spec.fewshot_sampling = _sampling(raw.get("fewshot_config"), fail)
    return spec


def _sampling(config: Any, fail: Any) -> str:
    """`fewshot_config: {sampler: first_n}` as ckptlab's first_n; lm-eval's default random sampler has no
    equivalent draw, so it becomes ckptlab's per-example draw (documented: k > 0 prompts then differ)."""
    if config is None:
        return "per_example"
    if not isinstance(config, dict) or set(config) - {"sampler"}:
        extra = sorted(set(config) - {"sampler"}) if isinstance(config, dict) else ["(not a mapping)"]
        raise fail("fewshot_config", f"fewshot_config.{extra[0]} is not supported (sampler: first_n or default only)")
    sampler = config.get("sampler", "default")
    if sampler not in ("first_n", "default"):
        raise fail("fewshot_config", f"fewshot_config.sampler {sampler!r} is not supported (first_n or default)")
    return "first_n" if sampler == "first_n" else "per_example"


def _walk(key: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [pair for k, v in value.items() for pair in _walk(f"{key}.{k}", v)]
    if isinstance(value, list):
        return [pair for i, v in enumerate(value) for pair in _walk(f"{key}[{i}]", v)]
    return [(key, value)]


def _names(piece: str) -> set[str]:
    """Fields a doc_to_* value reads: a bare identifier is a field name, anything else a Jinja template."""
    if piece.isidentifier():
        return {piece}
    return tpl.field_names(as_jinja(piece))


def as_jinja(text: str) -> str:
    """lm-eval's reading of a doc_to_text / description value as a ckptlab template.

    A bare identifier is the field of that name; a Jinja template stays as it is; any other text is
    literal (wrapped in `{% raw %}` so that ckptlab does not read its braces as a format string).
    """
    if text.isidentifier():
        return "{{ " + text + " }}"
    if tpl.is_jinja(text) or not text:
        return text
    return "{% raw %}" + text + "{% endraw %}"


def _metrics(raw: dict[str, Any], output_type: str, fail: Any) -> list[str]:
    entries = raw.get("metric_list")
    if entries is None:
        return [METRICS[m] for m in DEFAULT_METRICS[output_type]]
    if not isinstance(entries, list) or not entries:
        raise fail("metric_list", "metric_list must be a list of {metric: NAME} entries")
    names = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("metric"), str):
            raise fail("metric_list", f"metric_list[{i}] must be a mapping with metric: NAME")
        metric = entry["metric"]
        allowed = ("acc", "acc_norm") if output_type == "multiple_choice" else ("exact_match",)
        if metric not in allowed:
            raise fail(
                "metric_list",
                f"metric_list[{i}]: metric '{metric}' is not read for {output_type} (supported: {', '.join(allowed)})",
            )
        for option, value in entry.items():
            if option == "metric":
                continue
            if (option, value) not in {("aggregation", "mean"), ("higher_is_better", True)} and not (
                option in ("ignore_case", "ignore_punctuation") and value is False
            ):
                raise fail(
                    "metric_list",
                    f"metric_list[{i}].{option}: {value!r} is not supported "
                    "(aggregation: mean and higher_is_better: true only)",
                )
        names.append(METRICS[metric])
    return names


def _generation(spec: TaskSpec, raw: dict[str, Any], fail: Any) -> None:
    kwargs = raw.get("generation_kwargs")
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict):
        raise fail("generation_kwargs", "generation_kwargs must be a mapping")
    for key, value in kwargs.items():
        if key in GREEDY:
            if (value is not False) if key == "do_sample" else float(value) != 0.0:
                raise fail("generation_kwargs", f"generation_kwargs.{key}: only greedy decoding is supported")
        elif key not in ("until", "max_gen_toks"):
            raise fail(
                "generation_kwargs",
                f"generation_kwargs.{key} is not supported (until, max_gen_toks, do_sample: false, temperature: 0)",
            )
    until = kwargs.get("until", [spec.fewshot_delimiter])
    spec.stop = [until] if isinstance(until, str) else [str(u) for u in until]
    spec.max_new_tokens = int(kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
    spec.strict_exact_match = True  # lm-eval compares generated and reference text as they are


def _data(spec: TaskSpec, raw: dict[str, Any], fail: Any, data_dir: Path | None) -> None:
    dataset = raw.get("dataset_path")
    if not isinstance(dataset, str):
        raise fail("dataset_path", "dataset_path must name a dataset (json, csv or a hub id)")
    kwargs = raw.get("dataset_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise fail("dataset_kwargs", "dataset_kwargs must be a mapping")
    extra = sorted(set(kwargs) - {"data_files"})
    if extra:
        raise fail("dataset_kwargs", f"dataset_kwargs.{extra[0]} is not supported (data_files only)")
    if dataset in LOCAL_BUILDERS:
        files = kwargs.get("data_files")
        if files is None:
            raise fail("dataset_kwargs", f"dataset_path {dataset} needs dataset_kwargs.data_files")
        by_split = files if isinstance(files, dict) else {"train": files}
        for split, value in by_split.items():
            if isinstance(value, list):
                if len(value) != 1:
                    raise fail("dataset_kwargs", f"data_files.{split}: one file per split is supported")
                value = value[0]
            if not isinstance(value, str):
                raise fail("dataset_kwargs", f"data_files.{split} must be a file path")
            spec.splits[str(split)] = SplitFile(
                raw=value,
                path=_data_path(value, spec.path, data_dir),
                format=LOCAL_BUILDERS[dataset],
                header=True,
                columns=None,
            )
    else:
        if kwargs:
            raise fail("dataset_kwargs", "dataset_kwargs.data_files applies to dataset_path json or csv only")
        splits = {
            raw[k]: raw[k]
            for k in ("training_split", "validation_split", "test_split", "fewshot_split")
            if isinstance(raw.get(k), str)
        }
        spec.hf = {"path": dataset, "splits": splits}
        if raw.get("dataset_name"):
            spec.hf["name"] = str(raw["dataset_name"])
    available = set(spec.splits) | set((spec.hf or {}).get("splits", {}))
    for key in ("training_split", "validation_split", "test_split", "fewshot_split"):
        value = raw.get(key)
        if value is not None and value not in available:
            raise fail(key, f"{key} '{value}' is not among the data's splits ({', '.join(sorted(available))})")
    scored = raw.get("test_split") or raw.get("validation_split")
    if not scored:
        raise fail("test_split", "give test_split or validation_split (the split that is scored)")
    spec.eval_split = scored
    pool = raw.get("fewshot_split") or raw.get("training_split")
    if not pool and raw.get("test_split") and raw.get("validation_split"):
        pool = raw["validation_split"]
    spec.fewshot_split = pool if pool and pool != scored else None


def _data_path(value: str, task_file: Path, data_dir: Path | None) -> Path | None:
    """lm-eval hands data_files to `datasets`, which reads a relative path from the working directory;
    ckptlab does the same, and falls back to the task file's folder (where exported tasks keep their data)."""
    path = Path(value).expanduser()
    if not path.is_absolute() and not path.is_file():
        return resolve_path(value, task_file, data_dir)
    return path


@dataclass
class Answers:
    """lm-eval's doc_to_choice and doc_to_target, resolved per record into (choices, gold answer)."""

    choice: list[str] | str | None
    target: str | int

    def resolve(self, record: dict[str, Any], fixed_choices: list[str] | None) -> tuple[list[str] | None, str]:
        """(choices, gold) of one record; raises ValueError saying what is wrong."""
        choices = fixed_choices
        if isinstance(self.choice, str):
            if self.choice in record:
                value = record[self.choice]
            else:
                value = _literal(_render(self.choice, record, "doc_to_choice"), "doc_to_choice")
            if not isinstance(value, list) or len(value) < 2:
                raise ValueError(f"doc_to_choice gives {value!r}, expected a list of at least two choices")
            choices = [str(v) for v in value]
        target = self._target(record, choices is not None)
        if choices is None:
            return None, str(target)
        if isinstance(target, int) and not isinstance(target, bool):
            if not 0 <= target < len(choices):
                raise ValueError(f"doc_to_target gives index {target}, outside the {len(choices)} choices")
            return choices, choices[target]
        if isinstance(target, list):
            raise ValueError("doc_to_target gives several answers; one answer per example is supported")
        if str(target) not in choices:
            raise ValueError(f"doc_to_target gives {target!r}, which is not among the choices {choices}")
        return choices, str(target)

    def _target(self, record: dict[str, Any], has_choices: bool) -> Any:
        if isinstance(self.target, int):
            return self.target
        if self.target in record:
            return record[self.target]
        text = _render(self.target, record, "doc_to_target")
        if text.isdigit() and has_choices:
            return int(text)
        if len(text) >= 2 and text[0] == "[" and text[-1] == "]":
            try:
                return ast.literal_eval(text)
            except (SyntaxError, ValueError):
                return text
        return text


def _render(template: str, record: dict[str, Any], key: str) -> str:
    try:
        return tpl.render(as_jinja(template), record)
    except Exception as error:  # noqa: BLE001 - whatever the template raises, it is this key's doing
        raise ValueError(f"{key} cannot be rendered ({type(error).__name__}: {error})") from None


def _literal(text: str, key: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (SyntaxError, ValueError):
        raise ValueError(f"{key} renders to {text[:60]!r}, which is not a Python list literal") from None


def infer_column_types(records: list[Record]) -> list[Record]:
    """CSV cells as pandas reads them (what lm-eval's `datasets` sees): a column of whole numbers is int,
    a column of numbers float, anything else text."""
    if not records:
        return records
    columns = list(records[0][1])
    kinds: dict[str, type] = {}
    for column in columns:
        cells = [r[column] for _, r in records if r.get(column, "") != ""]
        if cells and all(_is_int(c) for c in cells):
            kinds[column] = int
        elif cells and all(_is_float(c) for c in cells):
            kinds[column] = float
    if not kinds:
        return records
    return [(line, {k: (kinds[k](v) if k in kinds and v != "" else v) for k, v in r.items()}) for line, r in records]


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
