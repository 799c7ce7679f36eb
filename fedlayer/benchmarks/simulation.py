"""`fedlayer bench simulation`: federated rounds through Flower's simulation engine against plain PyTorch.

Both sides do the same work each round: every sampled client trains its local epochs and evaluates
its personalised model, the server averages and evaluates the global model. The baseline runs the
clients in a pool of worker processes (as many as Ray gets cores), with no Flower and no Ray, once
before and once after the Flower side; the mean of the two is the baseline. The Flower side runs
with the config's per-round analysis, which is timed separately, left out of the comparison and
reported as a share of the round.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from fedlayer.benchmarks import add_config_arguments
from fedlayer.config import Config, load_config
from fedlayer.console import make_console

if TYPE_CHECKING:  # torch, the task and training are imported where they run: `fedlayer --help` stays fast
    import torch

TARGET_RATIO = 1.15
TARGET_ANALYSIS_SHARE = 0.20


def add_arguments(parser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--rounds", type=int, default=4, help="rounds on each side (default 4)")


# -- plain PyTorch side: worker processes ------------------------------------------------------------
_WORKER_CFG: Config | None = None


def _init_worker(cfg: Config) -> None:
    global _WORKER_CFG
    from fedlayer.task import client_data, configure_process

    configure_process(cfg)  # as fedlayer's clients: same threads, same allocator settings
    _WORKER_CFG = cfg
    client_data(cfg, 0)  # load the dataset and partitions once per worker, as a Ray actor does


def _client_round(job: tuple[dict[str, torch.Tensor], int, int]):
    """One client's round: load the global state, train, evaluate locally; return state and metrics."""
    from fedlayer.task import client_data, head_parameter_names, new_model, train_settings
    from fedlayer.training import evaluate, seed_everything, train_local

    state, pid, server_round = job
    cfg = _WORKER_CFG
    assert cfg is not None, "a pool started with _init_worker runs the clients"
    model = new_model(cfg)
    model.load_state_dict(state)
    settings = train_settings(cfg)
    data = client_data(cfg, pid)
    generator = seed_everything(cfg.seed, pid, server_round)
    trained = train_local(
        model, data.train_x, data.train_y, settings, head_params=head_parameter_names(model), generator=generator
    )
    evaluate(model, data.test_x, data.test_y)
    return model.state_dict(), trained.num_examples


def _plain_pytorch(cfg: Config, rounds: int, workers: int) -> tuple[float, list[float]]:
    """(start-up seconds, seconds per round) of FedAvg with a process pool."""
    from fedlayer.task import global_test_set, new_model
    from fedlayer.training import evaluate

    started = time.perf_counter()
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(cfg,)) as pool:
        pool.map(_noop, range(workers))  # workers are up and have loaded their data
        model = new_model(cfg)
        test_x, test_y = global_test_set(cfg)
        evaluate(model, test_x, test_y)
        startup = time.perf_counter() - started
        times = []
        for server_round in range(1, rounds + 1):
            t0 = time.perf_counter()
            state = model.state_dict()
            jobs = [(state, pid, server_round) for pid in range(cfg.federation.clients)]
            results = pool.map(_client_round, jobs, chunksize=1)
            total = sum(n for _, n in results)
            model.load_state_dict(
                {k: sum(s[k] * (n / total) for s, n in results).to(v.dtype) for k, v in state.items()}
            )
            evaluate(model, test_x, test_y)
            times.append(time.perf_counter() - t0)
    return startup, times


def _noop(_):
    return None


# -- Flower side ------------------------------------------------------------------------------------------
def _flower(cfg: Config, console: Console) -> tuple[float, list[float], list[float]]:
    """(start-up seconds, seconds per round, analysis seconds per round) through fedlayer's simulation."""
    from fedlayer.simulation import run_simulation

    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        run = run_simulation(cfg, out, console=console)
    ends = run.round_finished_at
    rounds = sorted(r for r in ends if r > 0)
    per_round = [ends[r] - ends[r - 1] for r in rounds]
    analysis = [run.analysis.seconds.get(r, 0.0) for r in rounds]
    return ends[0] - started, per_round, analysis


