"""`fedlayer bench commit`: committing a round's tables in round 10 against round 1,000 of a long run.

A synthetic run with a config's table widths (the demo's by default) commits each round as the server
does, with `RunDirectory.flush`: the metrics rows of the round's sampled clients (a training and a
local-test row each) and of the global model, and, in analysed rounds, the barrier analysis' curves and
barriers (one round of the real engine on random inputs, renumbered each round). The commits of rounds
1-10 of a fresh run and of the last 10 rounds of the long run alternate, so that a machine whose load
drifts weighs on both alike. Printed: each point's median commit time and their ratio (target: within
20 %), the process's resident memory at round 10 and at the last round and, for reference, what
rewriting every table whole (how fedlayer committed a round before part tables) takes at both points.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fedlayer.benchmarks import add_config_arguments

WINDOW = 10  # the early point is round 10; each point's commit time is the median of 10 rounds
TARGET_RATIO = 1.20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--rounds", type=int, default=1000, help="rounds of the synthetic run (default 1000)")


def run(args: argparse.Namespace) -> int:
    from fedlayer.config import load_config
    from fedlayer.console import make_console
    from fedlayer.errors import ConfigError
    from fedlayer.results import RunDirectory, read_table, table_exists

    if args.rounds < 2 * WINDOW:
        raise ConfigError(f"bench commit needs --rounds >= {2 * WINDOW}, got {args.rounds}")
    cfg = load_config(args.config, args.overrides)
    rows = _round_tables(cfg)
    every = cfg.analysis.every
    console = make_console()
    console.print(
        f"[bold]bench commit[/]: {args.rounds:,} rounds at the table widths of {cfg.model.name} on "
        f"{cfg.data.dataset}: {', '.join(f'{len(t)} {name} rows' for name, t in rows.items())} per "
        f"{'analysed ' if every > 1 else ''}round"
    )
    rounds, late_start = args.rounds, args.rounds - WINDOW
    with tempfile.TemporaryDirectory(prefix="fedlayer-bench-commit-") as folder:
        long, short = RunDirectory(Path(folder, "long")).create(), RunDirectory(Path(folder, "short")).create()
        for server_round in range(1, late_start + 1):
            _commit(long, server_round, rows, every)
            if server_round == WINDOW:
                early_rss = _rss_mib()
        early, late = [], []
        for server_round in range(1, WINDOW + 1):  # alternately: a machine whose load drifts weighs on both
            early.append(_commit(short, server_round, rows, every))
            late.append(_commit(long, late_start + server_round, rows, every))
        late_rss = _rss_mib()
        tables = [read_table(path) for name in rows if table_exists(path := long.table_path(name))]
        whole = {
            point: _rewrite_seconds([t[t["round"] <= point] for t in tables], Path(folder))
            for point in (WINDOW, rounds)
        }
        started = time.perf_counter()
        long.flush(final=True)
        compaction = time.perf_counter() - started

    for server_round, commits, rss in ((WINDOW, early, early_rss), (rounds, late, late_rss)):
        console.print(
            f"round {server_round:>5,}: commit {1000 * statistics.median(commits):6.2f} ms (median of rounds "
            f"{server_round - WINDOW + 1:,}-{server_round:,}), RSS {rss:6.1f} MiB; rewriting every table whole "
            f"would take {1000 * whole[server_round]:7.2f} ms"
        )
    ratio = statistics.median(late) / statistics.median(early)
    console.print(
        f"commit at round {rounds:,} / at round {WINDOW}: {ratio:.2f}x (target <= {TARGET_RATIO:.2f}x); "
        f"RSS {late_rss - early_rss:+.1f} MiB from round {WINDOW} to round {rounds:,}; "
        f"compaction at the end: {compaction:.2f} s"
    )
    return 0


def _commit(run_dir, server_round: int, rows: dict, every: int) -> float:
    """Add a round's rows (the analysis' in analysed rounds) and time its commit."""
    for name, table in rows.items():
        if name == "metrics" or (every and server_round % every == 0):
            run_dir.add(name, table.assign(round=server_round))
    started = time.perf_counter()
    run_dir.flush()
    return time.perf_counter() - started


def _round_tables(cfg):
    """One round's metrics, curves and barriers at the config's widths (curves and barriers: the real
    engine's tables for the config's analysis, on perturbed copies of its model and random inputs)."""
    import pandas as pd
    import torch

    from fedlayer.analysis import pairwise_curves
    from fedlayer.models import dataset_spec
    from fedlayer.task import model_for
    from strategies import clients_per_round

    fed, a = cfg.federation, cfg.analysis
    clients = clients_per_round(fed.clients, fed.fraction)
    rows = [
        {"client": str(client), "split": split, "loss": 1.0, "accuracy": 0.5, "num_examples": 100}
        for split in ("train", "local-test")
        for client in range(clients)
    ] + [{"client": "global", "split": "test", "loss": 1.0, "accuracy": 0.5, "num_examples": 1000}]
    metrics = pd.DataFrame([{"round": 0, **row, "status": "ok", "error": ""} for row in rows])
    input_shape, num_classes = dataset_spec(cfg.data.dataset)
    model = model_for(cfg, input_shape, num_classes)
    states = {
        str(client): {
            key: value + 0.05 * torch.randn_like(value) if value.is_floating_point() else value
            for key, value in model.state_dict().items()
        }
        for client in range(clients)
    }
    data = (torch.randn(8, *input_shape), torch.randint(0, num_classes, (8,)))  # the values do not matter
    curves, barriers = pairwise_curves(
        model, states, data, pairs=a.pairs or "all", seed=cfg.seed, bn=a.bn, bn_data=data[0], groups=a.groups,
        alphas=a.alphas, bases=a.bases, random_directions=a.random_directions,
    )  # fmt: skip
    for table in (curves, barriers):
        table.insert(0, "round", 0)
    return {"metrics": metrics, "barriers": barriers, "curves": curves}


def _rewrite_seconds(tables, folder: Path) -> float:
    """The time to write `tables` whole, each as one Parquet file: a round's commit before part tables."""
    from fedlayer.results import write_parquet

    started = time.perf_counter()
    for i, table in enumerate(tables):
        write_parquet(table, folder / f"whole-{i}.parquet")
    return time.perf_counter() - started


def _rss_mib() -> float:
    """The process's resident memory now (Linux), else its peak so far."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (2**20 if sys.platform == "darwin" else 2**10)
