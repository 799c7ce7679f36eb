"""The engine's CPU max pool gives exactly nn.MaxPool2d's numbers, and only replaces plain max pools."""

import pytest
import torch
from torch import nn

from fedlayer.analysis import CurveEngine
from fedlayer.analysis.pooling import StridedMaxPool2d, use_strided_max_pools
from fedlayer.models import build_model

CONFIGS = [
    dict(kernel_size=2),
    dict(kernel_size=3),
    dict(kernel_size=3, stride=2),
    dict(kernel_size=(2, 3), stride=(1, 2)),
    dict(kernel_size=2, stride=1, dilation=2),
    dict(kernel_size=3, stride=2, padding=1),  # padded: the stock kernel
    dict(kernel_size=2, ceil_mode=True),  # ceil mode: the stock kernel
]
SHAPES = [(4, 3, 28, 28), (2, 5, 13, 11), (3, 9, 7)]


@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_bit_for_bit_the_stock_max_pool(config, shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    x[..., 0, 0] = float("-inf")
    x[..., 1, 2] = float("nan")
    stock, strided = nn.MaxPool2d(**config), StridedMaxPool2d.replacing(nn.MaxPool2d(**config))
    assert strided._strided(x) == ("padding" not in config and "ceil_mode" not in config)
    assert torch.equal(strided(x).isnan(), stock(x).isnan())
    assert torch.equal(torch.nan_to_num(strided(x)), torch.nan_to_num(stock(x)))


def test_channels_last_input_and_returned_indices_use_the_stock_kernel():
    x = torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    assert torch.equal(StridedMaxPool2d(2)(x), nn.MaxPool2d(2)(x))
    with_indices = StridedMaxPool2d.replacing(nn.MaxPool2d(2, return_indices=True))(x)
    expected = nn.MaxPool2d(2, return_indices=True)(x)
    assert all(torch.equal(got, want) for got, want in zip(with_indices, expected, strict=True))


def test_replaces_plain_max_pools_only_and_keeps_the_state():
    class OwnPool(nn.MaxPool2d):
        pass

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Sequential(nn.ReLU(), nn.MaxPool2d(3, 1)), OwnPool(2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    use_strided_max_pools(model)
    assert type(model[1]) is StridedMaxPool2d and type(model[2][1]) is StridedMaxPool2d
    assert (model[2][1].kernel_size, model[2][1].stride) == (3, 1)
    assert type(model[3]) is OwnPool  # a user's subclass may do something else: left alone
    assert model.state_dict().keys() == state.keys()


def test_the_engine_pools_on_a_private_copy_and_keeps_the_fast_path():
    model = build_model("cnn", (1, 28, 28), 10)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    engine = CurveEngine(model, (x, y))
    assert engine.evaluator_name == "graph"
    assert type(model.pool) is nn.MaxPool2d and type(engine.work.model.pool) is StridedMaxPool2d
    pools = [n for n in engine.evaluator.nodes if n.op == "call_module" and n.target == "pool"]
    assert len(pools) == 2  # traced as single calls, not unrolled into slices
