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
    """d ~ N(0, I) over the given (parameter) keys, scaled so that ||d|| = ||theta_B - theta_A|| there.

    Drawn in float64 on the CPU from its own generator (reproducible anywhere), then cast to each
    tensor's dtype and device. The baseline point is theta_base + alpha * d.
    """
    generator = torch.Generator().manual_seed(direction_seed(seed, layer_index, draw))
    raw = {key: torch.randn(state_a[key].shape, generator=generator, dtype=torch.float64) for key in keys}
    norm = float(sum(r.pow(2).sum() for r in raw.values()) ** 0.5) if raw else 0.0
    scale = distance(state_a, state_b, keys) / norm if norm > 0 else 0.0
    return {key: (r * scale).to(device=state_a[key].device, dtype=state_a[key].dtype) for key, r in raw.items()}
