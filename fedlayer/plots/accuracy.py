"""Test accuracy per round of one run: the global model, and the personalised models with their spread; a
language model's run adds its perplexity per round beside it."""

from __future__ import annotations

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedlayer.plots import perplexity_axis, titles
from fedlayer.results import PERPLEXITY, table_task, task_terms


def accuracy_figure(metrics: pd.DataFrame, context: str = "") -> Figure:
    """Global test accuracy per round, and the personalised local-test accuracy: mean and min-max band.

    The accuracy is named by the run's task (`fedlayer.results.TaskTerms`): a language run's is its next-token
    accuracy, and a second panel shows its perplexity per round (log scale: it falls from about the
    vocabulary size at the initial model).
    """
    terms = task_terms(table_task(metrics))
    panels = [("accuracy", 100.0, f"test {terms.accuracy} (%)")]
    if terms.perplexity:
        panels.append((PERPLEXITY, 1.0, "test perplexity (log scale)"))
    fig = Figure(figsize=(6.4 if len(panels) == 1 else 11.0, 4.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (column, scale, label) in zip(axes, panels, strict=True):
        _per_round(ax, metrics, column, scale)
        ax.set_ylabel(label)
    if terms.perplexity:
        perplexity_axis(axes[1])
    axes[0].legend(fontsize="small", loc="lower right")
    what = f"{terms.accuracy} and perplexity" if terms.perplexity else terms.accuracy
    titles(fig, f"Test {what} per round", context)
    return fig


def _per_round(ax: Axes, metrics: pd.DataFrame, column: str, scale: float) -> None:
    """`column` (times `scale`) per round: the global model's line, the personalised models' mean and band."""
    glob = metrics[(metrics["split"] == "test") & (metrics["client"] == "global")]
    glob = glob.groupby("round")[column].mean() * scale
    marker = "o" if len(glob) <= 30 else None
    ax.plot(glob.index, glob.to_numpy(), marker=marker, color="C0", label="global model, global test set")
    local = metrics[metrics["split"] == "local-test"]
    if not local.empty:
        stats = local.groupby("round")[column].agg(["mean", "min", "max"]) * scale
        clients = local["client"].nunique()
        ax.plot(
            stats.index,
            stats["mean"],
            marker=marker,
            color="C1",
            label=f"personalised models, local test sets (mean of {clients} clients)",
        )
        ax.fill_between(
            stats.index,
            stats["min"],
            stats["max"],
            color="C1",
            alpha=0.2,
            linewidth=0,
            label="min–max over clients",
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round (0 = initial model)")
    ax.grid(alpha=0.3)
