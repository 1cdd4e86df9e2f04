"""The sweep spec: the sections of a sweep YAML checked and turned into typed entries.

Every training entry's `config` is a mapping of the verb's own config keys (dotted keys allowed,
`train.schedule.lr: 1e-3`), optionally on top of `preset` YAML files (e.g. `configs/finetune_world_nli.yaml`),
and is built into the verb's config dataclass here, so a mistyped key or value fails before any
job runs, with one line naming the entry and the key. Keys the sweep sets itself (`init_from`,
`out`, `resume`; `model`, `store` for evaluation) are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ckptlab import config as configlib
from ckptlab.errors import ConfigError, UserError

# job kind -> the keys of its verb's config that the sweep sets itself
SET_BY_SWEEP = {
    "pretrain": ("out", "resume"),
    "finetune": ("init_from", "out", "resume"),
    "cpt": ("init_from", "out", "resume"),
    "evaluate": ("model", "store", "export", "checkpoints"),
}
TRAINING_KINDS = ("pretrain", "finetune", "cpt")


class Verbs(Protocol):
    """The training verbs a sweep runs, handed in by the `sweep` command (`ckptlab.commands.VerbTable`):
    the sweep engine sits below the commands and never imports them."""

    def config_class(self, verb: str) -> type:
        """The config dataclass of a training verb."""
        ...

    def run(self, verb: str, config: Any) -> int:
        """Run a training verb with a built config."""
        ...


ENTRY_KEYS = {"name", "config", "preset", "variant", "from", "after", "resources", "seeds"}
RESOURCE_KEYS = {"num_cpus", "num_gpus"}
# No num_gpus: without one, a job reserves a GPU when the Ray cluster has any (decided at execution time,
# `ckptlab.sweeps.executors.reservation`); a given one, 0 included, wins.
DEFAULT_RESOURCES = {"num_cpus": 1}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class BaseCheckpoint:
    """A model the sweep starts from: a kept checkpoint, an HF directory, or a hub revision."""

    label: str
    """How results name it: the checkpoint directory (`step-00000200`) or the hub revision."""
    source: str
    """What `load_model` is given."""
    kind: str
    """checkpoint, directory or hub."""
    step: int | None = None
    """Training step: a kept checkpoint's, or what the hub revision name says (`step1000`); None if unknown."""
    tokens_seen: int | None = None
    """Tokens seen at that step, when known (a hub name gives them as `-tokens84B`)."""
    stage: int | None = None
    """Training stage of a hub revision (`stage2-...`): steps restart in each stage, so order by stage, then step."""
    ingredient: int | None = None
    """Data mix of an annealing stage's hub revision (`ingredient1`)."""


@dataclass
class TrainEntry:
    """One pretrain, finetune or cpt entry of the sweep."""

    kind: str
    name: str
    values: dict[str, Any]
    """The verb's config keys (nested), without the ones the sweep sets."""
    config: Any
    """The verb's config dataclass built from `values` (the keys the sweep sets left at defaults)."""
    variant: str | None = None
    bases: list[str] | None = None
    """Labels of the models to start from; None = every checkpoint of the `checkpoints` section."""
    resources: dict[str, float] = field(default_factory=dict)
    after: str | None = None
    """Finetune entries only: the finetune entry whose output models this one fine-tunes (a chain);
    None = fine-tune the base models."""
    replicate_of: str | None = None
    """For one seed of an entry with `seeds`: the entry's name (results name the model by it, with
    `seed=K` in the variant; `name` is `NAME-seedK`, unique in the sweep)."""


@dataclass
class Spec:
    """A checked sweep."""

    name: str
    out: Path
    checkpoints: list[BaseCheckpoint]
    pretrain: list[TrainEntry]
    finetunes: list[TrainEntry]
    cpt: list[TrainEntry]
    evaluate: dict[str, Any] | None
    """EvaluateConfig keys (nested) for every model, or None for no evaluation."""
    evaluate_config: Any
    resources: dict[str, dict[str, float]]
    """Per job kind: num_cpus, and num_gpus when given (the Ray executor reserves them)."""
    verbs: Verbs
    """The training verbs the jobs run."""


