"""Every shipped config loads and validates; its analysis groups and the strategies its header's
`fedlayer compare` commands name resolve against its model."""

import pytest
from shipped_configs import CONFIGS, compare_strategies, layers_of, load_shipped

from fedlayer.analysis import resolve_groups
from strategies import build_strategy


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_config_validates_and_its_groups_and_strategies_resolve(path, example_hf_folder, pythia_pair):
    cfg = load_shipped(path, example_hf_folder, pythia_pair)
    layers = layers_of(cfg)
    assert resolve_groups(layers, cfg.analysis.groups, seed=cfg.seed)
    for name in [cfg.strategy.name, *(s for command in compare_strategies(path) for s in command)]:
        build_strategy(name, layers=layers)
