"""LayerSelective: make ANY Flower strategy average only selected layers; the rest stay personal.

The wrapped strategy (FedAvg, FedAdam, FedProx, a user's own) aggregates the selected layers by its
own rule and only ever sees them: it is configured with the global arrays restricted to those keys
and aggregates replies restricted to them, so stateful strategies (FedAdam's pseudo-gradients) work
unchanged. Its sampling, config and metric aggregation are its own. Every other layer is personal to
each client and is never overwritten by anyone else's.

Who keeps the personal layers (`personal`):
- "server" (default) works with ANY ClientApp that strictly loads the arrays it receives and replies
  with its trained arrays (Flower's quickstart client, unchanged). The server keeps each client's
  personal layers in `personal_state`, keyed by the client's name as in the tables (its partition
  id as a string, "node-<id>" for a client that does not name its partition): a SuperNode that
  restarts under a new node id gets its own personal layers back. It sends every client the
  averaged layers plus its own personal ones (on first contact: the initial values), in train AND
  evaluate messages. Clients must reply with their full model.
- "client": personal layers never leave a client after its first contact. A client the server has
  not yet heard from in a train reply gets the full model (to initialise its personal layers); after
  that it gets only the averaged layers and replies with only those. This is tracked per node id: a
  restarted SuperNode has lost its memory, and its new node id gets the full model again. The server then never sees
  personal layers, and neither does anything that observes the replies (per-round barrier analysis
  can only look at the averaged layers).

Config keys added to every train and evaluate ConfigRecord (the client protocol, `fedlayer.protocol`):
  `PERSONAL_MODE` ("server" | "client"); `AVERAGE_KEYS` (comma-joined state_dict keys averaged this
  round); and, in train messages, `TRAIN_MODE` ("standard" | "fedrep" | "fedbabu").

The arrays `aggregate_train` returns (the new global model) are the wrapped strategy's averaged
layers plus, for the personal keys: with personal="server" the sample-weighted mean of this round's
clients' personal layers (a REFERENCE model for global evaluation only, never sent to anyone as
personal layers); with personal="client" the previous global's values. Integer buffers
(num_batches_tracked) keep their dtype (rounded), unlike Flower's own averaging.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from logging import INFO, WARNING
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import (
    aggregate_arrayrecords,
    aggregate_metricrecords,
    validate_message_reply_consistency,
)
from torch import nn

from fedlayer import protocol
from fedlayer.errors import ConfigError, RunError, choices_message, listed
from fedlayer.layers import LAYER_UNITS, Layer, keys_of, model_layers, select_layers
from fedlayer.records import DecodedArray, plain, values
from strategies.sampling import SeededGrid, client_label, split_replies
from strategies.wrapper import StrategyWrapper

if TYPE_CHECKING:
    from strategies.presets import Preset

LayerSource = ArrayRecord | Mapping[str, Any] | nn.Module | Sequence[Layer]


def layers_of(source: LayerSource, unit: str = "module") -> list[Layer]:
    """Layers at a layer unit (`fedlayer.layers.LAYER_UNITS`) from a model (finds tied weights), a state dict /
    ArrayRecord (by key), or a Layer list (which must be of that unit)."""
    if isinstance(source, ArrayRecord):
        return model_layers(source.to_torch_state_dict(), unit)
    if isinstance(source, nn.Module):
        return model_layers(source, unit)
    if isinstance(source, Mapping):
        return model_layers({k: torch.as_tensor(v) for k, v in source.items()}, unit)
    layers = list(source)
    if not layers or not all(isinstance(layer, Layer) for layer in layers):
        raise ConfigError(
            f"cannot find layers in a {type(source).__name__}: pass a model, a state dict, "
            "an ArrayRecord or a list of fedlayer.layers.Layer"
        )
    other = sorted({layer.unit for layer in layers} - {unit})
    if other:
        raise ConfigError(
            f"the layers given are of layer unit {listed(other)}, not {unit!r}: build them with "
            f"fedlayer.layers.model_layers(model, {unit!r}), or pass the model"
        )
    return layers


def cast_like(array: Array, like: Array) -> Array:
    """`array` with the dtype of `like`; integers (num_batches_tracked) are rounded, not truncated."""
    if array.dtype == like.dtype:
        return plain(array)
    decoded, dtype = values(array), np.dtype(like.dtype)
    if dtype.kind in "iub":
        decoded = np.rint(decoded)
    return Array(np.asarray(decoded, dtype=dtype))  # np.asarray keeps 0-d arrays 0-d


def subset(record: ArrayRecord, keys: Iterable[str], *, decoded: bool = False) -> ArrayRecord:
    """A new ArrayRecord holding (not copying) the given keys of `record`, in that order; with `decoded`, as
    `fedlayer.records.DecodedArray`s (the same bytes; `numpy()` gives what Flower's gives, faster)."""
    out = ArrayRecord()
    for key in keys:
        out[key] = DecodedArray.of(record[key]) if decoded else record[key]
    return out


def with_record(message: Message, name: str, record: ArrayRecord) -> Message:
    """A copy of a reply whose record `name` is replaced (same metadata; the original is untouched)."""
    content = RecordDict({k: (record if k == name else v) for k, v in message.content.items()})
    return Message(content, metadata=copy.copy(message.metadata))  # type: ignore[call-overload]  # Flower's own form


@dataclass
class SelectiveState:
    """What LayerSelective carries from one round to the next, keyed by partition id, not node id
    (node ids change between runs): the keys averaged last, each key's last shared value, and each
    client's personal layers (personal="server")."""

    average_keys: list[str]
    shared: ArrayRecord
    personal: dict[int, ArrayRecord]


class LayerSelective(StrategyWrapper):
    """Average only the layers picked by `average` with the wrapped `strategy`; keep the rest personal.

    Partial averaging of this kind is what FedPer (Arivazhagan et al., 2019,
    https://arxiv.org/abs/1912.00818), LG-FedAvg (Liang et al., 2020, https://arxiv.org/abs/2001.01523),
    FedBN (Li et al., 2021, https://arxiv.org/abs/2102.07623) and FedRep (Collins et al., 2021,
    https://arxiv.org/abs/2102.07078) do with fixed layer sets; the question which layers can be
    averaged at all is the one of Adilova et al., ICLR 2024 (https://arxiv.org/abs/2307.06966).

    Parameters
    ----------
    strategy : flwr.serverapp.strategy.Strategy
        The Flower strategy (Message API) that aggregates the averaged layers, by its own rule.
    average : str or sequence of str
        A layer selector (`fedlayer.layers.select_layers` grammar, e.g. "body", "all,-norm",
        "conv*"): the layers averaged; every other layer stays personal to each client.
    layer_unit : {"module", "tensor"}, default "module"
        What one layer is for the selector (`fedlayer.layers.LAYER_UNITS`): a module with all its
        tensors, or one weight tensor with its bias, so that "tensor" can average an nn.LSTM's
        input weights and keep its recurrent ones personal.
    layers : nn.Module, state dict, ArrayRecord or list of Layer, optional
        What the selector is resolved against now (a model also finds tied weights). When None,
        it is resolved against the first global arrays seen; call `resolve(model)` to check early.
    personal : {"server", "client"}, default "server"
        Who keeps the personal layers: the server, per partition (works with any ClientApp that
        loads what it receives and replies with its full model), or the clients themselves.
    train_mode : {"standard", "fedrep", "fedbabu"}, default "standard"
        Sent to clients as `fedlayer.protocol.TRAIN_MODE`: how they train locally.
    preset : strategies.presets.Preset, optional
        The named scheme this strategy was built from (`build_strategy`), for reports.
    client_init : callable, optional
        `client_init(partition_id)` -> that client's own initial state (a state dict or ArrayRecord):
        where a client starts instead of the global arrays, for every key without a shared value
        yet (its personal layers until they are averaged, every layer before the first average).
        None: every client starts from the global arrays.

    Raises
    ------
    ConfigError
        A bad `personal`, `train_mode` or `layer_unit`, or a selector that matches no layer.
    """

    def __init__(
        self,
        strategy: Strategy,
        average: str | Sequence[str],
        *,
        layer_unit: str = "module",
        layers: LayerSource | None = None,
        personal: str = "server",
        train_mode: str = "standard",
        preset: Preset | None = None,
        client_init: Callable[[int], Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(strategy)
        if personal not in protocol.PERSONAL_MODES:
            raise ConfigError(choices_message("personal mode", personal, protocol.PERSONAL_MODES))
        if train_mode not in protocol.TRAIN_MODES:
            raise ConfigError(choices_message("train mode", train_mode, protocol.TRAIN_MODES))
        if layer_unit not in LAYER_UNITS:
            raise ConfigError(choices_message("layer unit", layer_unit, LAYER_UNITS))
        self.average = average
        self.layer_unit = layer_unit
        self.personal = personal
        self.train_mode = train_mode
        self.preset = preset
        self.client_init = client_init
        self.layers: list[Layer] | None = None
        self.selected: list[Layer] = []  # what `average` picks
        self.average_keys: list[str] = []  # the keys averaged (in the last round)
        self.personal_state: dict[str, ArrayRecord] = {}  # client name -> its personal layers (server mode)
        self.client_labels: dict[int, str] = {}  # node id -> client name, from its replies or a SeededGrid
        self._global: ArrayRecord | None = None  # the global arrays of the current round
        # per key, the last value every client shared: the initial one (unless clients start from their own) or
        # the last average
        self._shared: dict[str, Array] = {}
        self._holding: set[int] = set()  # client mode: nodes that keep their personal layers
        if layers is not None:
            self.resolve(layers)

    # ------------------------------------------------------------------ layers

    def resolve(self, source: LayerSource, *, model_name: str = "") -> list[Layer]:
        """Resolve the selector against a model's layers at `layer_unit`; returns the selected layers.

        Raises ConfigError naming the selector and the layer names when it matches nothing (with
        a preset: ModelError naming the preset, `model_name` and what the preset needs).
        """
        layers = layers_of(source, self.layer_unit)
        try:
            selected = select_layers(layers, self.average)
        except ConfigError as exc:
            if self.preset is None:
                raise
            raise self.preset.misfit(self.average, exc, model_name) from exc
        self.layers, self.selected, self.average_keys = layers, selected, keys_of(selected)
        return selected

    @property
    def model_keys(self) -> list[str]:
        return keys_of(self.layers or [])

    @property
    def personal_keys(self) -> list[str]:
        averaged = set(self.average_keys)
        return [key for key in self.model_keys if key not in averaged]

    def _wrapped_keys(self) -> list[str]:
        """The keys the wrapped strategy configures and aggregates."""
        return self.average_keys

    def _choose(self, server_round: int, replies: list[Message], received: list[ArrayRecord]) -> list[str]:
        """The keys averaged in this round's aggregation (fixed here; BarrierAware measures)."""
        return self.average_keys

    # ------------------------------------------------------------------ state between rounds

    def snapshot(self) -> SelectiveState:
        """The state after the last aggregation (personal layers by partition id)."""
        unnamed = sorted(label for label in self.personal_state if not label.isdigit())
        if unnamed:
            raise RunError(
                f"cannot save the personal layers of clients {listed(unnamed)}: they did not name their "
                f"partition (a reply names it with ConfigRecord({{'{protocol.PARTITION_ID}': pid}}) "
                f"under '{protocol.CLIENT}')"
            )
        return SelectiveState(
            list(self.average_keys),
            ArrayRecord(dict(self._shared)),
            {int(label): record for label, record in self.personal_state.items()},
        )

    def restore(self, state: SelectiveState) -> None:
        """Continue from a `snapshot` (of an earlier run, whose node ids do not matter).

        Only personal="server" can be restored: with personal="client" the personal layers live in
        the clients' memory, which a crash loses.
        """
        if self.personal == "client":
            raise RunError(
                "cannot restore a strategy with personal='client': the personal layers were kept "
                "by the clients and are lost with them"
            )
        self.average_keys = list(state.average_keys)
        self._shared = dict(state.shared.items())
        self.personal_state = {str(pid): record for pid, record in state.personal.items()}

    # ------------------------------------------------------------------ configure

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._begin(arrays, grid)
        messages = super().configure_train(server_round, subset(arrays, self._wrapped_keys()), config, grid)
        return self._personalise(messages, {protocol.TRAIN_MODE: self.train_mode})

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._begin(arrays, grid)
        messages = super().configure_evaluate(server_round, subset(arrays, self._wrapped_keys()), config, grid)
        return self._personalise(messages, {})

    def _begin(self, arrays: ArrayRecord, grid: Grid) -> None:
        if isinstance(grid, SeededGrid):  # names a node before its first reply (a restarted SuperNode's new id)
            self.client_labels.update({node: str(pid) for node, pid in grid.partition_of.items()})
        if self.layers is None:
            self.resolve(arrays)
        expected = self.model_keys
        if set(arrays.keys()) != set(expected):
            missing = [k for k in expected if k not in arrays]
            unexpected = [k for k in arrays.keys() if k not in set(expected)]
            raise RunError(
                f"the global arrays do not fit the model's layers: missing keys {missing}, unexpected keys {unexpected}"
            )
        if not self._shared and self.client_init is None:
            self._shared = dict(arrays.items())
        self._global = arrays

    def _personalise(self, messages: Iterable[Message], extra: dict[str, str]) -> list[Message]:
        """Per client: the averaged layers the wrapped strategy sent plus its personal ones; config keys."""
        extra = {
            protocol.PERSONAL_MODE: self.personal,
            protocol.AVERAGE_KEYS: protocol.average_keys_value(self.average_keys),
            **extra,
        }
        out = []
        for message in messages:
            node, content = message.metadata.dst_node_id, RecordDict()
            name = self._array_record_name(message.content)
            for key, record in message.content.items():
                if key == name and isinstance(record, ArrayRecord):
                    record = self._arrays_for(node, record)
                elif isinstance(record, ConfigRecord):
                    record = ConfigRecord({**record, **extra})
                content[key] = record
            if not content.config_records:
                content[protocol.CONFIG] = ConfigRecord(dict(extra))
            md = message.metadata
            out.append(
                Message(
                    content,
                    md.dst_node_id,
                    md.message_type,
                    ttl=md.ttl,
                    group_id=md.group_id or None,
                    dst_task_id=md.dst_task_id,
                )
            )
        return out

    def _arrays_for(self, node: int, sent: ArrayRecord) -> ArrayRecord:
        if self.personal == "client" and node in self._holding:
            return sent
        label = self.client_labels.get(node)
        own: Mapping[str, Array] = self.personal_state.get(label, {}) if label is not None else {}
        personal = set(self.personal_keys)
        start: Mapping[str, Array] | None = None  # the client's own initial state, read once when needed
        out = ArrayRecord()
        for key in self.model_keys:
            if key in personal and key in own:
                out[key] = own[key]
            elif key in personal and key in self._shared:
                out[key] = self._shared[key]
            elif self.client_init is not None and key not in self._shared:  # no shared value yet: its own
                start = start if start is not None else self._client_start(node, label)
                out[key] = start[key]
            elif key in sent:
                out[key] = sent[key]
            else:
                raise RunError(f"{type(self.strategy).__name__} sent no value for the averaged key {key!r}")
        return out

    def _client_start(self, node: int, label: str | None) -> ArrayRecord:
        """The client's own initial state (`client_init`), checked to hold every key of the model."""
        assert self.client_init is not None
        if label is None or not label.isdigit():
            raise RunError(
                f"node {node} has no partition id, which its own initialisation needs (client_init takes the "
                "partition id): sample with strategies.SeededGrid, which knows every node's partition"
            )
        state = self.client_init(int(label))
        record = state if isinstance(state, ArrayRecord) else ArrayRecord({k: v for k, v in state.items()})
        missing = [key for key in self.model_keys if key not in record]
        if missing:
            raise RunError(f"the initial state of client {label} lacks keys {missing}")
        return record

    # ------------------------------------------------------------------ aggregate

    def aggregate_train(
        self,
        server_round: int,
        replies: Iterable[Message],
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, errors = split_replies(replies)
        _log_errors("aggregate_train", errors)
        if self._global is None:
            raise RunError("aggregate_train was called before configure_train")
        if not valid:
            return None, None
        names = [self._array_record_name(m.content) for m in valid]
        received = [
            m.content.array_records[n] if n is not None else ArrayRecord() for m, n in zip(valid, names, strict=True)
        ]
        self._check_replies(valid, received)
        chosen = self._choose(server_round, valid, received)
        wrapped = self._wrapped_keys()
        if wrapped:
            restricted = [  # decoded: Flower's averaging decodes every reply's every array
                with_record(m, n or protocol.ARRAYS, subset(r, wrapped, decoded=True))
                for m, n, r in zip(valid, names, received, strict=True)
            ]
            aggregated, metrics = self.strategy.aggregate_train(server_round, restricted)
        else:  # average nothing: no arrays to aggregate, metrics as FedAvg does
            aggregated, metrics = None, self._aggregate_metrics(valid)
        self._remember(valid, received, chosen)
        self.average_keys = chosen
        if wrapped and aggregated is None:
            return None, metrics
        new_global = self._new_global(valid, received, chosen, aggregated)
        log(INFO, "%s: averaged %d of %d keys", type(self).__name__, len(chosen), len(self.model_keys))
        return new_global, metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        valid, errors = split_replies(replies)
        _log_errors("aggregate_evaluate", errors)
        return self.strategy.aggregate_evaluate(server_round, valid)

    def _check_replies(self, replies: list[Message], received: list[ArrayRecord]) -> None:
        needed = self.model_keys if self.personal == "server" else self.average_keys
        for reply, record in zip(replies, received, strict=True):
            missing = [key for key in needed if key not in record]
            if missing:
                raise RunError(
                    f"the train reply of client {client_label(reply)} lacks keys {missing}: with "
                    f"personal='{self.personal}' a client replies with "
                    + ("its full model" if self.personal == "server" else "the keys listed in 'average-keys'")
                )

    def _remember(self, replies: list[Message], received: list[ArrayRecord], chosen: list[str]) -> None:
        """Keep what each client now holds: its personal layers (server mode) or that it holds them."""
        nodes = [reply.metadata.src_node_id for reply in replies]
        labels = [client_label(reply) for reply in replies]
        self.client_labels.update(zip(nodes, labels, strict=True))
        if self.personal == "client":
            self._holding.update(nodes)
            return
        averaged = set(chosen)
        personal = [key for key in self.model_keys if key not in averaged]
        for label, record in zip(labels, received, strict=True):
            self.personal_state.setdefault(label, ArrayRecord()).update({k: record[k] for k in personal})
        for state in self.personal_state.values():  # an averaged key is nobody's own any more
            for key in averaged & set(state.keys()):
                del state[key]

    def _new_global(
        self, replies: list[Message], received: list[ArrayRecord], chosen: list[str], aggregated: ArrayRecord | None
    ) -> ArrayRecord:
        assert self._global is not None
        averaged, out = set(chosen), ArrayRecord()
        personal = [key for key in self.model_keys if key not in averaged]
        # personal="server": a reference model for global evaluation only, the mean of the clients' personal layers
        reference = self._mean(replies, received, personal) if self.personal == "server" and personal else None
        for key in self.model_keys:
            like = self._global[key]
            if key in averaged:
                if aggregated is None or key not in aggregated:
                    raise RunError(f"{type(self.strategy).__name__} returned no value for key {key!r}")
                out[key] = cast_like(aggregated[key], like)
            elif reference is not None:
                out[key] = cast_like(reference[key], like)
            else:
                out[key] = like
        self._shared.update({key: out[key] for key in chosen})
        return out

    @property
    def _weight_key(self) -> str:
        return getattr(self.strategy, "weighted_by_key", protocol.NUM_EXAMPLES)

    def _mean(self, replies: list[Message], received: list[ArrayRecord], keys: list[str]) -> ArrayRecord:
        """The sample-weighted mean of `keys` over the replies, by Flower's own `aggregate_arrayrecords`.

        Weights are the wrapped strategy's `weighted_by_key`; equal if any reply lacks it.
        """
        metrics = [next(iter(r.content.metric_records.values()), MetricRecord()) for r in replies]
        weighted = all(isinstance(m.get(self._weight_key), int | float) for m in metrics)
        weights = [float(cast(float, m[self._weight_key])) if weighted else 1.0 for m in metrics]
        records = [
            RecordDict({protocol.ARRAYS: subset(r, keys, decoded=True), protocol.METRICS: MetricRecord({"weight": w})})
            for r, w in zip(received, weights, strict=True)
        ]
        return aggregate_arrayrecords(records, "weight")

    def _aggregate_metrics(self, replies: list[Message]) -> MetricRecord:
        contents = [reply.content for reply in replies]
        validate_message_reply_consistency(contents, self._weight_key, check_arrayrecord=False)
        aggregate = getattr(self.strategy, "train_metrics_aggr_fn", None) or aggregate_metricrecords
        return aggregate(contents, self._weight_key)

    def _array_record_name(self, content: RecordDict) -> str | None:
        """The model's ArrayRecord in a message: the only one, or the one named like the strategy's key."""
        names = list(content.array_records.keys())
        if len(names) <= 1:
            return names[0] if names else None
        preferred = getattr(self.strategy, "arrayrecord_key", protocol.ARRAYS)
        if preferred not in names:
            raise RunError(f"a message holds several ArrayRecords {names} and none is named {preferred!r}")
        return preferred

    def summary(self) -> None:
        log(
            INFO,
            "\t├──> %s: average %r (layer unit %s: %d of %d keys), personal layers kept by the %s, train mode %s",
            type(self).__name__,
            self.average,
            self.layer_unit,
            len(self.average_keys),
            len(self.model_keys),
            self.personal,
            self.train_mode,
        )
        self.strategy.summary()


def _log_errors(phase: str, errors: list[Message]) -> None:
    for message in errors:
        log(
            WARNING,
            "%s: dropped the error reply of node %d: %s",
            phase,
            message.metadata.src_node_id,
            message.error.reason,
        )