def nested(values: dict[str, Any], where: str) -> dict[str, Any]:
    """`{"train.lr": 1}` → `{"train": {"lr": 1}}`, merged with any nested mappings given."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of config keys")
    tree: dict[str, Any] = {}
    for key, value in values.items():
        if not isinstance(key, str):
            raise ConfigError(f"{where}: config keys are strings, got {key!r}")
        if isinstance(value, dict):
            value = nested(value, f"{where}.{key}")
        update: dict[str, Any] = {}
        configlib._set_dotted(update, key, value)
        tree = configlib._merge(tree, update)
    return tree


def config_class(kind: str, verbs: Verbs) -> type:
    """The config dataclass of a job kind: a training verb's, or evaluation's."""
    if kind == "evaluate":
        from ckptlab.evaluation.plan import EvaluateConfig

        return EvaluateConfig
    return verbs.config_class(kind)


def build_verb_config(kind: str, values: dict[str, Any], where: str, verbs: Verbs) -> Any:
    """The verb's config dataclass from sweep values, errors naming `where` and the key."""
    reserved = [k for k in SET_BY_SWEEP[kind] if k in values]
    if reserved:
        raise ConfigError(f"{where}.{reserved[0]}: set by the sweep for every job; leave it out")
    try:
        return configlib.build(config_class(kind, verbs), values)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


def _resources(value: Any, where: str) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping with num_cpus and/or num_gpus")
    for key, amount in value.items():
        if key not in RESOURCE_KEYS:
            raise ConfigError(f"unknown key '{where}.{key}' (known: {', '.join(sorted(RESOURCE_KEYS))})")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
            raise ConfigError(f"{where}.{key}: expected a number ≥ 0, got {amount!r}")
    return dict(value)


SEED_PART = re.compile(r"(?:^|, )seed=(\d+)$")
"""The end of a replicate's variant that names its seed (`seed=2`, `lr 3e-4, seed=2`); the report reads it."""


def with_seed(variant: str | None, seed: int) -> str:
    """The variant of one seed's replicate of an entry with `variant` (matched by SEED_PART)."""
    return ", ".join(x for x in (variant, f"seed={seed}") if x)


def _seeds(raw: dict[str, Any], kind: str, where: str, values: dict[str, Any]) -> list[int] | None:
    seeds = raw.get("seeds")
    if seeds is None:
        return None
    if kind != "finetune":
        raise ConfigError(f"{where}.seeds: only finetunes entries are replicated over seeds")
    if (
        not isinstance(seeds, list)
        or not seeds
        or len(set(seeds)) != len(seeds)
        or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in seeds)
    ):
        raise ConfigError(f"{where}.seeds: expected a list of distinct integers ≥ 0, got {seeds!r}")
    if "seed" in (values.get("train") or {}):
        raise ConfigError(f"{where}.config.train.seed: give either train.seed or seeds, not both")
    if raw.get("after") is not None:
        raise ConfigError(f"{where}.seeds: a chained entry (after) cannot be replicated over seeds")
    return seeds


def _train_entries(kind: str, section: str, index: int, raw: Any, names: set[str], verbs: Verbs) -> list[TrainEntry]:
    """The entry, or one entry per seed when it lists `seeds` (each with `train.seed` set)."""
    entry = _train_entry(kind, section, index, raw, names, verbs)
    seeds = _seeds(raw, kind, f"{section}[{index}] ({entry.name})", entry.values)
    if seeds is None:
        return [entry]
    replicas = []
    for seed in seeds:
        name = f"{entry.name}-seed{seed}"
        if name in names:
            raise ConfigError(f"{section}[{index}].seeds: '{name}' is used by another entry")
        names.add(name)
        values = configlib._merge(entry.values, {"train": {"seed": seed}})
        config = build_verb_config(kind, values, f"{section}[{index}] ({entry.name}).config", verbs)
        replicas.append(
            TrainEntry(
                kind,
                name,
                values,
                config,
                with_seed(entry.variant, seed),
                entry.bases,
                entry.resources,
                None,
                replicate_of=entry.name,
            )
        )
    return replicas


def _train_entry(kind: str, section: str, index: int, raw: Any, names: set[str], verbs: Verbs) -> TrainEntry:
    where = f"{section}[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with name and config")
    unknown = sorted(set(raw) - ENTRY_KEYS)
    if unknown:
        raise ConfigError(f"unknown key '{where}.{unknown[0]}' (known: {', '.join(sorted(ENTRY_KEYS))})")
    name = str(raw.get("name") or "")
    if not NAME.match(name):
        raise ConfigError(f"{where}.name: expected a short name (letters, digits, . _ -), got {name!r}")
    if name in names:
        raise ConfigError(f"{where}.name: '{name}' is used by another entry")
    names.add(name)
    where = f"{section}[{index}] ({name})"
    values: dict[str, Any] = {}
    presets = raw.get("preset") or []
    for preset in [presets] if isinstance(presets, str) else presets:
        values = configlib._merge(values, nested(configlib.read_yaml(preset), f"{where}.preset {preset}"))
    values = configlib._merge(values, nested(raw.get("config") or {}, f"{where}.config"))
    config = build_verb_config(kind, values, f"{where}.config", verbs)
    bases = raw.get("from")
    if bases is not None:
        bases = [bases] if isinstance(bases, str) else bases
        if kind == "pretrain" or not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
            raise ConfigError(f"{where}.from: expected a list of checkpoint labels to start from")
    variant = raw.get("variant")
    after = raw.get("after")
    if after is not None and (kind != "finetune" or not isinstance(after, str)):
        raise ConfigError(f"{where}.after: expected the name of another finetunes entry (finetunes only)")
    return TrainEntry(
        kind,
        name,
        values,
        config,
        None if variant is None else str(variant),
        bases,
        _resources(raw.get("resources"), f"{where}.resources"),
        after,
    )


