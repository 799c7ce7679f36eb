"""Barrier figures: a run's layer x round heatmap (one panel per base) and its loss along the interpolation
in the last analysed round, and for two checkpoints the per-layer barriers (both bases) and the
interpolation curves per group.

Tables with several model pairs or rounds are averaged over them (mean per group, base, alpha). Curves are
drawn by family (single layers, cumulative groups, windows and selected groups), each with its own look,
against the full model and its chord; a group that would repeat a path in its panel is left out
(`distinct_paths`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from fedlayer.analysis.curves import RANDOM_KIND
from fedlayer.analysis.summary import FULL_ROW, averaging_rows, barrier_grid, pairs_note
from fedlayer.averaged import status
from fedlayer.layers import ORDERINGS
from fedlayer.plots import titles
from fedlayer.plots.heatmaps import barrier_panels, heatmap_size
from fedlayer.plots.marks import legend_entries, mark_texts, style_legend
from fedlayer.results import table_task, task_terms

MAX_LEGEND_LINES = 12  # more lines of one kind: one legend entry for the kind (single layers: a colour bar)
FAMILIES = {
    "single layers": ("layer",),
    "cumulative groups": ORDERINGS,
    "windows and selected groups": ("window", "selector"),
}
_ORDERING_CMAPS = {"shallow": "Blues", "deep": "Oranges", "random": "Greens", "minimal": "Purples"}
_LAYER_CMAP = ListedColormap(matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, 256)))  # no pale yellow
_REFERENCE = "reference"  # gid of the lines every panel shares: full model, chord, random directions
_BASE_COLORS = {"a": "tab:blue", "b": "tab:orange"}


def metric_label(metric: str, table: pd.DataFrame) -> str:
    """How an axis names a column of a curves or barriers table, in the terms of the task its rows measure
    (a language model's loss is per token, its error the next-token error)."""
    terms = task_terms(table_task(table))
    return {
        "loss_barrier_mid": "midpoint loss barrier",
        "loss_barrier_max": "max loss barrier",
        "error_barrier_mid": f"midpoint {terms.error} barrier (pp)",
        "error_barrier_max": f"max {terms.error} barrier (pp)",
        "loss": f"loss ({terms.cross_entropy})",
        "error": f"{terms.error} (%)",
    }.get(metric, metric)


# -- a run -------------------------------------------------------------------------------------------------
def barrier_heatmap_figure(
    barriers: pd.DataFrame, context: str = "", averaged: pd.DataFrame | None = None
) -> Figure | None:
    """Layer x round midpoint loss barrier, one panel per base, the full model in a separate strip, colour
    centred at 0; with `averaged` (`fedlayer.averaged.averaged_layers`), the personal cells hatched.

    Each base gets its own panel rather than their mean or the worse of the two: the two bases move the
    same layer into different models and can disagree in sign (averaging a layer can cost model A and
    help model B), which a mean hides and a maximum would report only half of.
    """
    rows = averaging_rows(barriers)
    grids = {pairs_note(part): barrier_grid(part) for _, part in rows.groupby("base", sort=True)}
    grids = {title: grid for title, grid in grids.items() if not grid.empty}
    if not grids or not any(np.isfinite(g.to_numpy(dtype=float)).any() for g in grids.values()):
        return None
    rows_shown = max(len(g) for g in grids.values())
    rounds = max(g.shape[1] for g in grids.values())
    names = [name for grid in grids.values() for name in grid.index]
    fig = Figure(figsize=heatmap_size(rows_shown, rounds, panels=len(grids), labels=names), layout="constrained")
    barrier_panels(fig, grids, {title: averaged for title in grids})
    titles(
        fig,
        "Layer-wise midpoint loss barrier between client models, per base "
        "(base a: the other layers are model A's; base b: model B's)",
        context,
    )
    return fig


def barrier_curves_figure(
    curves: pd.DataFrame, context: str = "", averaged: pd.DataFrame | None = None
) -> Figure | None:
    """Loss along alpha in the last analysed round on base a: each single layer, the full model and its
    chord; with `averaged` (`fedlayer.averaged.averaged_layers`), the layer names styled by whether the run
    averaged them in that round."""
    rows = averaging_rows(curves)
    rows = rows[rows["kind"].isin(["layer", "full"]) & (rows["base"] == "a")]
    if rows.empty:
        return None
    rows = rows[rows["round"] == rows["round"].max()]
    last = int(rows["round"].iloc[0])
    fig = Figure(figsize=(7.2, 4.4), layout="constrained")
    ax = fig.subplots()
    marker = "o" if rows["alpha"].nunique() <= 11 else None
    _draw_family(ax, rows, ("layer",), "loss", marker)
    _draw_reference(ax, rows, "loss", marker)
    ax.set_xlabel("α (0 = client A, 1 = client B in the interpolated layers)")
    ax.set_ylabel(f"test {metric_label('loss', rows)}")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    _legend(
        fig,
        [ax],
        lambda name: status(averaged, [name], [last]),
        bbox_to_anchor=(1.01, 1),
        loc="upper left",
        title="interpolated",
    )
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
    label = metric_label(metric, barriers)
    ax.set_ylabel(label)
    ax.set_title(f"{label} per layer")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def curves_figure(curves: pd.DataFrame, metric: str = "loss") -> Figure:
    """The metric against alpha, one row of panels per base and one column per family of groups (single
    layers, cumulative groups, windows and selected groups; with one family, the bases side by side).
    Every panel has the full model (black) and its chord (1−α)·c(0) + α·c(1) (dashed) for reference; the
    single-layer panels also the random-direction baseline (mean over layers and draws, dotted grey). A
    group that would repeat a path in its panel (the full model as `deep:L`) is left out (`distinct_paths`)."""
    paths = distinct_paths(curves)
    bases = [b for b in ("a", "b") if b in set(paths["base"])]
    families = {title: kinds for title, kinds in FAMILIES.items() if paths["kind"].isin(kinds).any()}
    families = families or {"full model": ()}
    shape = (len(bases), len(families)) if len(families) > 1 else (1, len(bases))
    marker = "o" if paths["alpha"].nunique() <= 11 else None
    fig = Figure(figsize=(4.8 * shape[1] + 2.0, 3.2 * shape[0] + 2.0), layout="constrained")
    axes = fig.subplots(*shape, sharex=True, sharey=True, squeeze=False)
    panels = axes.reshape(len(bases), len(families))  # panels[base][family], whatever the layout
    for row, base in zip(panels, bases, strict=True):
        rows = paths[paths["base"] == base]
        own = "A" if base == "a" else "B"
        for ax, (title, kinds) in zip(row, families.items(), strict=True):
            _draw_family(ax, rows, kinds, metric, marker)
            if kinds == FAMILIES["single layers"]:
                _draw_random(ax, rows, metric)
            _draw_reference(ax, rows, metric, marker)
            ax.grid(alpha=0.3)
            ax.set_title(f"{title}, base {base}: model {own} outside the group", fontsize="medium")
    for ax in axes[:, 0]:
        ax.set_ylabel(metric_label(metric, curves))
    for ax in axes[-1]:
        ax.set_xlabel("α (0 = model A, 1 = model B)")
    where = {"loc": "upper center", "bbox_to_anchor": (0.5, -0.2), "ncols": 2}
    if len(families) == 1:
        where = {"loc": "upper left", "bbox_to_anchor": (1.02, 1)}
    for column in panels.T:
        _legend(fig, list(column), lambda _: None, **where)
    fig.suptitle(
        f"{metric_label(metric, curves)} along the interpolation from model A (α = 0) to model B (α = 1)",
        fontsize="medium",
    )
    return fig


def distinct_paths(curves: pd.DataFrame) -> pd.DataFrame:
    """`curves` less the groups that would repeat a path in their panel: a group of the full model's
    layers (`shallow:L`, `deep:L`, drawn as the full model), or of the same layers as an earlier group of
    its family. Random-direction rows are kept."""
    groups = curves[curves["kind"] != RANDOM_KIND].drop_duplicates(["kind", "group"])
    members = groups["layers"].map(lambda names: frozenset(names.split("|")))
    full = set(members[groups["kind"] == "full"])
    family = groups["kind"].map({kind: title for title, kinds in FAMILIES.items() for kind in kinds})
    repeated = pd.DataFrame({"family": family, "members": members}).duplicated() | members.isin(full)
    drop = pd.MultiIndex.from_frame(groups.loc[repeated & (groups["kind"] != "full"), ["kind", "group"]])
    return curves[~pd.MultiIndex.from_frame(curves[["kind", "group"]]).isin(drop)]


def _draw_family(ax: Axes, rows: pd.DataFrame, kinds: Sequence[str], metric: str, marker: str | None) -> None:
    """One line per group of `kinds`, mean over pairs: single layers in distinct colours (input to output
    side when many), each ordering's cumulative groups in its own hue (darker = more layers), windows
    dashed, selected groups dash-dotted. Each line's gid is its kind, for `_legend`."""
    part = rows[rows["kind"].isin(kinds)]
    mean = part.groupby(["kind", "group", "alpha"], sort=False)[metric].mean()
    for kind, names in part.groupby("kind", sort=False)["group"].unique().items():
        for i, name in enumerate(names):
            line = mean[kind, name]
            ax.plot(
                line.index,
                line.to_numpy(),
                label=name,
                gid=kind,
                marker=marker,
                markersize=3,
                linewidth=1.3,
                **_style(str(kind), i, len(names)),
            )


def _style(kind: str, i: int, n: int) -> dict:
    """Colour and dashes of the i-th of n lines of one kind."""
    if kind == "layer":
        color = matplotlib.colormaps["tab10"](i) if n <= 10 else _LAYER_CMAP(i / max(1, n - 1))
        return {"color": color}
    if kind in _ORDERING_CMAPS:
        return {"color": matplotlib.colormaps[_ORDERING_CMAPS[kind]](0.35 + 0.6 * i / max(1, n - 1))}
    if kind == "window":
        return {"color": matplotlib.colormaps["tab10"](i % 10), "linestyle": "--"}
    return {"color": matplotlib.colormaps["Dark2"](i % 8), "linestyle": "-."}


def _draw_reference(ax: Axes, rows: pd.DataFrame, metric: str, marker: str | None) -> None:
    """The full model's path, and its chord from the two full models' values (L_A at α = 0, L_B at 1)."""
    full = rows[rows["kind"] == "full"].groupby("alpha")[metric].mean()
    if not full.empty:
        ax.plot(
            full.index, full.to_numpy(), color="black", linewidth=2.2, marker=marker, markersize=4,
            label=FULL_ROW, gid=_REFERENCE,
        )  # fmt: skip
    ends = [rows[f"{metric}_a"].mean(), rows[f"{metric}_b"].mean()]
    ax.plot(
        [0, 1], ends, color="black", linestyle="--", linewidth=1.2, gid=_REFERENCE,
        label="full model's chord (1−α)·c(0) + α·c(1)",
    )  # fmt: skip


def _draw_random(ax: Axes, rows: pd.DataFrame, metric: str) -> None:
    line = rows[rows["kind"] == RANDOM_KIND].groupby("alpha")[metric].mean()
    if not line.empty:
        ax.plot(
            line.index, line.to_numpy(), color="0.45", linestyle=":", linewidth=1.8, gid=_REFERENCE,
            label="random directions (mean)",
        )  # fmt: skip


def _legend(fig: Figure, axes: list[Axes], status_of: Callable[[str], str | None], **where) -> None:
    """The legend of the lines in `axes` (one column of panels, the same lines in each) on the last of them:
    every line by name, with names styled by `status_of` (their averaging status) and entries saying what
    the styles mean; a kind with more than MAX_LEGEND_LINES lines gets one entry (single layers: a colour
    bar from the input to the output side)."""
    handles: list[Artist] = []
    by_kind: dict[str, list[Line2D]] = {}
    for line in axes[0].get_lines():
        by_kind.setdefault(str(line.get_gid()), []).append(line)
    for kind, lines in by_kind.items():
        if kind == _REFERENCE or len(lines) <= MAX_LEGEND_LINES:
            handles += lines
        elif kind == "layer":
            mappable = ScalarMappable(norm=Normalize(0, len(lines) - 1), cmap=_LAYER_CMAP)
            fig.colorbar(mappable, ax=axes, location="bottom", shrink=0.8, label="single layer (0 = input side)")
        else:
            last = lines[-1]
            shade = " (darker: more layers)" if kind in _ORDERING_CMAPS else ""
            handles.append(
                Line2D([], [], color=last.get_color(), linestyle=last.get_linestyle(),
                       label=f"{kind}: {len(lines)} groups{shade}")
            )  # fmt: skip
    seen = {found for line in handles if (found := status_of(str(line.get_label()))) is not None}
    legend = axes[-1].legend(handles=[*handles, *legend_entries(seen)], fontsize="small", **where)
    mark_texts(legend.get_texts(), status_of)
    style_legend(legend)
