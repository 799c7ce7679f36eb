"""A soak (slow tier): hundreds of rounds with the per-round analysis, injected faults and one
kill-and-resume in the middle end with every round once, in the tables an uninterrupted run writes.

The clients run in this process (`InProcessGrid`), so that hundreds of rounds take a minute or two; a
crash is an exception at the point of a kill (test_resume.py kills real `fedlayer run` processes).
The injected faults are seeded by (seed, round, partition), so both runs meet the same ones.
"""

from __future__ import annotations

import pandas as pd
import pytest
from test_resume import BASE, Crash, crash_after_commit, execute, state_round, tables

from fedlayer.config import load_config
from fedlayer.server_app import FederatedRun

ROUNDS = 200
SOAK = [
    *BASE,
    f"federation.rounds={ROUNDS}",
    "federation.fault_probability=0.1",  # seeded: no round in these 200 loses all four clients
    "federation.local_epochs=1",
    "data.max_train_samples=400",
    "analysis.every=1",
    "analysis.pairs=1",
    "analysis.samples=16",
    "analysis.groups=['layers', 'full']",
]


@pytest.mark.slow
def test_a_long_faulty_run_killed_and_resumed_ends_with_every_round_once_as_uninterrupted(tmp_path):
    cfg = load_config(None, SOAK)
    whole = FederatedRun.prepare(cfg, tmp_path / "whole")
    execute(whole, node_seed=1)

    broken = FederatedRun.prepare(cfg, tmp_path / "broken")
    crash_after_commit(broken, ROUNDS // 2 + 7)
    with pytest.raises(Crash):
        execute(broken, node_seed=2)
    execute(FederatedRun.resume(tmp_path / "broken"), node_seed=3)
    assert state_round(tmp_path / "broken") == ROUNDS

    expected, got = tables(tmp_path / "whole"), tables(tmp_path / "broken")
    assert expected.keys() == got.keys() and {"metrics", "barriers", "curves"} <= got.keys()
    for name in expected:
        pd.testing.assert_frame_equal(expected[name], got[name], check_exact=True, obj=name)
    metrics = got["metrics"]
    glob = metrics[metrics["client"] == "global"]
    assert glob["round"].tolist() == list(range(ROUNDS + 1))  # every round once, in order
    assert not metrics.duplicated(["round", "client", "split"]).any()
    trained = metrics[(metrics["split"] == "train") & (metrics["status"] == "ok")].groupby("round").size()
    assert set(got["barriers"]["round"]) == set(trained[trained >= 2].index)  # a pair to analyse: every such round
    assert (metrics["status"] != "ok").sum() > ROUNDS // 10  # the fault injector was on
