"""The barrier engine against a straightforward per-point reference (copy, load, full pass)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedlayer.analysis import CurveEngine, interpolation_curves, random_direction
from fedlayer.data import load_dataset
from fedlayer.errors import FedlayerError
from fedlayer.layers import model_layers
from fedlayer.models import build_model
from fedlayer.task_kinds import flat_predictions

SAMPLES = 96


class TinyResNet(nn.Module):
    """Stem, two residual blocks (one with a 1x1 downsample), head; in-place ReLUs and `+=` as torchvision."""

    def __init__(self, norm: bool = False):
        super().__init__()
        make_norm = nn.BatchNorm2d if norm else (lambda c: nn.Identity())
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.bn0 = make_norm(8)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn1 = make_norm(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.bn2 = make_norm(16)
        self.down = nn.Conv2d(8, 16, 1, stride=2)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.relu(self.bn0(self.stem(x)))
        out = self.relu(self.bn1(self.conv1(x)))
        out += x
        identity = self.down(out)
        out = self.bn2(self.conv2(out))
        out += identity
        out = F.relu(out, inplace=True)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits")
    return data.test_x[:SAMPLES], data.test_y[:SAMPLES], data.train_x[:64]


def _states(make, seeds=(1, 2)):
    states = []
    for seed in seeds:
        torch.manual_seed(seed)
        model = make()
        with torch.no_grad():  # random BN statistics, so that interpolating them matters
            for module in model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.normal_(0, 0.5)
                    module.running_var.uniform_(0.5, 2.0)
                    module.weight.uniform_(0.5, 1.5)
        states.append(model.state_dict())
    return states


def reference_loss(model, state, x, y, bn_x=None):
    """The naive method: a fresh copy, load_state_dict, BN re-estimation if asked, one full pass."""
    model = copy.deepcopy(model)
    model.load_state_dict(state)
    if bn_x is not None:
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None
        model.train()
        with torch.no_grad():
            for start in range(0, len(bn_x), 32):  # the engine's batch size below
                model(bn_x[start : start + 32])
    model.eval()
    with torch.no_grad():
        logits, labels = flat_predictions(model(x), y)  # one row per prediction: per sample, or per position
    error = 100.0 - 100.0 * float((logits.argmax(1) == labels).double().mean())
    return float(F.cross_entropy(logits.double(), labels)), error


def reference_state(model, state_a, state_b, row):
    """The point a curves row stands for, built from the formulas of the README's "Concepts and definitions"."""
    base = state_a if row.base == "a" else state_b
    point = dict(base)
    names = row.layers.split("|")
    layers = [layer for layer in model_layers(model) if layer.name in names]
    if row.kind == "random-direction":
        params = dict(model.named_parameters(remove_duplicate=False))
        tied: dict[int, list[str]] = {}  # one parameter under several names (gpt's wte and lm_head): one direction
        for key in (k for k in layers[0].keys if k in params):
            tied.setdefault(id(params[key]), []).append(key)
        keys = [aliases[0] for aliases in tied.values()]
        d = random_direction(state_a, state_b, keys, seed=0, layer_index=layers[0].index, draw=row.direction)
        t = row.alpha if row.base == "a" else 1 - row.alpha
        return point | {k: base[aliases[0]] + t * d[aliases[0]] for aliases in tied.values() for k in aliases}
    for key in (k for layer in layers for k in layer.keys):
        if base[key].is_floating_point():
            point[key] = (1 - row.alpha) * state_a[key] + row.alpha * state_b[key]
    return point


