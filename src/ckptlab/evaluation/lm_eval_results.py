"""Results in lm-evaluation-harness's output format, for tooling that reads `lm_eval --output_path`.

The layout and keys follow lm-eval 0.4's `EvaluationTracker` (`lm_eval/loggers/evaluation_tracker.py`)
and `simple_evaluate` (`lm_eval/evaluator.py`); lm-eval itself is not imported. Per model:

- `results_<date>.json`: "results" {task: {"alias", "acc,none", "acc_stderr,none", ...}}, "configs",
  "versions", "n-shot", "higher_is_better", "n-samples", "config" (the model), "git_hash", "date",
  "task_hashes", "model_name", ... and a "ckptlab" block (model fingerprint, step, tokens seen).
- `samples_<task>_<date>.jsonl`: one line per example: doc_id, doc, target, arguments, resps,
  filtered_resps, filter ("none"), metrics, doc_hash, prompt_hash, target_hash and each metric's
  per-example value (acc is 1.0 or 0.0; so the mean of the lines' acc is the task's acc).

One ckptlab unit (task, template, shots) is one lm-eval "task", named `task/template`, with
`/K-shot` appended for K > 0 (and `/seedS` when two units differ only in their few-shot seed).
Metric names: accuracy → acc, accuracy_norm → acc_norm, exact_match → exact_match; macro_f1, mcc
and rouge_l keep their names. `<metric>_stderr,none` is the standard error of the mean of the
per-example values (sample standard deviation / √n, as lm-eval's `mean_stderr`); "N/A" for macro_f1
and mcc, which are not means. ckptlab's 95% bootstrap interval is added as `<metric>_ci_low,none`
and `<metric>_ci_high,none`. Prompt-sensitivity rows (template `*`) are not exported.

What the store does not hold is left out or marked: a choice's `is_greedy` (lm-eval's second
element of a log-likelihood response) is "None"; the prompt text, the document's fields and the
task version are known only for units given with `units` (an evaluation's own units), else the
doc is {"id": example id} and the arguments hold no prompt; a chat-rendered prompt is not
rebuilt either (it needs the model's tokenizer).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import re
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckptlab import __version__
from ckptlab.errors import UserError
from ckptlab.evaluation.store import ResultStore

if TYPE_CHECKING:
    from ckptlab.evaluation.runner import Unit

METRIC_NAMES = {"accuracy": "acc", "accuracy_norm": "acc_norm", "exact_match": "exact_match"}
"""ckptlab metric → lm-eval metric name; the others keep their names."""
MEAN_METRICS = ("accuracy", "accuracy_norm", "exact_match", "rouge_l")
"""Metrics that are means of per-example values: they have a per-example value and a standard error."""
FILTER = "none"
"""lm-eval's filter key: ckptlab applies no filter to responses."""

UnitKey = tuple[str, str, int, int]
"""(task_fp, template, shots, seed): one unit of one model, as the store keys it."""


def lm_eval_task_name(row: dict[str, Any]) -> str:
    """The lm-eval task name of a metric row's unit: `task/template`, `/K-shot` appended for K > 0."""
    name = f"{row['task']}/{row['template']}"
    return name + (f"/{row['shots']}-shot" if row["shots"] else "")


def sanitize_model_name(name: str) -> str:
    """lm-eval's folder name for a model (`lm_eval.utils.sanitize_model_name`)."""
    return re.sub(r"[\"<>:/|\\?*\[\]]+", "__", name)


