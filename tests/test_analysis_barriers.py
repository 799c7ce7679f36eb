"""barriers(curves): the formulas of the README's "Concepts and definitions" on hand-made curves tables."""

import pandas as pd
import pytest

from fedlayer.analysis import BARRIER_COLUMNS, barriers
from fedlayer.errors import FedlayerError


def _curve(group, base, losses, errors, *, alphas=(0.0, 0.25, 0.5, 0.75, 1.0), **ids):
    return pd.DataFrame(
        {
            **ids,
            "group": group,
            "kind": "layer",
            "base": base,
            "alpha": list(alphas),
            "loss": losses,
            "error": errors,
            "loss_a": 1.0,
            "loss_b": 3.0,
            "error_a": 10.0,
            "error_b": 30.0,
        }
    )


def test_midpoint_is_against_the_full_models_and_max_against_the_own_chord():
    curves = _curve("conv1", "a", [1.0, 2.5, 4.0, 3.0, 2.0], [10.0, 20.0, 50.0, 20.0, 10.0])
    row = barriers(curves).iloc[0]
    assert row.loss_barrier_mid == pytest.approx(4.0 - (1.0 + 3.0) / 2)
    # chord from c(0)=1 to c(1)=2: at 0.5 it is 1.5, excess 2.5; at 0.25: 2.5 - 1.25 = 1.25
    assert row.loss_barrier_max == pytest.approx(2.5)
    assert row.error_barrier_mid == pytest.approx(50.0 - 20.0)
    assert row.error_barrier_max == pytest.approx(40.0)
    assert (row.loss_c0, row.loss_c1, row.error_c0, row.error_c1) == (1.0, 2.0, 10.0, 10.0)
    assert (row.loss_a, row.loss_b, row.error_a, row.error_b) == (1.0, 3.0, 10.0, 30.0)


def test_a_convex_curve_has_zero_max_barrier_and_a_negative_midpoint_is_kept():
    row = barriers(_curve("fc", "b", [1.0, 0.6, 0.5, 0.6, 1.0], [5.0] * 5)).iloc[0]
    assert row.loss_barrier_max == 0.0
    assert row.loss_barrier_mid == pytest.approx(0.5 - 2.0)


def test_one_row_per_curve_with_id_columns_kept_in_order():
    curves = pd.concat(
        [
            _curve("conv1", "a", [1, 2, 3, 2, 1], [0] * 5, client_a="0", client_b="1", round=3),
            _curve("conv1", "b", [1, 1, 1, 1, 1], [0] * 5, client_a="0", client_b="1", round=3),
            _curve("conv1", "a", [1, 1, 1, 1, 1], [0] * 5, client_a="0", client_b="2", round=3),
        ]
    )
    table = barriers(curves)
    assert list(table.columns) == ["client_a", "client_b", "round", "group", "kind", "base", *BARRIER_COLUMNS]
    assert list(zip(table.client_b, table.base, strict=True)) == [("1", "a"), ("1", "b"), ("2", "a")]
    assert list(table.loss_barrier_max) == [2.0, 0.0, 0.0]


def test_a_grid_without_the_midpoint_is_an_error_not_a_guess():
    curves = _curve("fc", "a", [1.0, 2.0, 1.0], [0.0] * 3, alphas=(0.0, 0.4, 1.0))
    with pytest.raises(FedlayerError, match=r"group=fc.*no point at alpha=0.5"):
        barriers(curves)


def test_duplicate_points_and_foreign_tables_are_errors():
    curves = _curve("fc", "a", [1.0, 2.0, 1.0], [0.0] * 3, alphas=(0.0, 0.5, 1.0))
    with pytest.raises(FedlayerError, match="two rows for the same curve"):
        barriers(pd.concat([curves, curves]))
    with pytest.raises(FedlayerError, match="missing columns loss_a"):
        barriers(curves.drop(columns="loss_a"))