def chain_order(finetunes: list[TrainEntry]) -> list[TrainEntry]:
    """The finetune entries with every `after` target before the entries chained to it (the given
    order otherwise, so a sweep without chains plans exactly as before); unknown targets and
    cycles are one-line errors naming the entry."""
    by_name = {entry.name: entry for entry in finetunes}
    for entry in finetunes:
        seen = [entry.name]
        current = entry
        while current.after is not None:
            if current.after not in by_name and any(e.replicate_of == current.after for e in finetunes):
                raise ConfigError(
                    f"finetunes ({current.name}).after: '{current.after}' is replicated over seeds; "
                    "a chain cannot start from it"
                )
            if current.after not in by_name:
                raise ConfigError(
                    f"finetunes ({current.name}).after: no finetunes entry '{current.after}' "
                    f"(entries: {', '.join(sorted(by_name))})"
                )
            if current.after in seen:
                cycle = " → ".join(seen[seen.index(current.after) :] + [current.after])
                raise ConfigError(f"finetunes ({current.name}).after: the chain is a cycle ({cycle})")
            seen.append(current.after)
            current = by_name[current.after]
    ordered: list[TrainEntry] = []
    placed: set[str] = set()

    def place(entry: TrainEntry) -> None:
        if entry.name in placed:
            return
        if entry.after is not None:
            place(by_name[entry.after])
        ordered.append(entry)
        placed.add(entry.name)

    for entry in finetunes:
        place(entry)
    return ordered


def chain_bases(entry: TrainEntry, finetunes: list[TrainEntry], listed: list[str]) -> list[str]:
    """Labels of the base checkpoints an entry's models descend from (following `after`)."""
    by_name = {e.name: e for e in finetunes}
    mine = entry.bases or listed
    if entry.after is None:
        return mine
    upstream = chain_bases(by_name[entry.after], finetunes, listed)
    if entry.bases is None:
        return upstream
    missing = [b for b in entry.bases if b not in upstream]
    if missing:
        raise ConfigError(
            f"finetunes ({entry.name}).from: '{missing[0]}' is not fine-tuned by '{entry.after}' "
            f"(it fine-tunes: {', '.join(upstream)})"
        )
    return mine


def _checkpoints(raw: Any, out: Path) -> list[BaseCheckpoint]:
    from ckptlab.evaluation.models import resolve_models
    from ckptlab.sweeps.hub_checkpoints import hub_checkpoints

    if not isinstance(raw, list):
        raise ConfigError("checkpoints: expected a list of {run, steps}, {path} or {hub, revisions} entries")
    found: list[BaseCheckpoint] = []
    for i, item in enumerate(raw):
        where = f"checkpoints[{i}]"
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, dict) or len({"run", "path", "hub"} & set(item)) != 1:
            raise ConfigError(f"{where}: expected one of run: RUN_DIR, path: CHECKPOINT_DIR, hub: org/name")
        allowed = {"run": {"run", "steps", "prefix"}, "path": {"path", "label"}, "hub": {"hub", "revisions", "prefix"}}
        kind = next(k for k in ("run", "path", "hub") if k in item)
        unknown = sorted(set(item) - allowed[kind])
        if unknown:
            raise ConfigError(f"unknown key '{where}.{unknown[0]}' (with {kind}: {', '.join(sorted(allowed[kind]))})")
        try:
            if kind == "run":
                found.extend(_run_checkpoints(item, where, resolve_models))
            elif kind == "path":
                (ref,) = resolve_models([str(item["path"])], "latest")
                label = str(item.get("label") or Path(ref.source).name)
                found.append(BaseCheckpoint(label, ref.source, ref.kind, ref.step, ref.tokens_seen))
            else:
                found.extend(hub_checkpoints(item, where, out, _hub_checkpoint))
        except ConfigError:
            raise
        except UserError as error:
            raise ConfigError(f"{where}: {error}") from None
    labels = [c.label for c in found]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ConfigError(
            f"checkpoints: two checkpoints are labelled '{twice[0]}'; give runs and hub models a prefix: (paths "
            f"a label:)"
        )
    return found


