"""Models torch.fx cannot trace run with full forward passes, give the same numbers, and say so."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from test_analysis_curves import reference_loss, reference_state
from torch import nn

from fedlayer import models
from fedlayer.analysis import CurveEngine, interpolation_curves
from fedlayer.checkpoints import save_checkpoint
from fedlayer.cli import main


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


class NumpyReLU(torch.autograd.Function):
    """A custom autograd function computed outside torch (as a C extension would be): tracing fails."""

    @staticmethod
    def forward(ctx, x):
        return torch.from_numpy(np.maximum(x.detach().cpu().numpy(), 0)).to(x.device)

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError  # never called: the engine only evaluates


class CustomAutograd(Straight):
    def forward(self, x):
        h = NumpyReLU.apply(self.fc1(x))
        h = h + NumpyReLU.apply(self.fc2(h))
        return self.fc3(h)


class WithBatchNorm(Straight):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(32)

    def forward(self, x):
        return self.fc3(F.relu(self.bn(self.fc1(x))))


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


@pytest.mark.parametrize("cls", [Branchy, CustomAutograd])
def test_an_untraceable_model_matches_the_naive_reference(setup, cls):
    (state_a, state_b), (x, y) = setup
    model = cls()
    engine = CurveEngine(model, (x, y))
    assert engine.evaluator_name == "plain"
    curves = engine.curves(state_a, state_b, groups=["layers", "full", "deep"], alphas=5, random_directions=1)
    for row in curves.itertuples():
        loss, error = reference_loss(model, reference_state(model, state_a, state_b, row), x, y)
        assert row.loss == pytest.approx(loss, abs=1e-6), row
        assert row.error == pytest.approx(error, abs=1e-9), row


@pytest.mark.parametrize(
    ("cls", "bn", "engine", "fallback"),
    [
        (Straight, "interpolate", "graph", ""),
        (InPlace, "interpolate", "graph", ""),
        (Branchy, "interpolate", "plain", "the fast path cannot run Branchy: torch.fx cannot trace it (TraceError: "
         "symbolically traced variables cannot be used as inputs to control flow)"),
        (CustomAutograd, "interpolate", "plain", "the fast path cannot run CustomAutograd: torch.fx cannot trace it"),
        (WithBatchNorm, "recompute", "plain", "bn='recompute' re-estimates BatchNorm statistics at every point"),
        (WithBatchNorm, "interpolate", "graph", ""),
    ],
)  # fmt: skip
def test_the_result_says_which_path_the_engine_took(setup, cls, bn, engine, fallback):
    _, (x, y) = setup
    model = cls()
    state = model.state_dict()
    curves = interpolation_curves(model, state, state, (x, y), groups="full", alphas=3, bn=bn, bn_data=x)
    note = curves.attrs["engine_fallback"]
    assert curves.attrs["engine"] == engine
    assert note.startswith(fallback) and (note == "") == (fallback == "")


def _branchy_forward(self, x):
    if x.sum() > float("-inf"):  # always true; torch.fx cannot trace the branch
        return super(type(self), self).forward(x)
    return x


def test_fedlayer_barrier_prints_the_path_and_why(tmp_path, monkeypatch, capsys):
    build = models.build_model

    def branchy(*args, **kwargs):  # the registry's CNN with data-dependent control flow
        model = build(*args, **kwargs)
        model.__class__ = type("BranchyCNN", (type(model),), {"forward": _branchy_forward})
        return model

    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        paths.append(save_checkpoint(build("cnn", (1, 8, 8), 10).state_dict(), tmp_path / f"{seed}.safetensors"))
    monkeypatch.setattr(models, "build_model", branchy)
    code = main(["barrier", *map(str, paths), "--model", "cnn", "--dataset", "digits", "--samples", "32",
                 "--groups", "full", "--alphas", "3", "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 0
    reason = (
        "the fast path cannot run BranchyCNN: torch.fx cannot trace it (TraceError: symbolically traced variables "
        "cannot be used as inputs to control flow)"
    )
    assert f"engine: plain path (full forward passes), because {reason}" in capsys.readouterr().out
    stored = pd.read_parquet(tmp_path / "out" / "curves.parquet").attrs
    assert stored == {"engine": "plain", "engine_fallback": reason}


def test_a_hugging_face_causal_language_model_falls_back_with_the_naive_reference_s_numbers(tmp_path):
    folder = tmp_path / "tiny-gpt2"  # GPT-2's wte and lm_head are tied: one layer, interpolated as one tensor
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 16, "n_layer": 1, "n_head": 2}))
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append(models.build_model(f"hf:{folder}", (12,), 20, task="language").state_dict())
    model = models.build_model(f"hf:{folder}", (12,), 20, task="language")
    generator = torch.Generator().manual_seed(0)
    x, y = (torch.randint(0, 20, (16, 12), generator=generator) for _ in range(2))
    engine = CurveEngine(model, (x, y), batch_size=6)
    assert engine.evaluator_name == "plain"
    assert engine.fallback.startswith("the fast path cannot run GPT2LMHeadModel: torch.fx cannot trace it")
    curves = engine.curves(*states, groups=["layers", "full"], alphas=3, random_directions=1)
    assert "transformer.wte" in set(curves["group"])
    for row in curves.itertuples():
        loss, error = reference_loss(model, reference_state(model, *states, row), x, y)
        assert row.loss == pytest.approx(loss, abs=1e-6), row
        assert row.error == pytest.approx(error, abs=1e-9), row
