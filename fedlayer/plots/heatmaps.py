"""Layer x round heatmaps of midpoint barriers, shared by a run's heatmap and a comparison's side-by-side ones.

One colour scale centred at 0 for all panels, the full model in its own strip under the layers, cell
values written in when they fit, integer round ticks on a categorical axis, and where the run averaged
layers, its averaged and personal layers marked (`fedlayer.plots.marks`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize, SymLogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullLocator

from fedlayer.analysis.summary import FULL_ROW
from fedlayer.averaged import PERSONAL, status
from fedlayer.plots.marks import hatch_personal, legend_entries, mark_texts, style_legend

BARRIER_CMAP = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.85")
MIDPOINT = "loss barrier at α = ½"
NEGLIGIBLE_BARRIER = 0.1  # the paper's "no barrier" band for single layers
MAX_ANNOTATED_CELLS = 160
MAX_ANNOTATED_ROUNDS = 16
MAX_ROUND_TICKS = 20
LABEL_INCHES_PER_CHARACTER = 0.075  # a tick label's width per character at 9 pt
SHORT_LABEL_INCHES = 1.2  # row names up to this wide fit in the width `heatmap_size` always gives


def round_ticks(ax, rounds: Sequence[int]) -> None:
    """Integer round ticks on a categorical x axis (analysed rounds need not be consecutive)."""
    step = max(1, int(np.ceil(len(rounds) / MAX_ROUND_TICKS)))
    ax.set_xticks(np.arange(0, len(rounds), step))
    ax.set_xticklabels([str(r) for r in list(rounds)[::step]])


def annotated(grid: pd.DataFrame) -> bool:
    """Whether a grid is small enough to write each cell's value in it."""
    return grid.size <= MAX_ANNOTATED_CELLS and grid.shape[1] <= MAX_ANNOTATED_ROUNDS


def barrier_norm(grids: Sequence[pd.DataFrame]) -> Normalize:
    """One colour scale for `grids`, symmetric around 0, so a barrier and a negative one of equal size look
    equally strong. It spans at least ±NEGLIGIBLE_BARRIER, so noise around zero stays pale instead of being
    stretched to full colour; when values pass ±10 x that (a full-model barrier of 2 beside layer barriers
    of 0.05), it is logarithmic beyond ±NEGLIGIBLE_BARRIER, keeping both readable on one colour bar."""
    values = np.concatenate([g.to_numpy(dtype=float).ravel() for g in grids])
    finite = np.abs(values[np.isfinite(values)])
    limit = max(float(finite.max()) if finite.size else 0.0, NEGLIGIBLE_BARRIER)
    if limit <= 10 * NEGLIGIBLE_BARRIER:
        return Normalize(-limit, limit)
    return SymLogNorm(NEGLIGIBLE_BARRIER, linscale=0.5, vmin=-limit, vmax=limit, base=10)


def norm_label(norm: Normalize) -> str:
    if isinstance(norm, SymLogNorm):
        return f"{MIDPOINT}\n(linear within ±{NEGLIGIBLE_BARRIER}, logarithmic beyond)"
    return MIDPOINT


def barrier_panels(
    fig: Figure,
    grids: Mapping[str, pd.DataFrame],
    averaged: Mapping[str, pd.DataFrame | None] | None = None,
) -> dict[str, pd.DataFrame]:
    """Draw `barrier_grid` tables side by side (titled by their keys) on one colour scale centred at 0,
    with the colour bar in its own column. Rows are aligned across panels (layers in first-seen order,
    the longest grid first; a row a panel lacks is grey). `averaged` gives, per panel key, the run's
    `fedlayer.averaged.averaged_layers` table: its personal cells are hatched, its layer names styled,
    and a legend under the panels says so. Returns the aligned grids."""
    longest = max(grids.values(), key=len)
    names = [*longest.index, *(r for g in grids.values() for r in g.index)]
    rows = [r for r in dict.fromkeys(names) if r != FULL_ROW]
    full = [FULL_ROW] if any(FULL_ROW in g.index for g in grids.values()) else []
    aligned = {title: g.reindex(index=rows + full) for title, g in grids.items()}
    norm = barrier_norm(list(aligned.values()))
    # the first panel also holds the layer names: widen its column by them, so every heatmap is as wide
    labels = label_width(rows + full)
    panel = max(0.5, (fig.get_figwidth() - labels - 1.0) / len(aligned))
    ratios = [1.0 + labels / panel, *[1.0] * (len(aligned) - 1), 0.045]
    outer = fig.add_gridspec(1, len(aligned) + 1, width_ratios=ratios)
    seen: set[str] = set()
    for i, (title, grid) in enumerate(aligned.items()):
        marks = (averaged or {}).get(title)
        seen |= _draw_grid(fig, outer[i], grid, norm, n_layers=len(rows), ylabels=i == 0, title=title, averaged=marks)
    if seen:
        style_legend(fig.legend(handles=legend_entries(seen, cells=True), loc="outside lower center", ncols=3))
    mappable = ScalarMappable(norm=norm, cmap=BARRIER_CMAP)
    bar = fig.colorbar(mappable, cax=fig.add_subplot(outer[-1]), label=norm_label(norm))
    # plain numbers at 0, ±0.1, ±1, ±10 ... rather than powers of ten (barrier_norm always sets vmax)
    if isinstance(norm, SymLogNorm) and norm.vmax is not None:
        decades = NEGLIGIBLE_BARRIER * 10.0 ** np.arange(int(np.log10(norm.vmax / NEGLIGIBLE_BARRIER)) + 1)
        bar.set_ticks(np.concatenate([-decades[::-1], [0.0], decades]).tolist())
        bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}".replace("-", "−")))
        bar.ax.yaxis.set_minor_locator(NullLocator())
    return aligned


