"""Which clients take part in a round, and in which order their replies are summed.

Flower's node ids are random per run and its strategies sample them with `random.sample`, so
neither the sampled partitions nor the reply order is reproducible. Here clients are named by
partition id: a client puts `ConfigRecord({PARTITION_ID: pid})` under the reply record `CLIENT`
(`fedlayer.protocol`; fedlayer's ClientApp does, for train, evaluate and query messages);
`query_partitions` maps node ids to partitions once; `SeededGrid` samples partitions from the seed
and the round; `split_replies` sorts replies by partition before anything is summed.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterable, Mapping
from typing import cast

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedlayer import protocol
from fedlayer.errors import ConfigError, RunError, choices_message
from strategies.grid import GridWrapper

PHASES = ("train", "evaluate")


def partition_of(reply: Message) -> int | None:
    """The partition id a reply names under its `CLIENT` ConfigRecord, or None."""
    record = reply.content.config_records.get(protocol.CLIENT)
    if record is None or protocol.PARTITION_ID not in record:
        return None
    return int(cast(int, record[protocol.PARTITION_ID]))


def client_label(reply: Message) -> str:
    """A stable name for the client of a reply: its partition id, else "node-<node id>"."""
    return protocol.client_label(partition_of(reply), reply.metadata.src_node_id)


def split_replies(replies: Iterable[Message]) -> tuple[list[Message], list[Message]]:
    """(valid replies sorted by partition, errored replies), reading `replies` once."""
    replies = list(replies)
    valid = sorted((m for m in replies if not m.has_error()), key=lambda m: protocol.client_order(client_label(m)))
    return valid, [m for m in replies if m.has_error()]


def clients_per_round(num_clients: int, fraction: float) -> int:
    """Clients per round: floor(fraction * clients), at least one."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"bad client fraction {fraction!r}: must be in (0, 1]")
    return max(1, math.floor(num_clients * fraction + 1e-9))


class SeededGrid(GridWrapper):
    """A Grid whose `get_node_ids()` is the seeded sample of clients for the current round.

    The sample is `random.Random(f"{seed}-{round}").sample(sorted partition ids, k)` with
    k = `clients_per_round(clients, fraction)`: the same partitions for the same seed, whatever the node
    ids. Evaluation uses the training sample unless `fraction_evaluate` is given (then its own draw,
    seeded with f"{seed}-{round}-evaluate"). Everything else is the wrapped grid's.

    The round is set with `set_round(round, phase)`; fedlayer's strategy wrappers do that in their
    `configure_train`/`configure_evaluate`, so `Observed(...)`/`LayerSelective(...).start(grid=...)`
    needs nothing more. Configure the wrapped Flower strategy to take every node it is offered, so
    that its own `random.sample` only permutes this sample (the order does not matter: replies are
    sorted): FedAvg with `fraction_train=fraction_evaluate=1.0` and `min_train_nodes`,
    `min_evaluate_nodes`, `min_available_nodes` no larger than `sample_size("train")` and
    `sample_size("evaluate")` (FedAvg waits for `min_available_nodes` among the nodes offered).

    Parameters
    ----------
    grid : flwr.serverapp.Grid
        The grid of the run (simulation or deployment).
    seed : int
        The run's seed.
    fraction : float
        The fraction of clients sampled per round, in (0, 1].
    partition_of : mapping of int to int
        Node id -> partition id of every connected client (`query_partitions`).
    fraction_evaluate : float, optional
        A separate fraction for evaluation rounds; by default they use the training sample.

    Raises
    ------
    ConfigError
        A fraction outside (0, 1].
    RunError
        Two nodes claiming one partition, or sampling before `set_round`.
    """

    def __init__(
        self,
        grid: Grid,
        seed: int,
        fraction: float,
        partition_of: Mapping[int, int],
        *,
        fraction_evaluate: float | None = None,
    ) -> None:
        super().__init__(grid)
        self.seed = seed
        self.fraction = fraction
        self.fraction_evaluate = fraction_evaluate
        self.node_of = {int(pid): int(node) for node, pid in partition_of.items()}
        if len(self.node_of) != len(partition_of):
            raise RunError(f"two nodes claim the same partition id: {dict(partition_of)}")
        clients_per_round(len(self.node_of), fraction)  # validates the fractions now, not in round 1
        if fraction_evaluate is not None:
            clients_per_round(len(self.node_of), fraction_evaluate)
        self.server_round = 0
        self.phase = "train"

    def set_round(self, server_round: int, phase: str = "train") -> None:
        """Make `get_node_ids()` return the sample of this round and phase."""
        if phase not in PHASES:
            raise ConfigError(choices_message("phase", phase, PHASES))
        self.server_round, self.phase = server_round, phase

    def sample_size(self, phase: str = "train") -> int:
        fraction = self.fraction_evaluate if phase == "evaluate" and self.fraction_evaluate else self.fraction
        return clients_per_round(len(self.node_of), fraction)

    def sample(self, server_round: int, phase: str = "train") -> list[int]:
        """The sorted partition ids sampled for a round and phase."""
        key = f"{self.seed}-{server_round}"
        if phase == "evaluate" and self.fraction_evaluate is not None:
            key += "-evaluate"
        return sorted(random.Random(key).sample(sorted(self.node_of), self.sample_size(phase)))

    def get_node_ids(self) -> list[int]:
        if self.server_round < 1:
            raise RunError(
                "SeededGrid has no round yet: call set_round(round, phase) before sampling "
                "(fedlayer's strategy wrappers do it in configure_train/configure_evaluate)"
            )
        return [self.node_of[pid] for pid in self.sample(self.server_round, self.phase)]


def query_partitions(grid: Grid, expected: int, *, timeout: float = 120.0, poll: float = 0.5) -> dict[int, int]:
    """{node id: partition id} of all connected clients, asked once with a QUERY message.

    Waits until `expected` nodes are connected (simulated nodes register while the ServerApp starts).
    Each client must reply with `ConfigRecord({PARTITION_ID: pid})` under the record `CLIENT` (`fedlayer.protocol`).
    """
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < expected:
        if time.monotonic() > deadline:
            raise RunError(f"only {len(nodes)} of {expected} clients connected within {timeout:g} s")
        time.sleep(poll)
    messages = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in nodes]
    valid, errors = split_replies(grid.send_and_receive(messages, timeout=timeout))
    if errors or len(valid) != len(nodes):
        reasons = "; ".join(f"node {m.metadata.src_node_id}: {m.error.reason}" for m in errors)
        raise RunError(f"{len(valid)} of {len(nodes)} clients answered the partition query. {reasons}")
    claimed = {m.metadata.src_node_id: partition_of(m) for m in valid}
    mapping = {node: pid for node, pid in claimed.items() if pid is not None}
    unnamed = sorted(node for node in claimed if node not in mapping)
    if unnamed:
        raise RunError(
            f"nodes {unnamed} did not name their partition: a client must answer a query "
            f"message with ConfigRecord({{'{protocol.PARTITION_ID}': pid}}) under '{protocol.CLIENT}'"
        )
    if len(set(mapping.values())) != len(mapping):
        raise RunError(f"two clients claim the same partition id: {mapping}")
    return mapping
