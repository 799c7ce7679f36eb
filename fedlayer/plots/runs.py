"""Figures of one run directory, drawn from its stored tables alone.

accuracy.png (global and personalised test accuracy per round), barrier_heatmap.png (layer x round
midpoint loss barriers), barrier_curves.png (loss along alpha in the last analysed round), and when
their tables hold them choices.png (barrier-aware averaging), groups.png (cumulative groups and
sliding windows) and directions.png (averaging against random directions). A figure whose data is
absent is skipped, so a run without analysis still plots.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap, Normalize, SymLogNorm
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator

from fedlayer.errors import FedlayerError
from fedlayer.plots import save_figure, titles
from fedlayer.plots.directions import directions_figure
from fedlayer.results import TABLES, read_table

FULL_ROW = "full model"
CUMULATIVE_KINDS = ("shallow", "deep", "random", "minimal")
BARRIER_CMAP = plt.get_cmap("RdBu_r").with_extremes(bad="0.85")
MIDPOINT = "loss barrier at α = ½"
NEGLIGIBLE_BARRIER = 0.1  # the paper's "no barrier" band for single layers
MAX_ANNOTATED_CELLS = 160
MAX_ANNOTATED_ROUNDS = 16
MAX_LEGEND_LAYERS = 12
MAX_ROUND_TICKS = 20


def plot_run(run_dir: str | Path) -> list[Path]:
    """Redraw every figure a run directory's tables allow into <run_dir>/plots/; return their paths."""
    run_dir = Path(run_dir)
    tables = {name: read_optional(run_dir / f"{name}.parquet") for name in TABLES}
    if tables["metrics"] is None:
        raise FedlayerError(f"{str(run_dir)!r} is not a run directory: it has no metrics.parquet")
    config = read_config(run_dir)
    return [save_figure(fig, run_dir / "plots" / f"{name}.png") for name, fig in _figures(tables, config)]


def _figures(tables: dict[str, pd.DataFrame | None], config: dict) -> Iterator[tuple[str, plt.Figure]]:
    """(name, figure) for each figure with data, built one at a time so each is saved and closed at once."""
    context = describe_run(config)
    figures = {
        "accuracy": ("metrics", lambda t: accuracy_figure(t, context)),
        "barrier_heatmap": ("barriers", lambda t: barrier_heatmap_figure(t, context)),
        "barrier_curves": ("curves", lambda t: barrier_curves_figure(t, context)),
        "choices": ("choices", lambda t: choices_figure(t, config, context)),
        "groups": ("barriers", lambda t: groups_figure(t, context)),
        "directions": ("curves", lambda t: directions_figure(t, context)),
    }
    for name, (table, build) in figures.items():
        fig = build(tables[table]) if tables[table] is not None and not tables[table].empty else None
        if fig is not None:
            yield name, fig


# -- reading -----------------------------------------------------------------------------------------
def read_optional(path: Path) -> pd.DataFrame | None:
    """A stored table, or None when the run did not write it (e.g. no analysis)."""
    return read_table(path) if path.exists() else None


def read_config(run_dir: Path) -> dict:
    path = run_dir / "config.toml"
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise FedlayerError(f"cannot read {path}: {exc}") from exc


def describe_run(config: dict) -> str:
    """One line naming the strategy, model, data, split, clients and seed, for figure subtitles and reports."""
    if not config:
        return ""
    strategy = config.get("strategy", {}).get("name", "?")
    return f"{strategy} · {describe_setting(config)} · seed {config.get('seed', '?')}"


def describe_setting(config: dict) -> str:
    """What every strategy of a comparison shares: the model, the data, the split and the clients."""
    if not config:
        return ""
    data, model = config.get("data", {}), config.get("model", {})
    partition = data.get("partition", "?")
    detail = {
        "dirichlet": f" (α={data.get('alpha')})",
        "pathological": f" ({data.get('classes_per_client')} classes/client)",
        "shard": f" ({data.get('shards_per_client')} shards/client)",
    }.get(partition, "")
    norm = model.get("norm", "none")
    return (
        f"{model.get('name', '?')}{'' if norm == 'none' else f' ({norm})'} on {data.get('dataset', '?')} · "
        f"{partition}{detail} · {config.get('federation', {}).get('clients', '?')} clients"
    )


