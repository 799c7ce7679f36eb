"""Barrier figures: a run's layer x round heatmap and its loss along the interpolation in the last analysed
round, and for two checkpoints the per-layer barriers (both bases) and the interpolation curves per group.

Tables with several model pairs or rounds are averaged over them (mean per group, base, alpha).
"""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure

from fedlayer.analysis.summary import FULL_ROW, averaging_rows, barrier_grid, layer_order, pairs_note
from fedlayer.plots import titles
from fedlayer.plots.heatmaps import barrier_panels, heatmap_size

MAX_LEGEND_LAYERS = 12
_MAX_LEGEND = 24
_BASE_COLORS = {"a": "tab:blue", "b": "tab:orange"}
_LABELS = {
    "loss_barrier_mid": "midpoint loss barrier",
    "loss_barrier_max": "max loss barrier",
    "error_barrier_mid": "midpoint error barrier (pp)",
    "error_barrier_max": "max error barrier (pp)",
    "loss": "loss (cross-entropy)",
    "error": "error (%)",
}


# -- a run -------------------------------------------------------------------------------------------------
def barrier_heatmap_figure(barriers: pd.DataFrame, context: str = "") -> Figure | None:
    """Layer x round mean midpoint loss barrier, the full model in a separate strip, colour centred at 0."""
    grid = barrier_grid(barriers)
    if grid.empty or not np.isfinite(grid.to_numpy(dtype=float)).any():
        return None
    fig = Figure(figsize=heatmap_size(len(grid), grid.shape[1]), layout="constrained")
    barrier_panels(fig, {"": grid})
    titles(
        fig,
        "Layer-wise midpoint loss barrier between client models",
        f"{pairs_note(averaging_rows(barriers))}\n{context}",
    )
    return fig


def barrier_curves_figure(curves: pd.DataFrame, context: str = "") -> Figure | None:
    """Loss along alpha in the last analysed round on base a: each single layer and the full model."""
    rows = averaging_rows(curves)
    rows = rows[rows["kind"].isin(["layer", "full"]) & (rows["base"] == "a")]
    if rows.empty:
        return None
    rows = rows[rows["round"] == rows["round"].max()]
    last = int(rows["round"].iloc[0])
    mean = rows.groupby(["group", "alpha"], sort=False)["loss"].mean()
    layers = layer_order(rows)
    fig = Figure(figsize=(7.2, 4.4), layout="constrained")
    ax = fig.subplots()
    cmap = ListedColormap(matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, 256)))  # no pale yellow on white
    marker = "o" if rows["alpha"].nunique() <= 11 else None
    for i, name in enumerate(layers):
        ax.plot(
            mean[name].index,
            mean[name].to_numpy(),
            color=cmap(i / max(1, len(layers) - 1)),
            linewidth=1.2,
            marker=marker,
            markersize=3,
            label=name,
        )
    if "full" in rows["kind"].to_numpy():
        full = rows.loc[rows["kind"] == "full"].groupby("alpha")["loss"].mean()
        ax.plot(
            full.index,
            full.to_numpy(),
            color="black",
            linewidth=2.2,
            marker=marker,
            markersize=4,
            label=FULL_ROW,
        )
    ends = rows.drop_duplicates(["client_a", "client_b"])[["loss_a", "loss_b"]].mean()
    ax.plot(
        [0, 1],
        [ends["loss_a"], ends["loss_b"]],
        color="0.4",
        linestyle=":",
        linewidth=1.5,
        label="(1−α)·L_A + α·L_B",
    )
    ax.set_xlabel("α (0 = client A, 1 = client B in the interpolated layers)")
    ax.set_ylabel("test loss (cross-entropy)")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    if len(layers) <= MAX_LEGEND_LAYERS:
        ax.legend(fontsize="small", bbox_to_anchor=(1.01, 1), loc="upper left", title="interpolated")
    else:
        ax.legend(handles=ax.get_lines()[len(layers) :], fontsize="small", loc="upper left")
        bar = fig.colorbar(ScalarMappable(norm=Normalize(0, len(layers) - 1), cmap=cmap), ax=ax)
        bar.set_label("interpolated layer (0 = input side)")
    pairs = rows.drop_duplicates(["client_a", "client_b"]).shape[0]
    titles(
        fig,
        f"Loss along the interpolation, round {last}: model A with one layer (or all) moved to B",
        f"mean over {pairs} client pair{'' if pairs == 1 else 's'}, base a\n{context}",
    )
    return fig


