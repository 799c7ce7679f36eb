"""Figures and the summary table of a comparison directory (strategies x seeds).

The directory holds comparison.parquet (strategy, seed, round, global_accuracy, global_loss,
personal_accuracy_mean, personal_accuracy_std, full_barrier_mean, layer_barrier_mean) and one run
directory per (strategy, seed) at runs/<strategy>/seed-<seed>/, whose barriers.parquet feeds the
side-by-side heatmaps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from fedlayer.errors import FedlayerError
from fedlayer.plots import save_figure, titles
from fedlayer.plots.runs import (
    barrier_grid,
    barrier_panels,
    describe_setting,
    heatmap_size,
    read_config,
    read_optional,
)

COMPARISON = "comparison.parquet"
REQUIRED_COLUMNS = ("strategy", "seed", "round", "global_accuracy", "personal_accuracy_mean")


@dataclass(frozen=True)
class Metric:
    """A summary column: where it comes from, how it is shown, and which direction is best."""

    name: str
    column: str
    label: str
    higher_is_better: bool
    scale: float
    digits: int


SUMMARY_METRICS = (
    Metric("global_accuracy", "global_accuracy", "global accuracy (%)", True, 100.0, 1),
    Metric("personal_accuracy", "personal_accuracy_mean", "personalised accuracy (%)", True, 100.0, 1),
    Metric("full_barrier", "full_barrier_mean", "full-model barrier", False, 1.0, 3),
    Metric("layer_barrier", "layer_barrier_mean", "mean layer barrier", False, 1.0, 3),
)


def run_path(compare_dir: str | Path, strategy: str, seed: int) -> Path:
    return Path(compare_dir) / "runs" / str(strategy) / f"seed-{seed}"


def read_comparison(compare_dir: str | Path) -> pd.DataFrame:
    table = read_optional(Path(compare_dir) / COMPARISON)
    if table is None:
        raise FedlayerError(f"{str(compare_dir)!r} is not a comparison directory: it has no {COMPARISON}")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing or table.empty:
        problem = f"lacks the columns {', '.join(missing)}" if missing else "has no rows"
        raise FedlayerError(f"{Path(compare_dir) / COMPARISON} {problem}; expected {', '.join(REQUIRED_COLUMNS)}")
    return table


def strategies(comparison: pd.DataFrame) -> list[str]:
    """Strategies in the order the comparison ran them."""
    return list(dict.fromkeys(comparison["strategy"]))


def plot_comparison(compare_dir: str | Path) -> list[Path]:
    """Redraw accuracy.png, barrier_heatmaps.png (if any run has barriers) and final.png into <dir>/plots/."""
    compare_dir = Path(compare_dir)
    comparison = read_comparison(compare_dir)
    context = comparison_setting(compare_dir, comparison)
    builders = {
        "accuracy": lambda: accuracy_figure(comparison, context),
        "barrier_heatmaps": lambda: barrier_heatmaps_figure(compare_dir, comparison, context),
        "final": lambda: final_figure(summary_table(comparison), context),
    }
    paths = []
    for name, build in builders.items():
        fig = build()
        if fig is not None:
            paths.append(save_figure(fig, compare_dir / "plots" / f"{name}.png"))
    return paths


def comparison_setting(compare_dir: Path, comparison: pd.DataFrame) -> str:
    """The shared setting (model, data, split, clients), read from the first run's config; "" without one."""
    first = comparison.iloc[0]
    return describe_setting(read_config(run_path(compare_dir, first["strategy"], int(first["seed"]))))


# -- summary --------------------------------------------------------------------------------------------
def summary_table(comparison: pd.DataFrame) -> pd.DataFrame:
    """Per strategy: seeds, final round, and mean and std over seeds (ddof 1) of each SUMMARY_METRICS value.

    A run's value is its last measured one: the final round, or for barriers analysed every N rounds
    the last analysed round.
    """
    finals = []
    for (strategy, seed), run in comparison.sort_values("round", kind="stable").groupby(["strategy", "seed"]):
        record = {"strategy": strategy, "seed": seed, "round": int(run["round"].max())}
        for metric in SUMMARY_METRICS:
            values = run[metric.column].dropna() if metric.column in run else pd.Series(dtype=float)
            record[metric.name] = float(values.iloc[-1]) if len(values) else math.nan
        finals.append(record)
    finals = pd.DataFrame(finals)
    names = [m.name for m in SUMMARY_METRICS]
    stats = finals.groupby("strategy")[names].agg(["mean", "std"])
    stats.columns = [f"{name}_{stat}" for name, stat in stats.columns]
    counts = finals.groupby("strategy").agg(seeds=("seed", "nunique"), round=("round", "max"))
    table = counts.join(stats).reindex(strategies(comparison))
    return table.reset_index(names="strategy")


def summary_cells(table: pd.DataFrame) -> tuple[list[str], list[list[str]], set[tuple[int, int]]]:
    """Headers, 'mean ± std' text cells, and the (row, column) cells holding each column's best mean
    (highest accuracy, lowest barrier; ties all count): the one formatting shared by the terminal and
    Markdown."""
    headers = ["strategy", "seeds", "round", *(m.label for m in SUMMARY_METRICS)]
    rows = [[str(s), str(n), str(r)] for s, n, r in zip(table["strategy"], table["seeds"], table["round"], strict=True)]
    best = set()
    for j, metric in enumerate(SUMMARY_METRICS, start=3):
        means, stds = table[f"{metric.name}_mean"], table[f"{metric.name}_std"]
        for row, mean, std in zip(rows, means, stds, strict=True):
            row.append(mean_std(mean, std, metric.scale, metric.digits))
        if means.notna().any():
            top = means.max() if metric.higher_is_better else means.min()
            best |= {(i, j) for i, mean in enumerate(means) if np.isclose(mean, top)}
    return headers, rows, best


