"""Compare strategies: every strategy under every seed, everything else equal, in one Ray start per seed.

For one seed, all strategies run in turn inside ONE Flower simulation: the clients (and their data,
partitions and initial model) are the same, only the server's strategy changes. Each run keeps its
own run directory under `runs/<folder>/seed-<seed>/` (`fedlayer.results.run_path`); the comparison
directory gathers them in `comparison.parquet` (one row per strategy, seed and round, with the round's
and the cumulative model-array bytes) and `clients.parquet` (one row per strategy, seed, round and
client), next to `config.toml`, the config it ran from with its `[compare]` section as resolved.
"""

from __future__ import annotations

import dataclasses
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

from fedlayer.analysis.summary import (
    CUMULATIVE_BYTES,
    averaging_rows,
    check_reference,
    client_rows,
    worst_clients_mean,
)
from fedlayer.atomic import write_bytes
from fedlayer.config import CompareConfig, Config
from fedlayer.console import make_console
from fedlayer.data.partition import Partitions
from fedlayer.errors import ConfigError
from fedlayer.results import (
    CLIENTS,
    COMPARISON,
    PERPLEXITY,
    TASK,
    RunDirectory,
    read_optional,
    read_table,
    run_folder_name,
    run_path,
    table_path,
    table_task,
    write_parquet,
)
from fedlayer.runlock import claim
from fedlayer.simulation import ServerMain
from strategies.observed import BYTES_DOWN, BYTES_UP, TRAFFIC_COLUMNS

Engine = Callable[[ServerMain, ClientApp, Config], None]
COMPARISON_COLUMNS = (
    "strategy",
    "seed",
    "round",
    TASK,
    "global_accuracy",
    "global_loss",
    "global_perplexity",
    "personal_accuracy_mean",
    "personal_accuracy_std",
    "personal_accuracy_worst10",
    "personal_perplexity_mean",
    "full_barrier_mean",
    "layer_barrier_mean",
    *TRAFFIC_COLUMNS,
    CUMULATIVE_BYTES,
)
CLIENT_COLUMNS = (
    "strategy",
    "seed",
    "round",
    "client",
    TASK,
    "train_examples",
    "classes",
    "majority_class",
    "majority_share",
    "accuracy",
    "loss",
    PERPLEXITY,
    "test_examples",
)


def strategy_config(cfg: Config, name: str, seed: int) -> Config:
    """`cfg` with strategy `name` (a preset or a selector) and `seed`; the preset decides what is averaged."""
    return cfg.replace(seed=seed, strategy={"name": name, "average": ""})


def comparison_settings(
    cfg: Config,
    strategies: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    reference: str | None = None,
) -> CompareConfig:
    """The comparison to run: `cfg.compare` with each argument given in its place, checked.

    Parameters
    ----------
    cfg : Config
        The experiment; its `[compare]` section gives what is not passed here.
    strategies : sequence of str, optional
        Presets or selectors (default: compare.strategies).
    seeds : sequence of int, optional
        The seeds (default: compare.seeds, or the config's seed alone when that is empty).
    reference : str, optional
        The strategy the others are compared with (default: compare.reference).

    Raises
    ------
    ConfigError
        No strategy; a strategy or seed listed twice; a reference that is not among the strategies; two
        strategies whose run folders would be one (`fedlayer.results.run_folder_name`).
    """
    chosen = cfg.compare
    names = list(chosen.strategies if strategies is None else strategies)
    runs = list(seeds if seeds is not None else chosen.seeds or [cfg.seed])
    reference = chosen.reference if reference is None else reference
    if not names:
        raise ConfigError("no strategies to compare; set compare.strategies or give --strategies, e.g. fedavg,fedper")
    if len(set(names)) != len(names):
        raise ConfigError(f"strategies are listed twice: {', '.join(names)}")
    if len(set(runs)) != len(runs):
        raise ConfigError(f"seeds are listed twice: {', '.join(map(str, runs))}")
    check_reference(reference, names)
    folders: dict[str, str] = {}
    for name in names:
        folder = run_folder_name(name)
        other = folders.setdefault(folder.lower(), name)
        if other != name:
            raise ConfigError(
                f"strategies {other!r} and {name!r} would share the run folder runs/{folder}/ "
                "(names are made safe for file systems); write one of them differently, e.g. as a re: selector"
            )
    return CompareConfig(strategies=names, seeds=runs, reference=reference, target_accuracy=chosen.target_accuracy)


