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
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from flwr.app import ArrayRecord, Message
from flwr.common import log
from flwr.serverapp.strategy import Strategy

from fedlayer.errors import ConfigError
from fedlayer.layers import keys_of
from fedlayer.records import values
from strategies.layerwise import LayerSelective, LayerSource
from strategies.sampling import client_label

if TYPE_CHECKING:
    from strategies.presets import Preset

Measure = Callable[[int, dict[str, dict[str, np.ndarray]]], Mapping[str, float]]
HISTORY_COLUMNS = ["round", "layer", "barrier", "averaged"]


class BarrierAware(LayerSelective):
    """A LayerSelective whose averaged layers are those of `average` whose barrier between the
    clients, measured this round, is below `threshold`.

    It acts on the finding of Adilova et al., ICLR 2024 (https://arxiv.org/abs/2307.06966) that
    single layers can mostly be averaged without a barrier while some cannot.

    Parameters
    ----------
    strategy : flwr.serverapp.strategy.Strategy
        The Flower strategy that aggregates the candidate layers.
    measure : callable
        `measure(server_round, client_states) -> {layer name: barrier}`; `client_states` maps each
        client (its partition id as str) to its trained state {key: numpy array}.
    threshold : float, default 0.1
        A layer is averaged this round when its barrier is below it (a NaN barrier never is).
    average : str or sequence of str, default "all"
        The candidate layers (a layer selector).
    layer_unit : {"module", "tensor"}, default "module"
        What one layer is (see `LayerSelective`); the measure reports barriers of layers of this unit.
    layers : model, state dict or list of Layer, optional
        What the selector is resolved against now (see `LayerSelective`).
    personal : {"server"}, default "server"
        Only the server can keep the personal layers: it measures on the clients' full models.
    preset : strategies.presets.Preset, optional
        The named scheme this strategy was built from.
    client_init : callable, optional
        Each client's own initial state by partition id (`LayerSelective`'s `client_init`).

    Attributes
    ----------
    history : list of dict
        One entry per candidate layer and round: round, layer, barrier (NaN if not measured), averaged.

    Raises
    ------
    ConfigError
        `personal` other than "server", a `measure` that is not callable, or a bad selector.
    """

    def __init__(
        self,
        strategy: Strategy,
        measure: Measure,
        threshold: float = 0.1,
        *,
        average: str | Sequence[str] = "all",
        layer_unit: str = "module",
        layers: LayerSource | None = None,
        personal: str = "server",
        preset: Preset | None = None,
        client_init: Callable[[int], Mapping[str, Any]] | None = None,
    ) -> None:
        if personal != "server":
            raise ConfigError(
                f"barrier-aware averaging needs personal='server', got {personal!r}: the "
                "server measures barriers on the clients' full models"
            )
        if not callable(measure):
            raise ConfigError(f"barrier-aware averaging needs a measure function, got {measure!r}")
        super().__init__(
            strategy,
            average,
            layer_unit=layer_unit,
            layers=layers,
            personal=personal,
            preset=preset,
            client_init=client_init,
        )
        self.measure = measure
        self.threshold = threshold
        self.history: list[dict] = []

    def _wrapped_keys(self) -> list[str]:
        return keys_of(self.selected)

    def _choose(self, server_round: int, replies: list[Message], received: list[ArrayRecord]) -> list[str]:
        states = {
            client_label(reply): {key: values(record[key]) for key in self.model_keys}
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
