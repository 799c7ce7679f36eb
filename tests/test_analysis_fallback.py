"""Models torch.fx cannot trace run with full forward passes and give the same numbers."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedlayer.analysis import CurveEngine


class Straight(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 4)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        h = h + F.relu(self.fc2(h))
        return self.fc3(h)


class Branchy(Straight):
    """The same function, with data-dependent control flow that symbolic tracing rejects."""

    def forward(self, x):
        h = F.relu(self.fc1(x))
        if h.sum() >= 0:  # always true after a ReLU
            h = h + F.relu(self.fc2(h))
        return self.fc3(h)


class InPlace(Straight):
    """The same function written with in-place operations: the fast path rewrites them."""

    def forward(self, x):
        h = F.relu(self.fc1(x), inplace=True)
        g = self.fc2(h)
        g.relu_()
        h += g
        return self.fc3(h)


@pytest.fixture(scope="module")
def setup():
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append(Straight().state_dict())
    generator = torch.Generator().manual_seed(0)
    data = (torch.randn(50, 16, generator=generator), torch.randint(0, 4, (50,), generator=generator))
    return states, data


@pytest.mark.parametrize(("cls", "evaluator"), [(Branchy, "plain"), (InPlace, "graph")])
def test_same_numbers_as_the_traceable_model(setup, cls, evaluator):
    (state_a, state_b), data = setup
    kwargs = dict(groups=["layers", "full", "deep"], alphas=5, random_directions=1)
    reference = CurveEngine(Straight(), data)
    engine = CurveEngine(cls(), data)
    assert reference.evaluator_name == "graph" and engine.evaluator_name == evaluator
    expected, got = reference.curves(state_a, state_b, **kwargs), engine.curves(state_a, state_b, **kwargs)
    assert got["loss"].to_numpy() == pytest.approx(expected["loss"].to_numpy(), abs=1e-6)
    assert (got["error"] == expected["error"]).all()
