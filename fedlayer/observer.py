"""What the server records each round: client metrics, client models, and their layer-wise barriers.

`barrier_analysis` turns the config's [analysis] into a `strategies.BarrierAnalysis` (the same
wrapper a user puts in their own ServerApp). `RoundRecorder` plugs into `strategies.Observed`
(which hands it every client's reply, and the model-array bytes each client was sent and sent back,
before aggregation), into `strategies.Guarded` (which reports the clients that failed, timed out or
were rejected), into the analysis (its tables) and into `Strategy.start(evaluate_fn=...)` (called
once a round is complete), and commits each round's tables to the run directory.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import cast

import pandas as pd
import torch
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy

from fedlayer import protocol
from fedlayer.checkpoints import save_checkpoint
from fedlayer.config import Config
from fedlayer.records import Decoded, tensors
from fedlayer.results import NUM_PREDICTIONS, PERPLEXITY, TASK, RunDirectory, perplexity
from fedlayer.task import dataset_for, global_test_set, subsample
from fedlayer.task_kinds import task_of_labels
from fedlayer.training import Metrics, evaluate
from strategies import BarrierAnalysis, BarrierAware, LayerSelective, client_label
from strategies.observed import TRAFFIC_COLUMNS, Traffic

PHASE_SPLITS = {"train": "train", "evaluate": "local-test"}
OnCommit = Callable[[int, ArrayRecord], None]
OnRoundEnd = Callable[[int, Metrics], None]
OnAnalysis = Callable[[int, pd.DataFrame, pd.DataFrame], None]


def reply_arrays(reply: Message) -> ArrayRecord:
    """The model a client replied with: its only ArrayRecord."""
    return next(iter(reply.content.array_records.values()))


def reply_metrics(reply: Message) -> MetricRecord:
    return next(iter(reply.content.metric_records.values()), MetricRecord())


def analysis_sets(cfg: Config) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The per-round analysis' data: `analysis.samples` seeded global test samples to measure on (images, or
    windows of text), and as many seeded training samples to re-estimate BatchNorm statistics on
    (`analysis.bn = "recompute"`)."""
    test_x, test_y = global_test_set(cfg)
    train = dataset_for(cfg)
    return (
        subsample(test_x, test_y, cfg.analysis.samples, cfg.seed),
        subsample(train.train_x, train.train_y, cfg.analysis.samples, cfg.seed + 1),
    )


