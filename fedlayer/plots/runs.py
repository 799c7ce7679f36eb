"""Every figure of a run directory or an analysis folder, drawn from its stored tables alone, and of a
comparison with its runs.

accuracy.png (global and personalised test accuracy per round; a language model's next-token accuracy
and perplexity), barrier_heatmap.png (layer x round
midpoint loss barriers), barrier_curves.png (loss along alpha in the last analysed round), and when
their tables hold them choices.png (barrier-aware averaging), groups.png (cumulative groups and
sliding windows) and directions.png (averaging against random directions). Every figure with layers
marks which the run averaged and which stayed personal (`fedlayer.averaged`). A figure whose data is
absent is skipped, so a run without analysis still plots, and an analysis folder (barriers.parquet and
curves.parquet alone, written inside a Flower app of one's own) gets its barrier figures.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from matplotlib.figure import Figure

from fedlayer.averaged import averaged_layers
from fedlayer.errors import DataError
from fedlayer.plots import save_figure
from fedlayer.plots.accuracy import accuracy_figure
from fedlayer.plots.barriers import barrier_curves_figure, barrier_heatmap_figure
from fedlayer.plots.choices import choices_figure
from fedlayer.plots.compare import plot_comparison
from fedlayer.plots.directions import directions_figure
from fedlayer.plots.groups import groups_figure
from fedlayer.results import (
    ANALYSIS_TABLES,
    RUN_MARKER,
    RunRecord,
    check_analysis_tables,
    comparison_runs,
    describe_run,
    directory_kind,
    read_comparison,
    read_run,
)


def plot_run(run_dir: str | Path) -> list[Path]:
    """Redraw every figure a run directory's (or an analysis folder's) tables allow into <run_dir>/plots/;
    return their paths."""
    return draw_run(read_run(run_dir))


def draw_run(run: RunRecord) -> list[Path]:
    """Draw the figures of a run or analysis folder already read.

    Raises
    ------
    DataError
        If the folder holds none of metrics.parquet, barriers.parquet and curves.parquet, or its barrier
        tables lack the round and client columns (`fedlayer.results.check_analysis_tables`).
    """
    if run.metrics is None and all(getattr(run, name) is None for name in ANALYSIS_TABLES):
        tables = ", ".join([RUN_MARKER, *(f"{name}.parquet" for name in ANALYSIS_TABLES)])
        raise DataError(f"{str(run.path)!r} is not a run directory or an analysis folder: it has none of {tables}")
    check_analysis_tables(run)
    return [save_figure(fig, run.path / "plots" / f"{name}.png") for name, fig in _figures(run)]


def plot_directory(path: str | Path) -> list[Path]:
    """Redraw every figure of a run, an analysis folder, or a comparison and each of its runs, from the
    stored tables."""
    path = Path(path)
    if directory_kind(path) in ("run", "analysis"):
        return plot_run(path)
    drawn = plot_comparison(path)
    for _, _, run in comparison_runs(path, read_comparison(path)):
        drawn += plot_run(run)
    return drawn


def _figures(run: RunRecord) -> Iterator[tuple[str, Figure]]:
    """(name, figure) for each figure with data, built one at a time so each is saved and freed at once."""
    context = describe_run(run.config)
    threshold = run.config.strategy.threshold if run.config is not None else None
    averaged = averaged_layers(run)
    figures = {
        "accuracy": (run.metrics, lambda t: accuracy_figure(t, context)),
        "barrier_heatmap": (run.barriers, lambda t: barrier_heatmap_figure(t, context, averaged)),
        "barrier_curves": (run.curves, lambda t: barrier_curves_figure(t, context, averaged)),
        "choices": (run.choices, lambda t: choices_figure(t, threshold, context)),
        "groups": (run.barriers, lambda t: groups_figure(t, context, averaged)),
        "directions": (run.curves, lambda t: directions_figure(t, context, averaged)),
    }
    for name, (table, build) in figures.items():
        fig = build(table) if table is not None and not table.empty else None
        if fig is not None:
            yield name, fig
