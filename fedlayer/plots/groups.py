"""Barriers of layer groups in the last analysed round: cumulative groups per ordering (the paper's group
experiment) and sliding windows of consecutive layers, each window's first layer styled by whether the run
averaged the layers the windows starting there cover (`fedlayer.plots.marks`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedlayer.analysis.summary import FULL_ROW, averaging_rows, pairs_note
from fedlayer.averaged import status
from fedlayer.layers import ORDERINGS
from fedlayer.plots import titles
from fedlayer.plots.heatmaps import MIDPOINT
from fedlayer.plots.marks import legend_entries, mark_texts, style_legend


def groups_figure(barriers: pd.DataFrame, context: str = "", averaged: pd.DataFrame | None = None) -> Figure | None:
    """Midpoint loss barrier of cumulative layer groups (per ordering) and of sliding windows, last round;
    with `averaged` (`fedlayer.averaged.averaged_layers`), the windows' first layers marked."""
    plain = averaging_rows(barriers)
    rows = plain[plain["kind"].isin([*ORDERINGS, "window"])]
    if rows.empty:
        return None
    last = int(rows["round"].max())
    rows = rows[rows["round"] == last]
    cumulative, windows = rows[rows["kind"] != "window"], rows[rows["kind"] == "window"]
    panels = [p for p in (cumulative, windows) if not p.empty]
    fig = Figure(figsize=(6.0 * len(panels), 4.2), layout="constrained")
    axes = list(fig.subplots(1, len(panels), squeeze=False)[0])
    if not cumulative.empty:
        ax = axes.pop(0)
        for kind in [k for k in ORDERINGS if k in set(cumulative["kind"])]:
            line = cumulative[cumulative["kind"] == kind].groupby("n_layers")["loss_barrier_mid"].mean()
            ax.plot(line.index, line.to_numpy(), marker="o", label=kind)
        full = plain[(plain["kind"] == "full") & (plain["round"] == last)]["loss_barrier_mid"]
        if not full.empty:
            ax.axhline(full.mean(), color="black", linestyle="--", linewidth=1, label=FULL_ROW)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("k (the group is the first k layers of the ordering)")
        ax.set_title("cumulative groups", fontsize="medium")
        _barrier_axis(ax)
    if not windows.empty:
        ax = axes.pop(0)
        start = windows["group"].str.partition("@")[2]
        starts = list(dict.fromkeys(start))
        table = windows.assign(start=start.map(starts.index))
        for width, part in table.groupby("n_layers"):
            line = part.groupby("start")["loss_barrier_mid"].mean()
            ax.plot(line.index, line.to_numpy(), marker="o", label=f"width {width}")
        ax.set_xticks(np.arange(len(starts)))
        ax.set_xticklabels(starts, rotation=45, ha="right", fontsize=8)
        ax.set_xlabel("first layer of the window")
        ax.set_title("sliding windows of consecutive layers", fontsize="medium")
        covered = {first: "|".join(part["layers"]).split("|") for first, part in table.groupby(start)}
        seen = mark_texts(ax.get_xticklabels(), lambda first: status(averaged, covered.get(first, []), [last]))
        if seen:
            ax.set_xlabel("first layer of the window (styled by whether the window's layers were averaged)")
        _barrier_axis(ax, legend_entries(seen))
    titles(fig, f"Midpoint loss barrier of layer groups, round {last}", f"{pairs_note(rows)}\n{context}")
    return fig


def _barrier_axis(ax, marks: list | None = None) -> None:
    """The zero line, labels and legend of a panel; `marks` are the averaging entries (`legend_entries`)."""
    ax.axhline(0, color="0.5", linewidth=0.8)
    ax.set_ylabel(MIDPOINT)
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    style_legend(ax.legend(handles=[*handles, *(marks or [])], fontsize="small"))
