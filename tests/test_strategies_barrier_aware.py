"""BarrierAware averages exactly the layers whose (injected) measured barrier is below the threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAdam, FedAvg
from inprocess_grid import InProcessGrid, ProtocolClient, digits, tiny_net

from fedlayer.errors import FedlayerError
from fedlayer.layers import model_layers
from strategies import BarrierAware

NODES = 3
APP_KWARGS = {"min_available_nodes": NODES, "min_train_nodes": NODES, "min_evaluate_nodes": NODES}
LAYER_KEYS = {layer.name: list(layer.keys) for layer in model_layers(tiny_net())}
BARRIERS = {1: {"0": 0.05, "1": 0.5, "3": 0.01}, 2: {"0": 0.5, "1": 0.05}}  # round 2: "3" not measured


def assert_round(client: ProtocolClient, server_round: int, averaged: list[str]) -> None:
    """What clients load after `server_round`: averaged layers shared, the others their own."""
    nxt = server_round + 1
    for name, keys in LAYER_KEYS.items():
        for key in keys:
            for p in range(NODES):
                own = client.trained[(p, server_round)][key]
                expected = client.loaded[(0, nxt)][key] if name in averaged else own
                np.testing.assert_array_equal(client.loaded[(p, nxt)][key], expected)


@pytest.mark.parametrize("cls", [FedAvg, FedAdam])
def test_averages_exactly_the_layers_below_threshold(cls):
    calls = []

    def measure(server_round, states):
        calls.append((server_round, sorted(states), {k: v.shape for k, v in states["0"].items()}))
        return BARRIERS.get(server_round, {})

    client = ProtocolClient(tiny_net, *digits())
    strategy = BarrierAware(cls(**APP_KWARGS), measure, threshold=0.1)
    grid = InProcessGrid(client.app, NODES)
    strategy.start(grid=grid, initial_arrays=ArrayRecord(tiny_net().state_dict()), num_rounds=3)
    assert not grid.exceptions
    shapes = {k: tuple(v.shape) for k, v in tiny_net().state_dict().items()}
    assert calls == [(r, ["0", "1", "2"], shapes) for r in (1, 2, 3)]  # every client's full model
    assert_round(client, 1, ["0", "3"])
    assert_round(client, 2, ["1"])  # layer 0 became personal, layer 3 was not measured
    frame = strategy.history_frame()
    assert list(frame.columns) == ["round", "layer", "barrier", "averaged"]
    rows = frame[frame["round"] <= 2].to_dict("records")
    assert [(r["round"], r["layer"], r["averaged"]) for r in rows] == [
        (1, "0", True),
        (1, "1", False),
        (1, "3", True),
        (2, "0", False),
        (2, "1", True),
        (2, "3", False),
    ]
    assert math.isnan(rows[-1]["barrier"]) and rows[0]["barrier"] == 0.05


def test_candidates_limit_what_can_be_averaged():
    client = ProtocolClient(tiny_net, *digits())
    strategy = BarrierAware(FedAvg(**APP_KWARGS), lambda r, states: {"0": 0.0, "1": 0.0, "3": 0.0}, average="body")
    strategy.start(
        grid=InProcessGrid(client.app, NODES), initial_arrays=ArrayRecord(tiny_net().state_dict()), num_rounds=1
    )
    assert {row["layer"] for row in strategy.history} == {"0", "1"}
    assert strategy.average_keys == LAYER_KEYS["0"] + LAYER_KEYS["1"]


def test_needs_server_side_personal_layers_and_a_measure():
    with pytest.raises(FedlayerError, match="personal='server'"):
        BarrierAware(FedAvg(), lambda r, s: {}, personal="client")
    with pytest.raises(FedlayerError, match="measure"):
        BarrierAware(FedAvg(), None)
