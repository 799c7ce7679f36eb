"""Pure functions over state dicts: interpolation on a base, the alpha grid, distances."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

from fedlayer.errors import ConfigError, choices_message

BASES = ("a", "b")
"""The model that keeps every layer outside the interpolated group: A or B."""
_ALPHA_DECIMALS = 12  # linspace's 0.30000000000000004 and a user's 0.3 are the same grid point


def interpolate_state(
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    alpha: float,
    *,
    keys: Iterable[str] | None = None,
    base: str = "a",
) -> dict[str, torch.Tensor]:
    """theta_base^S(alpha): the base model with the keys S (default: all) set to (1-alpha)*A + alpha*B.

    The group interpolation of arXiv:2307.06966. Floating-point tensors follow `torch.lerp`, exact at
    both ends; integer tensors (BatchNorm's num_batches_tracked) keep the base model's value.

    Raises
    ------
    ConfigError
        If `base` is not one of `BASES`.
    """
    if base not in BASES:
        raise ConfigError(choices_message("base", base, BASES))
    result = dict(state_a if base == "a" else state_b)
    for key in state_a if keys is None else keys:
        if state_a[key].is_floating_point():
            result[key] = torch.lerp(state_a[key], state_b[key].to(state_a[key].dtype), alpha)
    return result


def distance(state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor], keys: Iterable[str]) -> float:
    """Euclidean distance between two states over the given keys (float64 sums)."""
    total = sum(float((state_b[k].double() - state_a[k].double()).pow(2).sum()) for k in keys)
    return math.sqrt(total)


def alpha_grid(alphas: int | Sequence[float]) -> tuple[float, ...]:
    """The sorted alpha grid: a count (evenly spaced, endpoints included) or a list of values in [0, 1].

    0, 0.5 and 1 are always added: the barriers need both curve endpoints and the midpoint.

    Raises
    ------
    ConfigError
        If a count is below 2, or a value is not a number in [0, 1].
    """
    if isinstance(alphas, numbers.Integral) and not isinstance(alphas, bool):
        if alphas < 2:
            raise ConfigError(f"bad alphas {alphas!r}: a count of alphas must be at least 2")
        values = np.linspace(0.0, 1.0, int(alphas)).tolist()
    elif isinstance(alphas, Iterable) and not isinstance(alphas, str | bytes):
        try:
            values = [float(a) for a in alphas]
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad alphas {alphas!r}: values must be numbers in [0, 1]") from exc
        bad = [a for a in values if not (math.isfinite(a) and 0.0 <= a <= 1.0)]
        if bad:
            raise ConfigError(f"bad alphas {bad}: every alpha must be a number in [0, 1]")
    else:
        raise ConfigError(f"bad alphas {alphas!r}: give a count (>= 2) or a list of numbers in [0, 1]")
    return tuple(sorted({round(a, _ALPHA_DECIMALS) for a in (*values, 0.0, 0.5, 1.0)}))
