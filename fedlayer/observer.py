"""What the server records each round: client metrics, client models, and their layer-wise barriers.

`RoundRecorder` plugs into `strategies.Observed` (which hands it every client's reply before
aggregation), into `strategies.Guarded` (which reports the clients that failed, timed out or were
rejected) and into `Strategy.start(evaluate_fn=...)` (called once a round is complete), so any
Flower strategy gets per-round barrier analysis without changing it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from flwr.app import ArrayRecord, Message, MetricRecord

from fedlayer.analysis import pairwise_curves
from fedlayer.checkpoints import save_checkpoint
from fedlayer.config import Config
from fedlayer.layers import Layer
from fedlayer.results import RunDirectory
from fedlayer.task import dataset_for, global_test_set, subsample
from fedlayer.training import default_device, evaluate
from strategies import client_label
from strategies.guarded import client_order

PHASE_SPLITS = {"train": "train", "evaluate": "local-test"}


def reply_state(reply: Message) -> dict[str, torch.Tensor]:
    arrays = next(iter(reply.content.array_records.values()))
    return arrays.to_torch_state_dict()


def reply_metrics(reply: Message) -> MetricRecord:
    return next(iter(reply.content.metric_records.values()), MetricRecord())


class RoundRecorder:
    """Collects one run's tables round by round and commits them atomically when a round ends."""

    def __init__(
        self, cfg: Config, run_dir: RunDirectory, model: torch.nn.Module, layers: Sequence[Layer], *, on_round_end=None
    ):
        self.cfg = cfg
        self.run_dir = run_dir
        self.model = model
        self.device = default_device()  # the server's GPU, if it has one, for evaluation and analysis
        self.eval_model = copy.deepcopy(model).to(self.device)
        self.layers = list(layers)
        self.on_round_end = on_round_end
        self.on_commit: Callable[[int, ArrayRecord], None] | None = None  # after the tables: the round's checkpoint
        self.failures: dict[tuple[int, str], list[dict]] = {}  # (round, split) -> rows of failed clients
        self.client_states: dict[str, dict[str, torch.Tensor]] = {}
        self.client_keys: set[str] = set()
        self.personal_keys: Callable[[], Iterable[str]] = tuple  # the strategy's, set by the server app
        self.extra_tables: dict[str, Callable[[], pd.DataFrame]] = {}  # whole tables rewritten each round
        self.round_barriers: dict[int, pd.DataFrame] = {}
        self.analysis_seconds: dict[int, float] = {}
        test_x, test_y = global_test_set(cfg)
        self.test_set = (test_x, test_y)
        self.analysis_set = subsample(test_x, test_y, cfg.analysis.samples, cfg.seed)
        data = dataset_for(cfg)
        self.bn_set = subsample(data.train_x, data.train_y, cfg.analysis.samples, cfg.seed + 1)

    # -- hooks ---------------------------------------------------------------------------------------
    def on_train(self, server_round: int, replies: Sequence[Message], global_arrays: ArrayRecord) -> None:
        """Every valid training reply, sorted by partition, before the strategy aggregates it."""
        base = global_arrays.to_torch_state_dict()
        sent = {client_label(r): reply_state(r) for r in replies}
        self.client_keys = set.intersection(*(set(s) for s in sent.values())) if sent else set()
        self.client_states = {client: {**base, **state} for client, state in sent.items()}
        self._add_metrics(server_round, replies, "train", prefix="train-")
        every = self.cfg.analysis.every
        if every and server_round % every == 0 and len(self.client_states) >= 2:
            self.analyse(server_round, self.client_states, self.client_keys)

    def on_evaluate(self, server_round: int, replies: Sequence[Message]) -> None:
        self._add_metrics(server_round, replies, "local-test", prefix="")

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
        self.run_dir.add(
            "metrics",
            pd.DataFrame(
                [
                    {
                        "round": server_round,
                        "client": "global",
                        "split": "test",
                        "loss": metrics.loss,
                        "accuracy": metrics.accuracy,
                        "num_examples": metrics.num_examples,
                        "status": "ok",
                        "error": "",
                    }
                ]
            ),
        )
        if self.cfg.output.checkpoints:
            self._save_checkpoints(arrays)
        for name, table in self.extra_tables.items():
            self.run_dir.replace(name, table())
        self.run_dir.flush()
        if self.on_commit is not None:
            self.on_commit(server_round, arrays)
        if self.on_round_end is not None:
            self.on_round_end(server_round, metrics, self.analysis_seconds.get(server_round))
        return MetricRecord({"loss": metrics.loss, "accuracy": metrics.accuracy})

    # -- analysis ------------------------------------------------------------------------------------
    def analyse(
        self, server_round: int, states: Mapping[str, Mapping[str, torch.Tensor]], received: set[str]
    ) -> pd.DataFrame:
        """Layer-wise barriers between this round's client models (all pairs or a seeded sample)."""
        started = time.perf_counter()
        a = self.cfg.analysis
        curves, barriers = pairwise_curves(
            self.model,
            dict(states),
            self.analysis_set,
            pairs=a.pairs or "all",
            seed=self.cfg.seed * 100_003 + server_round,
            groups=list(a.groups),
            alphas=a.alphas,
            bases=tuple(a.bases),
            bn=a.bn,
            bn_data=self.bn_set if a.bn == "recompute" else None,
            random_directions=a.random_directions,
            device=self.device,
        )
        curves, barriers = (self._visible(t, received) for t in (curves, barriers))
        curves.insert(0, "round", server_round)
        barriers.insert(0, "round", server_round)
        self.run_dir.add("curves", curves)
        self.run_dir.add("barriers", barriers)
        self.round_barriers[server_round] = barriers
        self.analysis_seconds[server_round] = time.perf_counter() - started
        return barriers

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
        """Mean midpoint loss barrier per single layer over client pairs and bases (for barrier-aware)."""
        table = self.round_barriers.get(server_round)
        if table is None or not (table["kind"] == "layer").any():
            states = {k: {n: torch.as_tensor(np.asarray(v)) for n, v in s.items()} for k, s in client_states.items()}
            _, table = pairwise_curves(
                self.model,
                states,
                self.analysis_set,
                pairs=self.cfg.analysis.pairs or "all",
                seed=self.cfg.seed,
                groups="layers",
                alphas=3,
                device=self.device,
            )
        layer_rows = table[table["kind"] == "layer"]
        return layer_rows.groupby("group")["loss_barrier_mid"].mean().to_dict()

    # -- helpers -------------------------------------------------------------------------------------
    def _add_metrics(self, server_round: int, replies: Sequence[Message], split: str, prefix: str) -> None:
        """One row per client of this round and split, by partition: its metrics, or why it has none."""
        rows = []
        for reply in replies:
            m = reply_metrics(reply)
            rows.append(
                {
                    "round": server_round,
                    "client": client_label(reply),
                    "split": split,
                    "loss": float(m.get(f"{prefix}loss", float("nan"))),
                    "accuracy": float(m.get(f"{prefix}accuracy", float("nan"))),
                    "num_examples": int(m.get("num-examples", 0)),
                    "status": "ok",
                    "error": "",
                }
            )
        for failure in self.failures.pop((server_round, split), []):
            rows.append(
                {
                    "round": server_round,
                    "client": failure["client"],
                    "split": split,
                    "loss": float("nan"),
                    "accuracy": float("nan"),
                    "num_examples": 0,
                    "status": failure["status"],
                    "error": failure["reason"],
                }
            )
        rows.sort(key=lambda row: client_order(row["client"]))
        self.run_dir.add("metrics", pd.DataFrame(rows))

    def _save_checkpoints(self, arrays: ArrayRecord) -> None:
        """The global model, and each client's personal layers as far as the server has seen them."""
        folder = self.run_dir.checkpoints
        save_checkpoint(arrays.to_torch_state_dict(), folder / "global.safetensors")
        personal = set(self.personal_keys()) & self.client_keys
        for client, state in self.client_states.items():
            if personal:
                save_checkpoint(
                    {k: state[k] for k in sorted(personal)}, folder / f"client-{client}-personal.safetensors"
                )


def _names(value) -> list[str]:
    if isinstance(value, str):
        return value.split("|")
    return list(value)
