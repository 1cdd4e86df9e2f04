"""What `ckptlab evaluate` (and a sweep's evaluation jobs) evaluate: the config, and its expansion into
units (task × template × shots) checked before any model loads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from ckptlab.errors import ConfigError, UserError

if TYPE_CHECKING:
    from ckptlab.evaluation.prompting import PromptFormat
    from ckptlab.evaluation.runner import Unit


@dataclass
class EvaluateConfig:
    """Evaluate models on tasks under several prompt templates and shot counts."""

    model: list[str] = field(default_factory=list)
    """Models (comma-separated): checkpoint dirs, run dirs, HF dirs, .gguf files, or org/name@revision."""
    tasks: list[str] = field(default_factory=list)
    """Tasks (comma-separated): shipped names (rte, sst2, ...; `shipped` = all), task YAML files, or folders of them."""
    task_dirs: list[str] = field(default_factory=list)
    """Extra folders searched when a task is given by name (e.g. a world's tasks/ folder)."""
    templates: list[str] = field(default_factory=lambda: ["all"])
    """Template names to evaluate (comma-separated), or `all`."""
    shots: list[str] = field(default_factory=list)
    """Numbers of few-shot demonstrations (comma-separated, e.g. 0,4); empty uses each task's fewshot.shots."""
    limit: int | None = None
    """Score only the first N examples of each task's scored split (null = all)."""
    split: str | None = None
    """Score this split instead of each task's eval_split (it must not be the few-shot split for k > 0)."""
    batch_size: int | Literal["auto"] = "auto"
    """Examples per forward pass, or auto: 16 on CPU, on GPU the largest of 64, 32, ... that fits; recorded per row."""
    store: str = "results/ckptlab.sqlite"
    """SQLite results store: metric rows, per-example rows (the cache) and models."""
    checkpoints: Literal["kept", "all", "latest"] = "kept"
    """For a run directory: evaluate its kept checkpoints, all listed ones, or only the latest."""
    bootstrap: int = 1000
    """Bootstrap resamples for the 95% confidence intervals (0 = no intervals)."""
    bootstrap_seed: int = 0
    """Seed of the bootstrap resampling."""
    fewshot_seed: int | None = None
    """Seed choosing the few-shot demonstrations (null = each task's fewshot.seed)."""
    fewshot_sampling: Literal["per_example", "shared", "first_n"] | None = None
    """Demonstrations per example (seeded by its id), shared by every example (one seeded draw; their KV cache is
    computed once), or the pool's first k (lm-eval's first_n); null = each task's fewshot.sampling."""
    length_normalized: bool = False
    """Also report accuracy_norm: choices ranked by log-likelihood per character."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Weights and activations: auto = bfloat16 on CUDA, float32 elsewhere; the model fingerprint ends in it."""
    device: str = "auto"
    """cpu, cuda, cuda:1, ... or auto (cuda when available)."""
    export: str | None = None
    """After evaluating, write results: a .csv (or .parquet) file gets every metric row of the store (and
    <stem>.examples.csv every per-example row); a directory ending in / gets this evaluation's results in
    lm-evaluation-harness's format, DIR/<model>/results_<date>.json and samples_<task>_<date>.jsonl per model (a
    .json file: lm-eval's one-model form, <stem>_<date>.json with the samples beside it)."""
    trust_remote_code: bool = False
    """Let a hub model run its own code from its repository (off: such a model is refused); recorded in the store."""
    add_bos: bool | Literal["auto"] = "auto"
    """BOS token before every prompt: auto = what the tokenizer adds by default (as lm-eval does), true, false;
    part of the results' key."""
    apply_chat_template: bool = False
    """Render prompts with the model's chat template (instruct models); part of the results' key."""
    system_instruction: str | None = None
    """With or without a chat template: a system message put before the task's own preamble."""
    fewshot_as_multiturn: bool = True
    """With a chat template: each demonstration as a user turn and an assistant turn (false: one user turn)."""
    progress: bool = True
    """A progress bar per unit (examples/s, ETA) on stderr, when stderr is a terminal."""
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = field(default_factory=list)
    """Also log the metric rows (with their CIs) to these trackers, one tracker run per evaluate (docs/design.md)."""

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, int) and self.batch_size < 1:
            raise ConfigError(f"config key 'batch_size': expected a positive integer or auto, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"config key 'limit': expected a positive integer or null, got {self.limit}")
        if self.bootstrap < 0:
            raise ConfigError(f"config key 'bootstrap': expected 0 or more resamples, got {self.bootstrap}")
        for value in self.shots:
            if not str(value).strip().isdigit():
                raise ConfigError(f"config key 'shots': expected numbers like 0,4, got {value!r}")


def plan_units(config: EvaluateConfig, say: Callable[[str], None]) -> list[Unit]:
    """Read, check and expand every task into units (before any model loads)."""
    from ckptlab.evaluation.runner import Unit
    from ckptlab.tasks.spec import find_task_files, load_task_data, read_task_file

    prompt = prompt_format(config)
    units: list[Unit] = []
    for path in find_task_files(config.tasks, config.task_dirs):
        spec = read_task_file(path)
        data = load_task_data(spec, config.split)
        data = replace(data, fingerprint=prompt.keyed(data.fingerprint))
        names = list(spec.templates) if config.templates in ([], ["all"]) else config.templates
        unknown = [n for n in names if n not in spec.templates]
        if unknown:
            raise UserError(
                f"task {spec.name} ({path}): no template '{unknown[0]}' (templates: {', '.join(spec.templates)})"
            )
        shots = [int(s) for s in config.shots] if config.shots else spec.fewshot_shots
        seed = spec.fewshot_seed if config.fewshot_seed is None else config.fewshot_seed
        examples = data.examples[: config.limit] if config.limit else data.examples
        for k in sorted(set(shots)):
            if k > 0 and data.fewshot_unavailable:
                say(f"note: task {spec.name}: skipping {k}-shot ({data.fewshot_unavailable})")
                continue
            units.extend(Unit(data, name, k, seed, examples, prompt) for name in names)
    if not units:
        raise UserError("nothing to evaluate (every task × shots combination was skipped)")
    return units


def prompt_format(config: EvaluateConfig) -> PromptFormat:
    """The BOS and chat-template options of `config`."""
    from ckptlab.evaluation.prompting import PromptFormat

    return PromptFormat(
        config.add_bos,
        config.apply_chat_template,
        config.system_instruction,
        config.fewshot_as_multiturn,
        config.fewshot_sampling,
    )
