"""Evaluate one model on units of (task, template, shots): cache look-up, batched scoring, metrics.

For each unit the examples are tokenized and grouped into batches by a pure function of their
lengths (`scoring.plan_batches`); a batch is scored only when one of its examples is missing from
the store, and its rows are committed as soon as it is done. So a second identical run does no
forward pass (and does not even load the model), and a killed run, resumed, re-forms the same
batches and ends with the same rows as an uninterrupted one.

Batch size. Each unit has one *plan size*: the explicit `batch_size`, or for `auto` the size its
rows were recorded with when the unit is resumed, else `AUTO_BATCH_SIZE` for the device (16 on CPU,
64 on an accelerator). With `auto`, an out-of-memory error halves the plan size and re-plans the
unit while none of its rows is stored yet (the first planned batch holds the longest prompts, so
that is where memory runs out). Once a row is stored the plan is fixed, because re-planning would
change batches whose rows are already scored; a later out-of-memory error splits only the batch at
hand into smaller pieces (again `plan_batches`, so the pieces are deterministic). Every row records
the size of the forward pass that scored it, so the largest recorded size of a unit is its plan
size, which is what a resumed `auto` run reuses. An explicit size never backs off: out of memory is
an error naming it, and the rows scored so far are kept.

Fault injection for tests: `CKPTLAB_FAULT=kill:examples=N` sends SIGKILL to the process once N
examples have been scored, before that batch is committed.
"""

from __future__ import annotations

import gc
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ckptlab.evaluation import generation, metrics, scoring
from ckptlab.evaluation.prompting import PromptFormat
from ckptlab.evaluation.store import ResultStore
from ckptlab.tasks import templates as tpl
from ckptlab.tasks.spec import Example, TaskData

AUTO_BATCH_SIZE = {"cpu": 16, "accelerator": 64}
"""`batch_size: auto` on CPU (scoring is fastest at 8-32 there) and the out-of-memory search's start elsewhere."""


class OutOfMemory(Exception):
    """A forward pass ran out of device memory (raised after the failed pass's tensors are released)."""


@dataclass
class Unit:
    """One task × template × shots × few-shot seed, over the first `limit` examples."""

    task: TaskData
    template: str
    shots: int
    seed: int
    examples: list[Example]
    prompt: PromptFormat = field(default_factory=PromptFormat)
    """BOS and chat template; already folded into `task.fingerprint` by `plan_units`."""


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


def prompts_for(unit: Unit, tokenizer: Any = None) -> list[str]:
    """Each example's prompt: its demonstrations (seeded per example) and template, plain or chat-rendered."""
    spec, pool = unit.task.spec, unit.task.fewshot
    template = spec.templates[unit.template]
    sampling = unit.prompt.fewshot_sampling or spec.fewshot_sampling
    prompts = []
    for example in unit.examples:
        demos = [pool[i] for i in tpl.demonstrations(len(pool), unit.shots, unit.seed, example.id, sampling)]
        prompts.append(unit.prompt.prompt(spec, template, example, demos, tokenizer))
    return prompts


