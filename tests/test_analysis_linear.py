"""Deep linear networks (the paper's Section 4): no single-layer barrier, yet a full-model one."""

import pytest
import torch
import torch.nn.functional as F

from fedlayer.analysis import barriers, interpolation_curves
from fedlayer.data import load_dataset
from fedlayer.models import build_model


def _train(model, x, y, steps=300, lr=0.05, seed=0):
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        batch = torch.randint(0, len(x), (64,), generator=generator)
        optimiser.zero_grad()
        F.cross_entropy(model(x[batch]), y[batch]).backward()
        optimiser.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def setup():
    data = load_dataset("digits")
    torch.manual_seed(0)
    init = build_model("deep-linear", data.input_shape, data.num_classes).state_dict()
    halves = []
    for part, (low, high) in enumerate(((0, 5), (5, 10))):  # two clients with disjoint label sets
        mask = (data.train_y >= low) & (data.train_y < high)
        model = build_model("deep-linear", data.input_shape, data.num_classes)
        model.load_state_dict(init)
        halves.append(_train(model, data.train_x[mask], data.train_y[mask], seed=part))
    return build_model("deep-linear", data.input_shape, data.num_classes), halves, (data.test_x, data.test_y)


def test_no_single_layer_barrier_between_trained_deep_linear_networks(setup):
    model, (state_a, state_b), data = setup
    table = barriers(interpolation_curves(model, state_a, state_b, data, groups=["layers", "full"], alphas=11))
    layers = table[table["kind"] == "layer"]
    assert len(layers) == 2 * 4  # fc1..fc4 on both bases
    assert layers["loss_barrier_max"].max() <= 1e-6
    assert (layers["loss_c1"] - layers["loss_c0"]).abs().max() > 0.1  # the paths do go somewhere


def test_a_sign_flipped_twin_has_the_same_function_but_a_full_model_barrier(setup):
    model, (state, _), (x, y) = setup
    x, y = x[y < 5], y[y < 5]  # the labels this model was trained on
    twin = dict(state)
    for key in ("fc1.weight", "fc1.bias", "fc2.weight"):  # -W2 (-W1 x - b1) = W2 (W1 x + b1)
        twin[key] = -state[key]
    curves = interpolation_curves(model, state, twin, (x, y), groups=["full", "layers"], alphas=5)
    table = barriers(curves).set_index(["group", "base"])
    assert table.loc[("full", "a"), "loss_a"] == pytest.approx(table.loc[("full", "a"), "loss_b"], abs=1e-5)
    assert table.loc[("full", "a"), "loss_barrier_mid"] > 1.0  # fc1 and fc2 are zero at the midpoint
    assert table.loc[("full", "a"), "loss_barrier_max"] > 1.0
    assert table.loc[table["kind"] == "layer", "loss_barrier_max"].max() <= 1e-6
