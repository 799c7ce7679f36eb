"""Which clients take part in a round, and in which order their replies are summed.

Flower's node ids are random per run and its strategies sample them with `random.sample`, so
neither the sampled partitions nor the reply order is reproducible. Here clients are named by
partition id: a client puts `ConfigRecord({PARTITION_ID: pid})` under the reply record `CLIENT`
(`fedlayer.protocol`; fedlayer's ClientApp does, for train, evaluate and query messages);
`query_partitions` maps node ids to partitions at the start of a run; `SeededGrid` samples partitions
from the seed and the round, and maps a partition to whichever node serves it now (a restarted
SuperNode comes back under a new node id); `split_replies` sorts replies by partition before
anything is summed.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Iterable, Mapping
from logging import INFO, WARNING
from typing import cast

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.superlink.grid import InMemoryGrid

from fedlayer import protocol
from fedlayer.errors import ConfigError, RunError, choices_message, listed
from strategies.grid import GridWrapper

PHASES = ("train", "evaluate")
FIRST_NOTE_S, NOTE_EVERY_S = 5.0, 30.0  # a server waiting for its clients says how many it has, then again
SIMULATION_SETTLE_S = 5.0  # a simulation registers all its nodes at once: this long without a new one, none comes
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*: \S.*$", re.MULTILINE)  # "RuntimeError: out of memory"


def partition_of(reply: Message) -> int | None:
    """The partition id a reply names under its `CLIENT` ConfigRecord, or None."""
    record = reply.content.get(protocol.CLIENT)  # not `.config_records`: Flower builds that dict anew each time
    if not isinstance(record, ConfigRecord) or protocol.PARTITION_ID not in record:
        return None
    return int(cast(int, record[protocol.PARTITION_ID]))


def client_label(reply: Message) -> str:
    """A stable name for the client of a reply: its partition id, else "node-<node id>"."""
    return protocol.client_label(partition_of(reply), reply.metadata.src_node_id)


def error_summary(reason: str) -> str:
    """The root cause of a client's error: "RuntimeError: out of memory", not Ray's whole traceback.

    Ray's error reasons carry chained tracebacks with process ids (different in every run); the
    first "Type: message" line of the chain is the exception the ClientApp raised.
    """
    found = _EXCEPTION_LINE.search(reason)
    return found.group(0).strip() if found else reason.strip()


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

    Nodes come and go in a deployment: a SuperNode that dies stays in the sample (its messages fail or
    time out, and the strategy records that), and one that restarts connects under a new node id.
    So whenever the round or phase changes, nodes the grid lists that were never seen are asked
    for their partition (`ask_partitions`, waiting at most `query_timeout` seconds); one that names
    a partition of this run serves it from then on (`node_of`), one that cannot serve a partition
    of this run is logged and left out. A node that does not answer is asked again next time.

    Parameters
    ----------
    grid : flwr.serverapp.Grid
        The grid of the run (simulation or deployment).
    seed : int
        The run's seed.
    fraction : float
        The fraction of clients sampled per round, in (0, 1].
    partition_of : mapping of int to int
        Node id -> partition id of every client at the start (`query_partitions`): the partitions
        of the run.
    fraction_evaluate : float, optional
        A separate fraction for evaluation rounds; by default they use the training sample.
    query_timeout : float, default 120
        How long a new node may take to name its partition.

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
        query_timeout: float = 120.0,
    ) -> None:
        super().__init__(grid)
        self.seed = seed
        self.fraction = fraction
        self.fraction_evaluate = fraction_evaluate
        self.query_timeout = query_timeout
        self.node_of = {int(pid): int(node) for node, pid in partition_of.items()}  # partition -> its node now
        if len(self.node_of) != len(partition_of):
            raise RunError(f"two nodes claim the same partition id: {dict(partition_of)}")
        # every node ever seen -> its partition: a replaced node keeps its entry, so its late failures are named
        self.partition_of = {node: pid for pid, node in self.node_of.items()}
        self.left_out: set[int] = set()  # nodes that cannot serve a partition of this run
        clients_per_round(len(self.node_of), fraction)  # validates the fractions now, not in round 1
        if fraction_evaluate is not None:
            clients_per_round(len(self.node_of), fraction_evaluate)
        self.server_round = 0
        self.phase = "train"

    def set_round(self, server_round: int, phase: str = "train") -> None:
        """Make `get_node_ids()` return the sample of this round and phase (first mapping new nodes)."""
        if phase not in PHASES:
            raise ConfigError(choices_message("phase", phase, PHASES))
        if (server_round, phase) != (self.server_round, self.phase):
            self.server_round, self.phase = server_round, phase
            self.map_new_nodes()

    def map_new_nodes(self) -> None:
        """Ask the nodes never seen before for their partition; those serving one of the run take it over."""
        online = {int(node) for node in self.grid.get_node_ids()}
        new = sorted(online - self.partition_of.keys() - self.left_out)
        if not new:
            return
        found, problems = ask_partitions(self.grid, new, timeout=self.query_timeout)
        for node, problem in sorted(problems.items()):
            log(WARNING, "node %d %s; it is left out of this run", node, problem)
            self.left_out.add(node)
        for node, pid in sorted(found.items()):
            if pid not in self.node_of:
                log(
                    WARNING,
                    "node %d is left out of this run: it holds partition %d, and this run's partitions are %s",
                    node,
                    pid,
                    _span(sorted(self.node_of)),
                )
                self.left_out.add(node)
                continue
            old = self.node_of[pid]
            self.node_of[pid], self.partition_of[node] = node, pid
            if old in online:
                log(
                    WARNING,
                    "two connected nodes hold partition %d: %d and %d; the newer one, %d, serves it from now on",
                    pid,
                    old,
                    node,
                    node,
                )
            else:
                log(INFO, "partition %d rejoined on node %d (was node %d)", pid, node, old)

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


def ask_partitions(grid: Grid, nodes: Iterable[int], *, timeout: float) -> tuple[dict[int, int], dict[int, str]]:
    """Ask `nodes` for their partition with one QUERY message each, waiting at most `timeout` seconds.

    Returns ({node: partition} of the nodes that named one, {node: what went wrong} of those that
    answered with an error or without naming one, as in "node 7 <what went wrong>"); a node that
    did not answer in time is in neither.
    """
    messages = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in nodes]
    valid, errors = split_replies(grid.send_and_receive(messages, timeout=timeout))
    problems = {m.metadata.src_node_id: f"failed: {error_summary(m.error.reason or '')}" for m in errors}
    found = {}
    for reply in valid:
        pid = partition_of(reply)
        if pid is None:
            problems[reply.metadata.src_node_id] = (
                f"did not name their partition: a client answers a query message with "
                f"ConfigRecord({{'{protocol.PARTITION_ID}': pid}}) under '{protocol.CLIENT}'"
            )
        else:
            found[reply.metadata.src_node_id] = pid
    return found, problems


def query_partitions(grid: Grid, expected: int, *, timeout: float = 120.0, poll: float = 0.5) -> dict[int, int]:
    """{node id: partition id} of the `expected` clients of a run (`federation.clients`), found at its start.

    Waits until `expected` nodes are connected, logging how many are while it waits, then asks each
    for its partition (`ask_partitions`). Each client must name one partition of 0..expected-1, and
    each partition must be named once.

    Raises
    ------
    RunError
        A number of nodes the run cannot serve, naming both numbers and how to fix it: fewer than
        `expected` after `timeout` seconds (in a simulation, whose nodes all register at once, as
        soon as no more come), or more; or a client that failed, did not name its partition, named
        one outside 0..expected-1, or the same as another.
    """
    nodes = _wait_for_nodes(grid, expected, timeout=timeout, poll=poll)
    mapping, problems = ask_partitions(grid, nodes, timeout=timeout)
    silent = [node for node in nodes if node not in mapping and node not in problems]
    problems.update({node: f"did not answer within {timeout:g} s" for node in silent})
    if problems:
        reasons = "; ".join(f"node {node} {why}" for node, why in sorted(problems.items()))
        raise RunError(f"{len(mapping)} of {len(nodes)} clients named their partition: {reasons}")
    outside = {node: pid for node, pid in mapping.items() if not 0 <= pid < expected}
    if outside:
        named = ", ".join(f"node {node} holds partition {pid}" for node, pid in sorted(outside.items()))
        raise RunError(
            f"{named}, but federation.clients = {expected} has partitions {_span(range(expected))}: "
            f"{_fix(expected, len(nodes))}"
        )
    owners: dict[int, list[int]] = {}
    for node, pid in sorted(mapping.items()):
        owners.setdefault(pid, []).append(node)
    shared = "; ".join(f"partition {pid}: nodes {listed(n)}" for pid, n in sorted(owners.items()) if len(n) > 1)
    if shared:
        raise RunError(f"two clients claim the same partition id ({shared}); give each partition to one SuperNode")
    return mapping


def _wait_for_nodes(grid: Grid, expected: int, *, timeout: float, poll: float) -> list[int]:
    """The sorted node ids once `expected` are connected; a RunError naming both numbers when that cannot be."""
    started = time.monotonic()
    simulation = is_simulation_grid(grid)
    count, changed, next_note = -1, started, started + FIRST_NOTE_S
    while True:
        nodes = sorted(grid.get_node_ids())
        now = time.monotonic()
        if len(nodes) > expected:
            raise RunError(
                f"{len(nodes)} clients connected, but federation.clients = {expected}: {_fix(expected, len(nodes))}"
            )
        if len(nodes) == expected:
            return nodes
        if len(nodes) != count:
            count, changed = len(nodes), now
        if now >= next_note:
            log(INFO, "waiting for clients: %d of %d connected (federation.clients = %d)", count, expected, expected)
            next_note = now + NOTE_EVERY_S
        settled = simulation and count > 0 and now - changed >= SIMULATION_SETTLE_S
        if settled or now - started > timeout:
            within = "" if settled else f" within {timeout:g} s"
            raise RunError(
                f"only {count} of {expected} clients connected{within} (federation.clients = {expected}): "
                f"{_fix(expected, count)}"
            )
        time.sleep(poll)


def _fix(expected: int, connected: int) -> str:
    """How to make `connected` SuperNodes and federation.clients = `expected` agree."""
    return (
        f"run one SuperNode per partition, started with --node-config 'partition-id=K num-partitions={expected}' "
        f"for K = {_span(range(expected))} (in a simulation: --federation-config 'num-supernodes={expected}'), "
        f"or set federation.clients = {connected}"
    )


def _span(values: Iterable[int]) -> str:
    """ "0..9" for a range of integers, else the listed values."""
    values = sorted(values)
    if values and values == list(range(values[0], values[-1] + 1)) and len(values) > 2:
        return f"{values[0]}..{values[-1]}"
    return listed(values) if values else "none"


def is_simulation_grid(grid: Grid) -> bool:
    """Whether `grid` (under fedlayer's wrappers) is Flower's simulation grid: nodes registered all at once,
    clients run by Ray in this process."""
    while isinstance(grid, GridWrapper):
        grid = grid.grid
    return isinstance(grid, InMemoryGrid)
