"""BarrierAnalysis: per-round layer-wise barriers in a user's own Flower app, equal to the engine's."""

from __future__ import annotations

import random

import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import FedAvg
from inprocess_grid import InProcessGrid, digits, tiny_net
from torch import nn

from fedlayer.analysis import pairwise_curves
from fedlayer.errors import ConfigError
from fedlayer.protocol import client_order
from strategies import BarrierAnalysis, LayerSelective

NODES = 3
APP_KWARGS = {"min_available_nodes": NODES, "min_train_nodes": NODES, "min_evaluate_nodes": NODES}


def quickstart_client_app() -> ClientApp:
    """A ClientApp written the way Flower's quickstart-pytorch writes one: strict load, reply with state_dict."""
    app = ClientApp()
    x, y = digits()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        model = tiny_net()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict(), strict=True)
        pid, n = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
        xs, ys = x[pid::n][:200], y[pid::n][:200]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model.train()
        for start in range(0, len(xs), 50):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(xs[start : start + 50]), ys[start : start + 50]).backward()
            optimizer.step()
        content = RecordDict(
            {"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord({"num-examples": len(xs)})}
        )
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return Message(content=RecordDict({"metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)

    return app


class Recording(FedAvg):
    """FedAvg that keeps the replies it aggregated and the arrays it returned, per round."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.replies: dict[int, list[Message]] = {}
        self.aggregates: dict[int, ArrayRecord] = {}

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        self.replies[server_round] = replies
        arrays, metrics = super().aggregate_train(server_round, replies)
        self.aggregates[server_round] = arrays
        return arrays, metrics


def analysis_data() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = digits()
    return x[-128:], y[-128:]


def run(strategy, rounds: int = 2) -> None:
    random.seed(0)  # Flower's FedAvg samples nodes with the random module: the same order in every run
    grid = InProcessGrid(quickstart_client_app(), NODES, node_seed=0)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(tiny_net().state_dict()), num_rounds=rounds)
    assert not grid.exceptions


def states_of(replies: list[Message]) -> dict[str, dict[str, torch.Tensor]]:
    return {f"node-{m.metadata.src_node_id}": m.content["arrays"].to_torch_state_dict() for m in replies}


def test_tables_equal_the_engine_on_the_replies_and_are_written_to_the_folder(tmp_path):
    inner = Recording(**APP_KWARGS)
    analysis = BarrierAnalysis(inner, tiny_net(), analysis_data(), pairs=2, seed=4, out_dir=tmp_path)
    run(analysis)
    assert sorted(analysis.barriers["round"].unique()) == [1, 2]
    for server_round in (1, 2):
        _, direct = pairwise_curves(
            tiny_net(),
            states_of(inner.replies[server_round]),
            analysis_data(),
            pairs=2,
            seed=4 * 100_003 + server_round,
            groups=["layers", "full"],
            alphas=5,
        )
        measured = analysis.barriers[analysis.barriers["round"] == server_round].drop(columns=["round", "task"])
        pd.testing.assert_frame_equal(measured.reset_index(drop=True), direct, check_exact=True)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "barriers.parquet"), analysis.barriers)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "curves.parquet"), analysis.curves)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no partial file


def test_the_wrapped_strategy_aggregates_exactly_as_without_the_analysis():
    alone, observed = Recording(**APP_KWARGS), Recording(**APP_KWARGS)
    run(alone)
    run(BarrierAnalysis(observed, tiny_net(), analysis_data()))
    for server_round in (1, 2):
        for key in alone.aggregates[server_round].keys():
            assert (alone.aggregates[server_round][key].numpy() == observed.aggregates[server_round][key].numpy()).all()


def test_each_client_against_the_aggregate():
    inner = Recording(**APP_KWARGS)
    analysis = BarrierAnalysis(inner, tiny_net(), analysis_data(), every=2, vs_aggregate=True, groups="layers")
    run(analysis)
    assert set(analysis.barriers["round"]) == {2}
    against = analysis.barriers[analysis.barriers["client_b"] == "aggregate"].drop(columns=["round", "task"])
    states = states_of(inner.replies[2])
    assert sorted(against["client_a"].unique()) == sorted(states)
    pairs = [(client, "aggregate") for client in sorted(states, key=client_order)]
    states["aggregate"] = inner.aggregates[2].to_torch_state_dict()
    _, direct = pairwise_curves(tiny_net(), states, analysis_data(), pairs=pairs, seed=2, groups="layers", alphas=5)
    pd.testing.assert_frame_equal(against.reset_index(drop=True), direct, check_exact=True)


def test_skipped_rounds_do_no_work():
    calls = []

    def engine(*args, **kwargs):
        calls.append(kwargs["seed"])
        return pairwise_curves(*args, **kwargs)

    run(BarrierAnalysis(Recording(**APP_KWARGS), tiny_net(), analysis_data(), every=2, engine=engine), rounds=3)
    assert calls == [2]  # only round 2 is analysed: the seed of a round is seed * 100003 + round
    off = BarrierAnalysis(Recording(**APP_KWARGS), tiny_net(), analysis_data(), every=0, engine=engine)
    run(off)
    assert calls == [2] and off.barriers.empty


def test_with_personal_layers_kept_by_the_clients_only_averaged_layers_are_analysed():
    from inprocess_grid import ProtocolClient

    client = ProtocolClient(tiny_net, *digits())
    strategy = BarrierAnalysis(
        LayerSelective(FedAvg(**APP_KWARGS), "body", personal="client"), tiny_net(), analysis_data(), groups="layers"
    )
    grid = InProcessGrid(client.app, NODES)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(tiny_net().state_dict()), num_rounds=2)
    assert set(strategy.barriers["group"]) == {"0", "1"}  # the head "3" stays on the clients


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"groups": "no_such_layer"}, "matches no layer"),
        ({"every": -1}, "bad every -1"),
        ({"bn": "recompute"}, "needs bn_data"),
    ],
)
def test_bad_settings_fail_at_construction(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        BarrierAnalysis(FedAvg(), tiny_net(), analysis_data(), **kwargs)