def run_comparison(
    cfg: Config,
    strategies: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    out: str | Path | None = None,
    *,
    reference: str | None = None,
    verbose: bool = False,
    console: Console | None = None,
    engine: Engine | None = None,
) -> pd.DataFrame:
    """Run every strategy under every seed; write and return the comparison table.

    Parameters
    ----------
    cfg : Config
        The experiment; its `[compare]` section says what to compare where the arguments do not.
    strategies, seeds, reference : optional
        In place of compare.strategies, compare.seeds and compare.reference (`comparison_settings`).
    out : str or Path, optional
        The comparison directory (default: output.dir).
    verbose : bool
        Show Flower's and Ray's logs.
    console : rich Console, optional
        Where progress goes (default: stderr).
    engine : callable, optional
        `engine(main, client_app, cfg)` runs one seed's ServerApp main against the clients; by default
        Flower's simulation engine (`fedlayer.simulation.simulate`).

    Returns
    -------
    DataFrame
        comparison.parquet: one row per strategy, seed and round (COMPARISON_COLUMNS).

    Raises
    ------
    FedlayerError
        A bad comparison (`comparison_settings`) or a strategy, model or dataset that cannot be built:
        before Ray starts or anything is written. A RunError when `out` holds a finished comparison and
        output.overwrite is false, or another process writes it (`fedlayer.runlock.claim`).
    """
    from fedlayer.client_app import make_client_app
    from fedlayer.server_app import DISCOVERY_TIMEOUT_S, FederatedRun
    from fedlayer.simulation import simulate
    from strategies import query_partitions

    settings = comparison_settings(cfg, strategies, seeds, reference)
    cfg = cfg.replace(compare=dataclasses.asdict(settings))
    engine = engine or functools.partial(simulate, verbose=verbose)
    console = console or make_console(stderr=True)
    out = Path(out if out is not None else cfg.output.dir).resolve()
    # Build every run first: a bad strategy name fails here, before Ray starts or anything is written.
    plan = {
        seed: [
            FederatedRun(strategy_config(cfg, name, seed), RunDirectory(run_path(out, name, seed)), console, tag=name)
            for name in settings.strategies
        ]
        for seed in settings.seeds
    }
    started = time.perf_counter()
    note = functools.partial(console.print, markup=False, highlight=False)
    with claim(out, overwrite=cfg.output.overwrite, note=note):  # a finished comparison there: --overwrite
        write_bytes(out / "config.toml", cfg.to_toml().encode())
        for seed, runs in plan.items():
            console.print(
                f"[bold]seed {seed}[/]: {', '.join(settings.strategies)} on the same {cfg.federation.clients} "
                "clients (one Flower simulation)"
            )
            for run in runs:
                run.prepare_directory()

            def main(grid: Grid, context: Context, runs=runs) -> None:
                node_to_partition = query_partitions(grid, cfg.federation.clients, timeout=DISCOVERY_TIMEOUT_S)
                for run in runs:
                    console.print(f" strategy [bold]{run.strategy_label}[/]")
                    run.start(grid, node_to_partition)

            try:
                engine(main, make_client_app(runs[0].cfg), cfg)
            except KeyboardInterrupt:
                console.print(
                    f"interrupted: the comparison in {out} is incomplete (a comparison does not resume); "
                    "the same command starts it again"
                )
                raise
            for run in runs:
                run.raise_if_failed()
        table = comparison_table(out, settings.strategies, settings.seeds)
        write_parquet(table, out / COMPARISON)
        table.to_csv(out / "comparison.csv", index=False)
        write_parquet(clients_table(out, settings.strategies, settings.seeds), out / CLIENTS)
    console.print(
        f"compared {len(settings.strategies)} strategies x {len(settings.seeds)} seeds in "
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


def clients_table(out: Path, strategies: Sequence[str], seeds: Sequence[int]) -> pd.DataFrame:
    """One row per (strategy, seed, round, client) with a personalised result, from each run's
    metrics.parquet ("local-test" rows) and partitions.json (the client's training examples and label
    distribution); see `fedlayer.analysis.summary.client_rows`."""
    frames = []
    for name in strategies:
        for seed in seeds:
            path = run_path(out, name, seed)
            partitions = path / "partitions.json"
            counts = Partitions.load(partitions).class_counts(split="train") if partitions.is_file() else None
            rows = client_rows(read_table(table_path(path, "metrics")), counts)
            frames.append(rows.assign(strategy=name, seed=seed))
    return pd.concat(frames, ignore_index=True)[list(CLIENT_COLUMNS)]


def _run_rows(path: Path, name: str, seed: int) -> pd.DataFrame:
    """One run's rows of comparison.parquet: per round, its task, the global model's accuracy, loss and
    perplexity (NaN for classification, and for a run recorded before fedlayer wrote it), the personalised
    models' accuracy over clients and their mean perplexity, its barriers and its traffic."""
    metrics = read_table(table_path(path, "metrics"))
    if PERPLEXITY not in metrics:
        metrics = metrics.assign(**{PERPLEXITY: np.nan})
    glob = metrics[metrics["client"] == "global"].set_index("round")
    local = metrics[metrics["split"] == "local-test"].groupby("round")
    rows = pd.DataFrame(
        {
            "strategy": name,
            "seed": seed,
            "round": glob.index.astype(int),
            TASK: table_task(metrics),
            "global_accuracy": glob["accuracy"].to_numpy(),
            "global_loss": glob["loss"].to_numpy(),
            "global_perplexity": glob[PERPLEXITY].to_numpy(dtype=float),
        }
    )
    rows["personal_accuracy_mean"] = rows["round"].map(local["accuracy"].mean())
    rows["personal_accuracy_std"] = rows["round"].map(local["accuracy"].std(ddof=0))
    rows["personal_accuracy_worst10"] = rows["round"].map(local["accuracy"].agg(worst_clients_mean))
    rows["personal_perplexity_mean"] = rows["round"].map(local[PERPLEXITY].mean())
    barriers = read_optional(table_path(path, "barriers"))
    if barriers is not None:
        barriers = averaging_rows(barriers)
        for kind, column in (("full", "full_barrier_mean"), ("layer", "layer_barrier_mean")):
            rows[column] = rows["round"].map(
                barriers[barriers["kind"] == kind].groupby("round")["loss_barrier_mid"].mean()
            )
    for column in ("full_barrier_mean", "layer_barrier_mean"):
        if column not in rows:
            rows[column] = np.nan
    return _with_traffic(rows, metrics)


def _with_traffic(rows: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Each round's model-array bytes summed over its clients' train rows (0 in round 0), and CUMULATIVE_BYTES:
    bytes_down + bytes_up summed over the rounds so far. NaN for a run recorded before fedlayer counted them."""
    if not set(TRAFFIC_COLUMNS) <= set(metrics.columns):
        return rows.assign(**dict.fromkeys([*TRAFFIC_COLUMNS, CUMULATIVE_BYTES], np.nan))
    train = metrics[metrics["split"] == "train"]
    per_round = train.groupby("round")[list(TRAFFIC_COLUMNS)].sum(min_count=1).reindex(rows["round"], fill_value=0)
    cumulative = (per_round[BYTES_DOWN] + per_round[BYTES_UP]).sort_index().cumsum()
    rows = rows.assign(**{column: per_round[column].to_numpy() for column in TRAFFIC_COLUMNS})
    return rows.assign(**{CUMULATIVE_BYTES: rows["round"].map(cumulative).to_numpy()})
