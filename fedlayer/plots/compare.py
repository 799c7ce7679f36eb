"""Figures of a comparison directory (strategies x seeds), read through `fedlayer.results.read_comparison`
and `read_clients`.

accuracy.png (accuracy per round per strategy, a band over seeds), communication.png (accuracy
against the cumulative megabytes communicated), barrier_heatmaps.png (each strategy's layer x round
heatmap side by side, from its runs' barriers.parquet), final.png (final accuracy per strategy, 95 %
confidence intervals over seeds) and clients.png (every client's final personalised accuracy per
strategy, from clients.parquet).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedlayer.analysis.summary import (
    CUMULATIVE_BYTES,
    MB,
    TARGET_COLUMN,
    barrier_grid,
    resolve_target,
    seed_mean_grid,
    strategies,
    summary_table,
)
from fedlayer.plots import perplexity_axis, save_figure, titles
from fedlayer.plots.clients import client_accuracy_figure
from fedlayer.plots.heatmaps import barrier_panels, heatmap_size
from fedlayer.results import (
    TERMS,
    TaskTerms,
    describe_setting,
    find_run,
    read_clients,
    read_compare_settings,
    read_comparison,
    read_config,
    read_optional,
    table_path,
    table_task,
    task_terms,
)
from fedlayer.task_kinds import CLASSIFICATION


def plot_comparison(compare_dir: str | Path) -> list[Path]:
    """Redraw accuracy.png, communication.png (if the comparison counted bytes), barrier_heatmaps.png (if
    any run has barriers), final.png and clients.png (if the comparison has clients.parquet) into
    <dir>/plots/; return their paths."""
    compare_dir = Path(compare_dir)
    comparison = read_comparison(compare_dir)
    context = comparison_setting(compare_dir, comparison)
    clients = read_clients(compare_dir)
    target = resolve_target(comparison, read_compare_settings(compare_dir, comparison).target_accuracy)
    builders = {
        "accuracy": lambda: accuracy_figure(comparison, context),
        "communication": lambda: communication_figure(comparison, target, context),
        "barrier_heatmaps": lambda: barrier_heatmaps_figure(compare_dir, comparison, context),
        "final": lambda: final_figure(summary_table(comparison), context, task_terms(table_task(comparison))),
        "clients": lambda: client_accuracy_figure(clients, context) if clients is not None else None,
    }
    paths = []
    for name, build in builders.items():
        fig = build()
        if fig is not None:
            paths.append(save_figure(fig, compare_dir / "plots" / f"{name}.png"))
    return paths


def comparison_setting(compare_dir: Path, comparison: pd.DataFrame) -> str:
    """The shared setting (model, data, split, clients), read from the comparison's config (else its first
    run's); "" without one."""
    config = read_config(compare_dir)
    if config is None:
        first = comparison.iloc[0]
        run = find_run(compare_dir, first["strategy"], int(first["seed"]))
        config = read_config(run) if run is not None else None
    return describe_setting(config)


# -- figures ----------------------------------------------------------------------------------------------
def _colours(names: list[str]) -> dict[str, str]:
    return {name: f"C{i % 10}" for i, name in enumerate(names)}


def accuracy_figure(comparison: pd.DataFrame, context: str = "") -> Figure:
    """Global and mean personalised accuracy per round per strategy: mean over seeds with a ±std band. The
    accuracy is named by the comparison's task; a language model's comparison adds a row of panels with the
    perplexity (log scale)."""
    names = strategies(comparison)
    colours = _colours(names)
    seeds = comparison.groupby("strategy")["seed"].nunique()
    terms = task_terms(table_task(comparison))
    measures = [("accuracy", 100.0, f"test {terms.accuracy} (%)")]
    if terms.perplexity:
        measures.append(("perplexity", 1.0, "test perplexity (log scale)"))
    fig = Figure(figsize=(11.0, 4.2 * len(measures)), layout="constrained")
    grid = fig.subplots(len(measures), 2, sharex=True, sharey="row", squeeze=False)
    for axes, (measure, scale, label) in zip(grid, measures, strict=True):
        _per_round_panels(axes, comparison, measure, scale, names, colours, seeds)
        axes[0].set_ylabel(label)
        if measure == "perplexity":
            perplexity_axis(axes[0])
    for ax in grid[-1]:
        ax.set_xlabel("round")
    grid[0, 1].legend(fontsize="small", loc="lower right")
    what = f"{terms.accuracy} and perplexity" if terms.perplexity else terms.accuracy
    titles(fig, f"Test {what} per round (mean ± std over seeds)", context)
    return fig


