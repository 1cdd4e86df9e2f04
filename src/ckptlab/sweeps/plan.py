"""The job graph of a sweep, every job content-addressed.

A job's id is the SHA-256 of canonical JSON over: its kind; its verb config as resolved by the
verb's dataclass (defaults included, so writing a default changes nothing) without the keys that
only say where things go (`out`, `resume`, `init_from`, progress bars); the fingerprints of its
inputs in place of their paths (a checkpoint's content hash, a task file's bytes and data files,
a prepared data directory's data and tokenizer fingerprints); and the kind's results version
(`RESULTS_VERSIONS`), not the ckptlab release. A model
that another job of the sweep produces is fingerprinted by that job's id, so changing one
fine-tune's learning rate changes that job's id and those of the jobs that use its output, and
nothing else. Moving inputs does not change ids; changing their content does.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ckptlab import config as configlib
from ckptlab.errors import UserError
from ckptlab.sweeps.spec import Spec, TrainEntry, chain_bases

# Keys that say where outputs go or how progress is shown: they never change results. The input
# model is hashed by its fingerprint, an evaluation's tasks by theirs, not by how they were named.
# Nor do permissions and memory/storage trade-offs that compute the same numbers: letting a model run
# its own code, recomputing activations, keeping optimizer moments in old checkpoints.
NOT_HASHED = {"out", "resume", "init_from", "allow_changed", "trust_remote_code"}
NOT_HASHED_EVALUATE = {"model", "store", "export", "checkpoints", "tasks", "task_dirs", "report_to", "progress"}
NOT_HASHED_TRAIN = {"progress", "tensorboard", "report_to", "activation_checkpointing"}
NOT_HASHED_KEEP = {"optimizer_state"}

# What a job's results mean, per kind: bump a kind's number with any change that makes its verb compute
# other numbers from the same config and inputs (a new default, a fixed bug in the loss or the scorer),
# and only then are such jobs redone. A release that changes nothing a job computes keeps every id, so
# a finished sweep stays finished across upgrades (task files and the scorer are versioned the same way).
# evaluate 2: lm-eval's tokenization (trailing whitespace to the continuation) and acc_norm, BOS auto.
RESULTS_VERSIONS = {"pretrain": 1, "finetune": 1, "cpt": 1, "evaluate": 2}


@dataclass
class Model:
    """A model of the sweep: a base checkpoint, or what a pretrain/finetune/cpt job produces."""

    key: str
    """Unique name in the sweep: the checkpoint label, or `FINETUNE@BASE` for a trained one."""
    role: str
    """base, finetuned or cpt."""
    fingerprint: str
    """Content hash (a checkpoint on disk), `hub:org/name@rev`, or `job:ID` (made by a job)."""
    source: str | None = None
    """Where it is loaded from; None when a job produces it (see `producer`)."""
    producer: str | None = None
    """Directory name (under OUT/jobs) of the job whose run holds this model."""
    checkpoint: str | None = None
    """Label of the base checkpoint it descends from."""
    step: int | None = None
    """Step and tokens seen of that base checkpoint (None until a pretrain job has run)."""
    tokens_seen: int | None = None
    finetune: str | None = None
    finetune_task: str | None = None
    method: str | None = None
    variant: str | None = None
    parent: dict[str, Any] | None = None
    """The Model (as a mapping) it was trained from."""
    base: dict[str, Any] | None = None
    """The base Model (as a mapping) it descends from; None for a base model."""


@dataclass
class Job:
    """One unit of work: run a verb on one model, or evaluate one model."""

    id: str
    kind: str
    """pretrain, finetune, cpt or evaluate."""
    name: str
    values: dict[str, Any]
    """The verb's config keys (nested), without the ones the sweep sets."""
    deps: list[str] = field(default_factory=list)
    """Ids of the jobs whose outputs this job reads."""
    model: dict[str, Any] | None = None
    """The model read (finetune, cpt, evaluate) or produced (pretrain), as a Model mapping."""
    resources: dict[str, float] = field(default_factory=dict)
    sweep: str = ""
    cwd: str = ""
    """The directory relative paths in `values` and `model` are read from (a Ray worker's differs)."""

    @property
    def dirname(self) -> str:
        return f"{self.kind}-{safe_name(self.name)}-{self.id[:12]}"


@dataclass
class Plan:
    jobs: list[Job]
    """In an order where every job comes after its dependencies."""
    task_fps: list[str]
    """Fingerprints of the evaluated tasks (the results table keeps only their rows)."""

    def by_id(self) -> dict[str, Job]:
        return {job.id: job for job in self.jobs}


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80]


