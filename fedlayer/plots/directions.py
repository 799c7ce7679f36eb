"""Is the averaging direction special? Per layer, the loss when the layer moves towards the other model
against the loss when it moves as far along seeded random directions of the same norm (the paper's
robustness figure), drawn from a curves table with `random-direction` rows; in a run's figure the layer
names say which layers the run averaged and which stayed personal (`fedlayer.plots.marks`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fedlayer.averaged import status
from fedlayer.plots import titles
from fedlayer.plots.barriers import metric_label
from fedlayer.plots.marks import legend_entries, mark_texts, style_legend

AVERAGING_COLOR = "tab:red"
RANDOM_COLOR = "tab:gray"


def directions_figure(curves: pd.DataFrame, context: str = "", averaged: pd.DataFrame | None = None) -> Figure | None:
    """One panel per alpha strictly above 0 (½: the layer averaged, 1: swapped in, or moved as far at
    random): bars per layer for the averaging direction and for the random directions (mean, with
    the range over draws), in the last analysed round, on base a (b if the table has only b); the
    base model's own loss as a line. With `averaged` (`fedlayer.averaged.averaged_layers`), the layer
    names are styled by whether the run averaged them in that round.
    None when the table has no random directions.
    """
    base = "a" if "a" in set(curves["base"]) else "b"  # the model whose layer moves
    own, other = base.upper(), "B" if base == "a" else "A"
    rows = curves[curves["base"] == base]
    random = rows[rows["kind"] == "random-direction"]
    if random.empty:
        return None
    last = random["round"].max() if "round" in random.columns else None
    if last is not None:
        rows, random = rows[rows["round"] == last], random[random["round"] == last]
    averaging = rows[rows["kind"] == "layer"]
    layers = list(dict.fromkeys(random["group"]))
    alphas = sorted(a for a in random["alpha"].unique() if a > 0)
    # mean over client pairs first, then over the random draws (whose spread is the error bar)
    per_draw = random.groupby(["group", "alpha", "direction"])["loss"].mean()
    spread = per_draw.groupby(["group", "alpha"]).agg(["mean", "min", "max"])
    moved = averaging.groupby(["group", "alpha"])["loss"].mean()
    base_loss = rows[f"loss_{base}"].mean()  # every pair contributes the same number of rows

    positions = np.arange(len(layers))
    fig = Figure(figsize=(max(7.0, 0.42 * len(layers) + 2.5), 2.9 * len(alphas) + 1.2), layout="constrained")
    axes = fig.subplots(len(alphas), 1, sharex=True, squeeze=False)
    for ax, alpha in zip(axes[:, 0], alphas, strict=True):
        towards = [moved.get((layer, alpha), np.nan) for layer in layers]
        stats = spread.reindex([(layer, alpha) for layer in layers])
        ax.bar(positions - 0.2, towards, 0.4, color=AVERAGING_COLOR, label="towards the other model")
        ax.bar(
            positions + 0.2,
            stats["mean"],
            0.4,
            color=RANDOM_COLOR,
            yerr=[stats["mean"] - stats["min"], stats["max"] - stats["mean"]],
            capsize=2,
            label=f"random directions of the same norm (mean, range over {random['direction'].nunique()})",
        )
        ax.axhline(base_loss, color="black", linestyle=":", linewidth=1.2, label=f"model {own} (L_{own})")
        ax.set_title(f"α = {alpha:g}: {_what(alpha, own, other)}, or moved as far at random", fontsize="medium")
        ax.set_ylabel(f"test {metric_label('loss', curves)}")
        ax.grid(alpha=0.3, axis="y")
    axes[-1, 0].set_xticks(positions, layers, rotation=60, ha="right", fontsize=8)
    rounds = [last] if last is not None else None
    seen = mark_texts(axes[-1, 0].get_xticklabels(), lambda layer: status(averaged, [layer], rounds))
    handles, _ = axes[0, 0].get_legend_handles_labels()
    legend = axes[0, 0].legend(
        handles=[*handles, *legend_entries(seen)], fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1)
    )
    style_legend(legend)
    round_note = f", round {int(last)}" if last is not None else ""
    titles(
        fig, f"Model {own} with one layer moved: towards model {other} against random directions{round_note}", context
    )
    return fig


def _what(alpha: float, own: str, other: str) -> str:
    if alpha == 0.5:
        return f"{own}'s layer averaged with {other}'s"
    if alpha == 1.0:
        return f"{own}'s layer replaced by {other}'s"
    return f"{own}'s layer moved {alpha:g} of the way to {other}'s"
