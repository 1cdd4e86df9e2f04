"""ckptlab tasks written as lm-evaluation-harness task YAMLs (one per template) that lm-eval runs unchanged.

Each task gets a folder `OUT/<task>/` holding its scored split and few-shot pool as JSON Lines
(`<split>.jsonl`: the example's fields, `id`, the gold answer as `ckptlab_gold` and, when choices
differ per example, `ckptlab_choices`) and one YAML per template, `<task>_<template>.yaml`, whose
lm-eval task name is the file's stem. The records are the ones ckptlab scores (label maps applied,
hub data included), so the two tools read the same examples; data files are named by absolute path,
because lm-eval (through `datasets`) reads relative paths from its working directory.

What carries over exactly: the prompt (format-string templates become Jinja), both delimiters,
the choices and the answer, the scored and few-shot splits, `num_fewshot` (the task's first
`fewshot.shots`), accuracy and accuracy_norm (lm-eval's acc, acc_norm), exact_match, and the
generation's stop strings and token budget. What does not: which demonstrations are drawn (lm-eval
has its own sampler), macro_f1 / mcc / rouge_l (no lm-eval metric means the same), and ckptlab's
whitespace-collapsing exact_match (lm-eval compares the text as generated).
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import Any

import yaml

from ckptlab.files import atomic_write_text
from ckptlab.tasks import templates as tpl
from ckptlab.tasks.types import Example, TaskData, TaskError

METRICS = {"accuracy": "acc", "accuracy_norm": "acc_norm", "exact_match": "exact_match"}


def format_to_jinja(template: str) -> str:
    """A ckptlab template as Jinja: `{field}` → `{{ field }}`; literal text that Jinja would read is kept raw.

    Raises:
        ValueError: a replacement field with a format spec or conversion (`{x:>5}`, `{x!r}`), which Jinja
            has no equivalent for.
    """
    if tpl.is_jinja(template):
        return template
    parts = []
    for literal, name, spec, conversion in string.Formatter().parse(template):
        if literal:
            parts.append("{% raw %}" + literal + "{% endraw %}" if re.search(r"\{[{%#]", literal) else literal)
        if name is not None:
            if spec or conversion:
                raise ValueError(f"field {{{name}}} has a format spec or conversion, which Jinja cannot express")
            parts.append("{{ " + name + " }}")
    return "".join(parts)


def _record(example: Example, per_example_choices: bool) -> dict[str, Any]:
    record = {**example.fields, "id": example.id, "ckptlab_gold": example.gold}
    if per_example_choices:
        record["ckptlab_choices"] = example.choices
    return record


def _write_split(examples: list[Example], path: Path, per_example_choices: bool) -> None:
    lines = [json.dumps(_record(e, per_example_choices), ensure_ascii=False) for e in examples]
    atomic_write_text(path, "\n".join(lines) + "\n")


def task_name(task: str, template: str) -> str:
    """The lm-eval task name of one (task, template): letters, digits and underscores."""
    return re.sub(r"[^A-Za-z0-9_]+", "_", f"{task}_{template}")


def to_lm_eval(data: TaskData, out: Path) -> list[Path]:
    """Write `data`'s task as lm-eval YAMLs (one per template) and its splits as JSONL under `out/<task>/`."""
    spec = data.spec
    folder = (out / spec.name).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    per_example = spec.type == "classification" and (
        spec.choices is None or any(e.choices != spec.choices for e in data.examples + data.fewshot)
    )
    files = {data.split: folder / f"{data.split}.jsonl"}
    _write_split(data.examples, files[data.split], per_example)
    if data.fewshot and spec.fewshot_split:
        files[spec.fewshot_split] = folder / f"{spec.fewshot_split}.jsonl"
        _write_split(data.fewshot, files[spec.fewshot_split], per_example)
    written = []
    for template_name, template in spec.templates.items():
        try:
            text = format_to_jinja(template)
            preamble = format_to_jinja(spec.preamble) if spec.preamble else ""
        except ValueError as error:
            raise TaskError(f"task {spec.name}, template {template_name}: cannot export to lm-eval: {error}") from None
        config: dict[str, Any] = {
            "task": task_name(spec.name, template_name),
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {split: str(path) for split, path in files.items()}},
            "test_split": data.split,
            "output_type": "multiple_choice" if spec.type == "classification" else "generate_until",
            "doc_to_text": text,
        }
        if spec.fewshot_split in files and spec.fewshot_split != data.split:
            config["training_split"] = spec.fewshot_split
        if spec.type == "classification":
            config["doc_to_choice"] = "ckptlab_choices" if per_example else list(spec.choices or [])
            metrics = ["acc", "acc_norm"]
        else:
            config["generation_kwargs"] = {
                "until": list(spec.stop) or [spec.fewshot_delimiter],
                "max_gen_toks": spec.max_new_tokens,
                "do_sample": False,
            }
            metrics = ["exact_match"]
        config["doc_to_target"] = "ckptlab_gold"
        if preamble:
            config["description"] = preamble
        config["target_delimiter"] = spec.target_delimiter
        config["fewshot_delimiter"] = spec.fewshot_delimiter
        config["num_fewshot"] = spec.fewshot_shots[0] if spec.fewshot_split in files else 0
        if spec.fewshot_sampling == "first_n":
            config["fewshot_config"] = {"sampler": "first_n"}  # the same demonstrations in both tools
        config["metric_list"] = [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in metrics]
        config["metadata"] = {"version": spec.version, "ckptlab_task": spec.name, "ckptlab_template": template_name}
        path = folder / f"{config['task']}.yaml"
        header = f"# Exported by ckptlab from {spec.path} (template {template_name}); lm-eval runs it unchanged.\n"
        atomic_write_text(path, header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=1000))
        written.append(path)
    return written
