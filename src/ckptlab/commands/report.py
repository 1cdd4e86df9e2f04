"""`ckptlab report`: the analysis report of a sweep, with the four findings of Sun & Dredze 2024 tested.

Examples:

    ckptlab report runs/sweep --out runs/sweep/report
    ckptlab report --store results/ckptlab.sqlite --out report --template train_format
    ckptlab report runs/sweep --task_dirs world --bootstrap 2000

SWEEP (the first argument, or `--sweep`) is a sweep output directory holding `results.sqlite`;
`--store` names a results store directly. The store's `sweep_models` rows say which models are base
checkpoints, fine-tuned models and continued-pre-training models. Writes `OUT/report.html` (one
self-contained file, figures embedded), `OUT/figures/*.png`, `OUT/tables/*.csv` and
`OUT/findings.json`. See docs/report.md for how each finding is tested.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptlab.errors import ConfigError, UserError


@dataclass
class ReportConfig:
    """Analyse a sweep's results store: figures, tables and the four findings, in one HTML file."""

    POSITIONAL = "sweep"  # `ckptlab report SWEEP` means `ckptlab report --sweep SWEEP` (not a config key)

    sweep: str | None = None
    """Sweep output directory holding results.sqlite (may be given as the first argument)."""
    store: str | None = None
    """A results store file to read instead of SWEEP/results.sqlite."""
    out: str | None = None
    """Output directory; null = SWEEP/report (or report/ beside --store)."""
    sweep_name: str | None = None
    """Only the models of this sweep name (sweep_models.sweep); null = every sweep in the store."""
    shots: int | None = None
    """Number of few-shot demonstrations whose results are analysed; null = the smallest present."""
    template: str = "mean"
    """Score of a model on an eval set: `mean` over its prompt templates, or one template's name."""
    bootstrap: int = 1000
    """Paired bootstrap resamples over examples (0 = no intervals: every finding is inconclusive)."""
    bootstrap_seed: int = 0
    """Seed of the bootstrap resampling."""
    confidence: float = 0.95
    """Level of the intervals; a finding's part holds when its interval excludes 0."""
    chance_margin: float = 0.02
    """A base score at most this far above chance (uniform or majority label) counts as at chance; on a small eval
    set the margin grows to the one-sided critical value of a score at chance (docs/report.md)."""
    equivalence_margin: float = 0.02
    """The recommendation's "cheapest equivalent" model scores less than this below the best (shown by a one-sided
    test at `confidence`)."""
    knowledge_probes: list[str] = field(default_factory=lambda: ["world_knowledge", "finance_qa"])
    """Eval sets that probe knowledge from pre-training (task files with probes_pretraining_knowledge add to them)."""
    task_dirs: list[str] = field(default_factory=list)
    """Folders of task YAMLs or worlds (world.json): their domain, knowledge-probe and twin keys are used."""
    task_families: dict[str, str] = field(default_factory=dict)
    """Eval set → family, overriding the naming rules (`<domain>_<family>`; rte → nli, ...)."""
    task_domains: dict[str, str] = field(default_factory=dict)
    """Eval set → domain (general, finance, ...), overriding the naming rules."""
    finetune_covers: dict[str, list[str]] = field(default_factory=dict)
    """Fine-tuning task or data name → the eval sets it trains on (e.g. an instruction mixture's tasks)."""
    metrics: dict[str, str] = field(default_factory=dict)
    """Eval set → primary metric (accuracy, accuracy_norm, rouge_l, exact_match); default accuracy, else rouge_l."""
    cpt_domain: str | None = None
    """Domain that continued pre-training targets; null = named by the cpt data, or the one non-general domain."""

    def __post_init__(self) -> None:
        if not 0 < self.confidence < 1:
            raise ConfigError(f"config key 'confidence': expected a number between 0 and 1, got {self.confidence}")
        if self.equivalence_margin < 0 or self.chance_margin < 0:
            raise ConfigError(
                "config keys 'chance_margin', 'equivalence_margin': expected 0 or more, got "
                f"{self.chance_margin}, {self.equivalence_margin}"
            )
        if self.bootstrap < 0:
            raise ConfigError(f"config key 'bootstrap': expected 0 or more resamples, got {self.bootstrap}")
        if self.shots is not None and self.shots < 0:
            raise ConfigError(f"config key 'shots': expected 0 or more, got {self.shots}")
        for task, name in self.metrics.items():
            if name not in ("accuracy", "accuracy_norm", "rouge_l", "exact_match"):
                raise ConfigError(
                    f"config key 'metrics.{task}': expected accuracy, accuracy_norm, rouge_l or "
                    f"exact_match (a mean over examples), got {name!r}"
                )


