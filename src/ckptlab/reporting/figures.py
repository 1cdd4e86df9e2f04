"""The report's figures, drawn with matplotlib (Agg) and written as PNG files.

Names from the data (tasks, recipes) are drawn as plain text: math-text parsing is off, so a `$` in
a task name cannot break a figure.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

DPI = 100
RC = {"text.parse_math": False, "font.size": 9, "axes.titlesize": 9, "figure.max_open_warning": 0}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display; the same pixels everywhere
    import matplotlib.pyplot as plt

    return plt


def _step_axis(ax: Any, steps: list[int]) -> None:
    """Log-like axis when steps span orders of magnitude (Pythia-style kept checkpoints), else linear."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    positive = [s for s in steps if s > 0]
    if positive and max(steps) / min(positive) >= 20:
        if len(positive) < len(steps):  # step 0 present: linear up to the first kept step, log after it
            ax.set_xscale("symlog", linthresh=min(positive))
        else:
            ax.set_xscale("log")
        # Plain numbers: math text is off (for data strings), so the default 10^k labels would show raw.
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("pre-training step")


def _grid(count: int, columns: int = 4) -> tuple[int, int]:
    columns = max(1, min(columns, count))
    return math.ceil(count / columns), columns


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    _plt().close(fig)
    return path


def heatmaps(panels: list[tuple[str, list[str], list[str], list[list[float]]]], path: Path) -> Path:
    """Checkpoint × eval-set heatmaps, one panel each: (title, row labels, column labels, values)."""
    plt = _plt()
    with plt.rc_context(RC):
        rows, columns = _grid(len(panels), 2)
        width = max(4.0, 0.55 * max(len(p[2]) for p in panels) + 2.5)
        height = max(2.5, 0.35 * max(len(p[1]) for p in panels) + 2.0)
        fig, axes = plt.subplots(
            rows, columns, figsize=(width * columns, height * rows), squeeze=False, layout="constrained"
        )
        for ax, (title, row_labels, column_labels, values) in zip(axes.flat, panels):
            image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
            ax.set_xticks(range(len(column_labels)), column_labels, rotation=45, ha="right")
            ax.set_yticks(range(len(row_labels)), row_labels)
            ax.set_title(title)
            for i, line in enumerate(values):
                for j, value in enumerate(line):
                    if not math.isnan(value):
                        ax.text(
                            j,
                            i,
                            f"{value:.2f}",
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="white" if value < 0.6 else "black",
                        )
            fig.colorbar(image, ax=ax, fraction=0.04)
        for ax in list(axes.flat)[len(panels) :]:
            ax.axis("off")
        return _save(fig, path)


def score_curves(
    curves: dict[str, dict[str, list[dict[str, Any]]]], chance: dict[str, float | None], path: Path
) -> Path:
    """Per eval set: base and each recipe's score over pre-training steps, with bands (the report's level)."""
    plt = _plt()
    with plt.rc_context(RC):
        rows, columns = _grid(len(curves), 3)
        fig, axes = plt.subplots(
            rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False, layout="constrained"
        )
        for ax, (task, series) in zip(axes.flat, curves.items()):
            steps = _lines(ax, series)
            if chance.get(task) is not None:
                ax.axhline(chance[task], color="grey", linewidth=0.8, linestyle=":", label="chance")
            _step_axis(ax, steps)
            ax.set_title(task)
            ax.set_ylim(-0.02, 1.02)
        for ax in list(axes.flat)[len(curves) :]:
            ax.axis("off")
        handles, labels = _legend_entries(axes)
        fig.legend(handles, labels, loc="outside upper center", ncol=min(4, len(labels)))
        return _save(fig, path)


def _lines(ax: Any, series: dict[str, list[dict[str, Any]]]) -> list[int]:
    """One line per series over steps (base dashed black) with its band (the report's level); returns the steps."""
    steps: list[int] = []
    for name, points in series.items():
        x = [p["step"] for p in points]
        steps += x
        style = {"color": "black", "linestyle": "--"} if name == "base" else {}
        line = ax.plot(x, [p["value"] for p in points], marker="o", markersize=3, label=name, **style)[0]
        low, high = [p["ci_low"] for p in points], [p["ci_high"] for p in points]
        if not any(math.isnan(v) for v in low + high):
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
    return steps


def _legend_entries(axes: Any) -> tuple[list[Any], list[str]]:
    seen: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    return list(seen.values()), list(seen)


def gain_scatter(rows: list[dict[str, Any]], rho_text: str, path: Path) -> Path:
    """Gain from fine-tuning against the base score, one point per (fine-tuned model, eval set)."""
    plt = _plt()
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for recipe in sorted({r["recipe"] for r in rows}):
            mine = [r for r in rows if r["recipe"] == recipe]
            ax.errorbar(
                [r["base"] for r in mine],
                [r["gain"] for r in mine],
                fmt="o",
                markersize=4,
                label=recipe,
                yerr=_error_bars(mine, "gain"),
                elinewidth=0.7,
                alpha=0.8,
            )
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xlabel("base score (the model fine-tuned from)")
        ax.set_ylabel("gain from fine-tuning")
        ax.set_title(f"Gain vs base score ({rho_text})")
        if rows:
            ax.legend(fontsize=7)
        return _save(fig, path)