def layer_order(barriers: pd.DataFrame) -> list[str]:
    """Single layers in the order they first appear in the table: the model's state_dict order."""
    return list(dict.fromkeys(barriers.loc[barriers["kind"] == "layer", "group"]))


def _plain(barriers: pd.DataFrame) -> pd.DataFrame:
    """Rows on the averaging direction (random-direction baselines left out)."""
    if "direction" not in barriers.columns:
        return barriers
    return barriers[barriers["direction"] == -1]


def barrier_grid(barriers: pd.DataFrame, metric: str = "loss_barrier_mid") -> pd.DataFrame:
    """Rows = single layers in model order, then FULL_ROW; columns = rounds; values = mean of `metric`
    over client pairs and bases."""
    rows = _plain(barriers)
    rows = rows[rows["kind"].isin(["layer", "full"])]
    if rows.empty:
        return pd.DataFrame()
    label = rows["group"].where(rows["kind"] == "layer", FULL_ROW)
    grid = rows.assign(row=label).pivot_table(index="row", columns="round", values=metric, aggfunc="mean", dropna=False)
    order = layer_order(rows) + ([FULL_ROW] if (rows["kind"] == "full").any() else [])
    return grid.reindex(index=order)


def pairs_note(barriers: pd.DataFrame) -> str:
    """'mean over N client pairs, both bases': what a barrier value in a figure averages."""
    per_round = barriers.drop_duplicates(["round", "client_a", "client_b"]).groupby("round").size()
    low, high = int(per_round.min()), int(per_round.max())
    count = f"{low}" if low == high else f"{low}–{high}"
    bases = sorted(barriers["base"].unique())
    base = "both bases" if len(bases) > 1 else f"base {bases[0]}"
    return f"mean over {count} client pair{'' if high == 1 else 's'}, {base}"


# -- shared drawing helpers -----------------------------------------------------------------------------
def round_ticks(ax, rounds: Sequence[int]) -> None:
    """Integer round ticks on a categorical x axis (analysed rounds need not be consecutive)."""
    step = max(1, int(np.ceil(len(rounds) / MAX_ROUND_TICKS)))
    ax.set_xticks(np.arange(0, len(rounds), step))
    ax.set_xticklabels([str(r) for r in list(rounds)[::step]])


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


