"""Flower ServerApp: the configured strategy, observed every round by the barrier analysis.

`FederatedRun` is one run of one config: `prepare` checks everything and creates the run directory;
`main` is the ServerApp body (partition discovery, seeded sampling, `Strategy.start`). The module-level
`app` serves `flwr run .`, reading the config from Flower's run-config.
"""

from __future__ import annotations

import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from rich.console import Console

from fedlayer.config import Config, config_from_flat
from fedlayer.errors import FedlayerError
from fedlayer.layers import model_layers
from fedlayer.observer import RoundRecorder, partition_of
from fedlayer.results import RunDirectory
from fedlayer.task import dataset_for, new_model, partitions_for
from fedlayer.training import Metrics
from strategies import BarrierAware, Observed, SeededGrid, build_strategy

DISCOVERY_TIMEOUT_S = 600.0


def discover_partitions(grid: Grid, num_clients: int, timeout: float = DISCOVERY_TIMEOUT_S) -> dict[int, int]:
    """Ask every node for its partition id (a QUERY message): {partition_id: node_id}."""
    deadline = time.monotonic() + timeout
    node_ids = list(grid.get_node_ids())
    while len(node_ids) < num_clients:
        if time.monotonic() > deadline:
            raise FedlayerError(f"only {len(node_ids)} of {num_clients} clients connected within {timeout:.0f}s")
        time.sleep(0.2)
        node_ids = list(grid.get_node_ids())
    messages = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in node_ids]
    partition_to_node = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            raise FedlayerError(f"client on node {reply.metadata.src_node_id} failed the partition query: "
                                f"{reply.error.reason}")
        partition_to_node[int(partition_of(reply))] = reply.metadata.src_node_id
    return partition_to_node


class FederatedRun:
    """One run of one config: validated inputs, the strategy, the recorder and the run directory."""

    def __init__(self, cfg: Config, run_dir: RunDirectory, console: Console):
        self.cfg = cfg
        self.run_dir = run_dir
        self.console = console
        self.model = new_model(cfg)
        self.layers = model_layers(self.model)
        self.recorder = RoundRecorder(cfg, run_dir, self.model, self.layers, on_round_end=self._report_round)
        self.strategy = self._build_strategy()
        self.started = time.perf_counter()

    @property
    def strategy_label(self) -> str:
        s = self.cfg.strategy
        return s.class_ or s.name if not s.average else f"{s.class_ or s.name} (average {s.average})"

    @classmethod
    def prepare(cls, cfg: Config, out: str | Path | None = None, *, console: Console | None = None
                ) -> FederatedRun:
        """Check data, partitions, model and strategy; only then create the run directory."""
        dataset_for(cfg)
        partitions = partitions_for(cfg)
        run_dir = RunDirectory(out or cfg.output.dir)
        run = cls(cfg, run_dir, console or Console(stderr=True))
        run_dir.create()
        run_dir.write_text("config.toml", cfg.to_toml())
        partitions.save(run_dir.path / "partitions.json")
        return run

    def _build_strategy(self):
        s, fed = self.cfg.strategy, self.cfg.federation
        sampled = max(1, round(fed.fraction * fed.clients))
        flower_kwargs = {"fraction_train": 1.0, "fraction_evaluate": 1.0, "min_train_nodes": 1,
                         "min_evaluate_nodes": 1, "min_available_nodes": 1} if not s.class_ else {}
        common = dict(class_path=s.class_ or None, kwargs=dict(s.kwargs), personal=s.personal, layers=self.layers,
                      **flower_kwargs)
        if s.name == "barrier-aware":
            strategy = BarrierAware.from_config(threshold=s.threshold, measure=self.recorder.layer_barriers,
                                                **common)
        else:
            strategy = build_strategy(name=s.name, average=s.average or None, **common)
        strategy.resolve(self.layers)
        del sampled
        return strategy

    def main(self, grid: Grid, context: Context) -> None:
        cfg = self.cfg
        partition_to_node = discover_partitions(grid, cfg.federation.clients)
        seeded = SeededGrid(grid, seed=cfg.seed, fraction=cfg.federation.fraction,
                            partition_to_node=partition_to_node)
        observed = Observed(self.strategy, on_train=self.recorder.on_train, on_evaluate=self.recorder.on_evaluate)
        train_config = {"train-mode": getattr(self.strategy, "train_mode", "standard")}
        if cfg.federation.proximal_mu > 0:
            train_config["proximal-mu"] = cfg.federation.proximal_mu
        observed.start(
            grid=seeded, initial_arrays=ArrayRecord(self.model.state_dict()), num_rounds=cfg.federation.rounds,
            train_config=ConfigRecord(train_config), evaluate_fn=self.recorder.end_of_round,
        )

    def _report_round(self, server_round: int, metrics: Metrics, analysis_s: float | None) -> None:
        elapsed = time.perf_counter() - self.started
        analysis = f"  analysis {analysis_s:5.1f}s" if analysis_s is not None else ""
        label = "initial model" if server_round == 0 else f"round {server_round}/{self.cfg.federation.rounds}"
        self.console.print(f"  {label:<14} global test accuracy {100 * metrics.accuracy:5.1f}%  "
                           f"loss {metrics.loss:.3f}{analysis}  [{elapsed:6.1f}s]")

    def raise_if_failed(self) -> None:
        """Flower swallows some server-side failures; a run without its final round is one of them."""
        metrics = self.run_dir.table("metrics")
        last = int(metrics["round"].max()) if not metrics.empty else -1
        if last < self.cfg.federation.rounds:
            raise FedlayerError(f"the run stopped after round {last} of {self.cfg.federation.rounds}; "
                                "rerun with --verbose to see Flower's log")


def make_server_app(run: FederatedRun) -> ServerApp:
    """A ServerApp that runs `run` (for the programmatic simulation entry point)."""
    server_app = ServerApp()
    server_app.main()(run.main)
    return server_app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """`flwr run .`: the config comes from the run-config; outputs go to its (absolute) output.dir."""
    cfg = config_from_flat(context.run_config)
    FederatedRun.prepare(cfg, Path(cfg.output.dir).resolve()).main(grid, context)