def sanitize_task_name(name: str) -> str:
    """lm-eval's file-name form of a task name (`lm_eval.utils.sanitize_task_name`)."""
    return re.sub(r"\W", "_", name)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _git_hash() -> str | None:
    # lm-eval records `git describe --always` of the working directory; so does this, or None outside a repository.
    try:
        out = subprocess.run(
            ["git", "describe", "--always"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def _stderr(values: Sequence[float]) -> float | str:
    """Standard error of the mean with the sample standard deviation (lm-eval's `mean_stderr`); N/A below 2 values."""
    if len(values) < 2:
        return "N/A"
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) / math.sqrt(len(values))


def _number(value: Any) -> Any:
    """A stored number as lm-eval writes it: NaN and a missing interval become "N/A"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "N/A"
    return value


def select_rows(rows: Iterable[dict[str, Any]]) -> dict[str, dict[UnitKey, list[dict[str, Any]]]]:
    """model_fp → unit → its metric rows, prompt-sensitivity rows dropped; where a unit was scored with several
    example counts (`--limit` then all), the rows of the largest count."""
    units: dict[str, dict[UnitKey, list[dict[str, Any]]]] = {}
    for row in rows:
        if row["template"] == "*":
            continue
        key = (row["task_fp"], row["template"], int(row["shots"]), int(row["seed"]))
        kept = units.setdefault(row["model_fp"], {}).setdefault(key, [])
        if kept and kept[0]["n"] != row["n"]:
            if row["n"] < kept[0]["n"]:
                continue
            kept.clear()
        kept.append(row)
    return units


def write_lm_eval_results(
    store: ResultStore,
    out: str | Path,
    rows: Iterable[dict[str, Any]],
    units: Sequence[Unit] = (),
    settings: dict[str, Any] | None = None,
) -> list[Path]:
    """Write lm-eval results and samples files for the metric rows `rows` (store rows); returns the paths.

    `out` ending in `.json` is lm-eval's file form (`<stem>_<date>.json`, samples beside it; one model
    only); any other path is a directory that gets a folder per model (`out/<model>/results_<date>.json`).
    `units` (the evaluation's own) supply prompts, documents, task versions and split sizes; `settings`
    (batch_size, device, limit, bootstrap_iters, ...) are merged into each results file's "config".
    """
    out = Path(out)
    by_model = select_rows(rows)
    as_file = out.suffix.lower() == ".json"
    if as_file and len(by_model) > 1:
        raise UserError(
            f"--export {out}: an lm-eval results file holds one model and this export has {len(by_model)}; "
            "give a directory (e.g. --export lm_eval/), which gets a folder per model"
        )
    known = {(u.task.fingerprint, u.template, u.shots, u.seed): u for u in units}
    models = {m["model_fp"]: m for m in store.rows("models")}
    date_id = _dt.datetime.now().isoformat().replace(":", "-")  # lm-eval's file time stamp
    git_hash = _git_hash()
    written: list[Path] = []
    folders: set[str] = set()
    for model_fp, model_units in by_model.items():
        first = next(iter(model_units.values()))[0]
        model = models.get(model_fp, {})
        name = str(model.get("source") or first.get("model_source") or model_fp)
        folder = sanitize_model_name(name)
        if folder in folders:  # one source in two dtypes: two models
            folder = f"{folder}__{model_fp}"
        folders.add(folder)
        directory = out.parent if as_file else out / folder
        directory.mkdir(parents=True, exist_ok=True)
        results = _model_results(store, model_fp, model, name, model_units, known, settings or {})
        results.update(git_hash=git_hash, model_name_sanitized=folder)
        samples = results.pop("samples")  # lm-eval writes them apart from the results file, too
        target = out.with_name(f"{out.stem}_{date_id}.json") if as_file else directory / f"results_{date_id}.json"
        target.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(target)
        for task, lines in samples.items():
            path = directory / f"samples_{sanitize_task_name(task)}_{date_id}.jsonl"
            with open(path, "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
            written.append(path)
    return written


def _unit_names(model_units: dict[UnitKey, list[dict[str, Any]]]) -> dict[UnitKey, str]:
    """Each unit's lm-eval task name, made unique within the model (few-shot seed, then task fingerprint)."""
    names = {key: lm_eval_task_name(rows[0]) for key, rows in model_units.items()}
    for key, name in list(names.items()):
        if list(names.values()).count(name) > 1:
            names[key] = f"{name}/seed{key[3]}"
    for key, name in list(names.items()):
        if list(names.values()).count(name) > 1:
            names[key] = f"{name}/{key[0][:8]}"
    return names


def _model_results(
    store: ResultStore,
    model_fp: str,
    model: dict[str, Any],
    name: str,
    model_units: dict[UnitKey, list[dict[str, Any]]],
    known: dict[UnitKey, Unit],
    settings: dict[str, Any],
) -> dict[str, Any]:
    """One model's results dict (lm-eval's keys), with its samples under "samples"."""
    results: dict[str, dict[str, Any]] = {}
    configs: dict[str, Any] = {}
    versions: dict[str, Any] = {}
    n_shot: dict[str, int] = {}
    higher: dict[str, dict[str, bool]] = {}
    n_samples: dict[str, dict[str, int]] = {}
    samples: dict[str, list[dict[str, Any]]] = {}
    task_hashes: dict[str, str] = {}
    batch_sizes: list[int] = []
    names = _unit_names(model_units)
    for key in sorted(model_units, key=names.__getitem__):
        rows, task = model_units[key], names[key]
        unit = known.get(key)
        n = int(rows[0]["n"])
        examples = store.examples((model_fp, *key))[:n]  # a unit scores the first n examples of its split
        lines = _samples(rows, examples, unit)
        entry: dict[str, Any] = {"name": task, "alias": task, "sample_len": len(lines)}
        for row in rows:
            metric = METRIC_NAMES.get(row["metric"], row["metric"])
            entry[f"{metric},{FILTER}"] = _number(row["value"])
            if row["metric"] in MEAN_METRICS:
                entry[f"{metric}_stderr,{FILTER}"] = _stderr([s[metric] for s in lines])
            else:
                entry[f"{metric}_stderr,{FILTER}"] = "N/A"
            entry[f"{metric}_ci_low,{FILTER}"] = _number(row["ci_low"])
            entry[f"{metric}_ci_high,{FILTER}"] = _number(row["ci_high"])
        results[task] = entry
        configs[task] = _task_config(task, rows, unit)
        versions[task] = unit.task.spec.version if unit else None
        n_shot[task] = int(rows[0]["shots"])
        higher[task] = {METRIC_NAMES.get(r["metric"], r["metric"]): True for r in rows}
        n_samples[task] = {"original": len(unit.task.examples) if unit else n, "effective": len(lines)}
        samples[task] = lines
        task_hashes[task] = _sha256("".join(s["doc_hash"] + s["prompt_hash"] + s["target_hash"] for s in lines))
        batch_sizes += [r["batch_size"] for r in rows[:1] if r["batch_size"]]
    first = next(iter(model_units.values()))[0]
    dtype = model.get("dtype")
    prompt = next((u.prompt for u in known.values()), None)
    return {
        "results": results,
        "group_subtasks": {},
        "configs": configs,
        "versions": versions,
        "n-shot": n_shot,
        "higher_is_better": higher,
        "n-samples": n_samples,
        "samples": samples,
        "config": {
            "model": name,
            "model_args": f"pretrained={name}" + (f",dtype={dtype}" if dtype else ""),
            "model_dtype": dtype,
            "batch_size": None,
            "batch_sizes": sorted(set(batch_sizes)),
            "device": None,
            "use_cache": str(store.path),
            "limit": None,
            "bootstrap_iters": None,
            "gen_kwargs": None,
            "random_seed": None,
            "numpy_seed": None,
            "torch_seed": None,
            "fewshot_seed": int(first["seed"]),
            **settings,
        },
        "git_hash": None,
        "date": time.time(),
        "task_hashes": task_hashes,
        "model_source": "ckptlab",
        "model_name": name,
        "model_name_sanitized": None,
        "system_instruction": prompt.system_instruction if prompt else None,
        "system_instruction_sha": _sha256(prompt.system_instruction) if prompt and prompt.system_instruction else None,
        "fewshot_as_multiturn": bool(prompt and prompt.apply_chat_template and prompt.fewshot_as_multiturn),
        "chat_template": None,
        "chat_template_sha": None,
        "total_evaluation_time_seconds": None,
        "ckptlab": {
            "version": __version__,
            "store": str(store.path),
            "model_fp": model_fp,
            "model_label": first.get("model_label") or model.get("label"),
            "kind": model.get("kind"),
            "run": model.get("run"),
            "step": model.get("step"),
            "tokens_seen": model.get("tokens_seen"),
        },
    }


def _task_config(task: str, rows: list[dict[str, Any]], unit: Unit | None) -> dict[str, Any]:
    """lm-eval's per-task config, as far as ckptlab knows it, and the unit's ckptlab identity."""
    row = rows[0]
    config: dict[str, Any] = {
        "task": task,
        "test_split": row["split"],
        "num_fewshot": int(row["shots"]),
        "metric_list": [
            {
                "metric": METRIC_NAMES.get(r["metric"], r["metric"]),
                "aggregation": "mean" if r["metric"] in MEAN_METRICS else r["metric"],
                "higher_is_better": True,
            }
            for r in rows
        ],
    }
    if unit is not None:
        spec = unit.task.spec
        config.update(
            dataset_path=str(spec.path),
            output_type="multiple_choice" if spec.type == "classification" else "generate_until",
            fewshot_split=spec.fewshot_split,
            doc_to_text=spec.templates[unit.template],
            doc_to_choice=spec.choices,
            target_delimiter=spec.target_delimiter,
            fewshot_delimiter=spec.fewshot_delimiter,
            metadata={"version": spec.version},
        )
        if spec.type != "classification":
            config["generation_kwargs"] = _generation_kwargs(unit)
    config["ckptlab"] = {
        "task": row["task"],
        "task_fp": row["task_fp"],
        "template": row["template"],
        "shots": int(row["shots"]),
        "seed": int(row["seed"]),
    }
    return config


def _samples(rows: list[dict[str, Any]], examples: list[dict[str, Any]], unit: Unit | None) -> list[dict[str, Any]]:
    """The samples lines of one unit: its stored per-example rows in lm-eval's sample format."""
    from ckptlab.evaluation import metrics

    by_id: dict[str, tuple[dict[str, Any], str]] = {}
    delimiter = " "
    if unit is not None:
        from ckptlab.evaluation.runner import prompts_for

        try:
            prompts = prompts_for(unit)
        except ValueError:  # a chat-rendered prompt needs the model's tokenizer, which the export does not load
            prompts = [""] * len(unit.examples)
        by_id = {e.id: (e.fields, p) for e, p in zip(unit.examples, prompts)}
        delimiter = unit.prompt.target_delimiter(unit.task.spec)
    names = [r["metric"] for r in rows]
    lines = []
    for example in examples:
        scores = example["scores"]
        fields, prompt = by_id.get(example["example_id"], ({"id": example["example_id"]}, ""))
        choices = scores.get("choices") if isinstance(scores, dict) else None
        if choices is not None:  # classification: one log-likelihood request per choice
            target: Any = choices.index(example["gold"]) if example["gold"] in choices else example["gold"]
            arguments = {
                f"gen_args_{i}": {"arg_0": prompt, "arg_1": delimiter + choice} for i, choice in enumerate(choices)
            }
            resps: list[Any] = [[[str(ll), "None"]] for ll in scores["ll"]]
            filtered: list[Any] = [[str(ll), "None"] for ll in scores["ll"]]
        else:  # generation: one greedy request
            target = example["gold"]
            arguments = {"gen_args_0": {"arg_0": prompt, "arg_1": _generation_kwargs(unit)}}
            resps = [[example["prediction"]]]
            filtered = [example["prediction"]]
        line: dict[str, Any] = {
            "doc_id": example["example_index"],
            "doc": fields,
            "target": str(target),
            "arguments": arguments,
            "resps": resps,
            "filtered_resps": filtered,
            "filter": FILTER,
            "metrics": [METRIC_NAMES.get(n, n) for n in names],
            "doc_hash": _sha256(json.dumps(fields, indent=2, ensure_ascii=False, default=str)),
            "prompt_hash": _sha256(prompt),
            "target_hash": _sha256(str(target)),
        }
        for name in names:
            if name in MEAN_METRICS:
                line[METRIC_NAMES.get(name, name)] = metrics.item_values(name, [example])[0]
            else:  # lm-eval's per-example value of a corpus-level metric: the (gold, prediction) pair
                line[name] = [example["gold"], example["prediction"]]
        line["example_id"] = example["example_id"]
        line["prediction"] = example["prediction"]
        lines.append(line)
    return lines


def _generation_kwargs(unit: Unit | None) -> dict[str, Any]:
    if unit is None:
        return {}
    return {"until": unit.task.spec.stop, "max_gen_toks": unit.task.spec.max_new_tokens, "do_sample": False}