def canonical_hash(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _sha256_file(path: Path) -> str:
    from ckptlab.runs.checkpoint import sha256_file

    return sha256_file(path)


class Fingerprinter:
    """Fingerprints of inputs by path, computed once each (weights hashed through the store's memo)."""

    def __init__(self, store: Any = None) -> None:
        self.store = store
        self.memo: dict[tuple[str, str], str] = {}

    def _file(self, path: Path) -> str:
        if self.store is not None:
            return self.store.file_sha256(path.resolve(), _sha256_file)
        return _sha256_file(path)

    def __call__(self, what: str, value: str) -> str:
        key = (what, value)
        if key not in self.memo:
            self.memo[key] = getattr(self, f"_{what}")(value)
        return self.memo[key]

    def _data(self, value: str) -> str:
        from ckptlab.data.shards import read_manifest

        manifest = read_manifest(value)
        return f"data:{manifest.get('data_fingerprint')}:{manifest.get('tokenizer_fingerprint')}"

    def _file_content(self, value: str) -> str:
        return "file:" + self._file(Path(value).expanduser())

    def _task(self, value: str) -> str:
        """A task file (or shipped name): its bytes and the bytes of its local split files."""
        from ckptlab.tasks.spec import read_task_file, shipped_tasks

        path = Path(value).expanduser()
        if not path.is_file():
            path = shipped_tasks().get(value, path)
        spec = read_task_file(path)
        files = {
            name: self._file(split.path)
            for name, split in sorted(spec.splits.items())
            if split.path is not None and split.path.is_file()
        }
        return "task:" + canonical_hash({"file": self._file(path), "splits": files})[:32]

    def _model(self, source: str) -> str:
        from ckptlab.evaluation.models import content_hash, resolve_models
        from ckptlab.models.hf import parse_source

        path = Path(source).expanduser()
        if not path.exists() and parse_source(source).kind == "hub":
            return f"hub:{source}"  # the revision names the content; nothing is downloaded to plan
        (ref,) = resolve_models([source], "latest")
        return "content:" + content_hash(ref, self.store.file_sha256 if self.store is not None else None)


def _inputs(entry: TrainEntry, fp: Fingerprinter) -> dict[str, str]:
    """{path as written: fingerprint} for every input path of an entry's config."""
    try:
        return _input_paths(entry.kind, entry.config, fp)
    except UserError as error:
        raise type(error)(f"{entry.kind} {entry.name}: {error}") from None


def _input_paths(kind: str, values: Any, fp: Fingerprinter) -> dict[str, str]:
    found: dict[str, str] = {}

    def add(what: str, value: Any) -> None:
        if value:
            found[str(value)] = fp(what, str(value))

    if kind == "pretrain":
        add("data", values.data)
    elif kind == "finetune":
        add("task", values.task)
        add("file_content", values.data)
        add("file_content", values.val_data)
        add("data", values.replay)
    elif kind == "cpt":
        for source in list(values.blend) + list(values.second_blend):
            add("data", source.data)
        add("data", values.replay)
        add("data", values.validate_on)
    return found


def _normalised(kind: str, config: Any, inputs: dict[str, str]) -> Any:
    """The config as plain data without the keys that do not change results, input paths replaced
    by their fingerprints."""

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, str) and value in inputs:
            return inputs[value]
        return value

    dropped = NOT_HASHED | (NOT_HASHED_EVALUATE if kind == "evaluate" else set())
    values = {k: v for k, v in configlib.to_dict(config).items() if k not in dropped}
    for section, dropped_there in (("train", NOT_HASHED_TRAIN), ("keep", NOT_HASHED_KEEP)):
        if isinstance(values.get(section), dict):
            values[section] = {k: v for k, v in values[section].items() if k not in dropped_there}
    return walk(values)


def job_id(kind: str, config: Any, inputs: dict[str, str], models: list[Any]) -> str:
    return canonical_hash(
        {"kind": kind, "config": _normalised(kind, config, inputs), "models": models, "results": RESULTS_VERSIONS[kind]}
    )


def _labels(model: Model) -> dict[str, Any]:
    """What an evaluation writes about its model besides scores (its sweep_models row): relabelling
    re-runs the evaluation, which finds every score in the store's cache."""
    names = ("key", "role", "checkpoint", "finetune", "finetune_task", "method", "variant")
    return {name: getattr(model, name) for name in names}


def _method(entry: TrainEntry) -> str:
    if entry.kind == "cpt":
        return "cpt" if entry.config.recipe == "none" else f"cpt-{entry.config.recipe}"
    return entry.config.method


