"""Simulated sweeps with a known truth: results stores whose findings are designed, for calibrating the report.

The report's four findings are statistical tests, so a sweep where a claim is false must still
sometimes come out "replicated" and one where it is true sometimes "not replicated". How often can
only be measured on sweeps whose truth is known. `simulate_store` writes such a sweep into a results
store in the layout `ckptlab sweep` and `ckptlab evaluate` write (models, sweep_models, metrics with
the template `*` rows, per-example rows), so the report reads it exactly as it reads a real one.

The model of a sweep works on the chance-normalised scale u = (accuracy − c) / (1 − c), c = 1/choices
(gold labels cycle through the choices, so no label is the majority; c = 0 for generation):
- base checkpoint k (progress π_k = k / (K − 1)) on set s: u = u0_s + r·π_k, u0_s uniform in `base_range`;
- a recipe fine-tunes on one set at every checkpoint. On the sets it *covers* (its task and that task's
  cross-domain twins) it adds g(s, k) = h_s·(1 − u_base) + λ_s·π_k; elsewhere it scales u by (1 + F);
- h_s and λ_s are solved from the designed truths: the latent gain L = g(s, K−1) − g(s, 0) (finding i)
  and the headroom share y_s = mean_k g / (1 − u_base) = ȳ − β·(ū_s − mean ū) (finding ii);
- template t shifts u by σ·z_t, z a permutation of fixed offsets with mean 0 and SD 1; σ is
  `template_sd_base` for a base and moves from σ_F0 to σ_F1 with progress for a fine-tuned model (iv).

Items are drawn, not rounded: item j is right when ρ·Z_j + √(1−ρ²)·(√a·M_mj + √(1−a)·ε_mtj) < Φ⁻¹(p),
with Z shared by all models (item difficulty), M by one model's templates and ε fresh, so P(right) = p
exactly, items correlate across models as real eval items do, and templates agree on most items. A
generation item's ROUGE-L is the mean of 5 such draws. Seed replicates share abilities, not draws.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ckptlab import __version__
from ckptlab.evaluation.metrics import sensitivity
from ckptlab.evaluation.store import (
    EXAMPLE_COLUMNS,
    METRIC_COLUMNS,
    MODEL_COLUMNS,
    SWEEP_MODEL_COLUMNS,
    ResultStore,
    now,
)
from ckptlab.reporting.taxonomy import Taxonomy

TEMPLATE_NAMES = ("train_format", "instruction", "bare")
GENERATION_DRAWS = 5
"""Bernoulli draws averaged into one generation item's ROUGE-L (values 0, 0.2, ..., 1)."""
ABILITY_FLOOR, ABILITY_CEILING = 0.001, 0.999
SHOTS, FEWSHOT_SEED, BATCH_SIZE, SWEEP = 0, 1234, 16, "sim"
Z_95 = 1.959963984540054


@dataclass(frozen=True)
class SimTask:
    """One simulated eval set."""

    name: str
    """Eval-set name, `<domain>_<family>` as the report's taxonomy reads it (world_nli, finance_nli, ...)."""
    choices: int
    """Answer choices per item (gold labels cycle through them); 0 = a generation set scored by ROUGE-L."""
    items: int
    """Number of items."""


DEFAULT_TASKS = [
    SimTask("world_nli", 3, 300),
    SimTask("finance_nli", 3, 250),
    SimTask("world_paraphrase", 2, 300),
    SimTask("finance_paraphrase", 2, 200),
    SimTask("world_sentiment", 2, 250),
    SimTask("world_knowledge", 4, 277),
    SimTask("finance_qa", 4, 200),
    SimTask("world_summarization", 0, 100),
]
DEFAULT_RECIPES = {"nli": "world_nli", "paraphrase": "world_paraphrase", "sentiment": "world_sentiment"}
THREE_TASKS = [t for t in DEFAULT_TASKS if t.name in ("world_nli", "world_paraphrase", "world_knowledge")]
THREE_RECIPES = {"nli": "world_nli", "paraphrase": "world_paraphrase"}
WIDE_TASKS = [t for t in DEFAULT_TASKS if t.choices] + [
    SimTask("finance_sentiment", 2, 250),
    SimTask("world_topic", 4, 300),
    SimTask("finance_topic", 4, 250),
]
"""Ten choice sets, eight of them covered by a recipe (its task or the task's twin): finding (ii) ranks eight."""
WIDE_RECIPES = {**DEFAULT_RECIPES, "topic": "world_topic"}


