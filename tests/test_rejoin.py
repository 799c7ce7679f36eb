"""Clients that die and come back under a new node id, a server that stops, and node counts that do not fit.

A SuperNode killed during a round is recorded as timed out and the run goes on; when it restarts (a
new node id, an empty memory) the next round maps its partition to the new node, and with
personal = "server" it gets its own personal layers back. A stopped `flwr run` (its SuperLink died)
is continued by the same `flwr run` command. A number of nodes the run cannot serve is one error at
the start naming both numbers. All on the in-process grid (`InProcessGrid.kill`,
`InProcessGrid.add_node`); tests/test_deployment.py does the same with real SuperNodes.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.superlink.grid import InMemoryGrid
from inprocess_grid import InProcessGrid, ProtocolClient, digits, tiny_net

import strategies.sampling
from fedlayer.client_app import make_client_app
from fedlayer.config import load_config
from fedlayer.errors import FedlayerError
from fedlayer.server_app import FederatedRun
from fedlayer.server_app import main as flwr_run_main
from strategies import Guarded, LayerSelective, SeededGrid, query_partitions

HEAD = ["3.weight", "3.bias"]  # tiny_net's classifier: personal under average="body"


def is_message(message: Message, kind: str, server_round: int) -> bool:
    return message.metadata.message_type == kind and message.content["config"]["server-round"] == server_round


def dies_and_restarts(grid: InProcessGrid, app, partition: int = 1):
    """A handler: `partition` dies while it trains in round 2; it restarts (a new node) during round 2's evaluation."""

    def handle(message: Message, context: Context) -> Message:
        if int(context.node_config["partition-id"]) == partition and is_message(message, "train", 2):
            grid.kill(context.node_id)
        if int(context.node_config["partition-id"]) == 0 and is_message(message, "evaluate", 2):
            grid.add_node(partition)
        return app(message, context)

    return handle


# --- the rejoin mapping ----------------------------------------------------------------------------------


def test_a_restarted_node_takes_over_its_partition_in_the_next_round(caplog):
    grid = InProcessGrid(ProtocolClient(tiny_net, *digits()).app, 3)
    sampler = SeededGrid(grid, 0, 1.0, grid.partitions)
    sampler.set_round(1)
    old = grid.node_of(1)
    grid.kill(old)
    sampler.set_round(1, "evaluate")
    assert sorted(sampler.get_node_ids()) == sorted(grid.contexts)  # the dead node stays in the sample
    new = grid.add_node(1)
    with caplog.at_level(logging.INFO, logger="flwr"):
        sampler.set_round(2)
    assert sampler.node_of[1] == new and new in sampler.get_node_ids() and old not in sampler.get_node_ids()
    assert sampler.partition_of[old] == sampler.partition_of[new] == 1  # the dead node's failures stay named
    assert f"partition 1 rejoined on node {new} (was node {old})" in caplog.text
    queried = [m.metadata.dst_node_id for m in grid.delivered if m.metadata.message_type == "query"]
    assert queried == [new]  # only the node never seen is asked, once
    sampler.set_round(3)
    assert [m.metadata.dst_node_id for m in grid.delivered if m.metadata.message_type == "query"] == [new]


def test_new_nodes_that_cannot_serve_a_partition_of_the_run_are_left_out(caplog):
    client = ProtocolClient(tiny_net, *digits())

    def app(message: Message, context: Context) -> Message:
        if int(context.node_config["partition-id"]) == 7:
            raise RuntimeError("broken node")
        return client.app(message, context)

    grid = InProcessGrid(app, 2)
    sampler = SeededGrid(grid, 0, 1.0, grid.partitions)
    outside, broken = grid.add_node(5), grid.add_node(7)
    with caplog.at_level(logging.WARNING, logger="flwr"):
        sampler.set_round(1)
    assert sampler.node_of == {pid: grid.node_of(pid) for pid in (0, 1)}
    assert sampler.left_out == {outside, broken}
    assert f"node {outside} is left out of this run: it holds partition 5, and this run's partitions are 0, 1" in (
        caplog.text
    )
    assert f"node {broken} failed: RuntimeError: broken node; it is left out of this run" in caplog.text
    sampler.set_round(2)  # asked once only
    assert len([m for m in grid.delivered if m.metadata.message_type == "query"]) == 2


