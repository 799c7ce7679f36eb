"""BatchNorm policies: recompute re-estimates running stats on training data; interpolate never reads it."""

import pytest
import torch
from torch import nn

from fedlayer.analysis import CurveEngine, interpolation_curves
from fedlayer.analysis.evaluate import WorkingModel
from fedlayer.data import load_dataset
from fedlayer.errors import FedlayerError
from fedlayer.models import build_model


@pytest.fixture(scope="module")
def setup():
    data = load_dataset("digits")
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = build_model("cnn", data.input_shape, data.num_classes, norm="bn")
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.normal_(0, 1)
                    module.running_var.uniform_(0.2, 3.0)
        states.append(model.state_dict())
    model = build_model("cnn", data.input_shape, data.num_classes, norm="bn")
    return model, states, (data.test_x[:64], data.test_y[:64]), data.train_x[:96]


class _Untouchable(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        raise AssertionError("bn_data must not be read under bn='interpolate'")


def test_recompute_sets_the_running_stats_to_the_training_data_statistics(setup):
    model, (state, _), _, bn_x = setup
    work = WorkingModel(model, torch.device("cpu"))
    work.load(state)
    with torch.inference_mode():
        work.recompute_bn(bn_x, batch_size=len(bn_x))  # one batch: the stats are that batch's
    features = work.model.conv1(bn_x)
    assert work.model.norm1.running_mean == pytest.approx(features.mean(dim=(0, 2, 3)), abs=1e-5)
    assert work.model.norm1.running_var == pytest.approx(features.var(dim=(0, 2, 3)), rel=1e-4)
    assert not torch.allclose(work.model.norm1.running_mean, state["norm1.running_mean"])
    assert work.model.norm1.momentum == 0.1 and not work.model.norm1.training


def test_recompute_changes_the_losses_and_interpolate_leaves_bn_data_unread(setup):
    model, (state_a, state_b), data, bn_x = setup
    kwargs = dict(groups=["layers", "full"], alphas=3)
    untouchable = torch.utils.data.DataLoader(_Untouchable())
    interpolated = interpolation_curves(model, state_a, state_b, data, bn_data=untouchable, **kwargs)
    recomputed = interpolation_curves(model, state_a, state_b, data, bn="recompute", bn_data=bn_x, **kwargs)
    assert set(interpolated["bn"]) == {"interpolate"} and set(recomputed["bn"]) == {"recompute"}
    assert (interpolated["loss"] - recomputed["loss"]).abs().min() > 1e-4  # every point, endpoints included


def test_recompute_needs_bn_data_only_when_the_model_has_batchnorm(setup):
    model, (state_a, state_b), data, _ = setup
    with pytest.raises(FedlayerError, match="needs bn_data"):
        interpolation_curves(model, state_a, state_b, data, bn="recompute")
    plain = build_model("cnn", (1, 8, 8), 10)
    torch.manual_seed(5)
    other = build_model("cnn", (1, 8, 8), 10).state_dict()
    engine = CurveEngine(plain, data, bn="recompute")  # no BatchNorm: the same as interpolate
    assert engine.evaluator_name == "graph"
    recomputed = engine.curves(plain.state_dict(), other, groups="layers", alphas=3)
    interpolated = interpolation_curves(plain, plain.state_dict(), other, data, groups="layers", alphas=3)
    assert (recomputed["loss"] == interpolated["loss"]).all()
