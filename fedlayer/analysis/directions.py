"""The random-direction baseline: a seeded Gaussian direction in one layer, as long as the A-B step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fedlayer.analysis.interpolate import distance


def direction_seed(seed: int, layer_index: int, draw: int) -> int:
    """A seed for (seed, layer, draw): the same direction at every alpha, on every device."""
    return int(np.random.SeedSequence([seed, layer_index, draw]).generate_state(1, dtype=np.uint64)[0] >> 1)


def random_direction(
    state_a: Mapping[str, torch.Tensor],
    state_b: Mapping[str, torch.Tensor],
    keys: Sequence[str],
    *,
    seed: int,
    layer_index: int,
    draw: int,
) -> dict[str, torch.Tensor]:
    """A seeded Gaussian direction in one layer, as long as that layer's step from A to B.

    The random-direction baseline of "Layer-wise Linear Mode Connectivity" (Adilova et al., ICLR
    2024, arXiv:2307.06966): d ~ N(0, I) over the layer's parameters, scaled so that
    ||d|| = ||theta_B - theta_A|| there; the baseline point is theta_base + alpha * d. Drawn in float64
    on the CPU from its own generator (reproducible on any device), then cast to each tensor's dtype
    and device.

    Parameters
    ----------
    state_a, state_b : Mapping[str, torch.Tensor]
        The two models' state dicts; the direction takes `state_a`'s dtypes and devices.
    keys : Sequence[str]
        The layer's parameter keys (floating-point tensors).
    seed : int
        The run's seed.
    layer_index : int
        The layer's position in the model, so each layer gets its own direction.
    draw : int
        Which of several directions for the same layer (0, 1, ...).

    Returns
    -------
    dict[str, torch.Tensor]
        d for each of `keys`; all zeros if A and B agree there.
    """
    generator = torch.Generator().manual_seed(direction_seed(seed, layer_index, draw))
    raw = {key: torch.randn(state_a[key].shape, generator=generator, dtype=torch.float64) for key in keys}
    norm = float(sum(r.pow(2).sum() for r in raw.values()) ** 0.5) if raw else 0.0
    scale = distance(state_a, state_b, keys) / norm if norm > 0 else 0.0
    return {key: (r * scale).to(device=state_a[key].device, dtype=state_a[key].dtype) for key, r in raw.items()}
