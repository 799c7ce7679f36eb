"""Observed: hand every round's client replies to callbacks, for ANY strategy, without changing it.

The server app uses it for per-round barrier analysis, per-client metrics and the communication of
each client. It goes inside `Guarded` and around the rest, `Guarded(Observed(LayerSelective(FedAvg(),
...)))`, so it sees the training messages exactly as they are sent and the replies exactly as clients
sent them (the accepted ones).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedlayer import protocol
from fedlayer.errors import RunError
from strategies.sampling import split_replies
from strategies.wrapper import StrategyWrapper

OnTrain = Callable[[int, list[Message], ArrayRecord], None]
OnEvaluate = Callable[[int, list[Message]], None]


@dataclass(frozen=True)
class Traffic:
    """The model-array bytes of one client's training round, counted from the messages themselves.

    An array counts its raw bytes, elements x item size, read from the Array's shape and dtype (what
    `Array.numpy().nbytes` gives, without decoding it); Flower's per-array serialisation header and the
    message framing are left out. Every ArrayRecord of a message counts. A key counts as averaged when
    the training message names it in its `protocol.AVERAGE_KEYS` config value (every key when the message
    names none, as with a stock Flower strategy); the reply is split by the keys of the message it
    answers. The field names are the column names of metrics.parquet and comparison.parquet.

    Attributes
    ----------
    bytes_down, bytes_up : int
        The averaged layers sent to the client and received from it: the communication layer-wise
        averaging needs.
    bytes_personal_down, bytes_personal_up : int
        The other layers: with personal="server" each client's personal layers travel both ways only
        because the server keeps them; with personal="client" only a client's first message carries
        them (the initial values of its personal layers).
    """

    bytes_down: int = 0
    bytes_up: int = 0
    bytes_personal_down: int = 0
    bytes_personal_up: int = 0


TRAFFIC_COLUMNS = tuple(field.name for field in fields(Traffic))
BYTES_DOWN, BYTES_UP = TRAFFIC_COLUMNS[:2]  # the averaged layers: the communication the summary counts
OnTraffic = Callable[[int, dict[int, Traffic]], None]


def averaged_keys(content: RecordDict) -> set[str] | None:
    """The keys a message says are averaged (`protocol.AVERAGE_KEYS` in any of its ConfigRecords), or
    None when it does not say (then every key is)."""
    for record in content.config_records.values():
        if protocol.AVERAGE_KEYS in record:
            return protocol.parse_average_keys(record[protocol.AVERAGE_KEYS])
    return None


def split_bytes(content: RecordDict, averaged: set[str] | None) -> tuple[int, int]:
    """(bytes of the averaged keys, bytes of the others) over every ArrayRecord of a message's content."""
    shared = other = 0
    for record in content.array_records.values():
        for key, array in record.items():
            size = math.prod(array.shape) * np.dtype(array.dtype).itemsize
            if averaged is None or key in averaged:
                shared += size
            else:
                other += size
    return shared, other


class Observed(StrategyWrapper):
    """Calls `on_traffic(server_round, traffic)` and `on_train(server_round, replies, global_arrays)`
    before the train aggregation, and `on_evaluate(server_round, replies)` before the evaluate
    aggregation.

    `replies` are the valid replies sorted by partition id (errored ones are left out);
    `global_arrays` is the global model this round's training started from. The wrapped strategy
    then aggregates the same replies in that order, errored ones last. `traffic` maps the node id of
    every client sent a training message this round to its `Traffic`; a client without a valid reply
    has uploaded nothing that counts.

    Parameters
    ----------
    strategy : flwr.serverapp.strategy.Strategy
        The observed strategy; it aggregates as it would unobserved.
    on_train : callable, optional
        `on_train(server_round, replies, global_arrays)`, before each train aggregation.
    on_evaluate : callable, optional
        `on_evaluate(server_round, replies)`, before each evaluate aggregation.
    on_traffic : callable, optional
        `on_traffic(server_round, traffic)`, before each train aggregation (before `on_train`).
    """

    def __init__(
        self,
        strategy: Strategy,
        on_train: OnTrain | None = None,
        on_evaluate: OnEvaluate | None = None,
        *,
        on_traffic: OnTraffic | None = None,
    ) -> None:
        super().__init__(strategy)
        self.on_train = on_train
        self.on_evaluate = on_evaluate
        self.on_traffic = on_traffic
        self.global_arrays: ArrayRecord | None = None
        self._sent: dict[int, tuple[set[str] | None, Traffic]] = {}  # node -> (its averaged keys, bytes sent)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.global_arrays = arrays
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if self.on_traffic is not None:
            self._sent = {m.metadata.dst_node_id: _sent_traffic(m.content) for m in messages}
        return messages

    def aggregate_train(
        self,
        server_round: int,
        replies: Iterable[Message],
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, errors = split_replies(replies)
        if self.on_traffic is not None:
            self.on_traffic(server_round, _round_traffic(self._sent, valid))
        if self.on_train is not None:
            if self.global_arrays is None:
                raise RunError("aggregate_train was called before configure_train")
            self.on_train(server_round, valid, self.global_arrays)
        return super().aggregate_train(server_round, valid + errors)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        valid, errors = split_replies(replies)
        if self.on_evaluate is not None:
            self.on_evaluate(server_round, valid)
        return super().aggregate_evaluate(server_round, valid + errors)


def _sent_traffic(content: RecordDict) -> tuple[set[str] | None, Traffic]:
    averaged = averaged_keys(content)
    down, personal_down = split_bytes(content, averaged)
    return averaged, Traffic(bytes_down=down, bytes_personal_down=personal_down)


def _round_traffic(sent: Mapping[int, tuple[set[str] | None, Traffic]], replies: list[Message]) -> dict[int, Traffic]:
    """Per node sent a training message: its bytes down, and up from its reply (split by the keys it was sent)."""
    traffic = {node: down for node, (_, down) in sent.items()}
    for reply in replies:
        node = reply.metadata.src_node_id
        averaged, down = sent.get(node, (None, Traffic()))
        up, personal_up = split_bytes(reply.content, averaged)
        traffic[node] = Traffic(down.bytes_down, up, down.bytes_personal_down, personal_up)
    return traffic