def barrier_panels(fig: plt.Figure, grids: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Draw `barrier_grid` tables side by side (titled by their keys) on one colour scale centred at 0,
    with the colour bar in its own column. Rows are aligned across panels (layers in first-seen order,
    the longest grid first; a row a panel lacks is grey). Returns the aligned grids."""
    longest = max(grids.values(), key=len)
    names = [*longest.index, *(r for g in grids.values() for r in g.index)]
    rows = [r for r in dict.fromkeys(names) if r != FULL_ROW]
    full = [FULL_ROW] if any(FULL_ROW in g.index for g in grids.values()) else []
    aligned = {title: g.reindex(index=rows + full) for title, g in grids.items()}
    norm = barrier_norm(list(aligned.values()))
    outer = fig.add_gridspec(1, len(aligned) + 1, width_ratios=[*[1.0] * len(aligned), 0.045])
    for i, (title, grid) in enumerate(aligned.items()):
        _draw_grid(fig, outer[i], grid, norm, n_layers=len(rows), ylabels=i == 0, title=title)
    mappable = plt.cm.ScalarMappable(norm=norm, cmap=BARRIER_CMAP)
    bar = fig.colorbar(mappable, cax=fig.add_subplot(outer[-1]), label=norm_label(norm))
    if isinstance(norm, SymLogNorm):  # plain numbers at 0, ±0.1, ±1, ±10 ... rather than powers of ten
        decades = NEGLIGIBLE_BARRIER * 10.0 ** np.arange(int(np.log10(norm.vmax / NEGLIGIBLE_BARRIER)) + 1)
        bar.set_ticks(np.concatenate([-decades[::-1], [0.0], decades]))
        bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}".replace("-", "−")))
        bar.ax.yaxis.set_minor_locator(NullLocator())
    return aligned


def _draw_grid(
    fig: plt.Figure, cell, grid: pd.DataFrame, norm: Normalize, *, n_layers: int, ylabels: bool, title: str
) -> None:
    """One heatmap in gridspec `cell`: the layer rows on top, the full-model row in its own strip below."""
    parts = [p for p in (list(grid.index[:n_layers]), list(grid.index[n_layers:])) if p]
    sub = cell.subgridspec(len(parts), 1, height_ratios=[len(p) for p in parts])
    annotate = grid.size <= MAX_ANNOTATED_CELLS and grid.shape[1] <= MAX_ANNOTATED_ROUNDS
    for i, part in enumerate(parts):
        ax = fig.add_subplot(sub[i])
        values = grid.reindex(index=part).to_numpy(dtype=float)
        ax.imshow(values, cmap=BARRIER_CMAP, norm=norm, aspect="auto", interpolation="nearest")
        ax.set_yticks(np.arange(len(part)))
        ax.set_yticklabels(part if ylabels else [], fontsize=8 if n_layers > 20 else 9)
        ax.tick_params(length=0)
        if annotate:
            _annotate(ax, values, norm)
        if i < len(parts) - 1:
            ax.set_xticks([])
        else:
            round_ticks(ax, list(grid.columns))
            ax.set_xlabel("round")
        if i == 0 and title:
            ax.set_title(title, fontsize="medium")


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


def heatmap_size(n_rows: int, n_rounds: int, panels: int = 1) -> tuple[float, float]:
    width = panels * min(8.0 if panels == 1 else 5.5, max(3.2, 1.2 + 0.45 * n_rounds)) + 2.5
    return min(width, 18.0), min(16.0, max(3.0, 1.6 + 0.26 * (n_rows + 1)))


# -- figures ----------------------------------------------------------------------------------------------
def accuracy_figure(metrics: pd.DataFrame, context: str = "") -> plt.Figure:
    """Global test accuracy per round, and the personalised local-test accuracy: mean and min-max band."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
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


def barrier_heatmap_figure(barriers: pd.DataFrame, context: str = "") -> plt.Figure | None:
    """Layer x round mean midpoint loss barrier, the full model in a separate strip, colour centred at 0."""
    grid = barrier_grid(barriers)
    if grid.empty or not np.isfinite(grid.to_numpy(dtype=float)).any():
        return None
    fig = plt.figure(figsize=heatmap_size(len(grid), grid.shape[1]), layout="constrained")
    barrier_panels(fig, {"": grid})
    titles(
        fig,
        "Layer-wise midpoint loss barrier between client models",
        f"{pairs_note(_plain(barriers))}\n{context}",
    )
    return fig


def barrier_curves_figure(curves: pd.DataFrame, context: str = "") -> plt.Figure | None:
    """Loss along alpha in the last analysed round on base a: each single layer and the full model."""
    rows = _plain(curves)
    rows = rows[rows["kind"].isin(["layer", "full"]) & (rows["base"] == "a")]
    if rows.empty:
        return None
    rows = rows[rows["round"] == rows["round"].max()]
    last = int(rows["round"].iloc[0])
    mean = rows.groupby(["group", "alpha"], sort=False)["loss"].mean()
    layers = layer_order(rows)
    fig, ax = plt.subplots(figsize=(7.2, 4.4), layout="constrained")
    cmap = ListedColormap(plt.get_cmap("viridis")(np.linspace(0.0, 0.85, 256)))  # no pale yellow on white
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
        bar = fig.colorbar(plt.cm.ScalarMappable(norm=plt.Normalize(0, len(layers) - 1), cmap=cmap), ax=ax)
        bar.set_label("interpolated layer (0 = input side)")
    pairs = rows.drop_duplicates(["client_a", "client_b"]).shape[0]
    titles(
        fig,
        f"Loss along the interpolation, round {last}: model A with one layer (or all) moved to B",
        f"mean over {pairs} client pair{'' if pairs == 1 else 's'}, base a\n{context}",
    )
    return fig


def choices_figure(choices: pd.DataFrame, config: dict, context: str = "") -> plt.Figure | None:
    """Barrier-aware averaging: for each layer and round, averaged or kept personal (with its barrier)."""
    order = list(dict.fromkeys(choices["layer"]))
    table = choices.assign(averaged=choices["averaged"].astype(float))
    averaged = table.pivot_table(index="layer", columns="round", values="averaged", aggfunc="max").reindex(order)
    barrier = table.pivot_table(index="layer", columns="round", values="barrier", aggfunc="mean", dropna=False).reindex(
        index=order, columns=averaged.columns
    )
    fig, ax = plt.subplots(figsize=heatmap_size(len(order), averaged.shape[1]), layout="constrained")
    colours = ListedColormap(["#d9d9d9", "#1b9e77"])
    ax.imshow(averaged.to_numpy(dtype=float), cmap=colours, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    if averaged.size <= MAX_ANNOTATED_CELLS and averaged.shape[1] <= MAX_ANNOTATED_ROUNDS:
        for (y, x), value in np.ndenumerate(barrier.to_numpy(dtype=float)):
            if np.isfinite(value):
                ax.text(x, y, f"{value:.2f}", ha="center", va="center", fontsize=7)
    ax.set_yticks(np.arange(len(order)))
    ax.set_yticklabels(order, fontsize=8 if len(order) > 20 else 9)
    ax.tick_params(length=0)
    round_ticks(ax, list(averaged.columns))
    ax.set_xlabel("round")
    threshold = config.get("strategy", {}).get("threshold")
    rule = f" (barrier < {threshold})" if threshold is not None else ""
    ax.legend(
        handles=[
            Patch(color="#1b9e77", label=f"averaged{rule}"),
            Patch(color="#d9d9d9", label="kept personal"),
        ],
        bbox_to_anchor=(1.01, 1),
        loc="upper left",
        fontsize="small",
    )
    titles(fig, "Barrier-aware averaging: layers averaged each round (cell text: measured barrier)", context)
    return fig


def groups_figure(barriers: pd.DataFrame, context: str = "") -> plt.Figure | None:
    """Midpoint loss barrier of cumulative layer groups (per ordering) and of sliding windows, last round."""
    rows = _plain(barriers)
    rows = rows[rows["kind"].isin([*CUMULATIVE_KINDS, "window"])]
    if rows.empty:
        return None
    last = int(rows["round"].max())
    rows = rows[rows["round"] == last]
    cumulative, windows = rows[rows["kind"] != "window"], rows[rows["kind"] == "window"]
    panels = [p for p in (cumulative, windows) if not p.empty]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.2), layout="constrained", squeeze=False)
    axes = list(axes[0])
    if not cumulative.empty:
        ax = axes.pop(0)
        for kind in [k for k in CUMULATIVE_KINDS if k in set(cumulative["kind"])]:
            line = cumulative[cumulative["kind"] == kind].groupby("n_layers")["loss_barrier_mid"].mean()
            ax.plot(line.index, line.to_numpy(), marker="o", label=kind)
        full = _plain(barriers)
        full = full[(full["kind"] == "full") & (full["round"] == last)]["loss_barrier_mid"]
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
        _barrier_axis(ax)
    titles(fig, f"Midpoint loss barrier of layer groups, round {last}", f"{pairs_note(rows)}\n{context}")
    return fig


def _barrier_axis(ax) -> None:
    ax.axhline(0, color="0.5", linewidth=0.8)
    ax.set_ylabel(MIDPOINT)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