@dataclass(frozen=True)
class Scenario:
    """A family of simulated sweeps: the sweep's shape, the designed effects, and what a correct report finds."""

    name: str
    """Short name (benchmark rows and seeds are keyed by it)."""
    description: str
    """One line: which claims hold in this scenario."""
    tasks: list[SimTask] = field(default_factory=lambda: list(DEFAULT_TASKS))
    """The eval sets every model is scored on."""
    checkpoints: int = 6
    """Base checkpoints K (steps 100·2^k); progress π_k = k / (K − 1)."""
    recipes: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_RECIPES))
    """Recipe name → the eval set it fine-tunes on; each recipe is applied to every checkpoint."""
    templates: int = 3
    """Prompt templates per eval set."""
    seeds: int = 1
    """Replicates of each fine-tuned model (variant `seed=K`) when more than 1."""
    base_range: tuple[float, float] = (0.15, 0.6)
    """u0_s, the first checkpoint's normalised score on each set, is drawn uniformly in this range."""
    base_rise: float = 0.1
    """r: the base's normalised score rises by r from the first checkpoint to the last."""
    latent_gain: float = 0.0
    """L (finding i): ΔFT − ΔBase on covered sets, first to last checkpoint, normalised scale; 0 = null."""
    headroom_share: float = 0.5
    """ȳ: mean share of the base's headroom (1 − u_base) that fine-tuning gains on a covered set."""
    headroom_slope: float = 0.0
    """β (finding ii): y_s = ȳ − β·(ū_s − mean ū); > 0 = sets the base is worse at gain more; 0 = null."""
    forgetting: float = 0.0
    """F ≤ 0 (finding iii): a fine-tuned model's u on sets its recipe does not cover is u_base·(1 + F); 0 = null."""
    template_sd_base: float = 0.03
    """σ_B: SD of a base model's normalised score across templates."""
    template_sd_tuned: tuple[float, float] = (0.03, 0.03)
    """(σ_F0, σ_F1) (finding iv): a fine-tuned model's template SD at the first and last checkpoint."""
    item_correlation: float = 0.6
    """ρ: weight of the item's difficulty, shared by all models, in whether a model gets it right."""
    template_agreement: float = 0.7
    """a: share of the remaining item variance a model shares across its templates."""
    truth: dict[str, str] = field(default_factory=dict)
    """Finding id → `null` | `effect` | `n/a`: what a correct report should find."""


@dataclass(frozen=True)
class SimModel:
    """One simulated model of the sweep."""

    model_fp: str
    """Fingerprint written to the store."""
    k: int
    """Index of its base checkpoint."""
    recipe: str | None = None
    """Its recipe (None: a base checkpoint)."""
    seed: int | None = None
    """Its replicate's seed (None: no replicates)."""


@dataclass(frozen=True)
class SetDesign:
    """The designed truth on one eval set of one simulated sweep (normalised scale)."""

    chance: float
    """c = 1/choices (0 for generation)."""
    base: np.ndarray
    """u_base(s, k) for every checkpoint k."""
    covered_by: list[str]
    """Recipes that gain on this set (it is their task or its cross-domain twin)."""
    h: float
    """Share of the base's headroom gained at every checkpoint."""
    latent: float
    """λ_s: the gain's extra growth with progress."""
    share: float
    """y_s: the designed mean headroom share (finding ii)."""
    share_terms: tuple[float, float]
    """(A_s, B_s) of h_s = (y_s − L·B_s) / (1 + A_s)."""


def progress(checkpoints: int) -> np.ndarray:
    """π_k = k / (K − 1)."""
    return np.arange(checkpoints) / (checkpoints - 1)


def template_offsets(templates: int) -> np.ndarray:
    """Evenly spaced offsets with mean 0 and sample SD 1 (ddof 1): −1, 0, +1 for three templates."""
    if templates < 2:
        return np.zeros(templates)
    raw = np.linspace(-1.0, 1.0, templates)
    return raw / raw.std(ddof=1)


def template_names(templates: int) -> list[str]:
    return [TEMPLATE_NAMES[t] if t < len(TEMPLATE_NAMES) else f"template{t}" for t in range(templates)]


def covers(recipe_task: str, task: str, taxonomy: Taxonomy) -> bool:
    """A recipe gains on its own task and on that task's cross-domain twins (same family)."""
    return task == recipe_task or taxonomy.relation(task, recipe_task) == "cross-domain"


