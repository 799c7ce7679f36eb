"""Figures (PNG) drawn from stored tables alone, one module per family of figures.

    runs         plot_run / plot_directory: every figure a run, an analysis folder (barrier tables
                 alone), or a comparison and its runs allows
    accuracy     test accuracy per round of one run
    barriers     layer x round barrier heatmap per base, loss along the interpolation, per-layer barrier
                 bars, and the curves of two checkpoints by family of groups
    groups       barriers of cumulative layer groups and sliding windows
    choices      which layers barrier-aware averaging averaged each round
    directions   each layer moved towards the other model against random directions
    compare      a comparison's accuracy, side-by-side heatmaps, final accuracy, and accuracy
                 against the megabytes communicated
    clients      the distribution of client accuracies per strategy in a comparison's final round
    partitions   the label distribution of a partition
    heatmaps     the heatmap drawing and colour scale shared by runs and comparisons
    marks        how layer-wise figures mark the layers a run averaged and those it kept personal

Figures are `matplotlib.figure.Figure` objects built without pyplot, so drawing them needs no
display, registers nothing globally and never changes a notebook's backend; `save_figure` renders
them to PNG atomically.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from fedlayer.atomic import atomic_target


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 120) -> Path:
    """Write `fig` as a PNG via a temporary file and rename, so a crash never leaves half a picture."""
    with atomic_target(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    return Path(path)


def perplexity_axis(ax: Axes) -> None:
    """A log-scale y axis for perplexities (they fall from about the vocabulary size), ticked at 1, 2, 3, 5
    and 7 times powers of ten and labelled as plain numbers."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0, 7.0)))
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=(4.0, 6.0, 8.0, 9.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def titles(fig: Figure, what: str, context: str) -> None:
    """A title line saying what is shown, then lines saying what it averages and which run it is."""
    fig.suptitle("\n".join(line for line in (what, context.strip()) if line), fontsize="medium")
