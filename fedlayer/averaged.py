"""Which layers a run averaged and which stayed personal, round by round: the variable a layer-wise
averaging study varies, so every layer-wise figure and the report can mark it.

A strategy that averages a fixed set (fedavg, fedper, fedbn, a selector such as "last:2") averages the
same layers every round: its preset's selector, or `strategy.average`, resolved against the config's
model at its layer unit (`analysis.layer_unit`) exactly as the server resolves it. A barrier-aware
strategy chooses every round; its choices table (choices.parquet) is the record of what it chose. A
folder without config.toml (an analysis folder, or what `fedlayer barrier` writes for two checkpoints)
averaged nothing, and nothing is marked.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd
import torch

from fedlayer.analysis.summary import choices_grids
from fedlayer.layers import model_layers, select_layers
from fedlayer.results import RunRecord
from fedlayer.task import data_shape, model_for
from strategies.presets import get_preset

AVERAGED, PERSONAL, MIXED = "averaged", "personal", "mixed"
"""A layer's (or a group's) status over the rounds looked at: averaged in all, in none, or in some."""


def averaged_layers(run: RunRecord) -> pd.DataFrame | None:
    """Layer x round booleans: True where the run averaged the layer in that round's aggregation, False
    where it stayed personal.

    Rows are every layer of the config's model at its layer unit, in state_dict order (the names the
    analysis tables give single layers); columns are rounds 1 to `federation.rounds`, or for a
    barrier-aware strategy the rounds its choices table records (a layer it was not offered, outside
    `strategy.average`, stays personal). None for a folder without config.toml, and for a barrier-aware
    run that recorded no choice yet.
    """
    cfg = run.config
    if cfg is None:
        return None
    preset = get_preset(cfg.strategy.name)
    with torch.random.fork_rng(devices=[]):  # only the layer names and types are needed: leave torch's seed alone
        model = model_for(cfg, *data_shape(cfg))
    layers = model_layers(model, cfg.analysis.layer_unit)
    names = [layer.name for layer in layers]
    if preset.barrier_aware:
        if run.choices is None or run.choices.empty:
            return None
        chosen, _ = choices_grids(run.choices)
        return chosen.reindex(index=names).fillna(0.0).astype(bool)
    selected = {layer.name for layer in select_layers(layers, cfg.strategy.average or preset.average)}
    rounds = range(1, cfg.federation.rounds + 1)
    return pd.DataFrame({r: [name in selected for name in names] for r in rounds}, index=names)


def status(averaged: pd.DataFrame | None, names: Iterable[str], rounds: Iterable[int] | None = None) -> str | None:
    """AVERAGED, PERSONAL or MIXED for a layer or a group of layers (`names`) over `rounds` (default: all
    of them): averaged means every layer of it in every round. None where `averaged` says nothing of it."""
    if averaged is None:
        return None
    table = averaged.reindex(index=list(names), columns=list(rounds) if rounds is not None else None)
    values = table.to_numpy(dtype=float).ravel()
    if values.size == 0 or pd.isna(values).any():
        return None
    return AVERAGED if values.all() else PERSONAL if not values.any() else MIXED


@dataclass(frozen=True)
class Period:
    """Consecutive rounds in which a run averaged the same layers."""

    first: int
    last: int
    averaged: tuple[str, ...]
    personal: tuple[str, ...]

    @property
    def rounds(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}–{self.last}"


def periods(averaged: pd.DataFrame) -> list[Period]:
    """The rounds of `averaged_layers` cut where the set of averaged layers changes, in round order."""
    found: list[Period] = []
    for round_, column in averaged.items():
        mask = column.to_numpy(dtype=bool)
        chosen = tuple(averaged.index[mask])
        if found and found[-1].averaged == chosen:
            found[-1] = Period(found[-1].first, int(round_), chosen, found[-1].personal)
        else:
            found.append(Period(int(round_), int(round_), chosen, tuple(averaged.index[~mask])))
    return found
