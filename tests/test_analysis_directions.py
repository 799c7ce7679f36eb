"""The random-direction baseline: seeded, one direction for all alphas, as long as the A-B step."""

import pytest
import torch

from fedlayer.analysis import interpolation_curves, random_direction
from fedlayer.analysis.interpolate import distance
from fedlayer.models import build_model


@pytest.fixture(scope="module")
def setup():
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append(build_model("cnn", (1, 8, 8), 10).state_dict())
    generator = torch.Generator().manual_seed(0)
    data = (torch.randn(40, 1, 8, 8, generator=generator), torch.randint(0, 10, (40,), generator=generator))
    return build_model("cnn", (1, 8, 8), 10), states, data


def test_direction_norm_equals_the_layer_distance_and_depends_on_seed_layer_and_draw(setup):
    _, (state_a, state_b), _ = setup
    keys = ["conv2.weight", "conv2.bias"]
    d = random_direction(state_a, state_b, keys, seed=0, layer_index=1, draw=0)
    norm = float(sum(d[k].double().pow(2).sum() for k in keys) ** 0.5)
    assert norm == pytest.approx(distance(state_a, state_b, keys), rel=1e-6)
    assert all(torch.equal(d[k], random_direction(state_a, state_b, keys, seed=0, layer_index=1, draw=0)[k])
               for k in keys)  # fmt: skip
    for other in (dict(seed=1, layer_index=1, draw=0), dict(seed=0, layer_index=2, draw=0),
                  dict(seed=0, layer_index=1, draw=1)):  # fmt: skip
        assert not torch.equal(d["conv2.weight"], random_direction(state_a, state_b, keys, **other)["conv2.weight"])


def test_same_seed_same_rows_and_another_seed_other_rows(setup):
    model, (state_a, state_b), data = setup
    kwargs = dict(groups="layers", alphas=3, random_directions=2)
    first = interpolation_curves(model, state_a, state_b, data, seed=7, **kwargs)
    again = interpolation_curves(model, state_a, state_b, data, seed=7, **kwargs)
    other = interpolation_curves(model, state_a, state_b, data, seed=8, **kwargs)
    random = first["kind"] == "random-direction"
    assert random.sum() == 4 * 2 * 2 * 3  # layers x draws x bases x alphas
    assert first.equals(again)
    assert not first.loc[random, "loss"].equals(other.loc[random, "loss"])
    assert first.loc[~random, "loss"].equals(other.loc[~random, "loss"])
    assert set(first.loc[random, "direction"]) == {0, 1} and set(first.loc[~random, "direction"]) == {-1}
    base_rows = first[random & (first["alpha"] == first["base"].map({"a": 0.0, "b": 1.0}))]
    assert (base_rows["loss"] == base_rows["base"].map({"a": first.loss_a[0], "b": first.loss_b[0]})).all()


def test_directions_cover_the_layers_of_the_requested_groups_only(setup):
    model, (state_a, state_b), data = setup
    curves = interpolation_curves(model, state_a, state_b, data, groups="fc2", alphas=3, random_directions=1)
    assert set(curves.loc[curves["kind"] == "random-direction", "group"]) == {"fc2"}
