"""What the server records each round: client metrics, client models, and their layer-wise barriers.

`RoundAnalysis` measures the layer-wise barriers between one round's client models (the
analysis engine on seeded evaluation data). `RoundRecorder` plugs into `strategies.Observed`
(which hands it every client's reply before aggregation), into `strategies.Guarded` (which
reports the clients that failed, timed out or were rejected) and into
`Strategy.start(evaluate_fn=...)` (called once a round is complete), so any Flower strategy gets
per-round barrier analysis without changing it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from typing import cast

import numpy as np
import pandas as pd
import torch
from flwr.app import ArrayRecord, Message, MetricRecord

from fedlayer import protocol
from fedlayer.analysis import pairwise_curves
from fedlayer.checkpoints import save_checkpoint
from fedlayer.config import Config
from fedlayer.layers import Layer
from fedlayer.results import RunDirectory
from fedlayer.task import dataset_for, global_test_set, subsample
from fedlayer.training import Metrics, evaluate
from strategies import BarrierAware, LayerSelective, client_label

PHASE_SPLITS = {"train": "train", "evaluate": "local-test"}
OnCommit = Callable[[int, ArrayRecord], None]
OnRoundEnd = Callable[[int, Metrics, float | None], None]


def reply_state(reply: Message) -> dict[str, torch.Tensor]:
    arrays = next(iter(reply.content.array_records.values()))
    return arrays.to_torch_state_dict()


def reply_metrics(reply: Message) -> MetricRecord:
    return next(iter(reply.content.metric_records.values()), MetricRecord())


class RoundAnalysis:
    """Layer-wise barriers between one round's client models, as `cfg.analysis` asks.

    Evaluates on a seeded sample of `analysis.samples` global test images (`data`) and, with
    `analysis.bn = "recompute"`, re-estimates BatchNorm statistics on as many training images
    (`bn_data`). `round_barriers` and `seconds` keep each analysed round's table and time.
    """

    def __init__(self, cfg: Config, model: torch.nn.Module, layers: Sequence[Layer], device: torch.device) -> None:
        self.cfg = cfg
        self.model = model
        self.layers = list(layers)
        self.device = device
        test_x, test_y = global_test_set(cfg)
        self.data = subsample(test_x, test_y, cfg.analysis.samples, cfg.seed)
        train = dataset_for(cfg)
        self.bn_data = subsample(train.train_x, train.train_y, cfg.analysis.samples, cfg.seed + 1)
        self.round_barriers: dict[int, pd.DataFrame] = {}
        self.seconds: dict[int, float] = {}

    def due(self, server_round: int) -> bool:
        """Whether `analysis.every` asks for this round."""
        every = self.cfg.analysis.every
        return bool(every) and server_round % every == 0

    def analyse(
        self, server_round: int, states: Mapping[str, Mapping[str, torch.Tensor]], received: set[str]
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(curves, barriers) between this round's client models (all pairs or a seeded sample).

        Rows about layers the clients did not send (`received` lacks their keys: personal layers
        kept on the clients) are left out.
        """
        started = time.perf_counter()
        a = self.cfg.analysis
        curves, barriers = pairwise_curves(
            self.model,
            dict(states),
            self.data,
            pairs=a.pairs or "all",
            seed=self.cfg.seed * 100_003 + server_round,
            groups=list(a.groups),
            alphas=a.alphas,
            bases=tuple(a.bases),
            bn=a.bn,
            bn_data=self.bn_data if a.bn == "recompute" else None,
            random_directions=a.random_directions,
            device=self.device,
        )
        curves, barriers = (self._visible(t, received) for t in (curves, barriers))
        curves.insert(0, "round", server_round)
        barriers.insert(0, "round", server_round)
        self.round_barriers[server_round] = barriers
        self.seconds[server_round] = time.perf_counter() - started
        return curves, barriers

    def _visible(self, table: pd.DataFrame, received: set[str]) -> pd.DataFrame:
        """Drop rows about layers the clients did not send (personal layers kept on the client)."""
        hidden = {layer.name for layer in self.layers if not set(layer.keys) <= received}
        if not hidden or table.empty:
            return table.reset_index(drop=True)
        keep = [not (set(_names(v)) & hidden) for v in table["layers"]]
        return table[keep].reset_index(drop=True)

    def layer_barriers(
        self, server_round: int, client_states: Mapping[str, Mapping[str, np.ndarray]]
    ) -> dict[str, float]:
        """Mean midpoint loss barrier per single layer over client pairs and bases (BarrierAware's measure).

        Reuses this round's analysis when it measured single layers; measures them otherwise.
        """
        table = self.round_barriers.get(server_round)
        if table is None or not (table["kind"] == "layer").any():
            states = {k: {n: torch.as_tensor(np.asarray(v)) for n, v in s.items()} for k, s in client_states.items()}
            _, table = pairwise_curves(
                self.model,
                states,
                self.data,
                pairs=self.cfg.analysis.pairs or "all",
                seed=self.cfg.seed,
                groups="layers",
                alphas=3,
                device=self.device,
            )
        layer_rows = table[table["kind"] == "layer"]
        return layer_rows.groupby("group")["loss_barrier_mid"].mean().to_dict()


