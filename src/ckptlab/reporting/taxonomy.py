"""What an eval set is: its family and domain, whether it probes knowledge, and how it relates to a
fine-tuning task.

Built-in rules (overridable by the report config or by task files):
- world tasks are named `<domain>_<family>`: `world_nli` (domain general) and its cross-domain twin
  `finance_nli` (domain finance) share the family `nli`;
- the shipped real tasks have no domain prefix; their families follow the usual grouping (RTE and
  WNLI are NLI, as MNLI; MRPC is paraphrase; SST-2, MR and MPQA are sentiment);
- `world_knowledge` and `finance_qa` probe knowledge from pre-training (their YAML says
  `probes_pretraining_knowledge: true`).

Relative to a fine-tuning task an eval set is *in-task* (the task trained on), *cross-domain* (same
family, another task: `finance_nli` or RTE after `world_nli`, as RTE after MNLI in Sun & Dredze 2024)
or *cross-task* (anything else).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from ckptlab.errors import UserError

Relation = Literal["in-task", "cross-domain", "cross-task"]
RELATIONS: tuple[Relation, ...] = ("in-task", "cross-domain", "cross-task")

DOMAIN_PREFIXES = {"world": "general", "general": "general", "finance": "finance"}
SHIPPED_FAMILIES = {
    "rte": "nli",
    "wnli": "nli",
    "mrpc": "paraphrase",
    "sst2": "sentiment",
    "mr": "sentiment",
    "mpqa": "sentiment",
    "subj": "subjectivity",
    "cola": "acceptability",
}
KNOWLEDGE_PROBES = ("world_knowledge", "finance_qa")
DATA_SUFFIXES = (".yaml", ".yml", ".jsonl", ".json", ".tsv", ".csv", ".txt")


@dataclass(frozen=True)
class TaskInfo:
    name: str
    family: str
    domain: str
    probes_knowledge: bool


def training_name(finetune_task: str | None) -> str:
    """A fine-tuning task as an eval-set name: `world/tasks/world_nli.yaml` → `world_nli`."""
    name = Path(str(finetune_task or "")).name
    for suffix in DATA_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


class Taxonomy:
    """Families, domains and knowledge probes of eval sets, and what each fine-tuning task covers."""

    def __init__(
        self,
        families: dict[str, str] | None = None,
        domains: dict[str, str] | None = None,
        probes: list[str] | None = None,
        covers: dict[str, list[str]] | None = None,
        task_dirs: list[str] | None = None,
    ) -> None:
        self.families = dict(families or {})
        self.domains = dict(domains or {})
        self.probes = set(KNOWLEDGE_PROBES if probes is None else probes)
        self.covers = {training_name(k): list(v) for k, v in (covers or {}).items()}
        for folder in task_dirs or []:
            self._read_folder(Path(folder))

    def _read_folder(self, folder: Path) -> None:
        """Take domains, knowledge probes, twins and the mixture's tasks from task files or a world.json."""
        if not folder.is_dir():
            raise UserError(f"task_dirs: {folder} is not a directory")
        manifest = folder / "world.json"
        if manifest.is_file():
            try:
                tasks = json.loads(manifest.read_text(encoding="utf-8")).get("tasks", {})
            except (ValueError, UnicodeDecodeError) as error:
                raise UserError(f"{manifest}: not a world manifest ({error})") from None
            for name, meta in tasks.items():
                self._take(name, meta)
            mixture = [name for name, meta in tasks.items() if meta.get("in_mixture")]
            if mixture:
                self.covers.setdefault("mixture", mixture)
            folder = folder / "tasks" if (folder / "tasks").is_dir() else folder
        for path in sorted(folder.glob("*.yaml")):
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (yaml.YAMLError, UnicodeDecodeError) as error:
                raise UserError(f"{path}: not a task file ({str(error).splitlines()[0]})") from None
            if isinstance(data, dict):
                self._take(str(data.get("task") or path.stem), data)

    def _take(self, name: str, meta: dict) -> None:
        if meta.get("domain"):
            self.domains.setdefault(name, str(meta["domain"]))
        if meta.get("probes_pretraining_knowledge"):
            self.probes.add(name)
        twin = meta.get("cross_domain_of")
        if twin:
            self.families.setdefault(name, self.family(str(twin)))

    def family(self, task: str) -> str:
        if task in self.families:
            return self.families[task]
        if task in SHIPPED_FAMILIES:
            return SHIPPED_FAMILIES[task]
        prefix, _, rest = task.partition("_")
        return rest if rest and prefix in DOMAIN_PREFIXES else task

    def domain(self, task: str) -> str:
        if task in self.domains:
            return self.domains[task]
        prefix, _, rest = task.partition("_")
        return DOMAIN_PREFIXES.get(prefix, "general") if rest else "general"

    def info(self, task: str) -> TaskInfo:
        return TaskInfo(task, self.family(task), self.domain(task), task in self.probes)

    def trained_tasks(self, finetune_task: str | None) -> list[str]:
        """The eval sets a fine-tuning task trains on (itself, or a mixture's tasks)."""
        name = training_name(finetune_task)
        return self.covers.get(name, [name] if name else [])

    def relation(self, eval_task: str, finetune_task: str | None) -> Relation:
        trained = self.trained_tasks(finetune_task)
        if eval_task in trained:
            return "in-task"
        if self.family(eval_task) in {self.family(t) for t in trained}:
            return "cross-domain"
        return "cross-task"
