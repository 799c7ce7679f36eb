"""The configs shipped in simulations/, and what tests need to know about them."""

import re
import subprocess
import sys
from pathlib import Path

from fedlayer.config import Config, load_config
from fedlayer.layers import Layer, model_layers
from fedlayer.task import data_shape, model_for

SIMULATIONS = Path(__file__).resolve().parents[1] / "simulations"
CONFIGS = sorted(SIMULATIONS.rglob("*.toml"))
EXAMPLES = SIMULATIONS / "examples"
PYTHIA = SIMULATIONS / "paper_scale" / "paper_pythia.toml"
EXAMPLE_HF_DATASET = "hf:runs/examples/fashion-mnist-hf"
"""The folder examples/hf_folder.toml reads, which examples/make_hf_folder.py writes."""


def write_example_hf_folder(folder: Path) -> Path:
    """Run the example's own script, as its user does, into `folder`."""
    subprocess.run([sys.executable, str(EXAMPLES / "make_hf_folder.py"), str(folder)], check=True, timeout=600)
    return folder


def load_shipped(path: Path, hf_folder, pythia_pair=None) -> Config:
    """A shipped config; the Hugging Face example reads `hf_folder()` (a folder its script wrote) instead of
    the checkout's runs/, which tests do not write, and the Pythia pair is `pythia_pair()`'s offline
    stand-in."""
    cfg = load_config(path)
    if cfg.data.dataset == EXAMPLE_HF_DATASET:
        cfg = load_config(path, [f"data.dataset=hf:{hf_folder()}"])
    if path == PYTHIA:
        assert pythia_pair is not None, "the Pythia config needs the pythia_pair fixture"
        cfg = load_config(path, pythia_stand_in(pythia_pair()))
    return cfg


def pythia_stand_in(pair: list[Path]) -> list[str]:
    """Overrides that turn simulations/paper_scale/paper_pythia.toml into the same experiment on two tiny
    GPT-NeoX checkpoints and windows of characters (`pythia_stand_in.py`), offline."""
    checkpoints = ", ".join(f'"{path}"' for path in pair)
    return [
        f"model.name=hf:{pair[0]}",
        f"federation.init_checkpoints=[{checkpoints}]",
        f"data.dataset={Path(__file__).parent / 'pythia_stand_in.py'}:character_windows",
    ]


def layers_of(cfg: Config) -> list[Layer]:
    """The config's model built for its dataset's shape (a built-in dataset's without loading it)."""
    return model_layers(model_for(cfg, *data_shape(cfg)))


def compare_strategies(path: Path) -> list[list[str]]:
    """The --strategies lists of the `fedlayer compare` commands in a config's header comment."""
    return [found.split(",") for found in re.findall(r"--strategies (\S+)", path.read_text())]
