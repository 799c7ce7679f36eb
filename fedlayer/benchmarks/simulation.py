"""`fedlayer bench simulation`: federated rounds through Flower's simulation engine against plain PyTorch.

Both sides do the same work each round: the clients fedlayer's server samples (`strategies.SeededGrid`,
the same seeded draw) train their local epochs and evaluate their model on their local test split, the
server averages and evaluates the global model. The baseline runs the clients in a pool of worker
processes (as many as Ray gets cores), with no Flower and no Ray, once before and once after the Flower
side; the mean of the two is the baseline. The Flower side runs with the config's per-round analysis,
which is timed separately, left out of the comparison and reported as a share of the round. The plain
side is FedAvg on the CPU without faults, so a config asking for anything else is refused.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from rich.console import Console
from rich.table import Table

from fedlayer.benchmarks import add_config_arguments
from fedlayer.config import Config, load_config
from fedlayer.console import make_console
from fedlayer.errors import ConfigError

if TYPE_CHECKING:  # torch, the task and training are imported where they run: `fedlayer --help` stays fast
    import torch

    from fedlayer.training import Metrics

TARGET_RATIO = 1.15  # every client in every round: a few large messages
CROSS_DEVICE_TARGET_RATIO = 1.3  # a sample of many small clients: twice as many messages as clients per round
TARGET_ANALYSIS_SHARE = 0.20


def add_arguments(parser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--rounds", type=int, default=4, help="rounds on each side (default 4)")


# -- plain PyTorch side: worker processes ------------------------------------------------------------
@dataclass(frozen=True)
class _Worker:
    """A worker's config and its one model (every job overwrites all of it), as fedlayer's clients keep theirs:
    building a model per job would slow the baseline down by more than the framework costs."""

    cfg: Config
    model: torch.nn.Module
    head_params: list[str]


_WORKER: _Worker | None = None


def _init_worker(cfg: Config) -> None:
    global _WORKER
    from fedlayer.task import client_data, configure_process, head_parameter_names, new_model

    configure_process(cfg)  # as fedlayer's clients: same threads, same allocator settings
    client_data(cfg, 0)  # load the dataset and partitions once per worker, as a Ray actor does
    model = new_model(cfg)
    _WORKER = _Worker(cfg, model, head_parameter_names(model))


def _client_round(job: tuple[dict[str, torch.Tensor], int, int]):
    """One client's round: load the global state, train, evaluate locally; return its partition, a copy of its
    trained state, and its weight.

    The copy is what a real client sends. Without it torch's pickling would move the worker's own parameters
    into shared memory and hand the server views of them: every state a worker returns in a round would then
    be its last client's, the average would be wrong, and the baseline would skip the cost of the transfer.
    """
    from fedlayer.task import client_data, train_settings
    from fedlayer.training import evaluate, seed_everything, train_local

    state, pid, server_round = job
    assert _WORKER is not None, "a pool started with _init_worker runs the clients"
    cfg, model = _WORKER.cfg, _WORKER.model
    model.load_state_dict(state)
    data = client_data(cfg, pid)
    generator = seed_everything(cfg.seed, pid, server_round)
    settings = train_settings(cfg, pid)
    trained = train_local(
        model, data.train_x, data.train_y, settings, head_params=_WORKER.head_params, generator=generator
    )
    evaluate(model, data.test_x, data.test_y)
    return pid, {key: value.clone() for key, value in model.state_dict().items()}, trained.num_examples


def target_ratio(cfg: Config) -> float:
    """The ratio to stay under: a round that samples its clients (`federation.fraction` < 1) is many small
    messages, whose per-message cost weighs more than in a round of every client."""
    return CROSS_DEVICE_TARGET_RATIO if cfg.federation.fraction < 1 else TARGET_RATIO


def check_comparable(cfg: Config) -> None:
    """Refuse what the plain side does not do, rather than compare unlike work."""
    s, fed = cfg.strategy, cfg.federation
    if (s.name, s.class_, s.average) != ("fedavg", "", ""):
        raise ConfigError(
            "bench simulation compares FedAvg only (its plain-PyTorch side averages every layer): "
            f"strategy.name = {s.name!r}, strategy.class = {s.class_!r}, strategy.average = {s.average!r}; "
            "use strategy.name = 'fedavg' with no class and no average"
        )
    if fed.fault_probability > 0:
        raise ConfigError(
            f"bench simulation needs federation.fault_probability = 0 (got {fed.fault_probability}): "
            "failed clients would leave the two sides with different work"
        )
    if cfg.simulation.num_gpus > 0:
        raise ConfigError(
            f"bench simulation needs simulation.num_gpus = 0 (got {cfg.simulation.num_gpus}): "
            "its plain side runs on the CPU"
        )
    if fed.init != "same":
        raise ConfigError(
            f"bench simulation needs federation.init = 'same' (got {fed.init!r}): its plain side starts every "
            "client from the global model"
        )


def sampler(cfg: Config) -> Callable[[int], list[int]]:
    """The partitions fedlayer's server samples in a round (train and evaluate alike), by its own `SeededGrid`.

    The plain side has no Flower grid and no node ids; the sample depends on neither (partition ids stand
    in for the node ids).
    """
    from flwr.serverapp import Grid

    from strategies import SeededGrid

    clients = range(cfg.federation.clients)
    return SeededGrid(cast(Grid, None), cfg.seed, cfg.federation.fraction, {pid: pid for pid in clients}).sample


@dataclass(frozen=True)
class PlainRun:
    """The plain side's start-up seconds, seconds per round, the (round, partition) it trained, in order, and
    the global model's test metrics after each round (which a real run's must match: the same work)."""

    startup: float
    seconds: list[float]
    trained: list[tuple[int, int]]
    global_test: list[Metrics]


def plain_pytorch(cfg: Config, rounds: int, workers: int) -> PlainRun:
    """FedAvg of the clients fedlayer samples, with a process pool."""
    from fedlayer.task import global_test_set, new_model
    from fedlayer.training import evaluate

    sample = sampler(cfg)
    trained: list[tuple[int, int]] = []
    started = time.perf_counter()
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(cfg,)) as pool:
        pool.map(_noop, range(workers))  # workers are up and have loaded their data
        model = new_model(cfg)
        test_x, test_y = global_test_set(cfg)
        evaluate(model, test_x, test_y)
        startup = time.perf_counter() - started
        times, global_test = [], []
        for server_round in range(1, rounds + 1):
            t0 = time.perf_counter()
            state = model.state_dict()
            jobs = [(state, pid, server_round) for pid in sample(server_round)]
            results = pool.map(_client_round, jobs, chunksize=1)
            total = sum(n for _, _, n in results)
            model.load_state_dict(
                {k: sum(s[k] * (n / total) for _, s, n in results).to(v.dtype) for k, v in state.items()}
            )
            global_test.append(evaluate(model, test_x, test_y))
            times.append(time.perf_counter() - t0)
            trained.extend((server_round, pid) for pid, _, _ in results)
    return PlainRun(startup, times, trained, global_test)


def _noop(_):
    return None


# -- Flower side ------------------------------------------------------------------------------------------
def _flower(cfg: Config, console: Console) -> tuple[float, list[float], list[float], float]:
    """(start-up seconds, seconds per round, analysis seconds per round, the global model's final test accuracy)
    through fedlayer's simulation."""
    from fedlayer.simulation import run_simulation

    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        run = run_simulation(cfg, out, console=console)
        metrics = run.run_dir.table("metrics")
    final = metrics[(metrics["client"] == "global") & (metrics["round"] == cfg.federation.rounds)]
    ends = run.round_finished_at
    rounds = sorted(r for r in ends if r > 0)
    per_round = [ends[r] - ends[r - 1] for r in rounds]
    analysis = [run.analysis.seconds.get(r, 0.0) for r in rounds]
    return ends[0] - started, per_round, analysis, float(final["accuracy"].iloc[0])


@dataclass(frozen=True)
class Measured:
    """Seconds at start-up and per round: Flower (analysis excluded), its analysis, plain PyTorch twice; and the
    global model's test accuracy after the last round on each side, which the same work makes equal."""

    flower_startup: float
    plain_startups: tuple[float, float]
    flower: list[float]
    analysis: list[float]
    plain_before: list[float]
    plain_after: list[float]
    accuracy: tuple[float, float]  # (Flower, plain)

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
    before = plain_pytorch(cfg, rounds, workers)
    flower_startup, flower_rounds, analysis, accuracy = _flower(cfg, make_console(stderr=True, quiet=True))
    after = plain_pytorch(cfg, rounds, workers)
    flower = [f - a for f, a in zip(flower_rounds, analysis, strict=True)]
    return Measured(
        flower_startup,
        (before.startup, after.startup),
        flower,
        analysis,
        before.seconds,
        after.seconds,
        (accuracy, before.global_test[-1].accuracy),
    )


def run(args) -> int:
    from strategies import clients_per_round

    console = make_console()
    overrides = [f"federation.rounds={args.rounds}", "output.checkpoints=false", *args.overrides]
    cfg = load_config(args.config, overrides)
    check_comparable(cfg)
    workers = max(1, (os.cpu_count() or 1) // cfg.simulation.num_cpus)
    fed = cfg.federation
    console.print(
        f"[bold]bench simulation[/]: {clients_per_round(fed.clients, fed.fraction)} of {fed.clients} clients "
        f"per round of {cfg.data.dataset}/{cfg.model.name}, {args.rounds} rounds, "
        f"{workers} parallel clients on each side"
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
        f"(target <= {target_ratio(cfg)}x)"
    )
    console.print(
        f"the same work: global test accuracy after round {args.rounds}, Flower {100 * m.accuracy[0]:.2f}%, "
        f"plain PyTorch {100 * m.accuracy[1]:.2f}%"
    )
    console.print(
        f"per-round barrier analysis ({cfg.analysis.pairs or 'all'} pairs, {cfg.analysis.samples} samples, "
        f"groups {','.join(cfg.analysis.groups)}): {100 * m.analysis_share:.1f}% of a round "
        f"(target <= {100 * TARGET_ANALYSIS_SHARE:.0f}%)"
    )
    return 0
