"""The GPU paths give the CPU's results: the barrier engine (fast graph path and plain path) and a
client's local training and evaluation. Skipped without a CUDA device (`make gpu-check` runs them).

GPU kernels sum in other orders than the CPU's, so results agree to a tolerance, not bit for bit.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from fedlayer.analysis import CurveEngine
from fedlayer.data import load_dataset
from fedlayer.models import build_model
from fedlayer.training import TrainSettings, default_device, evaluate, seed_everything, train_local

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _pair(name: str, shape, norm: str):
    """Two models of one architecture from one initialisation, moved apart as two clients would be."""
    torch.manual_seed(0)
    model = build_model(name, shape, 10, norm=norm)
    generator = torch.Generator().manual_seed(1)
    states = []
    for _ in range(2):
        state = {k: v.clone() for k, v in model.state_dict().items()}
        for key, value in state.items():
            if value.is_floating_point() and not key.endswith(("running_mean", "running_var")):
                state[key] = value + 0.05 * value.std().nan_to_num(1.0) * torch.randn(value.shape, generator=generator)
        states.append(state)
    return model, states


@pytest.fixture(autouse=True)
def all_cores():
    """The CPU reference may use every core (the suite runs one thread per process)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("norm", "bn", "groups"),
    [("none", "interpolate", ["layers", "full"]), ("bn", "recompute", ["full", "first:2", "last:2"])],
)
def test_engine_on_cuda_gives_the_cpu_curves(norm, bn, groups):
    model, (state_a, state_b) = _pair("resnet18", (3, 32, 32), norm)
    generator = torch.Generator().manual_seed(2)
    data = (torch.randn(48, 3, 32, 32, generator=generator), torch.randint(0, 10, (48,), generator=generator))
    bn_data = torch.randn(32, 3, 32, 32, generator=generator) if bn == "recompute" else None
    kwargs = dict(groups=groups, alphas=3, random_directions=int(bn == "interpolate"))
    curves = {}
    for device in ("cpu", "cuda"):
        engine = CurveEngine(model, data, bn=bn, bn_data=bn_data, device=device, batch_size=64)
        curves[device] = engine.curves(state_a, state_b, **kwargs)
        if bn == "interpolate":
            assert engine.evaluator_name == "graph"  # the fast path, not the fallback
    assert len(curves["cuda"]) == len(curves["cpu"])
    assert curves["cuda"]["loss"].to_numpy() == pytest.approx(curves["cpu"]["loss"].to_numpy(), abs=1e-3, rel=1e-3)
    flips = (curves["cuda"]["error"] - curves["cpu"]["error"]).abs().max()
    assert flips <= 2 * 100 / 48  # at most two of 48 predictions change on a near-tie


def test_a_clients_training_and_evaluation_on_cuda_track_the_cpus():
    assert default_device().type == "cuda"
    data = load_dataset("digits")
    settings = TrainSettings(epochs=2, batch_size=32, lr=0.05, momentum=0.9)
    torch.manual_seed(0)
    initial = build_model("cnn", data.input_shape, data.num_classes)
    results = {}
    for device in ("cpu", "cuda"):
        model = copy.deepcopy(initial).to(device)
        train = train_local(
            model, data.train_x, data.train_y, settings, generator=seed_everything(0, 1, 1), device=device
        )
        test = evaluate(model, data.test_x, data.test_y, device=device)
        results[device] = (train, test, {k: v.cpu() for k, v in model.state_dict().items()})
    (cpu_train, cpu_test, _), (gpu_train, gpu_test, gpu_state) = results["cpu"], results["cuda"]
    assert gpu_train.loss == pytest.approx(cpu_train.loss, abs=0.05)
    assert gpu_test.accuracy == pytest.approx(cpu_test.accuracy, abs=0.03)
    assert gpu_test.accuracy > 0.8  # it learned, on the GPU
    model = build_model("cnn", data.input_shape, data.num_classes)
    model.load_state_dict(gpu_state)  # what a client replies loads on a CPU server
    assert evaluate(model, data.test_x, data.test_y).loss == pytest.approx(gpu_test.loss, abs=1e-4)
