"""Observed hands each round's replies to callbacks before aggregation, for any strategy."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAvg
from inprocess_grid import InProcessGrid, ProtocolClient, digits, tiny_net

from strategies import LayerSelective, Observed, partition_of

NODES = 3
APP_KWARGS = {"min_available_nodes": NODES, "min_train_nodes": NODES, "min_evaluate_nodes": NODES}


def test_observer_sees_sorted_replies_and_the_rounds_global_model():
    trains, evaluations = [], []
    client = ProtocolClient(tiny_net, *digits())

    def on_train(server_round, replies, arrays):
        trains.append((server_round, [partition_of(m) for m in replies], arrays))

    def on_evaluate(server_round, replies):
        evaluations.append((server_round, [partition_of(m) for m in replies]))

    selective = LayerSelective(FedAvg(**APP_KWARGS), "body")
    strategy = Observed(selective, on_train, on_evaluate)
    grid = InProcessGrid(client.app, NODES, shuffle_seed=7)
    initial = ArrayRecord(tiny_net().state_dict())
    strategy.start(grid=grid, initial_arrays=initial, num_rounds=2)
    assert [(rnd, pids) for rnd, pids, _ in trains] == [(1, [0, 1, 2]), (2, [0, 1, 2])]
    assert evaluations == [(1, [0, 1, 2]), (2, [0, 1, 2])]
    assert trains[0][2] is initial
    np.testing.assert_array_equal(trains[1][2]["0.weight"].numpy(), client.loaded[(0, 2)]["0.weight"])
    assert len(selective.personal_state) == NODES
    assert not hasattr(strategy, "personal_state")  # a wrapper exposes only its own attributes


def test_observer_leaves_errored_replies_to_the_wrapped_strategy():
    client = ProtocolClient(tiny_net, *digits())
    seen, aggregated = [], []

    class Recording(FedAvg):
        def aggregate_train(self, server_round, replies):
            aggregated.append([m.has_error() for m in replies])
            return super().aggregate_train(server_round, [m for m in replies if not m.has_error()])

    def flaky(message, context):
        if message.metadata.message_type == "train" and context.node_config["partition-id"] == 0:
            raise RuntimeError("boom")
        return client.app(message, context)

    strategy = Observed(Recording(**APP_KWARGS), on_train=lambda rnd, replies, arrays: seen.append(replies))
    strategy.start(grid=InProcessGrid(flaky, NODES), initial_arrays=ArrayRecord(tiny_net().state_dict()), num_rounds=1)
    assert [partition_of(m) for m in seen[0]] == [1, 2]
    assert aggregated == [[False, False, True]]