def _error_bars(rows: list[dict[str, Any]], key: str) -> Any:
    if any(math.isnan(r["ci_low"]) for r in rows):
        return None
    return [[r[key] - r["ci_low"] for r in rows], [r["ci_high"] - r[key] for r in rows]]


def forgetting_matrix(rows: list[dict[str, Any]], path: Path) -> Path:
    """Fine-tuning recipe × eval set: change vs the base; I = in-task, D = cross-domain, T = cross-task."""
    plt = _plt()
    recipes = sorted({r["recipe"] for r in rows})
    tasks = sorted({r["task"] for r in rows})
    cell = {(r["recipe"], r["task"]): r for r in rows}
    values = [[cell[(a, t)]["value"] if (a, t) in cell else math.nan for t in tasks] for a in recipes]
    finite = [abs(v) for line in values for v in line if not math.isnan(v)]
    bound = max(finite + [0.05])
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(tasks) + 3), max(2.2, 0.45 * len(recipes) + 1.8)))
        image = ax.imshow(values, cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto")
        ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right")
        ax.set_yticks(range(len(recipes)), recipes)
        marks = {"in-task": "I", "cross-domain": "D", "cross-task": "T"}
        for i, recipe in enumerate(recipes):
            for j, task in enumerate(tasks):
                if (recipe, task) in cell:
                    row = cell[(recipe, task)]
                    probe = "*" if row["knowledge_probe"] else ""
                    ax.text(
                        j,
                        i,
                        f"{row['value']:+.2f}\n{marks[row['relation']]}{probe}",
                        ha="center",
                        va="center",
                        fontsize=7,
                    )
        ax.set_title("Change vs base (I in-task, D cross-domain, T cross-task, * knowledge probe)")
        fig.colorbar(image, ax=ax, fraction=0.04)
        return _save(fig, path)


def series_plot(series: dict[str, list[dict[str, Any]]], ylabel: str, title: str, path: Path) -> Path:
    """One line per series over pre-training steps with a band at the report's confidence level (prompt sensitivity)."""
    plt = _plt()
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(6.5, 4.0))
        _step_axis(ax, _lines(ax, series) or [0])
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if series:
            ax.legend(fontsize=7)
        return _save(fig, path)


def cpt_bars(rows: list[dict[str, Any]], path: Path) -> Path:
    """Per cpt model: mean change vs its starting checkpoint on domain and general eval sets."""
    plt = _plt()
    summary = [r for r in rows if r["task"].startswith("mean of ")]
    labels = sorted({f"{r['recipe']} @ {r['start']}" + (f" ({r['variant']})" if r["variant"] else "") for r in summary})
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(labels) + 2), 4.0))
        width = 0.38
        for offset, group in ((-width / 2, "domain"), (width / 2, "general")):
            mine = {
                f"{r['recipe']} @ {r['start']}" + (f" ({r['variant']})" if r["variant"] else ""): r
                for r in summary
                if r["group"] == group
            }
            x = [i + offset for i, label in enumerate(labels) if label in mine]
            picked = [mine[label] for label in labels if label in mine]
            ax.bar(
                x,
                [r["change"] for r in picked],
                width,
                label=f"{group} eval sets",
                yerr=_error_bars(picked, "change"),
                capsize=3,
            )
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
        ax.set_ylabel("change vs starting checkpoint")
        ax.set_title("Continued pre-training")
        ax.legend(fontsize=7)
        return _save(fig, path)


def frontier(rows: list[dict[str, Any]], path: Path) -> Path:
    """Per eval set: score vs total compute (pre-training + training, log scale) of every model,
    coloured by method, with the Pareto frontier drawn through its points."""
    plt = _plt()
    from matplotlib.ticker import FuncFormatter, NullFormatter

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    methods = sorted({r["method"] for r in rows})
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    with plt.rc_context(RC):
        n_rows, columns = _grid(len(tasks), 3)
        fig, axes = plt.subplots(n_rows, columns, figsize=(4.2 * columns, 3.4 * n_rows), squeeze=False)
        for ax, task in zip(axes.flat, tasks):
            mine = [r for r in rows if r["task"] == task and r["total_pflops"] > 0]
            for method in methods:
                points = [r for r in mine if r["method"] == method]
                if points:
                    ax.errorbar(
                        [r["total_pflops"] for r in points],
                        [r["value"] for r in points],
                        yerr=_error_bars(points, "value"),
                        fmt="o",
                        markersize=4,
                        capsize=2,
                        color=colours[method],
                        label=method,
                    )
            edge = sorted((r for r in mine if r["on_frontier"]), key=lambda r: r["total_pflops"])
            ax.step(
                [r["total_pflops"] for r in edge],
                [r["value"] for r in edge],
                where="post",
                color="black",
                linewidth=1,
                label="frontier",
            )
            ax.set_xscale("log")
            # Plain numbers: math text is off (for data strings), so the default 10^k labels would show raw.
            ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("total compute (PFLOPs)")
            ax.set_ylabel("score")
            ax.set_title(task)
        for ax in list(axes.flat)[len(tasks) :]:
            ax.axis("off")
        handles, labels = _legend_entries(axes)
        fig.legend(
            handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=7, bbox_to_anchor=(0.5, -0.02)
        )
        fig.tight_layout(rect=(0, 0.05, 1, 1))
        return _save(fig, path)
