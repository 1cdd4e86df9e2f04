"""Evaluate one model on units of (task, template, shots): cache look-up, batched scoring, metrics.

For each unit the examples are tokenized and grouped into batches by a pure function of their
lengths (`scoring.plan_batches`); a batch is scored only when one of its examples is missing from
the store, and its rows are committed as soon as it is done. So a second identical run does no
forward pass (and does not even load the model), and a killed run, resumed, re-forms the same
batches and ends with the same rows as an uninterrupted one.

Fault injection for tests: `CKPTLAB_FAULT=kill:examples=N` sends SIGKILL to the process once N
examples have been scored, before that batch is committed.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ckptlab.evaluation import generation, metrics, scoring
from ckptlab.evaluation.store import ResultStore
from ckptlab.tasks import templates as tpl
from ckptlab.tasks.spec import Example, TaskData


@dataclass
class Unit:
    """One task × template × shots × few-shot seed, over the first `limit` examples."""

    task: TaskData
    template: str
    shots: int
    seed: int
    examples: list[Example]


@dataclass
class UnitResult:
    unit: Unit
    scored: int
    cached: int
    seconds: float
    metric_rows: list[dict[str, Any]] = field(default_factory=list)


def fault_after() -> int | None:
    """N from `CKPTLAB_FAULT=kill:examples=N`, else None."""
    from ckptlab.faults import injected_fault

    fault = injected_fault()
    if fault is not None and fault.kind == "kill" and "examples" in fault.at:
        return fault.at["examples"]
    return None


def prompts_for(unit: Unit) -> list[str]:
    spec, pool = unit.task.spec, unit.task.fewshot
    template = spec.templates[unit.template]
    prompts = []
    for example in unit.examples:
        demos = [
            (pool[i].fields, pool[i].gold) for i in tpl.fewshot_indices(len(pool), unit.shots, unit.seed, example.id)
        ]
        prompts.append(tpl.build_prompt(template, example.fields, demos, spec.target_delimiter, spec.fewshot_delimiter))
    return prompts


class Evaluator:
    """Scores units for one model at a time, writing per-example and metric rows to a store."""

    def __init__(
        self,
        store: ResultStore,
        batch_size: int = 16,
        resamples: int = 1000,
        bootstrap_seed: int = 0,
        length_normalized: bool = False,
        scorer: str = "shared",
        say: Callable[[str], None] = print,
    ) -> None:
        self.store = store
        self.batch_size = batch_size
        self.resamples = resamples
        self.bootstrap_seed = bootstrap_seed
        self.length_normalized = length_normalized
        self.score = scoring.SCORERS[scorer]
        self.say = say
        self.fault = fault_after()
        self.scored_total = 0

    def run_model(
        self, model_fp: str, model_meta: dict[str, Any], units: list[Unit], load: Callable[[], tuple[Any, Any]]
    ) -> tuple[list[UnitResult], list[dict[str, Any]]]:
        """Evaluate every unit for one model: (unit results, prompt-sensitivity rows).

        `load()` returns (model, tokenizer); it is called only when some example is not in the store.
        """
        loaded: list[tuple[Any, Any]] = []
        results = []
        for unit in units:
            key = (model_fp, unit.task.fingerprint, unit.template, unit.shots, unit.seed)
            have = self.store.cached_ids(key)
            missing = {e.id for e in unit.examples} - have
            started = time.perf_counter()
            if missing:
                if not loaded:
                    loaded.append(load())
                self._score_unit(unit, key, missing, *loaded[0])
            seconds = time.perf_counter() - started
            result = UnitResult(unit, len(missing), len(unit.examples) - len(missing), seconds)
            if missing:
                self.say(
                    f"  {unit.task.spec.name} / {unit.template} / {unit.shots}-shot: {len(missing)} examples "
                    f"scored in {seconds:.1f} s ({len(missing) / max(seconds, 1e-9):.1f} examples/s)"
                )
            result.metric_rows = self._metric_rows(unit, key, model_meta)
            results.append(result)
        self.store.add_metrics(row for r in results for row in r.metric_rows)
        sensitivity_rows = self._sensitivity_rows(results, model_fp, model_meta)
        self.store.add_metrics(sensitivity_rows)
        return results, sensitivity_rows

    def _score_unit(self, unit: Unit, key: tuple, missing: set[str], model: Any, tokenizer: Any) -> None:
        spec = unit.task.spec
        pad_id = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
        prompts = prompts_for(unit)
        if spec.type == "classification":
            choices = [e.choices or [] for e in unit.examples]
            requests = scoring.encode_requests(tokenizer, prompts, choices, spec.target_delimiter)
            lengths = [len(r.context) for r in requests]
        else:
            contexts = tokenizer(prompts, add_special_tokens=False)["input_ids"]
            lengths = [len(c) for c in contexts]
        for batch in scoring.plan_batches(lengths, self.batch_size):
            if not any(unit.examples[i].id in missing for i in batch):
                continue
            if spec.type == "classification":
                scores = self.score(model, [requests[i] for i in batch], pad_id)
                rows = [
                    self._classification_row(unit.examples[i], requests[i], ll, spec.target_delimiter)
                    for i, ll in zip(batch, scores)
                ]
            else:
                texts = generation.generate_batch(
                    model, tokenizer, [contexts[i] for i in batch], spec.max_new_tokens, spec.stop, pad_id
                )
                rows = [self._generation_row(unit.examples[i], text) for i, text in zip(batch, texts)]
            rows = [r for r in rows if r["example_id"] in missing]
            self.scored_total += len(rows)
            if self.fault is not None and self.scored_total >= self.fault:
                os.kill(os.getpid(), signal.SIGKILL)
            self.store.add_examples(key, spec.name, rows, self.batch_size)

    @staticmethod
    def _classification_row(
        example: Example, request: scoring.Request, ll: list[float], delimiter: str
    ) -> dict[str, Any]:
        choices = example.choices or []
        best = max(range(len(ll)), key=ll.__getitem__)
        scores = {
            "ll": ll,
            "tokens": [len(c) for c in request.continuations],
            "chars": [len(delimiter + c) for c in choices],
            "choices": choices,
        }
        return {
            "example_id": example.id,
            "example_index": example.index,
            "prediction": choices[best],
            "scores": scores,
            "gold": example.gold,
            "correct": choices[best] == example.gold,
        }

    @staticmethod
    def _generation_row(example: Example, text: str) -> dict[str, Any]:
        scores = {
            "rouge_l": metrics.rouge_l(text, example.gold),
            "exact_match": metrics.exact_match(text, example.gold),
        }
        return {
            "example_id": example.id,
            "example_index": example.index,
            "prediction": text,
            "scores": scores,
            "gold": example.gold,
            "correct": bool(scores["exact_match"]),
        }

    def metric_names(self, unit: Unit) -> list[str]:
        names = list(unit.task.spec.metrics)
        if self.length_normalized and unit.task.spec.type == "classification" and "accuracy_norm" not in names:
            names.append("accuracy_norm")
        return names

    def _metric_rows(self, unit: Unit, key: tuple, model_meta: dict[str, Any]) -> list[dict[str, Any]]:
        rows = self.store.examples(key, [e.id for e in unit.examples])
        # The batch size the rows were scored with (cached rows keep theirs); the most common one.
        sizes = [r["batch_size"] for r in rows]
        batch_size = max(sorted(set(sizes)), key=sizes.count) if sizes else self.batch_size
        out = []
        for name in self.metric_names(unit):
            low, high = metrics.bootstrap_interval(name, rows, self.resamples, self.bootstrap_seed)
            out.append(
                {
                    **model_meta,
                    "model_fp": key[0],
                    "task": unit.task.spec.name,
                    "task_fp": key[1],
                    "split": unit.task.split,
                    "template": unit.template,
                    "shots": unit.shots,
                    "seed": unit.seed,
                    "metric": name,
                    "value": metrics.metric_value(name, rows),
                    "ci_low": low,
                    "ci_high": high,
                    "n": len(rows),
                    "batch_size": batch_size,
                    "_predictions": {r["example_id"]: r["prediction"] for r in rows},
                }
            )
        return out

    def _sensitivity_rows(
        self, results: list[UnitResult], model_fp: str, model_meta: dict[str, Any]
    ) -> list[dict[str, Any]]:
        groups: dict[tuple, list[dict[str, Any]]] = {}
        for result in results:
            for row in result.metric_rows:
                groups.setdefault((row["task"], row["task_fp"], row["split"], row["shots"], row["seed"]), []).append(
                    row
                )
        out = []
        for (task, task_fp, split, shots, seed), rows in groups.items():
            by_metric: dict[str, dict[str, float]] = {}
            predictions: dict[str, dict[str, str]] = {}
            for row in rows:
                by_metric.setdefault(row["metric"], {})[row["template"]] = row["value"]
                predictions[row["template"]] = row["_predictions"]
            if len(predictions) < 2:
                continue
            base = {
                **model_meta,
                "model_fp": model_fp,
                "task": task,
                "task_fp": task_fp,
                "split": split,
                "template": "*",
                "shots": shots,
                "seed": seed,
                "batch_size": self.batch_size,
                "n": min(r["n"] for r in rows),
            }
            for metric_name, values in by_metric.items():
                for stat, value in metrics.sensitivity(values).items():
                    out.append({**base, "metric": f"{metric_name}:{stat}", "value": value})
            value, common = metrics.agreement(predictions)
            out.append({**base, "metric": "agreement", "value": value, "n": common})
        return out
