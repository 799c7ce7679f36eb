"""Test accuracy per round of one run: the global model, and the personalised models with their spread."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedlayer.plots import titles


def accuracy_figure(metrics: pd.DataFrame, context: str = "") -> Figure:
    """Global test accuracy per round, and the personalised local-test accuracy: mean and min-max band."""
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    glob = metrics[(metrics["split"] == "test") & (metrics["client"] == "global")]
    glob = glob.groupby("round")["accuracy"].mean() * 100
    marker = "o" if len(glob) <= 30 else None
    ax.plot(glob.index, glob.to_numpy(), marker=marker, color="C0", label="global model, global test set")
    local = metrics[metrics["split"] == "local-test"]
    if not local.empty:
        stats = local.groupby("round")["accuracy"].agg(["mean", "min", "max"]) * 100
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
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    titles(fig, "Test accuracy per round", context)
    return fig