# -- two checkpoints -----------------------------------------------------------------------------------
def layer_barrier_figure(barriers: pd.DataFrame, metric: str = "loss_barrier_mid") -> Figure:
    """Bars per single layer, base a and base b side by side; the full model's barrier as a line."""
    layers = barriers[barriers["kind"] == "layer"]
    names = list(dict.fromkeys(layers["group"]))
    values = layers.groupby(["group", "base"], sort=False)[metric].mean()
    fig = Figure(figsize=(max(6.0, 0.38 * len(names) + 2), 4.5))
    ax = fig.subplots()
    positions = np.arange(len(names))
    bases = [b for b in ("a", "b") if b in set(layers["base"])]
    width = 0.8 / max(len(bases), 1)
    for i, base in enumerate(bases):
        heights = [values.get((name, base), np.nan) for name in names]
        offset = (i - (len(bases) - 1) / 2) * width
        ax.bar(positions + offset, heights, width, label=f"base {base}", color=_BASE_COLORS[base])
    full = barriers.loc[barriers["kind"] == "full", metric]
    if not full.empty:
        ax.axhline(full.mean(), color="black", linestyle="--", linewidth=1.2, label=f"full model ({full.mean():.3g})")
    ax.axhline(0.0, color="grey", linewidth=0.6)
    ax.set_xticks(positions, names, rotation=90, fontsize=8)
    ax.set_ylabel(_LABELS.get(metric, metric))
    ax.set_title(f"{_LABELS.get(metric, metric)} per layer")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def curves_figure(curves: pd.DataFrame, metric: str = "loss") -> Figure:
    """One panel per base: the metric against alpha for every group, the full path in black and the
    random-direction baseline (mean over layers and draws) dashed grey."""
    bases = [b for b in ("a", "b") if b in set(curves["base"])]
    fig = Figure(figsize=(6.0 * len(bases) + 2.5, 4.5))
    axes = fig.subplots(1, len(bases), sharey=True, squeeze=False)
    for ax, base in zip(axes[0], bases, strict=True):
        rows = curves[curves["base"] == base]
        groups = rows[~rows["kind"].isin(["full", "random-direction"])]
        names = list(dict.fromkeys(groups["group"]))
        colors = matplotlib.colormaps["viridis"](np.linspace(0.0, 0.95, max(len(names), 1)))
        for name, color in zip(names, colors, strict=False):
            line = groups[groups["group"] == name].groupby("alpha")[metric].mean()
            ax.plot(line.index, line.to_numpy(), color=color, linewidth=1.0, label=name)
        for kind, style in (
            ("full", dict(color="black", linewidth=2.2)),
            ("random-direction", dict(color="grey", linestyle="--", linewidth=1.5)),
        ):
            line = rows[rows["kind"] == kind].groupby("alpha")[metric].mean()
            if not line.empty:
                label = "full model" if kind == "full" else "random directions (mean)"
                ax.plot(line.index, line.to_numpy(), label=label, **style)
        ax.set_title(f"base {base}: {'A' if base == 'a' else 'B'} outside the group")
        ax.set_xlabel("alpha (0 = model A, 1 = model B)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(_LABELS.get(metric, metric))
    handles, labels = axes[0][-1].get_legend_handles_labels()
    if len(labels) <= _MAX_LEGEND:
        axes[0][-1].legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    else:
        mappable = ScalarMappable(cmap="viridis", norm=Normalize(1, len(labels)))
        fig.colorbar(mappable, ax=axes[0].tolist(), label="group (in table order)")
    fig.suptitle(f"{_LABELS.get(metric, metric)} along the interpolation paths")
    return fig
