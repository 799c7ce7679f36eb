"""Several models: every pair or a seeded sample of pairs, in a deterministic order."""

import pytest
import torch

from fedlayer.analysis import pairwise_curves, select_pairs
from fedlayer.errors import FedlayerError
from fedlayer.models import build_model


def test_pairs_are_sorted_naturally_and_sampled_with_a_seed():
    names = ["client10", "client2", "client1"]
    assert select_pairs(names) == [("client1", "client2"), ("client1", "client10"), ("client2", "client10")]
    assert select_pairs(names, 0) == select_pairs(names, "all")
    assert select_pairs(range(5), 3, seed=1) == select_pairs(range(5), 3, seed=1)
    assert len(set(select_pairs(range(5), 3, seed=1))) == 3
    assert select_pairs(range(3), 10) == select_pairs(range(3))
    with pytest.raises(FedlayerError, match="bad pairs"):
        select_pairs(names, -1)


def test_pairwise_curves_label_each_pair():
    states = {}
    for seed in (3, 1, 2):
        torch.manual_seed(seed)
        states[str(seed)] = build_model("mlp", (1, 8, 8), 10, options={"width": 16}).state_dict()
    data = (torch.randn(30, 1, 8, 8), torch.randint(0, 10, (30,)))
    model = build_model("mlp", (1, 8, 8), 10, options={"width": 16})
    curves, table = pairwise_curves(model, states, data, groups=["layers", "full"], alphas=3)
    assert list(curves.columns[:2]) == ["client_a", "client_b"]
    pairs = list(dict.fromkeys(zip(table.client_a, table.client_b, strict=True)))
    assert pairs == [("1", "2"), ("1", "3"), ("2", "3")]
    assert len(table) == 3 * 4 * 2  # pairs x (3 layers + full) x bases
    one = table[(table.client_a == "1") & (table.client_b == "3")]
    assert (one["loss_a"] != one["loss_b"]).all()
    with pytest.raises(FedlayerError, match="at least two models"):
        pairwise_curves(model, {"1": states["1"]}, data)
