"""BarrierAware: average, each round, only the layers whose measured barrier between clients is low.

The barrier is measured by a function the server app injects (fedlayer's uses the analysis engine;
this module knows nothing of it): `measure(server_round, client_states) -> {layer name: barrier}`,
where `client_states` maps each client (its partition id as str) to its trained state
{key: numpy array}. Layers below `threshold` are averaged by the wrapped strategy; the rest (and any
layer the measure does not report) stay personal this round.

The wrapped strategy configures and aggregates ALL candidate layers every round (its key set must not
change between rounds: FedAdam keeps state per key) and only the chosen layers are taken from its
result. Personal layers are kept by the server (personal="server"): the server needs every client's
full model to measure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from logging import WARNING

import numpy as np
import pandas as pd
from flwr.app import ArrayRecord, Message
from flwr.common import log
from flwr.serverapp.strategy import Strategy

from fedlayer.errors import FedlayerError
from fedlayer.layers import keys_of
from strategies.layerwise import LayerSelective, LayerSource
from strategies.sampling import client_label

Measure = Callable[[int, dict[str, dict[str, np.ndarray]]], Mapping[str, float]]
HISTORY_COLUMNS = ["round", "layer", "barrier", "averaged"]


class BarrierAware(LayerSelective):
    """A LayerSelective whose averaged layers are those of `average` (the candidates, default all)
    whose barrier, measured this round by `measure`, is below `threshold`.

    `history` holds one dict per candidate layer and round: round, layer, barrier (NaN if not
    measured), averaged.
    """

    def __init__(
        self,
        strategy: Strategy,
        measure: Measure,
        threshold: float = 0.1,
        *,
        average: str | Sequence[str] = "all",
        layers: LayerSource | None = None,
        personal: str = "server",
    ) -> None:
        if personal != "server":
            raise FedlayerError(
                f"barrier-aware averaging needs personal='server', got {personal!r}: the "
                "server measures barriers on the clients' full models"
            )
        if not callable(measure):
            raise FedlayerError(f"barrier-aware averaging needs a measure function, got {measure!r}")
        super().__init__(strategy, average, layers=layers, personal=personal)
        self.measure = measure
        self.threshold = threshold
        self.history: list[dict] = []

    def _wrapped_keys(self) -> list[str]:
        return keys_of(self.selected)

    def _choose(self, server_round: int, replies: list[Message], received: list[ArrayRecord]) -> list[str]:
        states = {
            client_label(reply): {key: record[key].numpy() for key in self.model_keys}
            for reply, record in zip(replies, received, strict=True)
        }
        barriers = self.measure(server_round, states)
        unmeasured = [layer.name for layer in self.selected if layer.name not in barriers]
        if unmeasured:
            log(WARNING, "BarrierAware round %d: no barrier for %s; they stay personal", server_round, unmeasured)
        chosen = []
        for layer in self.selected:
            barrier = float(barriers.get(layer.name, math.nan))
            averaged = barrier < self.threshold  # False for NaN
            self.history.append({"round": server_round, "layer": layer.name, "barrier": barrier, "averaged": averaged})
            if averaged:
                chosen.append(layer)
        return keys_of(chosen)

    def restore_history(self, frame: pd.DataFrame) -> None:
        """Continue `history` from its table (`history_frame()` as saved by an earlier run)."""
        self.history = frame[HISTORY_COLUMNS].to_dict("records") if not frame.empty else []

    def history_frame(self) -> pd.DataFrame:
        """`history` as a table: round, layer, barrier, averaged."""
        return pd.DataFrame(self.history, columns=HISTORY_COLUMNS)
