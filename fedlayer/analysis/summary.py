"""Summaries of stored result tables for figures, reports and the terminal: pandas in, pandas (or text) out.

Barrier tables become layer x round grids and per-layer summaries, a barrier-aware strategy's
choices become per-layer counts, and a comparison table becomes the per-strategy summary over seeds.
Nothing here draws or reads files, so figures and reports show the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

FULL_ROW = "full model"


# -- barrier tables -------------------------------------------------------------------------------------
def layer_order(barriers: pd.DataFrame) -> list[str]:
    """Single layers in the order they first appear in the table: the model's state_dict order."""
    return list(dict.fromkeys(barriers.loc[barriers["kind"] == "layer", "group"]))


def averaging_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Rows on the averaging direction (random-direction baselines left out) of a barrier or curves table."""
    if "direction" not in table.columns:
        return table
    return table[table["direction"] == -1]


def barrier_grid(barriers: pd.DataFrame, metric: str = "loss_barrier_mid") -> pd.DataFrame:
    """Rows = single layers in model order, then FULL_ROW; columns = rounds; values = mean of `metric`
    over client pairs and bases."""
    rows = averaging_rows(barriers)
    rows = rows[rows["kind"].isin(["layer", "full"])]
    if rows.empty:
        return pd.DataFrame()
    label = rows["group"].where(rows["kind"] == "layer", FULL_ROW)
    grid = rows.assign(row=label).pivot_table(index="row", columns="round", values=metric, aggfunc="mean", dropna=False)
    order = layer_order(rows) + ([FULL_ROW] if (rows["kind"] == "full").any() else [])
    return grid.reindex(index=order)


def seed_mean_grid(grids: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """The mean of several runs' `barrier_grid`s: rows in first-seen order, rounds sorted; a layer some
    runs lack is averaged over the runs that have it."""
    order = list(dict.fromkeys(r for g in grids for r in g.index))
    mean = pd.concat(grids).groupby(level=0).mean()
    return mean.reindex(index=order, columns=sorted(mean.columns))


def pairs_note(barriers: pd.DataFrame) -> str:
    """'mean over N client pairs, both bases': what a barrier value in a figure averages."""
    per_round = barriers.drop_duplicates(["round", "client_a", "client_b"]).groupby("round").size()
    low, high = int(per_round.min()), int(per_round.max())
    count = f"{low}" if low == high else f"{low}–{high}"
    bases = sorted(barriers["base"].unique())
    base = "both bases" if len(bases) > 1 else f"base {bases[0]}"
    return f"mean over {count} client pair{'' if high == 1 else 's'}, {base}"


def layer_summary(barriers: pd.DataFrame) -> pd.DataFrame:
    """Per row of `barrier_grid`: the loss barrier in the last analysed round, its mean and max over
    rounds, and the error barrier (pp) in the last round. Empty when no layer or full model was measured."""
    grid = barrier_grid(barriers)
    if grid.empty:
        return pd.DataFrame()
    last = grid.columns[-1]
    return pd.DataFrame(
        {
            "last": grid[last],
            "mean": grid.mean(axis=1),
            "max": grid.max(axis=1),
            "error_last": barrier_grid(barriers, "error_barrier_mid")[last],
        }
    )


# -- barrier-aware averaging choices ----------------------------------------------------------------------
def choices_grids(choices: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Layer x round grids (layers in table order) of whether the layer was averaged (1.0 or 0.0) and of
    the mean barrier measured for the choice."""
    order = list(dict.fromkeys(choices["layer"]))
    table = choices.assign(averaged=choices["averaged"].astype(float))
    averaged = table.pivot_table(index="layer", columns="round", values="averaged", aggfunc="max").reindex(order)
    barrier = table.pivot_table(index="layer", columns="round", values="barrier", aggfunc="mean", dropna=False).reindex(
        index=order, columns=averaged.columns
    )
    return averaged, barrier


def choices_summary(choices: pd.DataFrame) -> pd.DataFrame:
    """Per layer (table order): rounds averaged, rounds decided and the mean measured barrier."""
    return (
        choices.groupby("layer")
        .agg(averaged=("averaged", "sum"), rounds=("round", "nunique"), barrier=("barrier", "mean"))
        .reindex(list(dict.fromkeys(choices["layer"])))
    )


# -- comparison tables --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    """A summary column: where it comes from, how it is shown, and which direction is best."""

    name: str
    column: str
    label: str
    higher_is_better: bool
    scale: float
    digits: int


SUMMARY_METRICS = (
    Metric("global_accuracy", "global_accuracy", "global accuracy (%)", True, 100.0, 1),
    Metric("personal_accuracy", "personal_accuracy_mean", "personalised accuracy (%)", True, 100.0, 1),
    Metric("full_barrier", "full_barrier_mean", "full-model barrier", False, 1.0, 3),
    Metric("layer_barrier", "layer_barrier_mean", "mean layer barrier", False, 1.0, 3),
)


def strategies(comparison: pd.DataFrame) -> list[str]:
    """Strategies in the order the comparison ran them."""
    return list(dict.fromkeys(comparison["strategy"]))


def summary_table(comparison: pd.DataFrame) -> pd.DataFrame:
    """Per strategy: seeds, final round, and mean and std over seeds (ddof 1) of each SUMMARY_METRICS value.

    A run's value is its last measured one: the final round, or for barriers analysed every N rounds
    the last analysed round.
    """
    finals = []
    for (strategy, seed), run in comparison.sort_values("round", kind="stable").groupby(["strategy", "seed"]):
        record = {"strategy": strategy, "seed": seed, "round": int(run["round"].max())}
        for metric in SUMMARY_METRICS:
            values = run[metric.column].dropna() if metric.column in run else pd.Series(dtype=float)
            record[metric.name] = float(values.iloc[-1]) if len(values) else math.nan
        finals.append(record)
    finals = pd.DataFrame(finals)
    names = [m.name for m in SUMMARY_METRICS]
    stats = finals.groupby("strategy")[names].agg(["mean", "std"])
    stats.columns = [f"{name}_{stat}" for name, stat in stats.columns]
    counts = finals.groupby("strategy").agg(seeds=("seed", "nunique"), round=("round", "max"))
    table = counts.join(stats).reindex(strategies(comparison))
    return table.reset_index(names="strategy")


def summary_cells(table: pd.DataFrame) -> tuple[list[str], list[list[str]], set[tuple[int, int]]]:
    """Headers, 'mean ± std' text cells, and the (row, column) cells holding each column's best mean
    (highest accuracy, lowest barrier; ties all count): the one formatting shared by the terminal and
    Markdown."""
    headers = ["strategy", "seeds", "round", *(m.label for m in SUMMARY_METRICS)]
    rows = [[str(s), str(n), str(r)] for s, n, r in zip(table["strategy"], table["seeds"], table["round"], strict=True)]
    best = set()
    for j, metric in enumerate(SUMMARY_METRICS, start=3):
        means, stds = table[f"{metric.name}_mean"], table[f"{metric.name}_std"]
        for row, mean, std in zip(rows, means, stds, strict=True):
            row.append(mean_std(mean, std, metric.scale, metric.digits))
        if means.notna().any():
            top = means.max() if metric.higher_is_better else means.min()
            best |= {(i, j) for i, mean in enumerate(means) if np.isclose(mean, top)}
    return headers, rows, best


def mean_std(mean: float, std: float, scale: float = 1.0, digits: int = 3) -> str:
    if not np.isfinite(mean):
        return "–"
    text = f"{mean * scale:.{digits}f}"
    return f"{text} ± {std * scale:.{digits}f}" if np.isfinite(std) else text