def _draw_grid(
    fig: Figure,
    cell,
    grid: pd.DataFrame,
    norm: Normalize,
    *,
    n_layers: int,
    ylabels: bool,
    title: str,
    averaged: pd.DataFrame | None,
) -> set[str]:
    """One heatmap in gridspec `cell`: the layer rows on top, the full-model row in its own strip below;
    with `averaged`, personal cells hatched and layer names styled. Returns the averaging statuses marked."""
    parts = [p for p in (list(grid.index[:n_layers]), list(grid.index[n_layers:])) if p]
    sub = cell.subgridspec(len(parts), 1, height_ratios=[len(p) for p in parts])
    annotate = annotated(grid)
    seen: set[str] = set()
    for i, part in enumerate(parts):
        ax = fig.add_subplot(sub[i])
        values = grid.reindex(index=part).to_numpy(dtype=float)
        ax.imshow(values, cmap=BARRIER_CMAP, norm=norm, aspect="auto", interpolation="nearest")
        ax.set_yticks(np.arange(len(part)))
        ax.set_yticklabels(part if ylabels else [], fontsize=8 if n_layers > 20 else 9)
        ax.tick_params(length=0)
        if annotate:
            _annotate(ax, values, norm)
        if averaged is not None and part[0] != FULL_ROW:
            if hatch_personal(ax, averaged.reindex(index=part, columns=grid.columns).to_numpy(dtype=float)):
                seen.add(PERSONAL)
            seen |= mark_texts(ax.get_yticklabels(), lambda name: status(averaged, [name], grid.columns))
        if i < len(parts) - 1:
            ax.set_xticks([])
        else:
            round_ticks(ax, list(grid.columns))
            ax.set_xlabel("round")
        if i == 0 and title:
            ax.set_title(title, fontsize="medium")
    return seen


def _annotate(ax, values: np.ndarray, norm: Normalize) -> None:
    for (y, x), value in np.ndenumerate(values):
        if np.isfinite(value):
            text = f"{value:.2f}".replace("-0.00", "0.00")
            ax.text(
                x,
                y,
                text,
                ha="center",
                va="center",
                fontsize=7,
                color="white" if abs(float(norm(value)) - 0.5) > 0.3 else "black",
            )


def label_width(names: Sequence[str]) -> float:
    """About how many inches the longest of `names` takes as a tick label (9 pt)."""
    return LABEL_INCHES_PER_CHARACTER * max((len(str(name)) for name in names), default=0)


def heatmap_size(n_rows: int, n_rounds: int, panels: int = 1, labels: Sequence[str] = ()) -> tuple[float, float]:
    """(width, height) in inches of `panels` heatmaps of `n_rows` rows and `n_rounds` columns side by side,
    widened by the row names `labels` longer than a short layer name (a transformer's, say)."""
    width = panels * min(8.0 if panels == 1 else 5.5, max(3.2, 1.2 + 0.45 * n_rounds)) + 2.5
    longer = max(0.0, label_width(labels) - SHORT_LABEL_INCHES)
    return min(width, 18.0) + longer, min(16.0, max(3.0, 1.6 + 0.26 * (n_rows + 1)))