def barrier_analysis(
    cfg: Config, strategy: Strategy, model: torch.nn.Module, device: torch.device, on_round: OnAnalysis
) -> BarrierAnalysis:
    """`cfg.analysis` as a `strategies.BarrierAnalysis` around `strategy` (its tables go to the run directory)."""
    a = cfg.analysis
    data, bn_data = analysis_sets(cfg)
    return BarrierAnalysis(
        strategy,
        model,
        data,
        every=a.every,
        pairs=a.pairs or "all",
        groups=list(a.groups),
        layer_unit=a.layer_unit,
        alphas=a.alphas,
        bases=tuple(a.bases),
        bn=a.bn,
        bn_data=bn_data,
        random_directions=a.random_directions,
        vs_aggregate=a.vs_aggregate,
        seed=cfg.seed,
        device=device,
        on_round=on_round,
    )


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
    strategy : strategies.LayerSelective
        The averaging strategy: its personal keys name the checkpointed personal layers; a
        `BarrierAware` one also records which layers it averaged (the `choices` table).
    on_commit : callable, optional
        `on_commit(round, arrays)` after the round's tables are written: the round's checkpoint.
    device : torch.device
        Where the global model is evaluated (the server's GPU, if it has one).
    on_round_end : callable, optional
        `on_round_end(round, global metrics)` last: progress.

    Attributes
    ----------
    task : str
        What the run's metrics measure (`fedlayer.task_kinds.TASKS`), read from its test labels: every
        metrics row names it, and a language row adds its perplexity and counts tokens.
    """

    def __init__(
        self,
        cfg: Config,
        run_dir: RunDirectory,
        model: torch.nn.Module,
        strategy: LayerSelective,
        device: torch.device,
        *,
        on_commit: OnCommit | None = None,
        on_round_end: OnRoundEnd | None = None,
    ) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.strategy = strategy
        self.on_commit = on_commit
        self.on_round_end = on_round_end
        self.device = device
        self.eval_model = copy.deepcopy(model).to(self.device)
        self.failures: dict[tuple[int, str], list[dict]] = {}  # (round, split) -> rows of failed clients
        self._global_arrays = ArrayRecord()  # the global model of the last training round
        self._client_arrays: dict[str, ArrayRecord] = {}  # client -> its reply's arrays, last training round
        self._client_states: dict[str, Decoded] | None = None  # decoded from them when asked
        self.client_keys: set[str] = set()
        self.traffic: dict[int, Traffic] = {}  # node id -> this round's training bytes (from `on_traffic`)
        # tables kept whole by the strategy and rewritten each round
        self.strategy_tables: dict[str, Callable[[], pd.DataFrame]] = (
            {"choices": strategy.history_frame} if isinstance(strategy, BarrierAware) else {}
        )
        self.test_set = global_test_set(cfg)
        labels = self.test_set[1]
        self.task = task_of_labels(labels)  # what the metrics measure (`fedlayer.task_kinds.TASKS`)
        self.positions = labels.shape[1] if labels.dim() == 2 else 1  # predictions per sample

    # -- hooks ---------------------------------------------------------------------------------------
    def on_train(self, server_round: int, replies: Sequence[Message], global_arrays: ArrayRecord) -> None:
        """Every valid training reply, sorted by partition, before the strategy aggregates it."""
        self._global_arrays = global_arrays
        self._client_arrays = {client_label(r): reply_arrays(r) for r in replies}
        self._client_states = None
        sent = [set(arrays.keys()) for arrays in self._client_arrays.values()]
        self.client_keys = set.intersection(*sent) if sent else set()
        traffic, self.traffic = self.traffic, {}
        self._add_metrics(server_round, replies, "train", protocol.TRAIN_LOSS, protocol.TRAIN_ACCURACY, traffic)

    @property
    def client_states(self) -> dict[str, Decoded]:
        """Each client's model of the last training round, by client: the arrays it replied with over the
        global model it started from (the keys it kept). Decoded when first asked for: a round itself needs
        at most their personal layers (`_save_checkpoints`), and decoding 50 replies costs more than the
        rest of the recording."""
        if self._client_states is None:
            base = Decoded(self._global_arrays)
            self._client_states = {client: Decoded(arrays, base) for client, arrays in self._client_arrays.items()}
        return self._client_states

    def on_traffic(self, server_round: int, traffic: Mapping[int, Traffic]) -> None:
        """This round's training bytes per node (from `strategies.Observed`), for the train rows of metrics.parquet."""
        self.traffic = dict(traffic)

    def on_analysis(self, server_round: int, curves: pd.DataFrame, barriers: pd.DataFrame) -> None:
        """An analysed round's curves and barriers (from `strategies.BarrierAnalysis`), committed with the round."""
        self.run_dir.add("curves", curves)
        self.run_dir.add("barriers", barriers)

    def on_evaluate(self, server_round: int, replies: Sequence[Message]) -> None:
        """Every valid evaluation reply: the clients' personalised models on their local test splits."""
        self._add_metrics(server_round, replies, "local-test", protocol.LOSS, protocol.ACCURACY, {})

    def on_failures(self, server_round: int, phase: str, failures: Sequence[dict]) -> None:
        """Clients that failed, timed out or were rejected (from `strategies.Guarded`), recorded with the others."""
        self.failures.setdefault((server_round, PHASE_SPLITS[phase]), []).extend(failures)

    def end_of_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Called by `Strategy.start` after each round (and once before the first): commit the round.

        The tables are written first, then `on_commit` (the run's round checkpoint, whose state.json
        is the commit), then `on_round_end` (progress).
        """
        self.eval_model.load_state_dict(tensors(arrays), strict=True)  # views: load_state_dict copies
        metrics = evaluate(self.eval_model, *self.test_set, device=self.device)
        row = self._row(server_round, "global", "test", metrics.loss, metrics.accuracy, metrics.num_examples, None)
        self.run_dir.add("metrics", pd.DataFrame([row]))
        if self.cfg.output.checkpoints:
            self._save_checkpoints(arrays)
        for name, table in self.strategy_tables.items():
            self.run_dir.replace(name, table())
        self.run_dir.flush(final=server_round >= self.cfg.federation.rounds)
        if self.on_commit is not None:
            self.on_commit(server_round, arrays)
        if self.on_round_end is not None:
            self.on_round_end(server_round, metrics)
        return MetricRecord({protocol.LOSS: metrics.loss, protocol.ACCURACY: metrics.accuracy})

    # -- helpers -------------------------------------------------------------------------------------
    def _add_metrics(
        self,
        server_round: int,
        replies: Sequence[Message],
        split: str,
        loss_key: str,
        accuracy_key: str,
        traffic: Mapping[int, Traffic],
    ) -> None:
        """One row per client of this round and split, by partition: its metrics, or why it has none, and
        the bytes `traffic` counted for its node (NaN where none were: evaluation rows)."""
        rows = []
        for reply in replies:
            m = reply_metrics(reply)
            loss = float(cast(float, m.get(loss_key, float("nan"))))
            accuracy = float(cast(float, m.get(accuracy_key, float("nan"))))
            examples = int(cast(int, m.get(protocol.NUM_EXAMPLES, 0)))
            node = reply.metadata.src_node_id
            rows.append(
                self._row(server_round, client_label(reply), split, loss, accuracy, examples, traffic.get(node))
            )
        for failure in self.failures.pop((server_round, split), []):
            nan = float("nan")
            row = self._row(server_round, failure["client"], split, nan, nan, 0, traffic.get(failure["node"]))
            rows.append({**row, "status": failure["status"], "error": failure["reason"]})
        rows.sort(key=lambda row: protocol.client_order(row["client"]))
        self.run_dir.add("metrics", pd.DataFrame(rows))

    def _row(
        self,
        server_round: int,
        client: str,
        split: str,
        loss: float,
        accuracy: float,
        examples: int,
        traffic: Traffic | None,
    ) -> dict:
        """One row of metrics.parquet (status "ok"; a failed client's row overrides status and error): the
        run's task, the loss with its perplexity, the accuracy, the samples and the predictions they hold
        (a language sample holds one per position), and the model-array bytes of its training messages
        (`strategies.observed.Traffic`; NaN when none were counted)."""
        return {
            "round": server_round,
            "client": client,
            "split": split,
            TASK: self.task,
            "loss": loss,
            PERPLEXITY: perplexity(loss, self.task),
            "accuracy": accuracy,
            "num_examples": examples,
            NUM_PREDICTIONS: examples * self.positions,
            "status": "ok",
            "error": "",
            **(dataclasses.asdict(traffic) if traffic is not None else dict.fromkeys(TRAFFIC_COLUMNS, float("nan"))),
        }

    def _save_checkpoints(self, arrays: ArrayRecord) -> None:
        """The global model, and each client's personal layers as far as the server has seen them."""
        folder = self.run_dir.checkpoints
        save_checkpoint(tensors(arrays), folder / "global.safetensors")  # views: save_checkpoint copies
        personal = sorted(set(self.strategy.personal_keys) & self.client_keys)  # in every reply
        if not personal:
            return
        for client, record in self._client_arrays.items():
            state = tensors(record)
            save_checkpoint({k: state[k] for k in personal}, folder / f"client-{client}-personal.safetensors")