def output_dir(config: ReportConfig, store_path: Path) -> Path:
    if config.out:
        return Path(config.out)
    return Path(config.sweep) / "report" if config.sweep and not config.store else store_path.parent / "report"


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns or ["empty"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def json_safe(value: Any) -> Any:
    """NaN → null, recursively: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def build_study(config: ReportConfig) -> Any:
    """Read the store and resample it: the `analysis.Study` every table, figure and finding is computed from."""
    from ckptlab.reporting import analysis, data, replicates
    from ckptlab.reporting.bootstrap import Resampled
    from ckptlab.reporting.taxonomy import Taxonomy

    store_path = data.store_path_of(config.sweep, config.store)
    sweep = data.load(store_path, config.sweep_name, config.shots, config.metrics)
    sweep.seed_rows = replicates.merge_seed_replicates(sweep)  # a fine-tune's seeds become one model
    taxonomy = Taxonomy(
        config.task_families, config.task_domains, config.knowledge_probes, config.finetune_covers, config.task_dirs
    )
    if config.template != "mean":
        known = sorted({t for names in sweep.templates.values() for t in names})
        if config.template not in known:
            raise UserError(
                f"{store_path}: template '{config.template}' is not among the templates evaluated "
                f"({', '.join(known)}); give one of them or `mean`"
            )
        sweep.warnings += [
            f"task {task}: not evaluated with template {config.template}; left out"
            for task, names in sweep.templates.items()
            if config.template not in names
        ]
    means = Resampled(sweep, config.bootstrap, config.bootstrap_seed, config.template)
    return analysis.Study(sweep, means, taxonomy, config.confidence, config.chance_margin, config.equivalence_margin)


def report(config: ReportConfig) -> int:
    from ckptlab.reporting import analysis, findings, sequential
    from ckptlab.reporting import compute as costs
    from ckptlab.reporting import html as pages

    study = build_study(config)
    out = output_dir(config, study.data.store_path)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(parents=True, exist_ok=True)

    results = findings.all_findings(study)
    tables = {
        "scores": analysis.score_table(study),
        "gains": analysis.gain_table(study),
        "forgetting": analysis.forgetting_table(study),
        "sensitivity": analysis.sensitivity_table(study),
        "cpt": analysis.cpt_table(study, config.cpt_domain),
        "compute": costs.compute_table(study),
        "gain_per_pflop": costs.gain_per_pflop_table(study),
        "frontier": costs.frontier_table(study),
        "sequential": sequential.sequential_table(study),
        "sequential_replay": sequential.replay_comparison(study),
        "findings": [{"finding": f["id"], "outcome": f["outcome"], **s} for f in results for s in f["statistics"]],
        "seeds": study.data.seed_rows,
    }
    tables["recommendation"] = costs.recommendation_table(study, tables["frontier"])
    for name, rows in tables.items():
        write_csv(out / "tables" / f"{name}.csv", rows)
    (out / "findings.json").write_text(
        json.dumps(json_safe(results), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    figures = pages.draw_figures(study, tables, results, out / "figures")
    html = pages.page(study, config, results, figures, sorted(p.name for p in (out / "tables").glob("*.csv")))
    (out / "report.html").write_text(html, encoding="utf-8")
    for finding in results:
        print(f"finding ({finding['id']}): {finding['outcome']}: {finding['summary']}")
    print(f"report: {out / 'report.html'} ({len(figures)} figures, {len(tables)} tables in {out})")
    return 0
