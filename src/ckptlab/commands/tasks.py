"""`ckptlab tasks`: list and check task files (ckptlab's own or lm-eval YAMLs), or export them to lm-eval.

Examples:

    ckptlab tasks list --tasks shipped
    ckptlab tasks check --tasks path/to/lm_eval_task.yaml
    ckptlab tasks export --tasks sst2,rte --to lm-eval --out lm_eval_tasks/
    lm_eval --model hf --model_args pretrained=MODEL --include_path lm_eval_tasks/ --tasks sst2_instruction

`check` reads every task file and every data row exactly as `evaluate` does, without a model, and
prints one line per task; a problem is one line naming the file and line, exit code 2. `export`
writes one lm-eval YAML per template and the task's splits as JSON Lines (docs/evaluation.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ckptlab.errors import ConfigError, UserError


@dataclass
class TasksConfig:
    """List, check or export task files."""

    command: Literal["list", "check", "export"] = "list"
    """list: each task's templates, splits and metrics; check: read every row as evaluate would; export: to lm-eval."""
    tasks: list[str] = field(default_factory=lambda: ["shipped"])
    """Tasks (comma-separated): shipped names, `shipped`, ckptlab or lm-eval task YAML files, or folders of them."""
    task_dirs: list[str] = field(default_factory=list)
    """Extra folders searched when a task is given by name."""
    to: Literal["lm-eval"] = "lm-eval"
    """export: the format written (lm-evaluation-harness task YAMLs)."""
    out: str | None = None
    """export: the folder written into (one sub-folder per task)."""

    def __post_init__(self) -> None:
        if self.command == "export" and not self.out:
            raise ConfigError("config key 'out': tasks export needs the folder to write into (--out DIR)")


def tasks(config: TasksConfig) -> int:
    """Run `config.command` over the tasks; returns the exit code."""
    from ckptlab.tasks.spec import find_task_files, load_task_data, read_task_file

    written = 0
    for path in find_task_files(config.tasks, config.task_dirs):
        spec = read_task_file(path)
        if config.command == "list":
            splits = ", ".join(sorted(set(spec.splits) | set((spec.hf or {}).get("splits", {}))))
            print(
                f"{spec.name} ({spec.source_format}, {spec.type}): templates {', '.join(spec.templates)}; "
                f"splits {splits}; scored {spec.eval_split}; metrics {', '.join(spec.metrics)}  [{path}]"
            )
            continue
        data = load_task_data(spec)
        if config.command == "check":
            pool = f", {len(data.fewshot)} few-shot" if data.fewshot else ""
            print(f"{spec.name}: ok ({len(data.examples)} {data.split} examples{pool}; fingerprint {data.fingerprint})")
            continue
        from ckptlab.tasks.export import to_lm_eval

        for written_path in to_lm_eval(data, Path(str(config.out))):
            print(f"wrote {written_path}")
            written += 1
    if config.command == "export":
        if not written:
            raise UserError("tasks export: nothing written")
        print(f"{written} lm-eval task file(s); run them with lm_eval --include_path {config.out} --tasks NAME")
    return 0
