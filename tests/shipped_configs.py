"""The configs shipped in simulations/, and what tests need to know about them without data."""

import re
from pathlib import Path

from fedlayer.config import Config
from fedlayer.layers import Layer, model_layers
from fedlayer.models import DATASET_SPECS, build_model

SIMULATIONS = Path(__file__).resolve().parents[1] / "simulations"
CONFIGS = sorted(SIMULATIONS.rglob("*.toml"))


def layers_of(cfg: Config) -> list[Layer]:
    """The config's model built for its dataset's shape (no data needed)."""
    shape, classes = DATASET_SPECS[cfg.data.dataset]
    return model_layers(build_model(cfg.model.name, shape, classes, norm=cfg.model.norm))


def compare_strategies(path: Path) -> list[list[str]]:
    """The --strategies lists of the `fedlayer compare` commands in a config's header comment."""
    return [found.split(",") for found in re.findall(r"--strategies (\S+)", path.read_text())]
