"""Seeded sampling by partition, the partition query, and the in-process grid the other tests use."""

from __future__ import annotations

import pytest
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg
from inprocess_grid import InProcessGrid, ProtocolClient, digits, tiny_net

from fedlayer.errors import FedlayerError
from strategies import LayerSelective, SeededGrid, clients_per_round, query_partitions


def seeded(grid: InProcessGrid, seed: int = 0, fraction: float = 0.5, **kwargs) -> SeededGrid:
    return SeededGrid(grid, seed, fraction, grid.partitions, **kwargs)


def test_same_seed_same_partitions_whatever_the_node_ids():
    client = ProtocolClient(tiny_net, *digits())
    a = seeded(InProcessGrid(client.app, 8, node_seed=1))
    b = seeded(InProcessGrid(client.app, 8, node_seed=2))
    samples = [a.sample(r) for r in range(1, 6)]
    assert samples == [b.sample(r) for r in range(1, 6)]
    assert all(len(s) == 4 for s in samples) and len({tuple(s) for s in samples}) > 1
    assert [seeded(InProcessGrid(client.app, 8), seed=5).sample(r) for r in range(1, 6)] != samples
    a.set_round(3)
    assert sorted(a.get_node_ids()) == sorted(a.node_of[p] for p in samples[2])


def test_strategy_trains_the_seeded_sample_each_round():
    client = ProtocolClient(tiny_net, *digits())
    grid = InProcessGrid(client.app, 6)
    sampler = seeded(grid, seed=3, fraction=0.5, fraction_evaluate=1.0)
    flower = FedAvg(min_available_nodes=1, min_train_nodes=1, min_evaluate_nodes=1)
    LayerSelective(flower, "body").start(
        grid=sampler, initial_arrays=ArrayRecord(tiny_net().state_dict()), num_rounds=3
    )
    for server_round in (1, 2, 3):
        assert sorted(p for p, r in client.trained if r == server_round) == sampler.sample(server_round)
        assert sorted(p for p, r in client.evaluated if r == server_round) == list(range(6))


def test_sample_sizes_and_bad_use():
    assert [clients_per_round(10, f) for f in (0.1, 0.25, 0.3, 1.0, 0.01)] == [1, 2, 3, 10, 1]
    with pytest.raises(FedlayerError, match="fraction"):
        clients_per_round(10, 0.0)
    grid = seeded(InProcessGrid(ProtocolClient(tiny_net, *digits()).app, 4))
    with pytest.raises(FedlayerError, match="set_round"):
        grid.get_node_ids()
    with pytest.raises(FedlayerError, match="train, evaluate"):
        grid.set_round(1, "fit")


def test_query_partitions_maps_nodes_to_partitions():
    client = ProtocolClient(tiny_net, *digits())
    grid = InProcessGrid(client.app, 4)
    assert query_partitions(grid, expected=4) == grid.partitions
    unnamed = InProcessGrid(ProtocolClient(tiny_net, *digits(), name_partition=False).app, 2)
    with pytest.raises(FedlayerError, match="did not name their partition"):
        query_partitions(unnamed, expected=2)
    with pytest.raises(FedlayerError, match="only 2 of 3 clients"):
        query_partitions(unnamed, expected=3, timeout=0.05, poll=0.01)


def test_inprocess_grid_keeps_contexts_and_reports_client_exceptions():
    grid = InProcessGrid(lambda message, context: 1 / 0, 2, run_config={"lr": 0.1})
    assert len(grid.get_node_ids()) == 2 and all(node > 1 for node in grid.get_node_ids())
    assert {ctx.run_config["lr"] for ctx in grid.contexts.values()} == {0.1}
    assert sorted(ctx.node_config["partition-id"] for ctx in grid.contexts.values()) == [0, 1]
    messages = FedAvg().configure_train(1, ArrayRecord(tiny_net().state_dict()), ConfigRecord(), grid)
    replies = grid.send_and_receive(messages)
    assert all(reply.has_error() and "ZeroDivisionError" in reply.error.reason for reply in replies)
    assert {reply.metadata.src_node_id for reply in replies} == grid.get_node_ids()
