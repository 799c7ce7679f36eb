"""Barrier figures: per-layer midpoint barriers (both bases) and the interpolation curves per group.

Tables with several model pairs or rounds are averaged over them (mean per group, base, alpha).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

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


def layer_barrier_figure(barriers: pd.DataFrame, metric: str = "loss_barrier_mid") -> Figure:
    """Bars per single layer, base a and base b side by side; the full model's barrier as a line."""
    layers = barriers[barriers["kind"] == "layer"]
    names = list(dict.fromkeys(layers["group"]))
    values = layers.groupby(["group", "base"], sort=False)[metric].mean()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.38 * len(names) + 2), 4.5))
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
    fig, axes = plt.subplots(1, len(bases), figsize=(6.0 * len(bases) + 2.5, 4.5), sharey=True, squeeze=False)
    for ax, base in zip(axes[0], bases, strict=True):
        rows = curves[curves["base"] == base]
        groups = rows[~rows["kind"].isin(["full", "random-direction"])]
        names = list(dict.fromkeys(groups["group"]))
        colors = plt.cm.viridis(np.linspace(0.0, 0.95, max(len(names), 1)))
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
        mappable = plt.cm.ScalarMappable(cmap="viridis", norm=plt.Normalize(1, len(labels)))
        fig.colorbar(mappable, ax=axes[0].tolist(), label="group (in table order)")
    fig.suptitle(f"{_LABELS.get(metric, metric)} along the interpolation paths")
    return fig