def design_sets(scenario: Scenario, rng: np.random.Generator) -> dict[str, SetDesign]:
    """Draw each set's base level and solve h_s, λ_s from the designed L and y_s."""
    taxonomy = Taxonomy()
    pi = progress(scenario.checkpoints)
    low, high = scenario.base_range
    r, gain = scenario.base_rise, scenario.latent_gain
    bases = {t.name: rng.uniform(low, high) + r * pi for t in scenario.tasks}
    covered = {
        t.name: [name for name, task in scenario.recipes.items() if covers(task, t.name, taxonomy)]
        for t in scenario.tasks
    }
    # y_s is centred on the sets that gain, so ȳ is their mean share whatever the uncovered sets' levels.
    gaining = [name for name in bases if covered[name]] or list(bases)
    centre = float(np.mean([bases[name].mean() for name in gaining]))
    designs = {}
    for task in scenario.tasks:
        base = bases[task.name]
        headroom = 1.0 - base
        share = scenario.headroom_share - scenario.headroom_slope * (float(base.mean()) - centre)
        a_term = float(np.mean(r * pi / headroom))
        b_term = float(np.mean(pi / headroom))
        h = (share - gain * b_term) / (1.0 + a_term)
        designs[task.name] = SetDesign(
            chance=1.0 / task.choices if task.choices else 0.0,
            base=base,
            covered_by=covered[task.name],
            h=h,
            latent=gain + h * r,  # 1 − u_base falls by r, so λ = L + h·r keeps g(K−1) − g(0) = L
            share=share,
            share_terms=(a_term, b_term),
        )
    return designs


def plan_models(scenario: Scenario) -> list[SimModel]:
    """Base checkpoints, then each recipe (and seed) at each checkpoint."""
    models = [SimModel(f"base-{k}", k) for k in range(scenario.checkpoints)]
    seeds: list[int | None] = list(range(scenario.seeds)) if scenario.seeds > 1 else [None]
    for k in range(scenario.checkpoints):
        for recipe in scenario.recipes:
            for seed in seeds:
                suffix = "" if seed is None else f"-seed{seed}"
                models.append(SimModel(f"ft-{recipe}-{k}{suffix}", k, recipe, seed))
    return models


def ability(scenario: Scenario, design: SetDesign, model: SimModel) -> float:
    """The model's normalised score on the set, before template offsets."""
    base = float(design.base[model.k])
    if model.recipe is None:
        return base
    if model.recipe in design.covered_by:
        pi = float(progress(scenario.checkpoints)[model.k])
        return base + design.h * (1.0 - base) + design.latent * pi
    return base * (1.0 + scenario.forgetting)


def template_sd(scenario: Scenario, model: SimModel) -> float:
    if model.recipe is None:
        return scenario.template_sd_base
    first, last = scenario.template_sd_tuned
    return first + (last - first) * float(progress(scenario.checkpoints)[model.k])


