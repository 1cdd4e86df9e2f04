"""Synthetic, schema-valid results stores with designed scores, for the report's tests.

A store holds base checkpoints at `steps`, fine-tuning recipes applied to each checkpoint, and
optionally cpt models; every model is scored on every task under three templates. Scores are exact
by construction: a classification model with accuracy p on n items gets round(p·n) items right
(which ones: seeded per model, task and template), and a generation item's ROUGE-L is p ± 0.05.
`base(task, step)` and `tuned(recipe, task, step)` give the mean score; `spread(role, step)` the
best-minus-worst template gap (templates at +spread/2, 0, −spread/2).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from ckptlab.evaluation.store import ResultStore

TEMPLATES = ("train_format", "instruction", "bare")
CLASSIFICATION = {"world_nli": 3, "finance_nli": 3, "world_paraphrase": 2, "world_knowledge": 4, "finance_qa": 4}
GENERATION = ("world_summarization",)


def _clip(p: float) -> float:
    return min(1.0, max(0.0, p))


def _score(store: ResultStore, model_fp: str, task: str, template: str, p: float, n: int, rng: random.Random) -> None:
    key = (model_fp, f"fp-{task}", template, 0, 1234)
    rows = []
    if task in CLASSIFICATION or task not in GENERATION:
        k = CLASSIFICATION.get(task, 2)
        choices = [f"c{i}" for i in range(k)]
        right = set(rng.sample(range(n), round(_clip(p) * n)))
        for i in range(n):
            gold = choices[i % k]
            prediction = gold if i in right else choices[(i + 1) % k]
            scores = {
                "ll": [-1.0 if c == prediction else -2.0 for c in choices],
                "tokens": [1] * k,
                "chars": [len(c) + 1 for c in choices],
                "choices": choices,
            }
            rows.append(
                {
                    "example_id": f"{task}-{i}",
                    "example_index": i,
                    "prediction": prediction,
                    "scores": scores,
                    "gold": gold,
                    "correct": prediction == gold,
                }
            )
        values = [float(r["correct"]) for r in rows]
        metric = "accuracy"
    else:
        for i in range(n):
            value = _clip(p + rng.uniform(-0.05, 0.05))
            rows.append(
                {
                    "example_id": f"{task}-{i}",
                    "example_index": i,
                    "prediction": "text",
                    "scores": {"rouge_l": value, "exact_match": 0.0},
                    "gold": "text",
                    "correct": False,
                }
            )
        values = [r["scores"]["rouge_l"] for r in rows]
        metric = "rouge_l"
    store.add_examples(key, task, rows, 16)
    mean = sum(values) / n
    store.add_metrics(
        [
            {
                "model_fp": model_fp,
                "task": task,
                "task_fp": f"fp-{task}",
                "split": "test",
                "template": template,
                "shots": 0,
                "seed": 1234,
                "metric": metric,
                "value": mean,
                "ci_low": mean - 0.05,
                "ci_high": mean + 0.05,
                "n": n,
                "batch_size": 16,
            }
        ]
    )


def _model(
    store: ResultStore,
    model_fp: str,
    tasks: list[str],
    score: Callable[[str], float],
    spread: float,
    n: int,
    rng: random.Random,
    **sweep_row: object,
) -> None:
    store.add_model({"model_fp": model_fp, "kind": "checkpoint", "source": model_fp, "label": model_fp})
    store.add_sweep_model({"model_fp": model_fp, "sweep": "test", "job_id": model_fp, **sweep_row})
    for task in tasks:
        for offset, template in zip((0.5, 0.0, -0.5), TEMPLATES):
            _score(store, model_fp, task, template, score(task) + offset * spread, n, rng)


def build_store(
    path: Path,
    tasks: list[str],
    steps: list[int],
    recipes: dict[str, str],
    base: Callable[[str, int], float],
    tuned: Callable[[str, str, int], float],
    spread: Callable[[str, int], float] = lambda role, step: 0.0,
    n: int = 150,
    cpt: dict[str, Callable[[str], float]] | None = None,
    seed: int = 0,
    prefix: str = "",
) -> Path:
    """A store at `path`; `recipes` maps a fine-tuning run's name to its task; `cpt` a cpt run to its scores.

    `prefix` starts every model fingerprint, so two sweeps can share one store."""
    rng = random.Random(seed)
    store = ResultStore(path)
    try:
        for step in steps:
            label = f"step-{step:08d}"
            common = {"checkpoint": label, "step": step, "tokens_seen": step * 1000}
            _model(
                store,
                f"{prefix}base-{step}",
                tasks,
                lambda t: base(t, step),
                spread("base", step),
                n,
                rng,
                role="base",
                **common,
            )
            for name, task in recipes.items():
                _model(
                    store,
                    f"{prefix}ft-{name}-{step}",
                    tasks,
                    lambda t: tuned(name, t, step),
                    spread("finetuned", step),
                    n,
                    rng,
                    role="finetuned",
                    finetune=name,
                    finetune_task=task,
                    method="full",
                    parent_fp=f"{prefix}base-{step}",
                    compute={"tokens": 1000},
                    **common,
                )
        for name, score in (cpt or {}).items():
            step = steps[-1]
            _model(
                store,
                f"{prefix}cpt-{name}",
                tasks,
                score,
                spread("base", step),
                n,
                rng,
                role="cpt",
                finetune=name,
                method="cpt",
                parent_fp=f"{prefix}base-{step}",
                checkpoint=f"step-{step:08d}",
                step=step,
                tokens_seen=step * 1000,
            )
    finally:
        store.close()
    return path


TASKS = ["world_nli", "finance_nli", "world_paraphrase", "world_knowledge", "finance_qa", "world_summarization"]
CHANCE = {
    "world_nli": 1 / 3,
    "finance_nli": 1 / 3,
    "world_paraphrase": 0.5,
    "world_knowledge": 0.25,
    "finance_qa": 0.25,
    "world_summarization": 0.0,
}
RISING_BASE = {"world_knowledge": (0.40, 0.85), "finance_qa": (0.35, 0.80), "world_summarization": (0.30, 0.50)}


def sun_dredze_store(path: Path, steps: tuple[int, ...] = (100, 1000, 10000)) -> Path:
    """A sweep shaped like Sun & Dredze 2024: all four findings should replicate."""
    last = len(steps) - 1

    def progress(step: int) -> float:
        return steps.index(step) / max(1, last)

    def base(task: str, step: int) -> float:
        if task in RISING_BASE:  # knowledge grows with pre-training; NLI and paraphrase stay at chance
            low, high = RISING_BASE[task]
            return low + (high - low) * progress(step)
        return CHANCE[task]

    def tuned(recipe: str, task: str, step: int) -> float:
        trained = {"nli": "world_nli", "paraphrase": "world_paraphrase"}[recipe]
        if task == trained:
            return 0.55 + 0.35 * progress(step)  # latent: grows only after fine-tuning
        if task.endswith(trained.split("_")[1]):
            return 0.45 + 0.25 * progress(step)  # cross-domain twin gains too
        return max(CHANCE[task], base(task, step) - 0.15)  # forgetting of knowledge and other tasks

    def spread(role: str, step: int) -> float:
        return 0.04 if role == "base" else 0.40 - 0.30 * progress(step)

    finance = {"finance_qa": 0.15, "finance_nli": 0.0}
    return build_store(
        path,
        TASKS,
        list(steps),
        {"nli": "world_nli", "paraphrase": "world_paraphrase"},
        base,
        tuned,
        spread,
        cpt={"finance": lambda t: base(t, steps[-1]) + finance.get(t, -0.05)},
    )


def contrary_store(path: Path) -> Path:
    """A sweep where fine-tuning helps most where the base is already good, and forgets nothing."""
    steps = [100, 1000]

    def base(task: str, step: int) -> float:
        return CHANCE[task] + {
            "world_knowledge": 0.5,
            "finance_qa": 0.4,
            "world_summarization": 0.3,
            "world_paraphrase": 0.2,
        }.get(task, 0.0)

    def tuned(recipe: str, task: str, step: int) -> float:
        return base(task, step) + 0.3 * (base(task, step) - CHANCE[task]) + 0.02  # rich get richer

    return build_store(path, TASKS, steps, {"nli": "world_nli"}, base, tuned)


# chain_store: nli (full and lora) on two checkpoints, then paraphrase after the full nli model, with
# and without replay. Scores by (model, step) on (world_nli, world_paraphrase); FLOPs per run.
CHAIN_SCORES = {
    "base": {100: (0.35, 0.50), 1000: (0.35, 0.55)},
    "nli": {100: (0.80, 0.50), 1000: (0.90, 0.55)},
    "nli-lora": {100: (0.78, 0.50), 1000: (0.89, 0.55)},
    "para": {100: (0.60, 0.90), 1000: (0.70, 0.92)},
    "para-replay": {100: (0.75, 0.88), 1000: (0.85, 0.90)},
}
CHAIN_FLOPS = {"nli": 1e13, "nli-lora": 2e12, "para": 5e12, "para-replay": 6e12}  # a base: step × 1e12


def chain_store(path: Path, n: int = 200, base_flops: bool = True) -> Path:
    """A sweep with sequential fine-tuning and compute records (see CHAIN_SCORES, CHAIN_FLOPS)."""
    rng = random.Random(0)
    store = ResultStore(path)
    tasks = ["world_nli", "world_paraphrase"]
    runs = {
        "nli": ("world_nli", "full", None, None),
        "nli-lora": ("world_nli", "lora", None, None),
        "para": ("world_paraphrase", "full", None, "nli"),
        "para-replay": ("world_paraphrase", "full", "replay=0.25", "nli"),
    }
    try:
        for step in (100, 1000):
            common = {"checkpoint": f"step-{step:08d}", "step": step, "tokens_seen": step * 1000}
            scores = {name: dict(zip(tasks, by_step[step])) for name, by_step in CHAIN_SCORES.items()}
            _model(
                store,
                f"base-{step}",
                tasks,
                scores["base"].get,
                0.0,
                n,
                rng,
                role="base",
                compute={"flops": step * 1e12} if base_flops else None,
                **common,
            )
            for name, (task, method, variant, after) in runs.items():
                compute = {
                    "flops": CHAIN_FLOPS[name],
                    "matmul_params": 1000,
                    "trainable_params": 10 if method == "lora" else 1000,
                    "tokens": 5000,
                    "wall_s": 2.0,
                    "energy_kwh": 1e-5,
                }
                _model(
                    store,
                    f"{name}-{step}",
                    tasks,
                    scores[name].get,
                    0.0,
                    n,
                    rng,
                    role="finetuned",
                    finetune=name,
                    finetune_task=task,
                    method=method,
                    variant=variant,
                    parent_fp=f"{after}-{step}" if after else f"base-{step}",
                    compute=compute,
                    **common,
                )
    finally:
        store.close()
    return path