def _per_round_panels(
    axes: Sequence[Axes],
    comparison: pd.DataFrame,
    measure: str,
    scale: float,
    names: list[str],
    colours: dict[str, str],
    seeds: pd.Series,
) -> None:
    """The global model's `measure` and the personalised models' mean over clients ("global_<measure>" and
    "personal_<measure>_mean") per round and strategy, in two panels: mean over seeds, ±std band."""
    panels = (
        (f"global_{measure}", "global model on the global test set"),
        (f"personal_{measure}_mean", "personalised models on their local test sets (mean over clients)"),
    )
    for ax, (column, title) in zip(axes, panels, strict=True):
        stats = comparison.groupby(["strategy", "round"])[column].agg(["mean", "std"]).dropna(subset=["mean"]) * scale
        for name in names:
            if name not in stats.index.get_level_values(0):
                continue
            line = stats.loc[name]
            ax.plot(
                line.index,
                line["mean"],
                color=colours[name],
                marker="o" if len(line) <= 30 else None,
                markersize=4,
                label=f"{name} ({seeds[name]} seed{'' if seeds[name] == 1 else 's'})",
            )
            std = line["std"].fillna(0)
            ax.fill_between(
                line.index,
                line["mean"] - std,
                line["mean"] + std,
                color=colours[name],
                alpha=0.15,
                linewidth=0,
            )
        ax.set_title(title, fontsize="medium")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)