@dataclass(frozen=True)
class Measured:
    """Seconds at start-up and per round: Flower (analysis excluded), its analysis, plain PyTorch twice."""

    flower_startup: float
    plain_startups: tuple[float, float]
    flower: list[float]
    analysis: list[float]
    plain_before: list[float]
    plain_after: list[float]

    @property
    def plain(self) -> list[float]:
        """The baseline per round: the mean of the runs before and after Flower's."""
        return [(b + a) / 2 for b, a in zip(self.plain_before, self.plain_after, strict=True)]

    def steady(self, values: list[float]) -> float:
        """Median over rounds 2.. (round 1 pays for warm-up on both sides)."""
        return statistics.median(values[1:] if len(values) > 1 else values)

    @property
    def ratio(self) -> float:
        return self.steady(self.flower) / self.steady(self.plain)

    @property
    def analysis_share(self) -> float:
        """The analysis as a share of the whole round it belongs to, median over rounds 2.."""
        return self.steady([a / (f + a) for f, a in zip(self.flower, self.analysis, strict=True)])


def measure(cfg: Config, rounds: int, workers: int) -> Measured:
    """Plain PyTorch, then Flower, then plain PyTorch again: a load that drifts during the run (a shared
    machine) weighs on both sides alike."""
    before_startup, before = _plain_pytorch(cfg, rounds, workers)
    flower_startup, flower_rounds, analysis = _flower(cfg, make_console(stderr=True, quiet=True))
    after_startup, after = _plain_pytorch(cfg, rounds, workers)
    flower = [f - a for f, a in zip(flower_rounds, analysis, strict=True)]
    return Measured(flower_startup, (before_startup, after_startup), flower, analysis, before, after)


def run(args) -> int:
    console = make_console()
    overrides = [
        f"federation.rounds={args.rounds}",
        "federation.fraction=1.0",
        "output.checkpoints=false",
        *args.overrides,
    ]
    cfg = load_config(args.config, overrides)
    workers = max(1, (os.cpu_count() or 1) // cfg.simulation.num_cpus)
    console.print(
        f"[bold]bench simulation[/]: {cfg.federation.clients} clients of {cfg.data.dataset}/"
        f"{cfg.model.name}, {args.rounds} rounds, {workers} parallel clients on each side"
    )
    m = measure(cfg, args.rounds, workers)

    table = Table(title="seconds per round (Flower's analysis timed apart)")
    for column in ("round", "Flower (fedlayer)", "analysis", "plain before", "plain after", "ratio"):
        table.add_column(column, justify="right")
    plain_startup = sum(m.plain_startups) / 2
    table.add_row(
        "start-up",
        f"{m.flower_startup:.1f}",
        "",
        *(f"{t:.1f}" for t in m.plain_startups),
        f"{m.flower_startup / plain_startup:.2f}x",
    )
    for i, (f, a, b, p, mean) in enumerate(
        zip(m.flower, m.analysis, m.plain_before, m.plain_after, m.plain, strict=True), start=1
    ):
        table.add_row(str(i), f"{f:.2f}", f"{a:.2f}", f"{b:.2f}", f"{p:.2f}", f"{f / mean:.2f}x")
    console.print(table)
    console.print(
        f"steady-state round (median of rounds 2..{args.rounds}): Flower {m.steady(m.flower):.2f}s, "
        f"plain PyTorch {m.steady(m.plain):.2f}s (mean of before and after), ratio {m.ratio:.2f}x "
        f"(target <= {TARGET_RATIO}x)"
    )
    console.print(
        f"per-round barrier analysis ({cfg.analysis.pairs or 'all'} pairs, {cfg.analysis.samples} samples, "
        f"groups {','.join(cfg.analysis.groups)}): {100 * m.analysis_share:.1f}% of a round "
        f"(target <= {100 * TARGET_ANALYSIS_SHARE:.0f}%)"
    )
    return 0
