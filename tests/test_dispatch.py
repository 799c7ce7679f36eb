"""fedlayer's simulation hands Flower's messages to the clients as Flower's runtime does, without its cost."""

from __future__ import annotations

import os
import threading
import time
from queue import Queue
from typing import cast

import pytest
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.fleet.vce.vce_api import _register_nodes
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState, RunRecord, Task
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.grid.inmemory_grid import InMemoryGrid
from inprocess_grid import InProcessGrid, ProtocolClient, digits, tiny_net

from fedlayer import simulation
from fedlayer.flower_runtime import _dispatch_cycle, prompt_dispatch
from fedlayer.interrupt import POLL_S, SIMULATION_POLL_S, StoppableGrid

NODES = 200


def link_state() -> tuple[InMemoryLinkState, InMemoryGrid, dict[int, int]]:
    """Flower's in-memory link state with a run and NODES nodes, and the simulation's grid on it."""
    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
    run = Run.create_empty(run_id=7)
    run.federation_id, run.primary_task_id = NOOP_FEDERATION_ID, 3
    state = cast(InMemoryLinkState, factory.state())
    state.run_ids[run.run_id] = RunRecord(run=run)
    state.task_store[3] = Task(task_id=3, run_id=run.run_id)
    nodes = _register_nodes(NODES, factory)
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(run)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 3, run.run_id, SUPERLINK_NODE_ID
    return state, grid, nodes


def dispatched(loop, count: int) -> tuple[list[str], list[str]]:
    """Push messages to `count` nodes (the last first), run `loop` (Flower's `add_messages_to_queue` or
    fedlayer's) until it has queued them all; return (pushed ids, queued ids in queue order)."""
    state, grid, nodes = link_state()
    targets = list(nodes)[-count:][::-1]
    content = RecordDict({"config": ConfigRecord({"x": 1})})
    pushed = list(grid.push_messages(Message(content, node, MessageType.TRAIN) for node in targets))
    queue: Queue[Message] = Queue()
    stop = threading.Event()
    thread = threading.Thread(target=loop, args=(state, queue, nodes, stop))
    thread.start()
    deadline = time.monotonic() + 60
    while queue.qsize() < count and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # a few more cycles: nothing is handed out twice
    stop.set()
    thread.join()
    queued = [queue.get_nowait() for _ in range(queue.qsize())]
    assert all(m.metadata.delivered_at for m in queued)
    return pushed, [m.metadata.message_id for m in queued]


def test_the_same_messages_reach_the_same_nodes_in_flowers_order_once_each():
    original = vce_api.add_messages_to_queue
    flower_pushed, flower_queued = dispatched(original, 30)
    with prompt_dispatch():
        assert vce_api.add_messages_to_queue is not original
        ours_pushed, ours_queued = dispatched(vce_api.add_messages_to_queue, 30)
    assert vce_api.add_messages_to_queue is original  # Flower's again afterwards
    assert sorted(flower_queued) == sorted(flower_pushed) and sorted(ours_queued) == sorted(ours_pushed)
    # Flower hands them out in node order (the reverse of the pushing order here); so does fedlayer
    assert flower_queued == flower_pushed[::-1] and ours_queued == ours_pushed[::-1]


def test_another_link_state_is_served_by_flowers_own_loop(monkeypatch):
    calls = []
    monkeypatch.setattr(vce_api, "add_messages_to_queue", lambda *args: calls.append(args))
    with prompt_dispatch():
        vce_api.add_messages_to_queue("sqlite state", None, {}, threading.Event())
    assert calls == [("sqlite state", None, {}, calls[0][3])]


def test_a_stoppable_grid_polls_flowers_simulation_grid_more_often_than_others():
    _, grid, _ = link_state()
    assert StoppableGrid(grid, threading.Event()).poll == SIMULATION_POLL_S < POLL_S
    other = InProcessGrid(ProtocolClient(tiny_net, *digits()).app, 2, node_seed=0)
    assert StoppableGrid(other, threading.Event()).poll == POLL_S


@pytest.mark.parametrize("preset", [None, "15"])
def test_simulated_clients_run_at_the_runs_niceness_unless_ray_is_told_otherwise(monkeypatch, preset):
    if preset is None:
        monkeypatch.delenv("RAY_worker_niceness", raising=False)
    else:
        monkeypatch.setenv("RAY_worker_niceness", preset)
    with simulation._environment(simulation.CLIENT_ENV):
        assert os.environ["RAY_worker_niceness"] == (preset or "0")
    assert os.environ.get("RAY_worker_niceness") == preset


def test_a_cycle_drops_expired_messages_as_flowers_check_does_and_leaves_unknown_nodes_alone():
    state, grid, nodes = link_state()
    first, second, third = list(nodes)[:3]
    content = RecordDict({"config": ConfigRecord({"x": 1})})
    short = Message(content, first, MessageType.TRAIN, ttl=0.2)
    delivered = Message(content, second, MessageType.TRAIN, ttl=0.2)
    elsewhere = Message(content, third, MessageType.TRAIN)
    ids = list(grid.push_messages([short, delivered, elsewhere]))
    assert _dispatch_cycle(state, {second: 1}, sweep=False) == [delivered]  # only the nodes given
    assert delivered.metadata.delivered_at and not elsewhere.metadata.delivered_at
    time.sleep(0.3)  # both short-lived ones expire
    assert _dispatch_cycle(state, {first: 0}, sweep=False) == []
    assert set(state.message_ins_store) == set(ids[1:])  # the undelivered one is checked every cycle: gone
    _dispatch_cycle(state, {}, sweep=True)
    assert set(state.message_ins_store) == {ids[2]}  # a delivered one on a sweep