def _finetune_task(entry: TrainEntry) -> str | None:
    """What the run trained on: the task's name, an instruction file's stem, cpt's data directories."""
    config = entry.config
    if entry.kind == "cpt":
        return "+".join(dict.fromkeys(Path(s.data).name for s in list(config.blend) + list(config.second_blend)))
    if config.data:
        return Path(config.data).stem
    path = Path(config.task).expanduser()
    if path.is_file():
        from ckptlab.tasks.spec import read_task_file

        return read_task_file(path).name
    return config.task


def build_plan(spec: Spec, store: Any = None) -> Plan:
    """Every job of the sweep with its id; raises UserError for inputs that cannot be read."""
    fp = Fingerprinter(store)
    jobs: list[Job] = []
    bases: dict[str, Model] = {}
    for checkpoint in spec.checkpoints:
        bases[checkpoint.label] = Model(
            key=checkpoint.label,
            role="base",
            fingerprint=fp("model", checkpoint.source),
            source=checkpoint.source,
            checkpoint=checkpoint.label,
            step=checkpoint.step,
            tokens_seen=checkpoint.tokens_seen,
        )
    listed = list(bases)
    for entry in spec.pretrain:
        job = Job(
            job_id("pretrain", entry.config, _inputs(entry, fp), []),
            "pretrain",
            entry.name,
            entry.values,
            resources={**spec.resources["pretrain"], **entry.resources},
            sweep=spec.name,
        )
        model = Model(
            key=entry.name, role="base", fingerprint=f"job:{job.id}", producer=job.dirname, checkpoint=entry.name
        )
        job.model = asdict(model)
        jobs.append(job)
        bases[entry.name] = model
    producers = {job.dirname: job.id for job in jobs}
    trained: list[Model] = []
    made: dict[str, dict[str, Model]] = {}  # finetune entry → base label → its model (for `after`)
    for entry in spec.finetunes + spec.cpt:
        inputs = _inputs(entry, fp)
        labels = chain_bases(entry, spec.finetunes, listed) if entry.kind == "finetune" else entry.bases or listed
        for label in labels:
            base = bases[label]
            # A chained entry starts from its `after` entry's model of this checkpoint: that model's
            # fingerprint is its job's id, so this job's id covers the whole chain.
            parent = made[entry.after][label] if entry.after else base
            job = Job(
                job_id(entry.kind, entry.config, inputs, [parent.fingerprint]),
                entry.kind,
                f"{entry.name}@{label}",
                entry.values,
                deps=[producers[parent.producer]] if parent.producer else [],
                model=asdict(parent),
                resources={**spec.resources[entry.kind], **entry.resources},
                sweep=spec.name,
            )
            jobs.append(job)
            producers[job.dirname] = job.id
            model = Model(
                key=job.name,
                role="finetuned" if entry.kind == "finetune" else "cpt",
                fingerprint=f"job:{job.id}",
                producer=job.dirname,
                checkpoint=base.checkpoint,
                step=base.step,
                tokens_seen=base.tokens_seen,
                finetune=entry.replicate_of or entry.name,
                finetune_task=_finetune_task(entry),
                method=_method(entry),
                variant=entry.variant,
                parent=asdict(parent),
                base=asdict(base),
            )
            trained.append(model)
            made.setdefault(entry.name, {})[label] = model
    task_fps: list[str] = []
    evaluations: dict[str, Job] = {}
    if spec.evaluate is not None:
        from ckptlab.evaluation.plan import plan_units

        units = plan_units(spec.evaluate_config, lambda line: None)
        task_fps = sorted({unit.task.fingerprint for unit in units})
        for model in list(bases.values()) + trained:
            evaluations[model.producer or model.key] = Job(
                job_id("evaluate", spec.evaluate_config, {}, [model.fingerprint, _labels(model)] + task_fps),
                "evaluate",
                model.key,
                spec.evaluate,
                deps=[producers[model.producer]] if model.producer else [],
                model=asdict(model),
                resources=dict(spec.resources["evaluate"]),
                sweep=spec.name,
            )
    # Base checkpoints are evaluated first and every trained model right after its training, so
    # results arrive early and a sweep stopped half-way has whole rows of the table.
    ordered = [evaluations.pop(key) for key in listed if key in evaluations]
    for job in jobs:
        ordered.append(job)
        if job.dirname in evaluations:
            ordered.append(evaluations.pop(job.dirname))
    jobs = ordered
    cwd = os.getcwd()
    for job in jobs:
        job.cwd = cwd
    return Plan(jobs, task_fps)


def dependents(plan: Plan, failed: set[str]) -> set[str]:
    """Ids of jobs that depend, directly or not, on a job in `failed`."""
    blocked: set[str] = set()
    for job in plan.jobs:  # dependencies come first, so one pass suffices
        if any(dep in failed or dep in blocked for dep in job.deps):
            blocked.add(job.id)
    return blocked
