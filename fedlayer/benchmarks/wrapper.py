"""`fedlayer bench wrapper`: the barrier-analysis wrapper on a round it skips, against the bare strategy.

`strategies.BarrierAnalysis` promises no work on the rounds its `every` skips. The same train replies
(the config's model, its clients per round, each client's model a seeded perturbation of the initial
one) are aggregated by Flower's FedAvg alone and by FedAvg inside the config's `BarrierAnalysis` with
`every` set so the round is skipped, alternately, many times; the median time of each and their ratio
are printed (target: 1.00, the difference within the timer's noise). What an analysed round costs is
`fedlayer bench simulation`'s figure (the analysis as a share of the round).
"""

from __future__ import annotations

import argparse
import statistics
import time

from fedlayer.benchmarks import add_config_arguments
from fedlayer.config import load_config
from fedlayer.console import make_console

PERTURBATION = 0.05
TARGET_RATIO = 1.05  # a skipped round may cost at most this much more than the bare aggregation


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--repeats", type=int, default=30, help="aggregations on each side (default 30)")


def _replies(model, clients: int, seed: int) -> list:
    """Train replies of `clients` clients, as Flower delivers them to a strategy."""
    import torch
    from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    from fedlayer import protocol

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID  # as a runtime does
    generator = torch.Generator().manual_seed(seed)
    replies = []
    for pid in range(clients):
        noise = {key: PERTURBATION * torch.randn(v.shape, generator=generator) for key, v in model.state_dict().items()}
        state = {key: v + noise[key] if v.is_floating_point() else v for key, v in model.state_dict().items()}
        sent = Message(RecordDict(), dst_node_id=pid + 1, message_type=MessageType.TRAIN)
        content: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {
            protocol.ARRAYS: ArrayRecord(state),
            protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: 100}),
            protocol.CLIENT: ConfigRecord({protocol.PARTITION_ID: pid}),
        }
        replies.append(Message(RecordDict(content), reply_to=sent))
    return replies


def run(args: argparse.Namespace) -> int:
    import torch
    from flwr.serverapp.strategy import FedAvg

    from fedlayer.observer import barrier_analysis
    from fedlayer.simulation import quiet_logs
    from fedlayer.task import new_model
    from strategies import clients_per_round

    cfg = load_config(args.config, args.overrides)
    console = make_console()
    torch.set_num_threads(cfg.simulation.torch_threads)
    model = new_model(cfg)
    clients = clients_per_round(cfg.federation.clients, cfg.federation.fraction)
    replies = _replies(model, clients, cfg.seed)
    skipping = cfg.replace(analysis={"every": 2})
    bare = FedAvg()
    wrapped = barrier_analysis(skipping, FedAvg(), model, torch.device("cpu"), on_round=lambda *a: None)
    seconds: dict[str, list[float]] = {"bare": [], "wrapped": []}
    with quiet_logs(verbose=False):  # FedAvg logs every aggregation
        for _ in range(args.repeats):
            for name, strategy in (("bare", bare), ("wrapped", wrapped)):
                started = time.perf_counter()
                strategy.aggregate_train(1, replies)
                seconds[name].append(time.perf_counter() - started)
    bare_s, wrapped_s = (statistics.median(seconds[name]) for name in ("bare", "wrapped"))
    ratio = wrapped_s / bare_s
    console.print(
        f"aggregating {clients} replies of {cfg.model.name} ({sum(p.numel() for p in model.parameters()):,} "
        f"parameters), median of {args.repeats}: FedAvg {1000 * bare_s:.2f} ms; inside BarrierAnalysis on a round "
        f"it skips {1000 * wrapped_s:.2f} ms; ratio {ratio:.3f} (target <= {TARGET_RATIO:.2f}: "
        f"{'met' if ratio <= TARGET_RATIO else 'NOT met'})"
    )
    return 0