def _hub_checkpoint(label: str, source: str, revision: Any) -> BaseCheckpoint:
    """A hub revision as a base checkpoint (`revision` is a `ckptlab.models.hub.Revision`)."""
    return BaseCheckpoint(label, source, "hub", revision.step, revision.tokens, revision.stage, revision.ingredient)


def _run_checkpoints(item: dict[str, Any], where: str, resolve_models: Any) -> list[BaseCheckpoint]:
    from ckptlab.runs.run_dir import RUN_MANIFEST

    run = Path(str(item["run"])).expanduser()
    if not (run / RUN_MANIFEST).is_file():
        raise ConfigError(f"{where}.run: {run} is not a run directory (no {RUN_MANIFEST})")
    refs = resolve_models([str(run)], "kept")
    steps = item.get("steps")
    if steps is not None:
        steps = [steps] if isinstance(steps, int) else steps
        if not isinstance(steps, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in steps):
            raise ConfigError(f"{where}.steps: expected a list of step numbers")
        kept = {r.step: r for r in refs}
        missing = [s for s in steps if s not in kept]
        if missing:
            raise ConfigError(
                f"{where}.steps: {run} kept no checkpoint at step {missing[0]} "
                f"(kept: {', '.join(str(s) for s in sorted(kept))})"
            )
        refs = [kept[s] for s in sorted(set(steps))]
    prefix = str(item.get("prefix") or "")
    return [BaseCheckpoint(prefix + Path(r.source).name, r.source, r.kind, r.step, r.tokens_seen) for r in refs]


def build_spec(config: Any, verbs: Verbs) -> Spec:
    """Check a SweepConfig's sections and build the spec (every verb config validated here)."""
    out = Path(config.out)
    name = config.name or out.name
    if not NAME.match(name):
        raise ConfigError(f"name: expected a short name (letters, digits, . _ -), got {name!r}")
    checkpoints = _checkpoints(config.checkpoints, out)
    names: set[str] = set()
    sections = {}
    for section, kind in (("pretrain", "pretrain"), ("finetunes", "finetune"), ("cpt", "cpt")):
        raw = getattr(config, section)
        sections[section] = [
            e for i, item in enumerate(raw) for e in _train_entries(kind, section, i, item, names, verbs)
        ]
    sections["finetunes"] = chain_order(sections["finetunes"])
    labels = {c.label for c in checkpoints} | {e.name for e in sections["pretrain"]}
    for entry in sections["finetunes"] + sections["cpt"]:
        unknown = [b for b in entry.bases or [] if b not in labels]
        if unknown:
            raise ConfigError(
                f"{entry.kind} {entry.name}.from: no checkpoint or pretrain entry '{unknown[0]}' "
                f"(labels: {', '.join(sorted(labels))})"
            )
    for entry in sections["finetunes"]:
        chain_bases(entry, sections["finetunes"], [c.label for c in checkpoints])
    if not checkpoints and not sections["pretrain"]:
        raise ConfigError("checkpoints: the sweep names no checkpoint to start from (and no pretrain entry)")
    evaluate, evaluate_config = None, None
    if config.evaluate:
        evaluate = nested(config.evaluate, "evaluate")
        evaluate_config = build_verb_config("evaluate", evaluate, "evaluate", verbs)
        if not evaluate_config.tasks:
            raise ConfigError("evaluate.tasks: name the tasks to evaluate every model on")
    for entry in sections["finetunes"]:
        if evaluate is not None and getattr(entry.config, "objective", "lm") != "lm":
            # `evaluate` scores choices by a causal LM's log-likelihood; a classifier head has none.
            raise ConfigError(
                f"finetunes ({entry.name}).config.objective: {entry.config.objective} models cannot be "
                "scored by the sweep's evaluation (log-likelihood of a causal LM); use objective lm"
            )
    resources = {}
    for kind in SET_BY_SWEEP:
        given = (config.resources or {}).get(kind)
        resources[kind] = {**DEFAULT_RESOURCES, **_resources(given, f"resources.{kind}")}
    unknown = sorted(set(config.resources or {}) - set(SET_BY_SWEEP))
    if unknown:
        raise ConfigError(f"unknown key 'resources.{unknown[0]}' (job kinds: {', '.join(SET_BY_SWEEP)})")
    return Spec(
        name,
        out,
        checkpoints,
        sections["pretrain"],
        sections["finetunes"],
        sections["cpt"],
        evaluate,
        evaluate_config,
        resources,
        verbs,
    )
