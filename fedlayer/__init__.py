"""fedlayer: layer-wise averaging and layer-wise loss barriers in federated learning on Flower.

The main API, importable from the package (loaded on first use, so `import fedlayer` stays light):

- configs: `Config`, `load_config`;
- runs: `run_simulation`, `resume_simulation` (one config on Flower's simulation engine),
  `run_comparison` (strategies side by side), `read_run` (a run directory's config and tables);
- layers: `model_layers`, `select_layers`;
- the barrier engine: `interpolation_curves`, `barriers`, `pairwise_curves`;
- models and data: `build_model`, `load_dataset`;
- errors: `FedlayerError` and its subclasses `ConfigError`, `DataError`, `ModelError`,
  `CheckpointError`, `RunError`.

The Flower strategies live in the `strategies` package; the client protocol in `fedlayer.protocol`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "Config": "fedlayer.config",
    "load_config": "fedlayer.config",
    "run_simulation": "fedlayer.simulation",
    "resume_simulation": "fedlayer.simulation",
    "run_comparison": "fedlayer.compare",
    "read_run": "fedlayer.results",
    "model_layers": "fedlayer.layers",
    "select_layers": "fedlayer.layers",
    "interpolation_curves": "fedlayer.analysis",
    "barriers": "fedlayer.analysis",
    "pairwise_curves": "fedlayer.analysis",
    "build_model": "fedlayer.models",
    "load_dataset": "fedlayer.data",
    "FedlayerError": "fedlayer.errors",
    "ConfigError": "fedlayer.errors",
    "DataError": "fedlayer.errors",
    "ModelError": "fedlayer.errors",
    "CheckpointError": "fedlayer.errors",
    "RunError": "fedlayer.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'fedlayer' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)