def communication_figure(comparison: pd.DataFrame, target: float = np.nan, context: str = "") -> Figure | None:
    """Global and mean personalised accuracy against the cumulative MB of averaged layers communicated, per
    strategy (one point per round, mean over seeds), with the target accuracy of "MB to target" (`target`,
    NaN: none). None when the comparison has no byte counts (made before fedlayer counted them)."""
    if CUMULATIVE_BYTES not in comparison or comparison[CUMULATIVE_BYTES].isna().all():
        return None
    names = strategies(comparison)
    colours = _colours(names)
    columns = [CUMULATIVE_BYTES, "global_accuracy", TARGET_COLUMN]
    means = comparison.groupby(["strategy", "round"])[columns].mean().dropna(subset=[CUMULATIVE_BYTES])
    fig = Figure(figsize=(11.0, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    panels = (
        ("global_accuracy", "global model on the global test set"),
        (TARGET_COLUMN, "personalised models on their local test sets (mean over clients)"),
    )
    for ax, (column, title) in zip(axes, panels, strict=True):
        for name in names:
            if name not in means.index.get_level_values(0):
                continue
            line = means.loc[name].dropna(subset=[column])
            ax.plot(line[CUMULATIVE_BYTES] * MB, line[column] * 100, color=colours[name], label=name,
                    marker="o" if len(line) <= 30 else None, markersize=4)  # fmt: skip
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("cumulative communication (MB, averaged layers, down + up)")
        ax.grid(alpha=0.3)
    if np.isfinite(target):
        axes[1].axhline(target * 100, color="0.3", linestyle="--", linewidth=1, label=f"target {target * 100:.1f} %")
    accuracy = task_terms(table_task(comparison)).accuracy
    axes[0].set_ylabel(f"test {accuracy} (%)")
    axes[1].legend(fontsize="small", loc="lower right")
    titles(fig, f"Test {accuracy} against the megabytes communicated (mean over seeds; one point per round)", context)
    return fig


def strategy_grids(compare_dir: Path, comparison: pd.DataFrame) -> dict[str, tuple[pd.DataFrame, int]]:
    """Per strategy with barriers: its layer x round grid averaged over seeds, and how many seeds had one."""
    grids = {}
    for name in strategies(comparison):
        per_seed = []
        for seed in dict.fromkeys(comparison.loc[comparison["strategy"] == name, "seed"]):
            run = find_run(compare_dir, name, int(seed))
            barriers = read_optional(table_path(run, "barriers")) if run is not None else None
            grid = barrier_grid(barriers) if barriers is not None else pd.DataFrame()
            if not grid.empty:
                per_seed.append(grid)
        if per_seed:
            grids[name] = (seed_mean_grid(per_seed), len(per_seed))
    return grids


def barrier_heatmaps_figure(compare_dir: Path, comparison: pd.DataFrame, context: str = "") -> Figure | None:
    """Each strategy's layer x round heatmap side by side, on one colour scale centred at 0."""
    grids = strategy_grids(compare_dir, comparison)
    if not grids:
        return None
    rows = max(len(g) for g, _ in grids.values())
    rounds = max(g.shape[1] for g, _ in grids.values())
    names = [name for grid, _ in grids.values() for name in grid.index]
    fig = Figure(figsize=heatmap_size(rows, rounds, len(grids), names), layout="constrained")
    aligned = barrier_panels(fig, {f"{name} ({n} seed{'' if n == 1 else 's'})": g for name, (g, n) in grids.items()})
    missing = any(g.isna().to_numpy().any() for g in aligned.values())
    note = "; grey: not measured (layer kept on the clients)" if missing else ""
    titles(
        fig,
        "Layer-wise midpoint loss barrier between client models",
        f"mean over seeds, client pairs and both bases{note}\n{context}",
    )
    return fig


def final_figure(table: pd.DataFrame, context: str = "", terms: TaskTerms = TERMS[CLASSIFICATION]) -> Figure:
    """Final-round global and personalised accuracy per strategy (`summary_table`), error bars = the 95 %
    confidence interval of the mean over seeds (none with one seed); the accuracy named in `terms`, the
    comparison's task's."""
    fig = Figure(figsize=(max(5.0, 1.3 * len(table) + 2.5), 4.2), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(table))
    width = 0.38
    bars = (
        ("global_accuracy", "global model, global test set", "#4c72b0", -width / 2),
        ("personal_accuracy", "personalised models, local test sets", "#dd8452", width / 2),
    )
    for name, label, colour, offset in bars:
        mean, ci = table[f"{name}_mean"] * 100, table[f"{name}_ci"].fillna(0) * 100
        ax.bar(x + offset, mean, width, yerr=ci, capsize=3, color=colour, label=label)
        for xi, m, c in zip(x + offset, mean, ci, strict=True):
            if np.isfinite(m):
                ax.text(xi, m + c + 1, f"{m:.1f}", ha="center", va="bottom", fontsize=8)
    long = len(table) > 5 or table["strategy"].str.len().max() > 10
    ax.set_xticks(x)
    ax.set_xticklabels(table["strategy"], rotation=30 if long else 0, ha="right" if long else "center")
    ax.set_ylabel(f"test {terms.accuracy} (%)")
    ax.set_ylim(0, 110)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(
        fontsize="small",
        loc="upper center",
        bbox_to_anchor=(0.5, -0.18 if long else -0.1),
        ncols=2,
        frameon=False,
    )
    rounds = sorted(set(table["round"]))
    spread = "mean ± 95 % confidence interval over seeds" if table["seeds"].max() > 1 else "one seed"
    titles(fig, f"Final {terms.accuracy} (round {', '.join(map(str, rounds))}), {spread}", context)
    return fig
