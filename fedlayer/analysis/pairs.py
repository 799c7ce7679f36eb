"""Curves and barriers between every pair (or a seeded sample of pairs) of several models."""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from fedlayer.analysis.barriers import barriers
from fedlayer.analysis.curves import CurveEngine, check_non_negative
from fedlayer.analysis.evaluate import EvalInput
from fedlayer.errors import ConfigError
from fedlayer.protocol import client_order

Pairs = str | int | Sequence[tuple[str, str]]


def select_pairs(names: Iterable[object], pairs: Pairs = "all", *, seed: int = 0) -> list[tuple[str, str]]:
    """Unordered pairs of distinct names, in sorted order ("client2" before "client10").

    pairs="all" (or 0) gives every pair; an integer N a seeded sample of N distinct pairs (all of
    them if there are no more than N); a list of (a, b) name pairs gives exactly those, in that order.

    Raises
    ------
    ConfigError
        If `pairs` is neither "all", a non-negative integer nor pairs of the given names, or `seed`
        is negative.
    """
    check_non_negative("seed", seed)
    ordered = sorted({str(n) for n in names}, key=client_order)
    if isinstance(pairs, Sequence) and not isinstance(pairs, str):
        return _explicit_pairs(ordered, pairs)
    every = list(itertools.combinations(ordered, 2))
    if pairs == "all" or pairs == 0:
        return every
    if isinstance(pairs, bool) or not isinstance(pairs, numbers.Integral) or pairs < 0:
        raise ConfigError(f"bad pairs {pairs!r}: give 'all' or a non-negative number of pairs")
    if pairs >= len(every):
        return every
    picked = np.random.default_rng(seed).choice(len(every), size=int(pairs), replace=False)
    return [every[i] for i in sorted(picked.tolist())]


def _explicit_pairs(names: list[str], pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The given pairs, checked: two distinct known names each."""
    chosen = []
    for pair in pairs:
        if not (isinstance(pair, tuple | list) and len(pair) == 2 and pair[0] != pair[1]):
            raise ConfigError(f"bad pair {pair!r}: give two distinct model names")
        unknown = [str(name) for name in pair if str(name) not in names]
        if unknown:
            raise ConfigError(f"pair {tuple(pair)!r} names unknown models {unknown}; models: {', '.join(names)}")
        chosen.append((str(pair[0]), str(pair[1])))
    return chosen


def pairwise_curves(
    model: nn.Module,
    states: Mapping[str, Mapping[str, torch.Tensor]],
    data: EvalInput,
    *,
    pairs: Pairs = "all",
    seed: int = 0,
    bn: str = "interpolate",
    bn_data: torch.Tensor | EvalInput | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    **curve_kwargs,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Interpolation curves and barriers between every pair, or a seeded sample of pairs, of several models.

    The paper's measurement between clients (Adilova et al., ICLR 2024, arXiv:2307.06966), run on
    one `CurveEngine`: the model is copied and traced once for all pairs.

    Parameters
    ----------
    model : nn.Module
        Any module with the models' architecture; copied, never changed.
    states : Mapping[str, Mapping[str, torch.Tensor]]
        State dicts by model name (at least two); names become the client_a and client_b columns.
    data : EvalInput
        The evaluation set: an (inputs, labels) pair of tensors or a DataLoader.
    pairs : str, int or list of (str, str), default "all"
        "all" (or 0) for every pair, N for a seeded sample of N distinct pairs, or the pairs to
        measure, in that order (see `select_pairs`).
    seed : int, default 0
        Seeds both the pair sample and the curves.
    bn, bn_data, device, batch_size
        As for `interpolation_curves`.
    **curve_kwargs
        `interpolation_curves`' groups, alphas, bases and random_directions.

    Returns
    -------
    tuple[pandas.DataFrame, pandas.DataFrame]
        (curves, barriers): the tables of `interpolation_curves` and `barriers` for all pairs, with
        client_a and client_b as their first columns.

    Raises
    ------
    ConfigError
        If fewer than two models are given, or an argument is bad (see `interpolation_curves`).
    CheckpointError
        If a state does not fit `model`.
    DataError
        If `data` is not one integer label per input.
    ModelError
        If the model does not return (batch, classes) logits.
    """
    named = {str(name): state for name, state in states.items()}
    if len(named) < 2:
        raise ConfigError(f"pairwise curves need at least two models, got {len(named)}")
    engine = CurveEngine(model, data, bn=bn, bn_data=bn_data, device=device, batch_size=batch_size)
    tables = []
    for name_a, name_b in select_pairs(named, pairs, seed=seed):
        table = engine.curves(named[name_a], named[name_b], seed=seed, **curve_kwargs)
        table.insert(0, "client_b", name_b)
        table.insert(0, "client_a", name_a)
        tables.append(table)
    curves = pd.concat(tables, ignore_index=True)
    return curves, barriers(curves)
