"""What fedlayer changes in Flower's simulation runtime (`flwr.server.superlink.fleet.vce`), and why.

A cross-device round is many small messages: 50 sampled clients, each a few steps of training and an
evaluation. What Flower's runtime spends per message, not the clients' arithmetic, then decides how long
a round takes. Two changes, each a context manager that `fedlayer.simulation.simulate` holds for the run:

- `prompt_dispatch`: the messages reach the clients' queue in one pass over the link state every
  `DISPATCH_POLL_S`, not one scan of it per node every 0.1 s;
- `pipelined_actors`: each client actor holds `MESSAGES_PER_ACTOR` messages at a time, so that it starts
  the next as soon as it has sent its reply.

Both keep Flower's semantics: the same messages, handed out in the same order, to the same ClientApp. They
rely on Flower's internals, which is why `flwr` is pinned below 1.43 (pyproject.toml).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flwr.app import Message
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

DISPATCH_POLL_S = 0.01  # how often the simulation runtime looks for new messages to its clients (Flower: 0.1 s)
SWEEP_S = 0.1  # how often it checks the messages already delivered for expiry (Flower: every cycle of 0.1 s)
MESSAGES_PER_ACTOR = 2  # messages a client actor holds at a time (Flower: 1)


@contextlib.contextmanager
def prompt_dispatch() -> Iterator[None]:
    """Flower's simulation runtime, handing its messages to the clients as Flower does, at a fraction of the cost.

    Flower's runtime (`flwr.server.superlink.fleet.vce.vce_api.run_api`) has a thread that, every 0.1 s, asks its
    link state for the next message of every node in turn (`get_message_ins(node, limit=1)`), and each such
    question checks every message in the state (`_check_stored_messages`: a lock and a clock reading each) until
    it finds the node's. With 1,000 nodes and a round's 50 messages in flight that is 50,000 checks a cycle, a
    quarter of a second of CPU on an idle core: the thread never rests while clients train, and takes a core
    (and the GIL) from them; the 1,000 queries that find the partitions at the start take minutes. Here the
    thread makes one pass over the messages a cycle (`_dispatch_cycle`), hands out the same messages in the
    same order, and looks every `DISPATCH_POLL_S` seconds. A link state other than Flower's in-memory one is
    served by Flower's own loop.
    """
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

    original = vce_api.add_messages_to_queue

    def add_messages_to_queue(state, queue, nodes_mapping, f_stop: threading.Event) -> None:
        if not isinstance(state, InMemoryLinkState):
            original(state, queue, nodes_mapping, f_stop)
            return
        swept = 0.0
        while not f_stop.is_set():
            sweep = time.monotonic() - swept >= SWEEP_S
            swept = time.monotonic() if sweep else swept
            for message in _dispatch_cycle(state, nodes_mapping, sweep=sweep):
                queue.put(message)
            f_stop.wait(DISPATCH_POLL_S)

    vce_api.add_messages_to_queue = add_messages_to_queue
    try:
        yield
    finally:
        vce_api.add_messages_to_queue = original


def _dispatch_cycle(state: InMemoryLinkState, nodes: Mapping[int, int], *, sweep: bool) -> list[Message]:
    """One cycle of Flower's `add_messages_to_queue`: for each node of `nodes` in order, its first undelivered
    message (in the state's order) that passes Flower's check (`_check_stored_messages` deletes an expired
    one), marked delivered. Flower checks every message it passes on its way; here an undelivered message is
    checked every cycle, a delivered one (which only its expiry can remove) on a `sweep` (every `SWEEP_S`)."""
    from flwr.supercore.date import now

    first: dict[int, Message] = {}
    with state.lock:
        for message_id, message in list(state.message_ins_store.items()):
            metadata = message.metadata
            if metadata.delivered_at and not sweep:
                continue
            state._check_stored_messages({message_id})
            if metadata.delivered_at or message_id not in state.message_ins_store:
                continue
            if metadata.dst_node_id in nodes and metadata.dst_node_id not in first:
                first[metadata.dst_node_id] = message
        if first:
            delivered_at = now().isoformat()
            for message in first.values():
                message.metadata.delivered_at = delivered_at
    return [first[node] for node in nodes if node in first] if first else []


@contextlib.contextmanager
def pipelined_actors(depth: int = MESSAGES_PER_ACTOR) -> Iterator[None]:
    """Each of the Ray backend's client actors holds `depth` messages at a time instead of one.

    Flower's Ray backend runs one worker thread per actor. A thread takes a message, hands it to an idle
    actor, waits for the reply, and only then can the actor get its next message: between two messages
    it waits for its reply to reach the driver and the next message to reach it, 10-20 ms on two cores,
    as long as a cross-device client's evaluation. Ray runs an actor's tasks one after another, in the
    order they were submitted, so a message submitted while the actor works on another starts as soon as
    that one's reply is out. Here the pool lists each actor `depth` times and the backend runs a worker
    thread per entry; the actors, their number and what each message does are unchanged.
    """
    from flwr.simulation.ray_transport.ray_actor import BasicActorPool

    add, terminate = BasicActorPool.add_actors_to_pool, BasicActorPool.terminate_all_actors

    def add_actors_to_pool(self: BasicActorPool, num_actors: int) -> None:
        before = len(self.pool)
        add(self, num_actors)
        added = self.pool[before:]
        self.pool.extend(added * (depth - 1))
        self.num_actors += len(added) * (depth - 1)  # the backend's number of worker threads

    def terminate_all_actors(self: BasicActorPool) -> None:
        self.pool = list(dict.fromkeys(self.pool))  # each actor once
        terminate(self)

    BasicActorPool.add_actors_to_pool = add_actors_to_pool  # type: ignore[method-assign]
    BasicActorPool.terminate_all_actors = terminate_all_actors  # type: ignore[method-assign]
    try:
        yield
    finally:
        BasicActorPool.add_actors_to_pool = add  # type: ignore[method-assign]
        BasicActorPool.terminate_all_actors = terminate  # type: ignore[method-assign]
