"""Guarded: a round survives client faults, and a bad update is never averaged in.

It goes OUTERMOST, `Guarded(Observed(LayerSelective(FedAvg())))`, so that nothing behind it (the
barrier analysis, the averaging) ever sees a reply it would not accept. Per round and phase it
remembers which node was sent what, and sorts the replies into accepted ones and failures:

- "failed": the ClientApp raised (Flower turns the exception into an error reply), or the node died
  (a deployment's SuperLink answers for a node whose heartbeats stopped, about a minute after them);
- "timeout": a node was sent a message but sent no reply within the round's timeout;
- "rejected" (training replies only): an update with NaN or infinite values, or whose arrays do not
  match the model: other keys than expected (the keys the node was sent; with the config
  "personal-mode" = "client", exactly its "average-keys") or shapes / dtypes other than the model's
  (the global arrays of the first round configured).

Each failure is logged and reported to `on_failures(server_round, phase, failures)`, a list of
dict(client, node, status, reason), where client is the partition id (as str) when known, else
"node-<id>". Only accepted replies are passed on, sorted by partition. A training round with fewer
than `min_replies` accepted replies raises a RunError: the run stops after its last complete
round rather than averaging too few clients (or none).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedlayer import protocol
from fedlayer.errors import ConfigError, RunError, listed
from fedlayer.records import view
from strategies.sampling import SeededGrid, client_label, error_summary, split_replies
from strategies.wrapper import StrategyWrapper

OnFailures = Callable[[int, str, list[dict]], None]
_LISTED = 5  # failures named in the error that stops a run


@dataclass(frozen=True)
class Sent:
    """What one node was sent in a round: the array keys, and the keys its training reply must hold."""

    record: str | None  # name of the ArrayRecord sent (None: none)
    reply_keys: frozenset[str]


class Guarded(StrategyWrapper):
    """Accept only usable replies; record and log the others; stop when too few remain.

    Parameters
    ----------
    strategy : flwr.serverapp.strategy.Strategy
        The guarded strategy; it only ever sees accepted replies.
    min_replies : int, default 1
        The fewest accepted training replies a round needs (fedlayer: `federation.min_clients`);
        with fewer the run stops with a RunError after its last complete round.
    on_failures : callable, optional
        `on_failures(server_round, phase, failures)` with one dict(client, node, status, reason) per
        client that failed, timed out or was rejected.
    timeout : float, optional
        The round timeout given to `start`, quoted in timeout reasons.

    Raises
    ------
    ConfigError
        `min_replies` below 1.
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        min_replies: int = 1,
        on_failures: OnFailures | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(strategy)
        if min_replies < 1:
            raise ConfigError(f"min_replies must be at least 1, got {min_replies}")
        self.min_replies = min_replies
        self.on_failures = on_failures
        self.timeout = timeout
        self.model: dict[str, tuple[tuple[int, ...], str]] | None = None  # key -> (shape, dtype)
        self._sent: dict[str, dict[int, Sent]] = {}  # phase -> node -> what it was sent
        self._messages: dict[str, list[Message]] = {}  # phase -> the messages sent (their ids are set when pushed)
        self._partition_of: dict[int, int] = {}  # node -> partition (a replaced node's too), from a SeededGrid

    # ------------------------------------------------------------------ configure

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.model is None:
            self.model = {key: (tuple(a.shape), a.dtype) for key, a in arrays.items()}
        messages = list(super().configure_train(server_round, arrays, config, grid))
        return self._remember("train", messages, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        return self._remember("evaluate", messages, grid)

    def _remember(self, phase: str, messages: list[Message], grid: Grid) -> list[Message]:
        if isinstance(grid, SeededGrid):
            self._partition_of = dict(grid.partition_of)
        self._sent[phase] = {m.metadata.dst_node_id: _sent(m.content) for m in messages}
        self._messages[phase] = messages
        return messages

    # ------------------------------------------------------------------ aggregate

    def aggregate_train(
        self,
        server_round: int,
        replies: Iterable[Message],
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        sent = len(self._sent.get("train", {}))
        accepted, failures = self._screen(server_round, "train", replies)
        if len(accepted) < self.min_replies:
            why = "".join(f"; client {f['client']} {f['status']}: {f['reason']}" for f in failures[:_LISTED])
            raise RunError(
                f"round {server_round}: {len(accepted)} usable training replies from the {sent} clients sampled, "
                f"fewer than min_clients = {self.min_replies}; the run stops after round {server_round - 1}{why}"
            )
        return super().aggregate_train(server_round, accepted)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        accepted, _ = self._screen(server_round, "evaluate", replies)
        return super().aggregate_evaluate(server_round, accepted)

    def _screen(self, server_round: int, phase: str, replies: Iterable[Message]) -> tuple[list[Message], list[dict]]:
        """(accepted replies sorted by partition, failures sorted by client); failures are logged and reported."""
        valid, errors = split_replies(replies)
        sent = self._sent.pop(phase, {})
        # an error reply may come from the SuperLink (a node that stopped sending heartbeats): it names the node
        # only through the message it replies to
        dst = {m.metadata.message_id: m.metadata.dst_node_id for m in self._messages.pop(phase, [])}
        failed = {dst.get(m.metadata.reply_to_message_id, m.metadata.src_node_id): m for m in errors}
        failures = [self._failure(node, "failed", error_summary(m.error.reason or "")) for node, m in failed.items()]
        accepted = []
        for reply in valid:
            reason = self._problem(reply, sent.get(reply.metadata.src_node_id)) if phase == "train" else None
            if reason is None:
                accepted.append(reply)
            else:
                failures.append(self._failure(reply.metadata.src_node_id, "rejected", reason, client_label(reply)))
        replied = {m.metadata.src_node_id for m in valid} | failed.keys()
        within = f" within the round timeout of {self.timeout:g} s" if self.timeout is not None else ""
        failures += [self._failure(node, "timeout", f"no reply{within}") for node in sent if node not in replied]
        failures.sort(key=lambda f: protocol.client_order(f["client"]))
        for f in failures:
            log(WARNING, "round %d %s: client %s %s: %s", server_round, phase, f["client"], f["status"], f["reason"])
        if self.on_failures is not None and failures:
            self.on_failures(server_round, phase, failures)
        return accepted, failures

    def _failure(self, node: int, status: str, reason: str, client: str | None = None) -> dict:
        if client is None:
            client = protocol.client_label(self._partition_of.get(node), node)
        return {"client": client, "node": node, "status": status, "reason": reason}

    def _problem(self, reply: Message, sent: Sent | None) -> str | None:
        """Why a training reply cannot be averaged, or None when it can."""
        if sent is None:
            return "replied to no message of this round"
        records = reply.content.array_records
        if len(records) > 1 and sent.record not in records:
            return f"several ArrayRecords {sorted(records)} and none named {sent.record!r}"
        name = sent.record if sent.record in records else next(iter(records), None)
        arrays = records[name] if name is not None else ArrayRecord()
        keys = set(arrays.keys())
        problems = []
        if keys - sent.reply_keys:
            problems.append(f"unexpected keys {listed(sorted(keys - sent.reply_keys))}")
        if sent.reply_keys - keys:
            problems.append(f"missing keys {listed(sorted(sent.reply_keys - keys))}")
        model = self.model or {}
        shapes = [
            f"{k} {tuple(arrays[k].shape)} (model: {model[k][0]})"
            for k in sorted(keys & model.keys())
            if tuple(arrays[k].shape) != model[k][0]
        ]
        dtypes = [
            f"{k} {arrays[k].dtype} (model: {model[k][1]})"
            for k in sorted(keys & model.keys())
            if arrays[k].dtype != model[k][1]
        ]
        if shapes:
            problems.append(f"shape mismatch {listed(shapes)}")
        if dtypes:
            problems.append(f"dtype mismatch {listed(dtypes)}")
        if problems:
            return "; ".join(problems)
        not_finite = [k for k in sorted(keys) if not _finite(view(arrays[k]))]
        return f"non-finite values (NaN or inf) in {listed(not_finite)}" if not_finite else None


def _sent(content: RecordDict) -> Sent:
    names = list(content.array_records)
    name = protocol.ARRAYS if protocol.ARRAYS in names else (names[0] if names else None)
    keys = frozenset(content.array_records[name].keys()) if name is not None else frozenset()
    config = next(iter(content.config_records.values()), ConfigRecord())
    if config.get(protocol.PERSONAL_MODE) == "client":
        keys = frozenset(protocol.parse_average_keys(config.get(protocol.AVERAGE_KEYS)))
    return Sent(name, keys)


def _finite(values: np.ndarray) -> bool:
    return values.dtype.kind not in "fc" or bool(np.isfinite(values).all())
