"""The distribution of client accuracies per strategy: every client's personalised accuracy in the final
round of each run of a comparison (clients.parquet), as a box plot with the clients as points."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fedlayer.analysis.summary import final_client_rows, worst_clients_mean
from fedlayer.plots import titles
from fedlayer.results import table_task, task_terms

JITTER = 0.18  # half-width of the seeded horizontal scatter of the points


def client_accuracy_figure(clients: pd.DataFrame, context: str = "") -> Figure | None:
    """Per strategy (in table order), each client's personalised accuracy (%, named by the comparison's task)
    in its run's final round, over all seeds: a box (quartiles, median, whiskers at 1.5 IQR) with every
    client as a point, the mean and the mean of the worst 10 % of clients (each the mean over seeds, as in
    the summary). None without rows."""
    final = final_client_rows(clients)
    if final.empty:
        return None
    names = list(dict.fromkeys(final["strategy"]))
    values = [final.loc[final["strategy"] == name, "accuracy"].to_numpy(dtype=float) * 100 for name in names]
    fig = Figure(figsize=(max(5.0, 1.2 * len(names) + 2.5), 4.4), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(names))
    ax.boxplot(values, positions=x, widths=0.5, showfliers=False, medianprops={"color": "0.2"})
    rng = np.random.default_rng(0)
    for i, (name, points) in enumerate(zip(names, values, strict=True)):
        ax.scatter(
            i + rng.uniform(-JITTER, JITTER, len(points)), points, s=16, alpha=0.7, color=f"C{i % 10}", linewidths=0
        )
        runs = final[final["strategy"] == name].groupby("seed")["accuracy"]
        first = i == 0
        ax.scatter(i, runs.mean().mean() * 100, marker="D", s=36, color="black", zorder=3,
                   label="mean over clients" if first else None)  # fmt: skip
        ax.scatter(i, runs.agg(worst_clients_mean).mean() * 100, marker="v", s=44, color="tab:red", zorder=3,
                   label="worst 10 % of clients (mean)" if first else None)  # fmt: skip
    long = len(names) > 5 or max(len(name) for name in names) > 10
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30 if long else 0, ha="right" if long else "center")
    accuracy = task_terms(table_task(clients)).accuracy
    ax.set_ylabel(f"personalised test {accuracy} (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    rounds = sorted(set(final["round"]))
    seeds = final["seed"].nunique()
    titles(
        fig,
        f"Personalised {accuracy} of every client, final round ({', '.join(map(str, rounds))})",
        f"each point: one client{f' of one of {seeds} seeds' if seeds > 1 else ''}; box: quartiles and median\n"
        f"{context}",
    )
    return fig