def mean_std(mean: float, std: float, scale: float = 1.0, digits: int = 3) -> str:
    if not np.isfinite(mean):
        return "–"
    text = f"{mean * scale:.{digits}f}"
    return f"{text} ± {std * scale:.{digits}f}" if np.isfinite(std) else text


def print_summary(table: pd.DataFrame, console) -> None:
    """The summary as a rich table, the best value of each column in bold."""
    from rich.table import Table

    headers, rows, best = summary_cells(table)
    out = Table(title="Final round, mean ± std over seeds (bold: best)")
    for j, header in enumerate(headers):
        out.add_column(header, justify="left" if j == 0 else "right")
    for i, row in enumerate(rows):
        out.add_row(*(f"[bold]{cell}[/bold]" if (i, j) in best else cell for j, cell in enumerate(row)))
    console.print(out)


# -- figures ----------------------------------------------------------------------------------------------
def _colours(names: list[str]) -> dict[str, str]:
    return {name: f"C{i % 10}" for i, name in enumerate(names)}


def accuracy_figure(comparison: pd.DataFrame, context: str = "") -> plt.Figure:
    """Global and mean personalised accuracy per round per strategy: mean over seeds with a ±std band."""
    names = strategies(comparison)
    colours = _colours(names)
    seeds = comparison.groupby("strategy")["seed"].nunique()
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.2), sharex=True, sharey=True, layout="constrained")
    panels = (
        ("global_accuracy", "global model on the global test set"),
        ("personal_accuracy_mean", "personalised models on their local test sets (mean over clients)"),
    )
    for ax, (column, title) in zip(axes, panels, strict=True):
        stats = comparison.groupby(["strategy", "round"])[column].agg(["mean", "std"]).dropna(subset=["mean"]) * 100
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
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[1].legend(fontsize="small", loc="lower right")
    titles(fig, "Test accuracy per round (mean ± std over seeds)", context)
    return fig


def strategy_grids(compare_dir: Path, comparison: pd.DataFrame) -> dict[str, tuple[pd.DataFrame, int]]:
    """Per strategy with barriers: its layer x round grid averaged over seeds, and how many seeds had one."""
    grids = {}
    for name in strategies(comparison):
        per_seed = []
        for seed in dict.fromkeys(comparison.loc[comparison["strategy"] == name, "seed"]):
            barriers = read_optional(run_path(compare_dir, name, seed) / "barriers.parquet")
            grid = barrier_grid(barriers) if barriers is not None else pd.DataFrame()
            if not grid.empty:
                per_seed.append(grid)
        if per_seed:
            order = list(dict.fromkeys(r for g in per_seed for r in g.index))
            mean = pd.concat(per_seed).groupby(level=0).mean()
            grids[name] = (mean.reindex(index=order, columns=sorted(mean.columns)), len(per_seed))
    return grids


def barrier_heatmaps_figure(compare_dir: Path, comparison: pd.DataFrame, context: str = "") -> plt.Figure | None:
    """Each strategy's layer x round heatmap side by side, on one colour scale centred at 0."""
    grids = strategy_grids(compare_dir, comparison)
    if not grids:
        return None
    rows = max(len(g) for g, _ in grids.values())
    rounds = max(g.shape[1] for g, _ in grids.values())
    fig = plt.figure(figsize=heatmap_size(rows, rounds, len(grids)), layout="constrained")
    aligned = barrier_panels(fig, {f"{name} ({n} seed{'' if n == 1 else 's'})": g for name, (g, n) in grids.items()})
    missing = any(g.isna().to_numpy().any() for g in aligned.values())
    note = "; grey: not measured (layer kept on the clients)" if missing else ""
    titles(
        fig,
        "Layer-wise midpoint loss barrier between client models",
        f"mean over seeds, client pairs and both bases{note}\n{context}",
    )
    return fig


def final_figure(table: pd.DataFrame, context: str = "") -> plt.Figure:
    """Final-round global and personalised accuracy per strategy, error bars = std over seeds."""
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(table) + 2.5), 4.2), layout="constrained")
    x = np.arange(len(table))
    width = 0.38
    bars = (
        ("global_accuracy", "global model, global test set", "#4c72b0", -width / 2),
        ("personal_accuracy", "personalised models, local test sets", "#dd8452", width / 2),
    )
    for name, label, colour, offset in bars:
        mean, std = table[f"{name}_mean"] * 100, table[f"{name}_std"].fillna(0) * 100
        ax.bar(x + offset, mean, width, yerr=std, capsize=3, color=colour, label=label)
        for xi, m, s in zip(x + offset, mean, std, strict=True):
            if np.isfinite(m):
                ax.text(xi, m + s + 1, f"{m:.1f}", ha="center", va="bottom", fontsize=8)
    long = len(table) > 5 or table["strategy"].str.len().max() > 10
    ax.set_xticks(x)
    ax.set_xticklabels(table["strategy"], rotation=30 if long else 0, ha="right" if long else "center")
    ax.set_ylabel("test accuracy (%)")
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
    titles(fig, f"Final accuracy (round {', '.join(map(str, rounds))}), mean ± std over seeds", context)
    return fig