class Evaluator:
    """Scores units for one model at a time, writing per-example and metric rows to a store."""

    def __init__(
        self,
        store: ResultStore,
        batch_size: int | str = 16,
        resamples: int = 1000,
        bootstrap_seed: int = 0,
        length_normalized: bool = False,
        scorer: str = "shared",
        say: Callable[[str], None] = print,
        progress: bool = False,
    ) -> None:
        self.store = store
        self.batch_size = batch_size
        self.resamples = resamples
        self.bootstrap_seed = bootstrap_seed
        self.length_normalized = length_normalized
        self.score = scoring.SCORERS[scorer]
        self.shares_prefixes = scorer == "shared"
        self.say = say
        self.progress = progress
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
            if missing and not loaded:
                loaded.append(load())  # before the clock starts: examples/s measures scoring only
            started = time.perf_counter()
            if missing:
                with self._progress_bar(unit, len(missing)) as bar:
                    plan_size = self._score_unit(unit, key, missing, *loaded[0], bar)
            seconds = time.perf_counter() - started
            result = UnitResult(unit, len(missing), len(unit.examples) - len(missing), seconds)
            if missing:
                self.say(
                    f"  {unit.task.spec.name} / {unit.template} / {unit.shots}-shot: {len(missing)} examples "
                    f"scored in {seconds:.1f} s ({len(missing) / max(seconds, 1e-9):.1f} examples/s, "
                    f"batch size {plan_size})"
                )
            result.metric_rows = self._metric_rows(unit, key, model_meta)
            results.append(result)
        self.store.add_metrics(row for r in results for row in r.metric_rows)
        sensitivity_rows = self._sensitivity_rows(results, model_fp, model_meta)
        self.store.add_metrics(sensitivity_rows)
        return results, sensitivity_rows

    def _progress_bar(self, unit: Unit, total: int) -> Any:
        """A tqdm bar over the unit's examples to score (examples/s and ETA), on stderr when it is a terminal."""
        from tqdm import tqdm

        label = f"{unit.task.spec.name}/{unit.template}/{unit.shots}-shot"
        # disable=None: tqdm draws only on a terminal, so logs and sweep jobs get the summary lines alone.
        return tqdm(total=total, desc=label, unit="ex", leave=False, disable=None if self.progress else True)

    def _score_unit(
        self, unit: Unit, key: tuple, missing: set[str], model: Any, tokenizer: Any, bar: Any = None
    ) -> int:
        """Score the unit's missing examples, committing batch by batch; returns the plan size used."""
        spec = unit.task.spec
        pad_id = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
        try:
            prompts = prompts_for(unit, tokenizer)
            prefixes = [unit.prompt.prefix_tokens(tokenizer, p) for p in prompts]
        except ValueError as error:
            from ckptlab.errors import UserError

            raise UserError(f"task {spec.name} / {unit.template}: {error}") from None
        delimiter = unit.prompt.target_delimiter(spec)
        if spec.type == "classification":
            choices = [e.choices or [] for e in unit.examples]
            requests = scoring.encode_requests(tokenizer, prompts, choices, delimiter, prefixes)
            lengths = [len(r.context) for r in requests]
        else:
            encoded = tokenizer(prompts, add_special_tokens=False)["input_ids"]
            contexts = [list(prefix) + list(ids) for prefix, ids in zip(prefixes, encoded)]
            lengths = [len(c) for c in contexts]

        shared: list[scoring.Prefix | None] = []  # the unit's common prefix, computed on first use

        def rows_for(batch: list[int]) -> list[dict[str, Any]]:
            if spec.type == "classification":
                if not shared:
                    shared.append(self._prefix(model, requests) if self.shares_prefixes else None)
                extra = {"prefix": shared[0]} if shared[0] is not None else {}
                scores = self.score(model, [requests[i] for i in batch], pad_id, **extra)
                return [self._classification_row(unit.examples[i], requests[i], ll) for i, ll in zip(batch, scores)]
            texts = generation.generate_batch(
                model,
                tokenizer,
                [contexts[i] for i in batch],
                spec.max_new_tokens,
                spec.stop,
                pad_id,
                strip=not spec.strict_exact_match,
            )
            return [
                self._generation_row(unit.examples[i], text, spec.strict_exact_match) for i, text in zip(batch, texts)
            ]

        def commit(batch: list[int], size: int) -> None:
            rows = [r for r in guarded(rows_for, batch) if r["example_id"] in missing]
            self.scored_total += len(rows)
            if self.fault is not None and self.scored_total >= self.fault:
                os.kill(os.getpid(), signal.SIGKILL)
            self.store.add_examples(key, spec.name, rows, size)
            if bar is not None:
                bar.update(len(rows))

        def commit_in_pieces(batch: list[int], size: int) -> None:
            # The plan is fixed: only this batch shrinks, into deterministic pieces of half the size.
            try:
                return commit(batch, size)
            except OutOfMemory:
                if size == 1:
                    raise self._out_of_memory(unit, 1, True) from None
            for piece in scoring.plan_batches([lengths[i] for i in batch], size // 2):
                commit_in_pieces([batch[i] for i in piece], size // 2)

        recorded = self.store.plan_batch_size(key)
        auto = self.batch_size == "auto"
        size = (recorded or self.auto_batch_size(model)) if auto else int(self.batch_size)
        if not auto and recorded is not None and recorded != size:
            self.say(
                f"  note: {spec.name} / {unit.template}: resuming rows scored at batch size {recorded} with {size}"
            )
        fixed = recorded is not None
        while True:
            try:
                for batch in scoring.plan_batches(lengths, size):
                    if not any(unit.examples[i].id in missing for i in batch):
                        continue
                    if fixed and auto:
                        commit_in_pieces(batch, size)
                    else:
                        commit(batch, size)
                    fixed = True
                return size
            except OutOfMemory:
                if not auto or size == 1:
                    raise self._out_of_memory(unit, size, auto) from None
            size //= 2  # nothing of this unit is stored yet: re-plan it at half the size
            self.say(f"  {spec.name} / {unit.template}: out of memory, trying batch size {size}")

    @staticmethod
    def _prefix(model: Any, requests: list[scoring.Request]) -> scoring.Prefix | None:
        """The KV cache of the tokens every prompt of the unit starts with (instructions, shared demonstrations).

        Taken over all the unit's requests, scored or not, so a resumed unit uses the same prefix; None
        when they share fewer than `MIN_PREFIX_TOKENS` or some prompt does not fit the model whole.
        """
        length = scoring.common_prefix_length([r.context for r in requests])
        limit = scoring.model_max_length(model)
        if not length or any(len(r.context) + max(len(c) for c in r.continuations) > limit for r in requests):
            return None
        return scoring.compute_prefix(model, requests[0].context[:length])

    def auto_batch_size(self, model: Any) -> int:
        """Where `batch_size: auto` starts for a unit without recorded rows, on the model's device."""
        device = next(model.parameters()).device
        return AUTO_BATCH_SIZE["cpu" if device.type == "cpu" else "accelerator"]

    @staticmethod
    def _out_of_memory(unit: Unit, size: int, auto: bool) -> Exception:
        from ckptlab.errors import UserError

        where = f"out of memory scoring {unit.task.spec.name} / {unit.template}"
        if auto:
            return UserError(f"{where} even at batch size 1: the model does not fit on this device")
        return UserError(
            f"{where} at --batch_size {size}: give a smaller one or auto (the rows scored so far are kept)"
        )

    @staticmethod
    def _classification_row(example: Example, request: scoring.Request, ll: list[float]) -> dict[str, Any]:
        choices = example.choices or []
        best = max(range(len(ll)), key=ll.__getitem__)
        scores = {
            "ll": ll,
            "tokens": [len(c) for c in request.continuations],
            "chars": [len(c) for c in choices],  # the choice alone, as lm-eval's acc_norm divides
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
    def _generation_row(example: Example, text: str, strict: bool = False) -> dict[str, Any]:
        scores = {
            "rouge_l": metrics.rouge_l(text, example.gold),
            "exact_match": float(text == example.gold) if strict else metrics.exact_match(text, example.gold),
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
        batch_size = plan_size(rows)
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
                "batch_size": plan_size(rows),
                "n": min(r["n"] for r in rows),
            }
            for metric_name, values in by_metric.items():
                for stat, value in metrics.sensitivity(values).items():
                    out.append({**base, "metric": f"{metric_name}:{stat}", "value": value})
            value, common = metrics.agreement(predictions)
            out.append({**base, "metric": "agreement", "value": value, "n": common})
        return out


def plan_size(rows: list[dict[str, Any]]) -> int | None:
    """The plan size of rows of one unit: the largest forward pass they were scored with (module docstring)."""
    return max((r["batch_size"] or 0 for r in rows), default=None)


def guarded(forward: Callable[[list[int]], Any], batch: list[int]) -> Any:
    """`forward(batch)`, with an out-of-memory error turned into `OutOfMemory` once the device memory is freed."""
    import torch

    try:
        return forward(batch)
    except torch.OutOfMemoryError:
        pass
    except RuntimeError as error:  # MPS and some CUDA allocator paths raise a plain RuntimeError
        if "out of memory" not in str(error).lower():
            raise
    # Outside the except clause, so the traceback (and the failed pass's tensors) are already released.
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    raise OutOfMemory(f"batch of {len(batch)}")
