"""The barrier engine: layer-wise interpolation curves and barriers between models (plain PyTorch).

Implements the measurements of "Layer-wise Linear Mode Connectivity" (Adilova et al., ICLR 2024,
arXiv:2307.06966). `interpolation_curves` evaluates loss and error along each group's path on both
bases, `barriers` turns that table into midpoint and max barriers, `pairwise_curves` does both for
many models, and `CurveEngine` reuses one prepared model and evaluation set for many pairs. See the
README's "Concepts and definitions" for the definitions.
"""

from fedlayer.analysis.barriers import BARRIER_COLUMNS, barriers
from fedlayer.analysis.curves import BN_POLICIES, CURVE_COLUMNS, CurveEngine, interpolation_curves
from fedlayer.analysis.directions import random_direction
from fedlayer.analysis.evaluate import EvalInput
from fedlayer.analysis.groups import GROUP_SPECS, Group, resolve_groups
from fedlayer.analysis.interpolate import BASES, alpha_grid, interpolate_state
from fedlayer.analysis.pairs import pairwise_curves, select_pairs

__all__ = [
    "BARRIER_COLUMNS",
    "BASES",
    "BN_POLICIES",
    "CURVE_COLUMNS",
    "GROUP_SPECS",
    "CurveEngine",
    "EvalInput",
    "Group",
    "alpha_grid",
    "barriers",
    "interpolate_state",
    "interpolation_curves",
    "pairwise_curves",
    "random_direction",
    "resolve_groups",
    "select_pairs",
]