def test_a_client_killed_during_a_round_is_recorded_and_gets_its_own_personal_layers_back():
    client = ProtocolClient(tiny_net, *digits())
    grid = InProcessGrid(client.app, 3, node_seed=1)
    grid.client_app = dies_and_restarts(grid, client.app)
    failures = []
    selective = LayerSelective(FedAvg(min_available_nodes=3, min_train_nodes=3, min_evaluate_nodes=3), "body")
    strategy = Guarded(selective, on_failures=lambda rnd, phase, found: failures.append((rnd, phase, found)))
    sampler = SeededGrid(grid, 0, 1.0, grid.partitions, query_timeout=10)
    strategy.start(grid=sampler, initial_arrays=ArrayRecord(tiny_net().state_dict()), num_rounds=3, timeout=10)

    assert [(rnd, phase, [(f["client"], f["status"]) for f in found]) for rnd, phase, found in failures] == [
        (2, "train", [("1", "timeout")]),
        (2, "evaluate", [("1", "timeout")]),
    ]
    assert sorted(p for p, r in client.trained if r == 3) == [0, 1, 2]  # the run went on, and 1 is back
    for key in HEAD:  # its own head, trained in round 1 (its round-2 reply never came), not the initial one
        np.testing.assert_array_equal(client.loaded[(1, 3)][key], client.trained[(1, 1)][key])
        assert not np.array_equal(client.loaded[(1, 3)][key], tiny_net().state_dict()[key].numpy())
    assert set(selective.personal_state) == {"0", "1", "2"}
    assert set(selective.snapshot().personal) == {0, 1, 2}


def test_a_dead_node_the_superlink_answers_for_is_one_failure_of_its_client():
    grid = InProcessGrid(ProtocolClient(tiny_net, *digits()).app, 2)
    sampler = SeededGrid(grid, 0, 1.0, grid.partitions)
    grid.kill(grid.node_of(1), noticed=True)  # its error replies come from the SuperLink's node id
    failures = []
    selective = LayerSelective(FedAvg(min_available_nodes=2, min_train_nodes=2, min_evaluate_nodes=2), "body")
    strategy = Guarded(selective, on_failures=lambda rnd, phase, found: failures.append((phase, found)))
    strategy.start(grid=sampler, initial_arrays=ArrayRecord(tiny_net().state_dict()), num_rounds=1)
    assert [(phase, [(f["client"], f["status"]) for f in found]) for phase, found in failures] == [
        ("train", [("1", "failed")]),
        ("evaluate", [("1", "failed")]),
    ]
    assert "Node Unavailable" in failures[0][1][0]["reason"]


