"""Render the report as one self-contained HTML file: Jinja2 with autoescape, figures as data URIs."""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

from ckptlab.reporting.template import PAGE


def fmt(value: Any) -> str:
    """A table cell: numbers to 3 decimals, NaN and None as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        # FLOPs, PFLOPs and gains per PFLOP span many orders of magnitude; scores do not.
        return f"{value:.3g}" if value and not 1e-3 <= abs(value) < 1e5 else f"{value:.3f}"
    return str(value)


def ci(low: float, high: float) -> str:
    return "–" if math.isnan(low) else f"[{low:+.3f}, {high:+.3f}]"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def embedded(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def render(context: dict[str, Any]) -> str:
    """The page for `context` (see `report.py`); every string from the data is HTML-escaped."""
    import jinja2

    # autoescape=True escapes every {{ }} value: task names, recipes, warnings, notes are data.
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = environment.from_string(PAGE)
    return template.render(fmt=fmt, ci=ci, **context)


def draw_figures(
    study: Any, tables: dict[str, list[dict[str, Any]]], results: list[dict[str, Any]], folder: Path
) -> list[dict[str, Any]]:
    """Draw every figure the sweep has data for; each with a title, a caption and optional HTML tables."""
    from ckptlab.reporting import analysis, figures

    drawn = []
    pct = percent(study.level)

    def add(
        name: str, title: str, caption: str, path: Path | None, html_tables: list[dict[str, Any]] | None = None
    ) -> None:
        drawn.append(
            {
                "name": name,
                "title": title,
                "caption": caption,
                "data": embedded(path) if path else "",
                "tables": html_tables or [],
            }
        )

    bases = study.of_role("base")
    panels = [("base checkpoints", *analysis.heatmap(study, bases))] if bases else []
    panels += [
        (f"fine-tuned: {recipe}", *analysis.heatmap(study, models)) for recipe, models in study.recipes().items()
    ]
    if panels:
        add(
            "heatmaps",
            "Checkpoint × eval set",
            "Score of each model (rows: checkpoints in step order) on each eval "
            "set, base and fine-tuned (one panel per recipe).",
            figures.heatmaps(panels, folder / "heatmaps.png"),
        )
    curves = analysis.curves(study)
    if curves:
        add(
            "curves",
            "Base vs fine-tuned over pre-training",
            "Score over pre-training steps for every eval set: "
            f"base (dashed) and each fine-tuning recipe, with {pct} bands; dotted: chance.",
            figures.score_curves(curves, study.data.chance, folder / "curves.png"),
        )
    if tables["gains"]:
        rho = next(f for f in results if f["id"] == "ii")
        stat = rho["statistics"][0] if rho["statistics"] else None
        rho_text = (
            f"Spearman ρ {fmt(stat['value'])} {ci(stat['ci_low'], stat['ci_high'])}"
            if stat
            else f"finding (ii): {rho['outcome']}"
        )
        add(
            "gains",
            "Gain from fine-tuning vs base score",
            "One point per (fine-tuned model, eval set), with the "
            f"gain's {pct} interval. Finding (ii) expects the largest gains (as a share of the headroom) where "
            "the base is weakest.",
            figures.gain_scatter(tables["gains"], rho_text, folder / "gains.png"),
        )
    if tables["forgetting"]:
        add(
            "forgetting",
            "Forgetting matrix",
            "Change vs the base checkpoint per fine-tuning recipe and eval set, "
            "averaged over checkpoints. Negative = forgotten.",
            figures.forgetting_matrix(tables["forgetting"], folder / "forgetting.png"),
        )
    series = analysis.sensitivity_series(study)
    if series:
        add(
            "sensitivity",
            "Prompt sensitivity over pre-training",
            "Template variance component (unbiased; chance-normalised on choice sets; models that answer one "
            f"class left out), averaged over eval sets, for base models and each recipe, with {pct} bands.",
            figures.series_plot(series, "template variance", "Prompt sensitivity", folder / "sensitivity.png"),
        )
    if tables["cpt"]:
        summary = [r for r in tables["cpt"] if r["task"].startswith("mean of ")]
        columns = ["recipe", "variant", "start", "task", "change", "ci_low", "ci_high"]
        add(
            "cpt",
            "Continued pre-training",
            "Change of each cpt model vs its starting checkpoint on domain and "
            "general eval sets (per-set rows in tables/cpt.csv).",
            figures.cpt_bars(tables["cpt"], folder / "cpt.png"),
            [{"columns": columns, "rows": [[r[c] for c in columns] for r in summary]}],
        )
    _compute_sections(tables, add, folder, study.level)
    return drawn


def percent(level: float) -> str:
    """0.95 → "95%", 0.975 → "97.5%": the confidence level as the page writes it."""
    return f"{level * 100:g}%"


def _html_table(
    rows: list[dict[str, Any]], columns: list[str], interval: str | None = None, level: float = 0.95
) -> dict[str, Any]:
    """An HTML table of some columns of CSV rows; `interval` adds the `ci_low`/`ci_high` of that column."""
    header = columns + ([f"{percent(level)} CI"] if interval else [])
    body = [
        [r.get(c) for c in columns] + ([f"[{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]"] if interval else []) for r in rows
    ]
    return {"columns": header, "rows": body}


def _compute_sections(tables: dict[str, list[dict[str, Any]]], add: Any, folder: Path, level: float) -> None:
    """The compute, frontier and sequential fine-tuning sections (docs/report.md states the conventions)."""
    from ckptlab.reporting import figures

    if tables["compute"]:
        methods = [r for r in tables["gain_per_pflop"] if r["level"] == "method"]
        add(
            "compute",
            "Compute of the training runs",
            "What each fine-tuning (and cpt) run cost, from its run's "
            "compute record (FLOPs by the Kaplan et al. 2020 count; chain_flops adds the runs it was trained after). "
            "Then per method: gain over the base checkpoint on the in-task eval sets ÷ training PFLOPs, the mean over "
            "the method's models (per model in tables/gain_per_pflop.csv).",
            None,
            [
                _html_table(
                    tables["compute"],
                    [
                        "recipe",
                        "checkpoint",
                        "method",
                        "trainable_params",
                        "tokens",
                        "flops",
                        "chain_flops",
                        "wall_s",
                        "energy_kwh",
                    ],
                ),
                _html_table(methods, ["method", "models", "gain", "pflops", "gain_per_pflop"], "gain_per_pflop", level),
            ],
        )
    if any(r["on_frontier"] for r in tables["frontier"]):
        add(
            "frontier",
            "Score per compute: frontier and recommendation",
            "Score on each eval set against total "
            "compute: pre-training of the checkpoint (its run's compute scaled to the checkpoint's tokens) plus "
            "every training run that made the model. Black: the Pareto frontier (tables/frontier.csv). Per eval "
            "set: the model with the most score above chance per PFLOP (interval above chance), and the cheapest "
            "model shown equivalent to the best (its one-sided upper bound of best − it below the equivalence margin).",
            figures.frontier(tables["frontier"], folder / "frontier.png"),
            [
                _html_table(
                    tables["recommendation"],
                    [
                        "task",
                        "best",
                        "best_score",
                        "per_pflop",
                        "per_pflop_score",
                        "per_pflop_total_pflops",
                        "cheapest_equivalent",
                        "cheapest_equivalent_score",
                        "cheapest_equivalent_total_pflops",
                    ],
                )
            ],
        )
    if tables["sequential"]:
        means = [r for r in tables["sequential"] if r["task"].startswith("mean of ")]
        replay = [r for r in tables["sequential_replay"] if r["task"].startswith("mean of ")]
        add(
            "sequential",
            "Sequential fine-tuning",
            "For each chain A → B (a fine-tune of a fine-tuned model): the "
            "change of A's in-task scores after B, averaged over checkpoints (negative: lost; per checkpoint and "
            "eval set, and B's own gains, in tables/sequential.csv). Chains from the same A to the same task are "
            "compared with the one without a variant label (positive: the labelled chain lost less).",
            None,
            [_html_table(means, ["chain", "first", "variant", "task", "change"], "change", level)]
            + ([_html_table(replay, ["reference", "compared", "task", "change"], "change", level)] if replay else []),
        )


def page(
    study: Any, config: Any, results: list[dict[str, Any]], drawn: list[dict[str, Any]], csv_files: list[str]
) -> str:
    data = study.data
    recipes = study.recipes()
    counts = (
        f"{_count(len(study.of_role('base')), 'base checkpoint')}, "
        f"{_count(len(study.of_role('finetuned')), 'fine-tuned model')} ({_count(len(recipes), 'recipe')}), "
        f"{_count(len(study.of_role('cpt')), 'cpt model')}"
    )
    all_templates = sorted({t for names in data.templates.values() for t in names})
    template_note = (
        f"mean over templates ({', '.join(all_templates)})"
        if config.template == "mean"
        else f"template {config.template}"
    )
    metric_note = " / ".join(sorted(set(data.metric.values()))) or "no metric"
    models = [
        {
            "columns": ["recipe", "fine-tuning task", "method", "checkpoints (steps)"],
            "rows": [
                [name, str(group[0].finetune_task or ""), group[0].method or "", ", ".join(str(m.step) for m in group)]
                for name, group in recipes.items()
            ]
            + [
                [f"cpt {m.finetune or ''}", "continued pre-training", m.variant or "", str(m.step)]
                for m in study.of_role("cpt")
            ],
        }
    ]
    bases = study.of_role("base")
    at_chance = [
        task
        for task in data.tasks
        if bases
        and all((score := study.score(m, task)) is not None and study.at_chance(task, float(score[0])) for m in bases)
    ]
    chance_note = (
        f"The base model is at chance at every checkpoint on {len(at_chance)} of {len(data.tasks)} eval "
        f"sets ({', '.join(at_chance)}): on these, base scores cannot tell checkpoints apart."
        if at_chance
        else ""
    )
    title = config.sweep_name or config.sweep or str(data.store_path)
    return render(
        {
            "models": models,
            "title": title,
            "store": str(data.store_path),
            "counts": counts,
            "tasks": data.tasks,
            "metric_note": metric_note,
            "shots": data.shots,
            "template_note": template_note,
            "resamples": config.bootstrap,
            "level": percent(config.confidence),
            "warnings": data.warnings,
            "findings": results,
            "figures": drawn,
            "chance_note": chance_note,
            "csv_files": csv_files,
        }
    )
