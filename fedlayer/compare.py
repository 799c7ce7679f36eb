"""Compare strategies: every strategy under every seed, everything else equal, in one Ray start per seed.

For one seed, all strategies run in turn inside ONE Flower simulation: the clients (and their data,
partitions and initial model) are the same, only the server's strategy changes. Each run keeps its
own run directory under `runs/<strategy>/seed-<seed>/`; `comparison.parquet` gathers them.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from rich.console import Console

from fedlayer.config import Config
from fedlayer.console import make_console
from fedlayer.errors import ConfigError
from fedlayer.results import COMPARISON, RunDirectory, read_optional, read_table, run_path, table_path, write_parquet
from fedlayer.simulation import ServerMain

Engine = Callable[[ServerMain, ClientApp, Config], None]
COMPARISON_COLUMNS = (
    "strategy",
    "seed",
    "round",
    "global_accuracy",
    "global_loss",
    "personal_accuracy_mean",
    "personal_accuracy_std",
    "full_barrier_mean",
    "layer_barrier_mean",
)


def strategy_config(cfg: Config, name: str, seed: int) -> Config:
    """`cfg` with strategy `name` (a preset or a selector) and `seed`; the preset decides what is averaged."""
    return cfg.replace(seed=seed, strategy={"name": name, "average": ""})


def run_comparison(
    cfg: Config,
    strategies: Sequence[str],
    seeds: Sequence[int],
    out: str | Path,
    *,
    verbose: bool = False,
    console: Console | None = None,
    engine: Engine | None = None,
) -> pd.DataFrame:
    """Run every strategy under every seed; write and return the comparison table.

    `engine(main, client_app, cfg)` runs one seed's ServerApp main against the clients; by default
    Flower's simulation engine (`fedlayer.simulation.simulate`).
    """
    from fedlayer.client_app import make_client_app
    from fedlayer.server_app import DISCOVERY_TIMEOUT_S, FederatedRun
    from fedlayer.simulation import simulate
    from strategies import query_partitions

    engine = engine or functools.partial(simulate, verbose=verbose)
    console = console or make_console(stderr=True)
    out = Path(out).resolve()
    if len(set(strategies)) != len(strategies):
        raise ConfigError(f"strategies are listed twice: {', '.join(strategies)}")
    # Build every run first: a bad strategy name fails here, before Ray starts or anything is written.
    plan = {
        seed: [
            FederatedRun(strategy_config(cfg, name, seed), RunDirectory(run_path(out, name, seed)), console, tag=name)
            for name in strategies
        ]
        for seed in seeds
    }
    started = time.perf_counter()
    for seed, runs in plan.items():
        console.print(
            f"[bold]seed {seed}[/]: {', '.join(strategies)} on the same {cfg.federation.clients} "
            "clients (one Flower simulation)"
        )
        for run in runs:
            run.prepare_directory()

        def main(grid: Grid, context: Context, runs=runs) -> None:
            node_to_partition = query_partitions(grid, cfg.federation.clients, timeout=DISCOVERY_TIMEOUT_S)
            for run in runs:
                console.print(f" strategy [bold]{run.strategy_label}[/]")
                run.start(grid, node_to_partition)

        engine(main, make_client_app(runs[0].cfg), cfg)
        for run in runs:
            run.raise_if_failed()
    table = comparison_table(out, strategies, seeds)
    write_parquet(table, out / COMPARISON)
    table.to_csv(out / "comparison.csv", index=False)
    console.print(
        f"compared {len(strategies)} strategies x {len(seeds)} seeds in "
        f"{time.perf_counter() - started:.0f}s; results in {out}"
    )
    return table


def comparison_table(out: Path, strategies: Sequence[str], seeds: Sequence[int]) -> pd.DataFrame:
    """One row per (strategy, seed, round) from the run directories' metrics and barriers."""
    frames = []
    for name in strategies:
        for seed in seeds:
            frames.append(_run_rows(run_path(out, name, seed), name, seed))
    return pd.concat(frames, ignore_index=True)[list(COMPARISON_COLUMNS)]


def _run_rows(path: Path, name: str, seed: int) -> pd.DataFrame:
    metrics = read_table(table_path(path, "metrics"))
    glob = metrics[metrics["client"] == "global"].set_index("round")
    local = metrics[metrics["split"] == "local-test"].groupby("round")["accuracy"]
    rows = pd.DataFrame(
        {
            "strategy": name,
            "seed": seed,
            "round": glob.index.astype(int),
            "global_accuracy": glob["accuracy"].to_numpy(),
            "global_loss": glob["loss"].to_numpy(),
        }
    )
    rows["personal_accuracy_mean"] = rows["round"].map(local.mean())
    rows["personal_accuracy_std"] = rows["round"].map(local.std(ddof=0))
    barriers = read_optional(table_path(path, "barriers"))
    if barriers is not None:
        for kind, column in (("full", "full_barrier_mean"), ("layer", "layer_barrier_mean")):
            rows[column] = rows["round"].map(
                barriers[barriers["kind"] == kind].groupby("round")["loss_barrier_mid"].mean()
            )
    for column in ("full_barrier_mean", "layer_barrier_mean"):
        if column not in rows:
            rows[column] = np.nan
    return rows
