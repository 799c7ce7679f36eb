"""Curves and barriers between every pair (or a seeded sample of pairs) of several models."""

from __future__ import annotations

import itertools
import numbers
import re
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn

from fedlayer.analysis.barriers import barriers
from fedlayer.analysis.curves import CurveEngine, check_non_negative
from fedlayer.errors import FedlayerError


def select_pairs(names, pairs: str | int = "all", *, seed: int = 0) -> list[tuple[str, str]]:
    """Unordered pairs of distinct names, in sorted order ("client2" before "client10").

    pairs="all" (or 0) gives every pair; an integer N a seeded sample of N distinct pairs (all of
    them if there are no more than N).
    """
    check_non_negative("seed", seed)
    ordered = sorted({str(n) for n in names}, key=_natural_key)
    every = list(itertools.combinations(ordered, 2))
    if pairs == "all" or pairs == 0:
        return every
    if isinstance(pairs, bool) or not isinstance(pairs, numbers.Integral) or pairs < 0:
        raise FedlayerError(f"bad pairs {pairs!r}: give 'all' or a non-negative number of pairs")
    if pairs >= len(every):
        return every
    picked = np.random.default_rng(seed).choice(len(every), size=int(pairs), replace=False)
    return [every[i] for i in sorted(picked.tolist())]


def pairwise_curves(
    model: nn.Module,
    states: Mapping[str, Mapping[str, torch.Tensor]],
    data,
    *,
    pairs: str | int = "all",
    seed: int = 0,
    bn: str = "interpolate",
    bn_data=None,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    **curve_kwargs,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(curves, barriers) for the selected pairs, with client_a and client_b as the first columns.

    `curve_kwargs` are `interpolation_curves`' groups, alphas, bases and random_directions; `seed`
    drives both the pair sample and the curves. The model is copied and traced once for all pairs.
    """
    named = {str(name): state for name, state in states.items()}
    if len(named) < 2:
        raise FedlayerError(f"pairwise curves need at least two models, got {len(named)}")
    engine = CurveEngine(model, data, bn=bn, bn_data=bn_data, device=device, batch_size=batch_size)
    tables = []
    for name_a, name_b in select_pairs(named, pairs, seed=seed):
        table = engine.curves(named[name_a], named[name_b], seed=seed, **curve_kwargs)
        table.insert(0, "client_b", name_b)
        table.insert(0, "client_a", name_a)
        tables.append(table)
    curves = pd.concat(tables, ignore_index=True)
    return curves, barriers(curves)


def _natural_key(name: str) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]