CASES = {
    "mlp": (lambda: build_model("mlp", (1, 8, 8), 10), ["layers", "shallow", "window:2"], "interpolate", 1),
    "cnn-bn": (lambda: build_model("cnn", (1, 8, 8), 10, norm="bn"), ["layers", "full", "deep"], "interpolate", 0),
    "cnn-bn-recompute": (lambda: build_model("cnn", (1, 8, 8), 10, norm="bn"), ["layers", "full"], "recompute", 0),
    "resnet": (TinyResNet, ["layers", "full", "minimal", "window:3", "conv1,fc"], "interpolate", 1),
    "resnet-bn-recompute": (lambda: TinyResNet(norm=True), ["shallow"], "recompute", 0),
    "vit": (
        lambda: build_model("vit", (1, 8, 8), 10, options=dict(dim=16, depth=2, heads=2, dim_head=8, mlp_dim=32)),
        ["layers", "full", "blocks.1", "norm"],
        "interpolate",
        1,
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_every_point_matches_the_naive_reference(digits, case):
    make, groups, bn, directions = CASES[case]
    x, y, bn_x = digits
    state_a, state_b = _states(make)
    model = make()
    engine = CurveEngine(model, (x, y), bn=bn, bn_data=bn_x, batch_size=32)
    assert engine.evaluator_name == ("plain" if bn == "recompute" else "graph")
    curves = engine.curves(state_a, state_b, groups=groups, alphas=[0, 0.3, 0.5, 1], random_directions=directions)
    assert set(curves["base"]) == {"a", "b"} and set(curves["bn"]) == {bn}
    assert (curves["kind"] == "random-direction").any() == bool(directions)
    for row in curves.itertuples():
        loss, error = reference_loss(model, reference_state(model, state_a, state_b, row), x, y,
                                     bn_x if bn == "recompute" else None)  # fmt: skip
        assert row.loss == pytest.approx(loss, abs=1e-6), row
        assert row.error == pytest.approx(error, abs=1e-9), row
    endpoint_a = reference_loss(model, state_a, x, y, bn_x if bn == "recompute" else None)[0]
    assert curves["loss_a"].to_numpy() == pytest.approx(endpoint_a, abs=1e-6)


LANGUAGE_CASES = {  # vocabulary 20, windows of 12 tokens; gpt with dropout, which evaluation must switch off
    "gpt": (
        lambda: build_model("gpt", (12,), 20, task="language", options=GPT_OPTIONS),
        ["layers", "full", "transformer.h.1", "transformer.wte"],
    ),
    "lstm": (lambda: build_model("lstm", (12,), 20, task="language", options={"hidden_size": 16}), ["layers", "full"]),
}
GPT_OPTIONS = {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 16, "dropout": 0.3}


@pytest.mark.parametrize("case", LANGUAGE_CASES)
def test_every_point_of_a_language_model_matches_the_naive_reference(case):
    make, groups = LANGUAGE_CASES[case]
    generator = torch.Generator().manual_seed(0)
    x, y = (torch.randint(0, 20, (24, 12), generator=generator) for _ in range(2))
    state_a, state_b = _states(make)
    model = make()
    engine = CurveEngine(model, (x, y), batch_size=10)
    assert engine.evaluator_name == "graph", engine.fallback
    curves = engine.curves(state_a, state_b, groups=groups, alphas=[0, 0.3, 0.5, 1], random_directions=1)
    assert set(curves["base"]) == {"a", "b"} and (curves["kind"] == "random-direction").any()
    for row in curves.itertuples():
        loss, error = reference_loss(model, reference_state(model, state_a, state_b, row), x, y)
        assert row.loss == pytest.approx(loss, abs=1e-6), row
        assert row.error == pytest.approx(error, abs=1e-9), row


def test_identical_models_have_zero_barriers(digits):
    from fedlayer.analysis import barriers

    x, y, _ = digits
    state = _states(TinyResNet, seeds=(3,))[0]
    curves = interpolation_curves(TinyResNet(), state, state, (x, y), groups=["layers", "full", "deep"], alphas=5)
    table = barriers(curves)
    columns = ["loss_barrier_mid", "loss_barrier_max", "error_barrier_mid", "error_barrier_max"]
    assert table[columns].abs().to_numpy().max() <= 1e-6
    assert (curves["loss"] - curves["loss_a"]).abs().max() <= 1e-6


def test_swapping_the_models_mirrors_the_curves(digits):
    x, y, _ = digits
    state_a, state_b = _states(TinyResNet)
    kwargs = dict(groups=["layers", "window:2", "full"], alphas=5)
    forward = interpolation_curves(TinyResNet(), state_a, state_b, (x, y), **kwargs)
    backward = interpolation_curves(TinyResNet(), state_b, state_a, (x, y), **kwargs)
    mirror = backward.assign(base=backward["base"].map({"a": "b", "b": "a"}), alpha=1 - backward["alpha"])
    merged = forward.merge(mirror, on=["group", "kind", "base", "alpha"], suffixes=("", "_m"))
    assert len(merged) == len(forward)
    assert merged["loss"].to_numpy() == pytest.approx(merged["loss_m"].to_numpy(), abs=1e-6)


def test_full_path_is_shared_by_both_bases(digits):
    x, y, _ = digits
    state_a, state_b = _states(TinyResNet)
    curves = interpolation_curves(TinyResNet(), state_a, state_b, (x, y), groups="full", alphas=5)
    a, b = (curves[curves["base"] == base].reset_index(drop=True) for base in ("a", "b"))
    assert (a["loss"] == b["loss"]).all()
    assert a["loss"].iloc[0] == a["loss_a"].iloc[0] and a["loss"].iloc[-1] == a["loss_b"].iloc[0]


def test_one_base_dataloader_and_batch_size_give_the_same_numbers(digits):
    x, y, _ = digits
    state_a, state_b = _states(TinyResNet)
    kwargs = dict(groups=["layers", "full"], alphas=3)
    whole = interpolation_curves(TinyResNet(), state_a, state_b, (x, y), batch_size=1000, **kwargs)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=10, shuffle=True)
    chunked = interpolation_curves(TinyResNet(), state_a, state_b, loader, batch_size=7, bases="b", **kwargs)
    expected = whole[whole["base"] == "b"].reset_index(drop=True)
    assert list(chunked["base"].unique()) == ["b"]
    assert chunked["loss"].to_numpy() == pytest.approx(expected["loss"].to_numpy(), abs=1e-6)


def test_alpha_grid_always_holds_the_ends_and_the_midpoint(digits):
    x, y, _ = digits
    state_a, state_b = _states(TinyResNet)
    curves = interpolation_curves(TinyResNet(), state_a, state_b, (x, y), groups="fc", alphas=4)
    assert sorted(curves["alpha"].unique()) == pytest.approx([0, 1 / 3, 0.5, 2 / 3, 1])
    assert list(curves["group"].unique()) == ["fc"] and set(curves["kind"]) == {"selector"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(alphas=1), "at least 2"),
        (dict(alphas=[0.2, 1.5]), "[0, 1]"),
        (dict(alphas="many"), "bad alphas"),
        (dict(bn="sometimes"), "valid choices: interpolate, recompute"),
        (dict(bases=("c",)), "bad bases"),
        (dict(groups="window:x"), "window:W"),
        (dict(groups="nosuchlayer"), "matches no layer"),
        (dict(random_directions=-1), "non-negative"),
        (dict(batch_size=0), "batch_size"),
    ],
)
def test_bad_arguments_are_clear_errors(digits, kwargs, message):
    x, y, _ = digits
    state_a, state_b = _states(TinyResNet)
    with pytest.raises(FedlayerError, match=message.replace("[", r"\[").replace("]", r"\]")):
        interpolation_curves(TinyResNet(), state_a, state_b, (x, y), **kwargs)


def test_a_state_of_another_model_is_a_clear_error(digits):
    x, y, _ = digits
    state_a = _states(TinyResNet)[0]
    other = build_model("mlp", (1, 8, 8), 10).state_dict()
    with pytest.raises(FedlayerError, match="state_b does not fit the model; missing keys: stem.weight"):
        interpolation_curves(TinyResNet(), state_a, other, (x, y))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(digits):
    x, y, _ = digits
    state_a, state_b = _states(TinyResNet)
    kwargs = dict(groups=["layers", "full"], alphas=3, random_directions=1)
    cpu = interpolation_curves(TinyResNet(), state_a, state_b, (x, y), **kwargs)
    gpu = interpolation_curves(TinyResNet(), state_a, state_b, (x, y), device="cuda", **kwargs)
    assert gpu["loss"].to_numpy() == pytest.approx(cpu["loss"].to_numpy(), abs=1e-4)


def test_curves_run_in_plain_float32_and_leave_the_tf32_flags_as_they_were():
    from fedlayer.analysis.evaluate import full_precision

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        with full_precision():
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