def test_a_federated_run_records_the_dead_client_and_takes_it_back(tmp_path):
    cfg = load_config(
        None,
        [
            "data.dataset=digits",
            "model.name=mlp",
            "federation.clients=3",
            "federation.rounds=3",
            "federation.timeout=30",
            "strategy.name=fedper",
            "analysis.every=0",
            "output.checkpoints=false",
        ],
    )
    run = FederatedRun.prepare(cfg, tmp_path / "run")
    grid = InProcessGrid(make_client_app(cfg), cfg.federation.clients, node_seed=0)
    grid.client_app = dies_and_restarts(grid, grid.client_app)
    run.main(grid, Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    run.raise_if_failed()
    metrics = pd.read_parquet(run.run_dir.path / "metrics.parquet")
    clients = metrics[metrics["client"] == "1"].set_index(["round", "split"])["status"]
    assert clients.to_dict() == {
        (1, "train"): "ok",
        (1, "local-test"): "ok",
        (2, "train"): "timeout",
        (2, "local-test"): "timeout",
        (3, "train"): "ok",
        (3, "local-test"): "ok",
    }
    assert sorted(metrics.loc[metrics["client"] == "global", "round"]) == [0, 1, 2, 3]


def test_the_same_flwr_run_continues_a_stopped_run_after_its_last_committed_round(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = load_config(
        None,
        [
            "data.dataset=digits",
            "model.name=mlp",
            "federation.clients=2",
            "federation.rounds=3",
            "strategy.name=fedper",
            "analysis.every=0",
            f"output.dir={out}",
        ],
    )
    context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config=cfg.to_flat())
    app = make_client_app(cfg)

    def server_dies_in_round_2(message: Message, context: Context) -> Message:
        if is_message(message, "train", 2):
            raise RuntimeError("no server to answer")  # every client: round 2 cannot complete
        return app(message, context)

    with pytest.raises(FedlayerError, match="the run stops after round 1"):
        flwr_run_main(InProcessGrid(server_dies_in_round_2, 2), context)
    assert "error: round 2: 0 usable training replies" in capsys.readouterr().err
    other = Context(0, 0, {}, RecordDict(), {**cfg.to_flat(), "federation.lr": 0.5})  # another experiment
    with pytest.raises(FedlayerError, match=r"stopped run that this run-config cannot continue.*federation\.lr"):
        flwr_run_main(InProcessGrid(app, 2), other)
    flwr_run_main(InProcessGrid(app, 2), context)  # the same command, a new SuperLink (new node ids)
    assert "continuing the stopped run in" in capsys.readouterr().err
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert sorted(metrics.loc[metrics["client"] == "global", "round"]) == [0, 1, 2, 3]
    assert set(metrics.loc[metrics["split"] == "train", "round"]) == {1, 2, 3}


# --- node counts that do not fit federation.clients ------------------------------------------------------------


class SimulationGrid(InMemoryGrid):
    """Flower's simulation grid as `query_partitions` sees it: a fixed set of nodes."""

    def __init__(self, nodes: int) -> None:  # no LinkState: only the node ids are asked for
        self.nodes = set(range(1, nodes + 1))

    def get_node_ids(self) -> set[int]:
        return self.nodes


def test_too_few_clients_is_one_error_naming_both_numbers_and_the_fix(monkeypatch):
    grid = InProcessGrid(ProtocolClient(tiny_net, *digits()).app, 1)
    with pytest.raises(FedlayerError) as deployment:
        query_partitions(grid, 2, timeout=0.2, poll=0.01)
    assert str(deployment.value) == (
        "only 1 of 2 clients connected within 0.2 s (federation.clients = 2): run one SuperNode per partition, "
        "started with --node-config 'partition-id=K num-partitions=2' for K = 0, 1 (in a simulation: "
        "--federation-config 'num-supernodes=2'), or set federation.clients = 1"
    )
    # a simulation registers all its nodes at once: no waiting for the discovery timeout
    monkeypatch.setattr(strategies.sampling, "SIMULATION_SETTLE_S", 0.1)
    with pytest.raises(FedlayerError, match=r"^only 3 of 10 clients connected \(federation.clients = 10\)"):
        query_partitions(SimulationGrid(3), 10, timeout=600, poll=0.01)


def test_too_many_clients_is_one_error_naming_both_numbers():
    grid = InProcessGrid(make_client_app(load_config(None, ["data.dataset=digits", "federation.clients=2"])), 3)
    with pytest.raises(FedlayerError, match=r"^3 clients connected, but federation.clients = 2: .*K = 0, 1.*"):
        query_partitions(grid, 2, timeout=1)
    assert not grid.delivered  # found before any client was asked


def test_a_supernode_started_for_another_federation_size_is_named():
    cfg = load_config(None, ["data.dataset=digits", "model.name=mlp", "federation.clients=2"])
    grid = InProcessGrid(make_client_app(cfg), 0)
    nodes = [grid.add_node(0, 3), grid.add_node(1, 3)]
    with pytest.raises(FedlayerError) as caught:
        query_partitions(grid, 2, timeout=1)
    for node, pid in zip(nodes, (0, 1), strict=True):
        assert (
            f"node {node} failed: ConfigError: this SuperNode has partition-id={pid} num-partitions=3, which does "
            "not fit federation.clients = 2: start each of the 2 SuperNodes with --node-config "
            "'partition-id=K num-partitions=2' (K = 0..1)"
        ) in str(caught.value)
    # a client that names a partition outside the federation (any ClientApp)
    protocol_grid = InProcessGrid(ProtocolClient(tiny_net, *digits()).app, 1)
    stray = protocol_grid.add_node(4)
    with pytest.raises(FedlayerError, match=rf"^node {stray} holds partition 4, but federation.clients = 2 has "):
        query_partitions(protocol_grid, 2, timeout=1)