class RoundRecorder:
    """Collects one run's tables round by round and commits them atomically when a round ends.

    Parameters
    ----------
    cfg : Config
        The run's config.
    run_dir : RunDirectory
        Where the tables, checkpoints and state go.
    model : torch.nn.Module
        The run's model (a copy evaluates the global model each round).
    analysis : RoundAnalysis
        The per-round barrier analysis.
    strategy : strategies.LayerSelective
        The averaging strategy: its personal keys name the checkpointed personal layers; a
        `BarrierAware` one also records which layers it averaged (the `choices` table).
    on_commit : callable, optional
        `on_commit(round, arrays)` after the round's tables are written: the round's checkpoint.
    on_round_end : callable, optional
        `on_round_end(round, global metrics, analysis seconds or None)` last: progress.
    """

    def __init__(
        self,
        cfg: Config,
        run_dir: RunDirectory,
        model: torch.nn.Module,
        analysis: RoundAnalysis,
        strategy: LayerSelective,
        *,
        on_commit: OnCommit | None = None,
        on_round_end: OnRoundEnd | None = None,
    ) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.analysis = analysis
        self.strategy = strategy
        self.on_commit = on_commit
        self.on_round_end = on_round_end
        self.device = analysis.device  # the server's GPU, if it has one, for evaluation and analysis
        self.eval_model = copy.deepcopy(model).to(self.device)
        self.failures: dict[tuple[int, str], list[dict]] = {}  # (round, split) -> rows of failed clients
        self.client_states: dict[str, dict[str, torch.Tensor]] = {}
        self.client_keys: set[str] = set()
        # tables kept whole by the strategy and rewritten each round
        self.strategy_tables: dict[str, Callable[[], pd.DataFrame]] = (
            {"choices": strategy.history_frame} if isinstance(strategy, BarrierAware) else {}
        )
        self.test_set = global_test_set(cfg)

    # -- hooks ---------------------------------------------------------------------------------------
    def on_train(self, server_round: int, replies: Sequence[Message], global_arrays: ArrayRecord) -> None:
        """Every valid training reply, sorted by partition, before the strategy aggregates it."""
        base = global_arrays.to_torch_state_dict()
        sent = {client_label(r): reply_state(r) for r in replies}
        self.client_keys = set.intersection(*(set(s) for s in sent.values())) if sent else set()
        self.client_states = {client: {**base, **state} for client, state in sent.items()}
        self._add_metrics(server_round, replies, "train", protocol.TRAIN_LOSS, protocol.TRAIN_ACCURACY)
        if self.analysis.due(server_round) and len(self.client_states) >= 2:
            curves, barriers = self.analysis.analyse(server_round, self.client_states, self.client_keys)
            self.run_dir.add("curves", curves)
            self.run_dir.add("barriers", barriers)

    def on_evaluate(self, server_round: int, replies: Sequence[Message]) -> None:
        """Every valid evaluation reply: the clients' personalised models on their local test splits."""
        self._add_metrics(server_round, replies, "local-test", protocol.LOSS, protocol.ACCURACY)

    def on_failures(self, server_round: int, phase: str, failures: Sequence[dict]) -> None:
        """Clients that failed, timed out or were rejected (from `strategies.Guarded`), recorded with the others."""
        self.failures.setdefault((server_round, PHASE_SPLITS[phase]), []).extend(failures)

    def end_of_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Called by `Strategy.start` after each round (and once before the first): commit the round.

        The tables are written first, then `on_commit` (the run's round checkpoint, whose state.json
        is the commit), then `on_round_end` (progress).
        """
        self.eval_model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
        metrics = evaluate(self.eval_model, *self.test_set, device=self.device)
        row = _metrics_row(server_round, "global", "test", metrics.loss, metrics.accuracy, metrics.num_examples)
        self.run_dir.add("metrics", pd.DataFrame([row]))
        if self.cfg.output.checkpoints:
            self._save_checkpoints(arrays)
        for name, table in self.strategy_tables.items():
            self.run_dir.replace(name, table())
        self.run_dir.flush()
        if self.on_commit is not None:
            self.on_commit(server_round, arrays)
        if self.on_round_end is not None:
            self.on_round_end(server_round, metrics, self.analysis.seconds.get(server_round))
        return MetricRecord({protocol.LOSS: metrics.loss, protocol.ACCURACY: metrics.accuracy})

    # -- helpers -------------------------------------------------------------------------------------
    def _add_metrics(
        self, server_round: int, replies: Sequence[Message], split: str, loss_key: str, accuracy_key: str
    ) -> None:
        """One row per client of this round and split, by partition: its metrics, or why it has none."""
        rows = []
        for reply in replies:
            m = reply_metrics(reply)
            loss = float(cast(float, m.get(loss_key, float("nan"))))
            accuracy = float(cast(float, m.get(accuracy_key, float("nan"))))
            rows.append(
                _metrics_row(
                    server_round,
                    client_label(reply),
                    split,
                    loss,
                    accuracy,
                    int(cast(int, m.get(protocol.NUM_EXAMPLES, 0))),
                )
            )
        for failure in self.failures.pop((server_round, split), []):
            row = _metrics_row(server_round, failure["client"], split, float("nan"), float("nan"), 0)
            rows.append({**row, "status": failure["status"], "error": failure["reason"]})
        rows.sort(key=lambda row: protocol.client_order(row["client"]))
        self.run_dir.add("metrics", pd.DataFrame(rows))

    def _save_checkpoints(self, arrays: ArrayRecord) -> None:
        """The global model, and each client's personal layers as far as the server has seen them."""
        folder = self.run_dir.checkpoints
        save_checkpoint(arrays.to_torch_state_dict(), folder / "global.safetensors")
        personal = set(self.strategy.personal_keys) & self.client_keys
        for client, state in self.client_states.items():
            if personal:
                save_checkpoint(
                    {k: state[k] for k in sorted(personal)}, folder / f"client-{client}-personal.safetensors"
                )


def _metrics_row(server_round: int, client: str, split: str, loss: float, accuracy: float, examples: int) -> dict:
    """One row of metrics.parquet (status "ok"; a failed client's row overrides status and error)."""
    return {
        "round": server_round,
        "client": client,
        "split": split,
        "loss": loss,
        "accuracy": accuracy,
        "num_examples": examples,
        "status": "ok",
        "error": "",
    }


def _names(value) -> list[str]:
    if isinstance(value, str):
        return value.split("|")
    return list(value)
