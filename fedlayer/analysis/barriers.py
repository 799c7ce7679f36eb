"""Barriers from a curves table (the README's "Concepts and definitions"), computed from the table alone.

For each curve c(alpha) (one group, kind, base, direction and any id columns such as client_a,
client_b, round) and for loss and error alike:
  *_barrier_mid = c(1/2) - (L_A + L_B) / 2          against the mean of the two FULL models
  *_barrier_max = max_alpha [c(alpha) - ((1 - alpha) c(0) + alpha c(1))]   along the curve's own chord
Error barriers are in percentage points. The grid must hold alpha = 0, 1/2 and 1
(`interpolation_curves` always adds them); a curve without them is an error, never a guess.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedlayer.errors import ConfigError

METRICS = ("loss", "error")
ENDPOINT_COLUMNS = ["loss_a", "loss_b", "error_a", "error_b"]
_POINT_COLUMNS = {"alpha", *METRICS, *ENDPOINT_COLUMNS}
BARRIER_COLUMNS = [
    "loss_barrier_mid", "loss_barrier_max", "error_barrier_mid", "error_barrier_max",
    *ENDPOINT_COLUMNS, "loss_c0", "loss_c1", "error_c0", "error_c1",
]  # fmt: skip


def barriers(curves: pd.DataFrame) -> pd.DataFrame:
    """Midpoint and max loss and error barriers of every curve in a curves table.

    Implements the barriers of "Layer-wise Linear Mode Connectivity" (Adilova et al., ICLR 2024,
    arXiv:2307.06966): the midpoint barrier c(1/2) - (L_A + L_B) / 2 against the two full models,
    and the max barrier over the alpha grid above the curve's own chord, which for the full group is
    the linear-mode-connectivity barrier (Frankle et al. 2020, arXiv:1912.05671). Error barriers are
    in percentage points.

    Parameters
    ----------
    curves : pandas.DataFrame
        A curves table (`interpolation_curves`, `pairwise_curves`), possibly concatenated with more
        id columns such as round; every curve needs points at alpha 0, 0.5 and 1.

    Returns
    -------
    pandas.DataFrame
        One row per curve, in the order the curves first appear: its id columns (every column but
        alpha, loss, error and the endpoints) followed by `BARRIER_COLUMNS`.

    Raises
    ------
    ConfigError
        If the table lacks a column, holds two rows for one curve and alpha, or a curve lacks alpha 0, 0.5 or 1.
    """
    missing = sorted({"alpha", *METRICS, *ENDPOINT_COLUMNS} - set(curves.columns))
    if missing:
        raise ConfigError(f"not a curves table: missing columns {', '.join(missing)}")
    keys = [c for c in curves.columns if c not in _POINT_COLUMNS]
    if curves.empty:
        return pd.DataFrame(columns=keys + BARRIER_COLUMNS)
    grouped = curves.groupby(keys, sort=False, dropna=False) if keys else None
    ids = grouped.ngroup().to_numpy() if grouped is not None else np.zeros(len(curves), dtype=int)
    count = ids.max() + 1
    alpha = curves["alpha"].to_numpy(dtype=float)
    if pd.DataFrame({"id": ids, "alpha": alpha}).duplicated().any():
        raise ConfigError("curves table has two rows for the same curve and alpha")
    first = pd.Series(range(len(ids))).groupby(ids).first().to_numpy()
    result = curves.iloc[first][keys].reset_index(drop=True)
    for metric in METRICS:
        values = curves[metric].to_numpy(dtype=float)
        c0, half, c1 = (_at(ids, alpha, values, count, a, curves, keys) for a in (0.0, 0.5, 1.0))
        mean_ends = (curves[f"{metric}_a"].to_numpy(dtype=float) + curves[f"{metric}_b"].to_numpy(dtype=float)) / 2
        excess = values - ((1 - alpha) * c0[ids] + alpha * c1[ids])
        highest = np.full(count, -np.inf)
        np.maximum.at(highest, ids, excess)
        result[f"{metric}_barrier_mid"] = half - mean_ends[first]
        result[f"{metric}_barrier_max"] = highest
        result[f"{metric}_c0"], result[f"{metric}_c1"] = c0, c1
    for column in ENDPOINT_COLUMNS:
        result[column] = curves[column].to_numpy(dtype=float)[first]
    return result[keys + BARRIER_COLUMNS]


def _at(ids, alpha, values, count, where: float, curves, keys) -> np.ndarray:
    """Each curve's value at one alpha; raises naming a curve that lacks it."""
    found = np.full(count, np.nan)
    present = np.zeros(count, dtype=bool)
    mask = np.isclose(alpha, where, rtol=0.0, atol=1e-9)
    found[ids[mask]] = values[mask]
    present[ids[mask]] = True
    if not present.all():
        row = curves.iloc[int(np.flatnonzero(~present[ids])[0])]
        curve = ", ".join(f"{k}={row[k]}" for k in keys)
        raise ConfigError(
            f"curve ({curve}) has no point at alpha={where}; barriers need alphas 0, 0.5 and 1 on the grid"
        )
    return found
