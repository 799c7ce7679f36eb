"""Every shipped config loads, validates, and its analysis groups resolve against its model."""

from pathlib import Path

import pytest

from fedlayer.analysis import resolve_groups
from fedlayer.config import load_config
from fedlayer.layers import model_layers
from fedlayer.models import DATASET_SPECS, build_model

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "simulations").rglob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_config_validates_and_its_groups_resolve(path):
    cfg = load_config(path)
    shape, classes = DATASET_SPECS[cfg.data.dataset]
    layers = model_layers(build_model(cfg.model.name, shape, classes, norm=cfg.model.norm))
    assert resolve_groups(layers, cfg.analysis.groups, seed=cfg.seed)