def draw_items(scenario: Scenario, p: np.ndarray, difficulty: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per (template, item) value: 1/0 (or the mean of sub-draws) with P(right) = p[template] exactly."""
    rho, share = scenario.item_correlation, scenario.template_agreement
    thresholds = np.array([statistics.NormalDist().inv_cdf(float(x)) for x in p])
    model_item = rng.standard_normal(difficulty.shape)
    fresh = rng.standard_normal((len(p), *difficulty.shape))
    latent = rho * difficulty + math.sqrt(1 - rho**2) * (math.sqrt(share) * model_item + math.sqrt(1 - share) * fresh)
    right = latent < thresholds.reshape(-1, 1, 1)
    return right.mean(axis=2)  # (templates, items); one sub-draw for a choice item


def _example_rows(
    model_fp: str, task: SimTask, template: str, values: np.ndarray, rng: np.random.Generator, created: str
) -> tuple[list[tuple[Any, ...]], list[str]]:
    """Examples rows (as in `ckptlab evaluate`) and the predictions, for one (model, set, template)."""
    n = task.items
    if task.choices:
        k = task.choices
        choices = [f"c{i}" for i in range(k)]
        gold = np.arange(n) % k
        wrong = (gold + 1 + rng.integers(0, k - 1, n)) % k  # a uniformly random wrong choice
        picked = np.where(values > 0.5, gold, wrong).tolist()
        scores = [_choice_scores(choices, i) for i in range(k)]
        predictions = [choices[i] for i in picked]
        row_scores = [scores[i] for i in picked]
        golds = [choices[i] for i in gold.tolist()]
        correct = (values > 0.5).astype(int).tolist()
    else:
        levels = np.rint(values * GENERATION_DRAWS).astype(int).tolist()
        scores = [
            json.dumps({"exact_match": 0.0, "rouge_l": i / GENERATION_DRAWS}, sort_keys=True)
            for i in range(GENERATION_DRAWS + 1)
        ]
        # The text stands for the summary: items scored alike read alike, so template agreement means something.
        predictions = [f"summary {i}" for i in levels]
        row_scores = [scores[i] for i in levels]
        golds = ["reference"] * n
        correct = [0] * n
    key = (model_fp, f"sim-{task.name}", template, SHOTS, FEWSHOT_SEED)
    rows = [
        (
            *key,
            f"{task.name}-{i}",
            task.name,
            i,
            predictions[i],
            row_scores[i],
            golds[i],
            correct[i],
            BATCH_SIZE,
            created,
        )
        for i in range(n)
    ]
    return rows, predictions


def _choice_scores(choices: list[str], predicted: int) -> str:
    """The scores JSON of a choice item: the predicted choice has the highest log-likelihood."""
    k = len(choices)
    scores = {
        "ll": [-1.0 if i == predicted else -2.0 for i in range(k)],
        "tokens": [1] * k,
        "chars": [len(c) + 1 for c in choices],
        "choices": choices,
    }
    return json.dumps(scores, sort_keys=True)


def _metric_row(model: SimModel, task: SimTask, template: str, metric: str, value: float, **extra: Any) -> dict:
    return {
        "model_fp": model.model_fp,
        "model_source": model.model_fp,
        "model_label": model.model_fp,
        "task": task.name,
        "task_fp": f"sim-{task.name}",
        "split": "test",
        "template": template,
        "shots": SHOTS,
        "seed": FEWSHOT_SEED,
        "metric": metric,
        "value": value,
        "batch_size": BATCH_SIZE,
        **extra,
    }


def _score_rows(model: SimModel, task: SimTask, templates: list[str], values: np.ndarray) -> list[dict[str, Any]]:
    """Per template the primary metric with a normal-approximation 95% interval."""
    metric = "accuracy" if task.choices else "rouge_l"
    rows = []
    for template, line in zip(templates, values):
        mean = float(line.mean())
        half = Z_95 * float(line.std(ddof=1)) / math.sqrt(len(line)) if len(line) > 1 else math.nan
        rows.append(
            _metric_row(
                model,
                task,
                template,
                metric,
                mean,
                ci_low=max(0.0, mean - half),
                ci_high=min(1.0, mean + half),
                n=len(line),
            )
        )
    return rows


def _sensitivity_rows(
    model: SimModel, task: SimTask, score_rows: list[dict[str, Any]], predictions: list[list[str]]
) -> list[dict[str, Any]]:
    """The template `*` rows `ckptlab evaluate` writes: spread, std, worst of the metric, and agreement."""
    if len(score_rows) < 2:
        return []
    metric = score_rows[0]["metric"]
    n = min(r["n"] for r in score_rows)
    stats = sensitivity({r["template"]: r["value"] for r in score_rows})
    rows = [_metric_row(model, task, "*", f"{metric}:{stat}", value, n=n) for stat, value in stats.items()]
    # Every template scored every item, so agreement is the share of items all templates answer alike.
    same = sum(1 for answers in zip(*predictions) if len(set(answers)) == 1)
    rows.append(_metric_row(model, task, "*", "agreement", same / n, n=n))
    return rows


def _model_rows(scenario: Scenario, model: SimModel, created: str) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The model's `models` and `sweep_models` rows."""
    step = 100 * 2**model.k
    checkpoint = f"step-{step:08d}"
    tuned = model.recipe is not None
    models = {
        "model_fp": model.model_fp,
        "content_hash": model.model_fp,
        "kind": "finetuned" if tuned else "checkpoint",
        "source": model.model_fp,
        "label": model.model_fp,
        "run": model.recipe or "pretrain",
        "step": step,
        "tokens_seen": step * 1000,
        "dtype": "float32",
        "trust_remote_code": 0,
        "created": created,
    }
    sweep = {
        "model_fp": model.model_fp,
        "sweep": SWEEP,
        "job_id": model.model_fp,
        "role": "finetuned" if tuned else "base",
        "checkpoint": checkpoint,
        "step": step,
        "tokens_seen": step * 1000,
        "finetune": model.recipe,
        "finetune_task": scenario.recipes[model.recipe] if model.recipe else None,
        "method": "full" if tuned else None,
        "variant": None if model.seed is None else f"seed={model.seed}",
        "parent_fp": f"base-{model.k}" if tuned else None,
        "compute": json.dumps({"flops": 1e12, "tokens": 1000}, sort_keys=True) if tuned else None,
        "created": created,
    }
    return tuple(models[c] for c in MODEL_COLUMNS), tuple(sweep[c] for c in SWEEP_MODEL_COLUMNS)


def _insert(store: ResultStore, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    store.db.executemany(f"INSERT OR REPLACE INTO {table} VALUES ({', '.join('?' * len(columns))})", rows)


def simulate_store(path: Path, scenario: Scenario, seed: int) -> dict[str, Any]:
    """Write one simulated sweep of `scenario` to the results store at `path`; return its designed truths."""
    if scenario.checkpoints < 2:
        raise ValueError(f"scenario {scenario.name}: 2 or more checkpoints are needed")
    rng = np.random.default_rng(seed)
    designs = design_sets(scenario, rng)
    templates = template_names(scenario.templates)
    offsets = template_offsets(scenario.templates)
    # Item difficulty is one draw per item (per sub-draw of a generation item), shared by every model.
    difficulty = {t.name: rng.standard_normal((t.items, 1 if t.choices else GENERATION_DRAWS)) for t in scenario.tasks}
    abilities: dict[tuple[str, int, str], np.ndarray] = {}
    clipped = {t.name: 0 for t in scenario.tasks}  # template abilities that hit the clip, per set
    created = now()
    examples: list[tuple[Any, ...]] = []
    metrics: list[dict[str, Any]] = []
    model_rows, sweep_rows = [], []
    for model in plan_models(scenario):
        model_row, sweep_row = _model_rows(scenario, model, created)
        model_rows.append(model_row)
        sweep_rows.append(sweep_row)
        sigma = template_sd(scenario, model)
        for task in scenario.tasks:
            design = designs[task.name]
            # Seed replicates share abilities (and so their template offsets); only their item draws differ.
            key = (model.recipe or "", model.k, task.name)
            if key not in abilities:
                raw = ability(scenario, design, model) + sigma * rng.permutation(offsets)
                clipped[task.name] += int(np.count_nonzero((raw < ABILITY_FLOOR) | (raw > ABILITY_CEILING)))
                abilities[key] = np.clip(raw, ABILITY_FLOOR, ABILITY_CEILING)
            p = design.chance + (1.0 - design.chance) * abilities[key]
            values = draw_items(scenario, p, difficulty[task.name], rng)
            predictions = []
            for template, line in zip(templates, values):
                rows, answers = _example_rows(model.model_fp, task, template, line, rng, created)
                examples += rows
                predictions.append(answers)
            scores = _score_rows(model, task, templates, values)
            metrics += scores + _sensitivity_rows(model, task, scores, predictions)
    metric_values = [
        tuple({**r, "ckptlab_version": __version__, "created": created}.get(c) for c in METRIC_COLUMNS) for r in metrics
    ]
    store = ResultStore(path)
    try:
        # A simulated store is rewritten rather than recovered after a crash: no journal, no syncs, and a
        # page cache large enough for the examples index, which is most of the writing time.
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-262144"):
            store.db.execute(f"PRAGMA {pragma}")
        with store.db:  # one transaction for the whole sweep
            _insert(store, "models", MODEL_COLUMNS, model_rows)
            _insert(store, "sweep_models", SWEEP_MODEL_COLUMNS, sweep_rows)
            _insert(store, "metrics", METRIC_COLUMNS, metric_values)
            _insert(store, "examples", EXAMPLE_COLUMNS, examples)
    finally:
        store.close()
    return truths(scenario, seed, designs, clipped, len(model_rows))


def truths(
    scenario: Scenario, seed: int, designs: dict[str, SetDesign], clipped: dict[str, int], models: int
) -> dict[str, Any]:
    """The designed truths of one simulated sweep, JSON-ready."""
    pi = progress(scenario.checkpoints)
    sets = {}
    for name, d in designs.items():
        gain = d.h * (1.0 - d.base) + d.latent * pi
        sets[name] = {
            "chance": d.chance,
            "u0": float(d.base[0]),
            "u_bar": float(d.base.mean()),
            "covered_by": d.covered_by,
            # h, λ and y act only where a recipe gains; elsewhere they were solved but are not used.
            "h": d.h if d.covered_by else None,
            "lambda": d.latent if d.covered_by else None,
            "headroom_share": d.share if d.covered_by else None,
            "A": d.share_terms[0],
            "B": d.share_terms[1],
            "base_accuracy": (d.chance + (1 - d.chance) * d.base).tolist(),
            "covered_gain_accuracy": ((1 - d.chance) * gain).tolist() if d.covered_by else None,
            "clipped_abilities": clipped[name],
            "forgetting_accuracy": ((1 - d.chance) * d.base * scenario.forgetting).tolist(),
        }
    return {
        "scenario": scenario.name,
        "seed": seed,
        "findings": dict(scenario.truth),
        "latent_gain": scenario.latent_gain,
        "headroom_share": scenario.headroom_share,
        "headroom_slope": scenario.headroom_slope,
        "forgetting": scenario.forgetting,
        "template_sd": {"base": scenario.template_sd_base, "tuned": list(scenario.template_sd_tuned)},
        "steps": [100 * 2**k for k in range(scenario.checkpoints)],
        "models": models,
        "clipped_abilities": sum(clipped.values()),
        "sets": sets,
    }


EFFECTS: dict[str, dict[str, Any]] = {
    "i": {"latent_gain": 0.15},
    "ii": {"headroom_slope": 0.6},
    "iii": {"forgetting": -0.3},
    "iv": {"template_sd_tuned": (0.10, 0.05)},
}
"""The designed effect of each finding (the scenario's null is the field's default: no effect)."""


def scenario(name: str, description: str, present: tuple[str, ...], **overrides: Any) -> Scenario:
    """A scenario where the findings in `present` hold (their designed effect) and the others are null."""
    effects: dict[str, Any] = {}
    for finding in present:
        effects.update(EFFECTS[finding])
    truth = {f: "effect" if f in present else "null" for f in EFFECTS}
    return replace(Scenario(name, description, truth=truth), **effects, **overrides)


ALL = ("i", "ii", "iii", "iv")
SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        scenario("global_null", "no claim holds: L = 0, β = 0, F = 0, equal template SDs", ()),
        scenario("null_i", "no latent gain (L = 0); (ii), (iii), (iv) hold", ("ii", "iii", "iv")),
        scenario("null_ii", "gain unrelated to the base's level (β = 0); (i), (iii), (iv) hold", ("i", "iii", "iv")),
        scenario("null_iii", "no forgetting (F = 0); (i), (ii), (iv) hold", ("i", "ii", "iv")),
        scenario(
            "null_iii_near_chance",
            "no forgetting (F = 0) with bases near chance; (i), (ii), (iv) hold",
            ("i", "ii", "iv"),
            base_range=(0.0, 0.1),
        ),
        scenario("null_iv", "equal template SDs; (i), (ii), (iii) hold", ("i", "ii", "iii")),
        scenario(
            "null_iv_seeds",
            "equal template SDs, 3 seeds per fine-tune; (i), (ii), (iii) hold",
            ("i", "ii", "iii"),
            seeds=3,
            checkpoints=4,
        ),
        scenario(
            "null_global_3_sets",
            "no claim holds, on world_nli, world_paraphrase, world_knowledge",
            (),
            tasks=list(THREE_TASKS),
            recipes=dict(THREE_RECIPES),
        ),
        scenario(
            "null_ii_wide",
            "gain unrelated to the base's level (β = 0) on 8 ranked eval sets; (i), (iii), (iv) hold",
            ("i", "iii", "iv"),
            tasks=list(WIDE_TASKS),
            recipes=dict(WIDE_RECIPES),
        ),
        scenario("effects", "every claim holds", ALL),
        scenario(
            "effects_wide",
            "every claim holds, with 8 eval sets for (ii) to rank",
            ALL,
            tasks=list(WIDE_TASKS),
            recipes=dict(WIDE_RECIPES),
        ),
        scenario(
            "effects_3_sets",
            "every claim holds, on world_nli, world_paraphrase, world_knowledge",
            ALL,
            tasks=list(THREE_TASKS),
            recipes=dict(THREE_RECIPES),
        ),
        scenario("effects_seeds", "every claim holds, 3 seeds per fine-tune", ALL, seeds=3, checkpoints=4),
    )
}
