"""Barrier-aware averaging: which layers the strategy averaged each round, and the barrier it measured."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from fedlayer.analysis.summary import choices_grids
from fedlayer.plots import titles
from fedlayer.plots.heatmaps import annotated, heatmap_size, round_ticks
from fedlayer.plots.marks import AVERAGED_COLOR, PERSONAL_COLOR


def choices_figure(choices: pd.DataFrame, threshold: float | None = None, context: str = "") -> Figure:
    """For each layer and round, averaged or kept personal (cell text: its barrier); `threshold` is the
    strategy's rule, named in the legend when known."""
    averaged, barrier = choices_grids(choices)
    order = list(averaged.index)
    fig = Figure(figsize=heatmap_size(len(order), averaged.shape[1], labels=order), layout="constrained")
    ax = fig.subplots()
    colours = ListedColormap([PERSONAL_COLOR, AVERAGED_COLOR])
    ax.imshow(averaged.to_numpy(dtype=float), cmap=colours, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    if annotated(averaged):
        for (y, x), value in np.ndenumerate(barrier.to_numpy(dtype=float)):
            if np.isfinite(value):
                ax.text(x, y, f"{value:.2f}", ha="center", va="center", fontsize=7)
    ax.set_yticks(np.arange(len(order)))
    ax.set_yticklabels(order, fontsize=8 if len(order) > 20 else 9)
    ax.tick_params(length=0)
    round_ticks(ax, list(averaged.columns))
    ax.set_xlabel("round")
    rule = f" (barrier < {threshold})" if threshold is not None else ""
    ax.legend(
        handles=[
            Patch(color=AVERAGED_COLOR, label=f"averaged{rule}"),
            Patch(color=PERSONAL_COLOR, label="kept personal"),
        ],
        bbox_to_anchor=(1.01, 1),
        loc="upper left",
        fontsize="small",
    )
    titles(fig, "Barrier-aware averaging: layers averaged each round (cell text: measured barrier)", context)
    return fig
