"""BarrierAnalysis: layer-wise loss barriers between the clients' models, around ANY Flower strategy.

Put it around the strategy of your own ServerApp and every `every` rounds it measures, before the
strategy aggregates, the interpolation curves and barriers between the models the clients reply
with (Adilova et al., ICLR 2024, https://arxiv.org/abs/2307.06966):

    strategy = BarrierAnalysis(FedAvg(), model=Net(), data=(x_test, y_test), out_dir="analysis")
    strategy.start(grid=grid, initial_arrays=ArrayRecord(Net().state_dict()), num_rounds=5)

It changes nothing in what the wrapped strategy sees or returns. The tables (`barriers.parquet`,
`curves.parquet`, the columns of fedlayer's run directories: the engine's plus `round` and `task`) get
each analysed round's rows as an atomically written part, as a run directory's tables do, and are
compacted into one file each when `start` ends (`fedlayer.results.PartTable`), so `fedlayer plot` and `fedlayer report`
work on the folder, during the run too. The measurement is the barrier engine's
(`fedlayer.analysis.pairwise_curves`), or the `engine` given.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from torch import nn
from torch.utils.data import DataLoader

from fedlayer.analysis import EvalInput, pairwise_curves, resolve_groups
from fedlayer.errors import ConfigError
from fedlayer.layers import model_layers
from fedlayer.protocol import AGGREGATE_LABEL
from fedlayer.records import Decoded
from fedlayer.results import ANALYSIS_TABLES, TASK, PartTable, read_optional
from fedlayer.task_kinds import task_of_labels
from strategies.sampling import client_label, split_replies
from strategies.wrapper import StrategyWrapper

Engine = Callable[..., tuple[pd.DataFrame, pd.DataFrame]]  # `fedlayer.analysis.pairwise_curves`
OnRound = Callable[[int, pd.DataFrame, pd.DataFrame], None]


class BarrierAnalysis(StrategyWrapper):
    """Measure layer-wise barriers between the replying clients' models every `every` rounds.

    Parameters
    ----------
    strategy : flwr.serverapp.strategy.Strategy
        Any Message API strategy (FedAvg, FedAdam, `strategies.LayerSelective`, your own); it
        aggregates exactly as it would without the analysis.
    model : nn.Module
        A model of the clients' architecture (copied, never changed).
    data : tuple of tensors or DataLoader
        The evaluation set the losses are measured on (inputs, integer labels): labels (N,) of classes, or
        (N, T) next tokens of a language model, whose losses and errors are then per token.
    every : int, default 1
        Analyse rounds `every`, 2 * `every`, ...; 0 turns the analysis off (no work at all).
    pairs : "all" or int, default "all"
        Every pair of replying clients, or a sample of that many pairs seeded by (`seed`, round).
    groups : str or list of str, default ("layers", "full")
        Group specs (`fedlayer.analysis.resolve_groups`): single layers, the full model, orderings,
        windows, layer selectors.
    layer_unit : {"module", "tensor"}, default "module"
        What one layer is in those groups (`fedlayer.layers.LAYER_UNITS`): a module with all its
        tensors, or one weight tensor with its bias.
    alphas : int or list of float, default 5
        The interpolation grid (a count, or the points; 0, 0.5 and 1 are always on it).
    bases : tuple of str, default ("a", "b")
        Which model supplies the layers outside the group.
    bn : {"interpolate", "recompute"}, default "interpolate"
        The BatchNorm policy; "recompute" re-estimates running statistics on `bn_data`.
    bn_data : tuple of tensors or DataLoader, optional
        Training inputs for `bn = "recompute"`.
    random_directions : int, default 0
        Random directions per layer (the robustness baseline).
    vs_aggregate : bool, default False
        Also measure each replying client against the new aggregate (rows with client_b
        "aggregate"): which layers averaging hurts for which clients.
    seed : int, default 0
        Seeds the pair sample and the random directions (with the round).
    device : str or torch.device, optional
        Where the engine evaluates (default: the model's device).
    out_dir : str or Path, optional
        Where `barriers.parquet` and `curves.parquet` get each analysed round's rows.
    on_round : callable, optional
        `on_round(server_round, curves, barriers)` with each analysed round's new rows.
    engine : callable, optional
        The measurement, with `fedlayer.analysis.pairwise_curves`' signature (the default).

    Attributes
    ----------
    curves, barriers : pandas.DataFrame
        Every analysed round's rows so far: read from `out_dir` when there is one, else kept in
        memory, unless `on_round` takes them (then the last analysed round's rows only, so that a
        long run's memory does not grow).
    seconds : dict of int to float
        The analysis time of each analysed round.

    Raises
    ------
    ConfigError
        A bad layer unit, a bad group spec (checked when `every` is on), `every` below 0, or
        `bn = "recompute"` without `bn_data`.
    """

    def __init__(
        self,
        strategy: Strategy,
        model: nn.Module,
        data: EvalInput,
        *,
        every: int = 1,
        pairs: str | int = "all",
        groups: str | Sequence[str] = ("layers", "full"),
        layer_unit: str = "module",
        alphas: int | Sequence[float] = 5,
        bases: Sequence[str] = ("a", "b"),
        bn: str = "interpolate",
        bn_data: EvalInput | None = None,
        random_directions: int = 0,
        vs_aggregate: bool = False,
        seed: int = 0,
        device: str | torch.device | None = None,
        out_dir: str | Path | None = None,
        on_round: OnRound | None = None,
        engine: Engine | None = None,
    ) -> None:
        super().__init__(strategy)
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ConfigError(f"bad every {every!r}: give a non-negative number of rounds (0 = off)")
        if bn == "recompute" and bn_data is None:
            raise ConfigError("bn = 'recompute' needs bn_data: training inputs to re-estimate BatchNorm statistics")
        self.model = model
        self.layer_unit = layer_unit
        self.layers = model_layers(model, layer_unit)
        self.groups = [groups] if isinstance(groups, str) else list(groups)
        if every:
            resolve_groups(self.layers, self.groups, seed=seed)  # a bad group fails now, not in round 1
        self.data, self.bn_data = data, bn_data
        self.every, self.pairs, self.alphas, self.bases = every, pairs, alphas, tuple(bases)
        self.bn, self.random_directions, self.vs_aggregate = bn, random_directions, vs_aggregate
        self.seed = seed
        self.device = device if device is not None else next(model.parameters(), torch.empty(0)).device
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.on_round = on_round
        self.engine = engine or pairwise_curves
        # the rows: in out_dir's tables, else in memory
        self._tables = (
            {name: PartTable(self.out_dir / f"{name}.parquet") for name in ANALYSIS_TABLES} if self.out_dir else {}
        )
        self._kept = {name: pd.DataFrame() for name in ANALYSIS_TABLES}
        self.seconds: dict[int, float] = {}
        self._global: ArrayRecord | None = None
        self._between_clients: tuple[int, pd.DataFrame] = (-1, pd.DataFrame())  # (round, its barriers)

    @property
    def curves(self) -> pd.DataFrame:
        return self._rows("curves")

    @property
    def barriers(self) -> pd.DataFrame:
        return self._rows("barriers")

    def _rows(self, name: str) -> pd.DataFrame:
        """A table's rows from where they are kept: the folder (no copy in memory), else memory."""
        if name not in self._tables:
            return self._kept[name]
        table = read_optional(self._tables[name].path)
        return table if table is not None else pd.DataFrame()

    def start(self, *args: Any, **kwargs: Any) -> Result:
        """`Strategy.start`; then the folder's tables are compacted into one file each."""
        result = super().start(*args, **kwargs)
        for table in self._tables.values():
            table.compact()
        return result

    def due(self, server_round: int) -> bool:
        """Whether this round is analysed."""
        return bool(self.every) and server_round % self.every == 0

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)  # the wrapped strategy gets them as they came
        if not self.due(server_round) or self._global is None:
            return super().aggregate_train(server_round, replies)
        valid, _ = split_replies(replies)
        started = time.perf_counter()
        base = Decoded(self._global)
        sent = {client_label(reply): _reply_arrays(reply) for reply in valid}
        states: dict[str, Mapping[str, torch.Tensor]] = {client: Decoded(a, base) for client, a in sent.items()}
        received = set.intersection(*(set(arrays.keys()) for arrays in sent.values())) if sent else set()
        tables = [self._measure(server_round, states, self.pairs, received)] if len(states) >= 2 else []
        self._between_clients = (server_round, tables[0][1] if tables else pd.DataFrame())  # for `layer_barriers`
        seconds = time.perf_counter() - started
        arrays, metrics = super().aggregate_train(server_round, replies)
        if self.vs_aggregate and arrays is not None and states:
            started = time.perf_counter()
            states[AGGREGATE_LABEL] = Decoded(arrays)
            tables.append(self._measure(server_round, states, [(client, AGGREGATE_LABEL) for client in sent], received))
            seconds += time.perf_counter() - started
        if tables:
            self._publish(
                server_round,
                pd.concat([curves for curves, _ in tables], ignore_index=True),
                pd.concat([barriers for _, barriers in tables], ignore_index=True),
            )
            self.seconds[server_round] = seconds
        return arrays, metrics

    def analyse(self, server_round: int, states: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        """Measure and publish one round's barriers between the given client models (full state dicts by
        client name), as if they had replied: e.g. the clients' own initialisations as round 0."""
        if len(states) < 2:
            return
        started = time.perf_counter()
        curves, barriers = self._measure(server_round, states, self.pairs, set.intersection(*map(set, states.values())))
        self._between_clients = (server_round, barriers)
        self._publish(server_round, curves, barriers)
        self.seconds[server_round] = time.perf_counter() - started

    def _measure(
        self, server_round: int, states: Mapping[str, Mapping[str, torch.Tensor]], pairs: Any, received: set[str]
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(curves, barriers) of one round's pairs, with a `round` column, about the layers clients sent."""
        curves, barriers = self.engine(
            self.model,
            dict(states),
            self.data,
            pairs=pairs or "all",
            seed=self.seed * 100_003 + server_round,
            groups=self.groups,
            layer_unit=self.layer_unit,
            alphas=self.alphas,
            bases=self.bases,
            bn=self.bn,
            bn_data=self.bn_data if self.bn == "recompute" else None,
            random_directions=self.random_directions,
            device=self.device,
        )
        curves, barriers = (self._visible(table, received) for table in (curves, barriers))
        task = self._task()
        for table in (curves, barriers):
            table.insert(0, "round", server_round)
            table.insert(1, TASK, task)
        return curves, barriers

    def _task(self) -> str:
        """What the evaluation data's labels make the measurement (`fedlayer.task_kinds.TASKS`): the `task` of
        every row. A DataLoader's first batch tells."""
        data = self.data
        labels = next(iter(data))[1] if isinstance(data, DataLoader) else data[1]
        return task_of_labels(torch.as_tensor(labels))

    def _visible(self, table: pd.DataFrame, received: set[str]) -> pd.DataFrame:
        """Drop rows about layers the clients did not send (personal layers they keep themselves)."""
        hidden = {layer.name for layer in self.layers if not set(layer.keys) <= received}
        if not hidden or table.empty:
            return table.reset_index(drop=True)
        keep = [not (set(str(names).split("|")) & hidden) for names in table["layers"]]
        return table[keep].reset_index(drop=True)

    def _publish(self, server_round: int, curves: pd.DataFrame, barriers: pd.DataFrame) -> None:
        for name, rows in (("curves", curves), ("barriers", barriers)):
            if name in self._tables:
                self._tables[name].append(rows)
            elif self.on_round is None and not self._kept[name].empty:
                self._kept[name] = pd.concat([self._kept[name], rows], ignore_index=True)
            else:
                self._kept[name] = rows
        if self.on_round is not None:
            self.on_round(server_round, curves, barriers)

    def layer_barriers(
        self, server_round: int, client_states: Mapping[str, Mapping[str, np.ndarray]]
    ) -> dict[str, float]:
        """Mean midpoint loss barrier per single layer over client pairs and bases: `BarrierAware`'s measure.

        It is called while the wrapped strategy aggregates, after this round's analysis between the
        clients: it reuses that when it measured single layers, and measures them otherwise.
        """
        analysed, table = self._between_clients
        if analysed != server_round or table.empty or not (table["kind"] == "layer").any():
            states = {k: {n: torch.as_tensor(np.asarray(v)) for n, v in s.items()} for k, s in client_states.items()}
            _, table = self.engine(
                self.model, states, self.data, pairs=self.pairs or "all", seed=self.seed, groups="layers",
                layer_unit=self.layer_unit, alphas=3, device=self.device,
            )  # fmt: skip
        layer_rows = table[table["kind"] == "layer"]
        return layer_rows.groupby("group")["loss_barrier_mid"].mean().to_dict()


def _reply_arrays(reply: Message) -> ArrayRecord:
    """The model a client replied with (its only ArrayRecord; none: an empty one)."""
    return next(iter(reply.content.array_records.values()), ArrayRecord())
