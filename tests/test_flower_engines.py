"""The same ServerApp and ClientApp on Flower's real engines: the Ray simulation and `flwr run .`."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fedlayer.cli import main
from fedlayer.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "data.dataset=digits",
    "model.name=mlp",
    "federation.clients=3",
    "federation.rounds=2",
    "data.max_train_samples=0",
    "data.max_test_samples=0",
    "analysis.pairs=0",
    "analysis.samples=64",
]

pytestmark = pytest.mark.slow


def test_fedlayer_run_on_the_ray_simulation_engine(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", str(ROOT / "simulations" / "demo.toml"), "--out", str(out)]
    for override in SMALL + ["strategy.name=fedper"]:
        args += ["--set", override]
    assert main(args) == 0
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert sorted(metrics.loc[metrics["client"] == "global", "round"]) == [0, 1, 2]
    barriers = pd.read_parquet(out / "barriers.parquet")
    assert set(barriers["round"]) == {1, 2}
    assert (out / "plots" / "accuracy.png").exists()
    err = capsys.readouterr().err
    assert "round 2/2" in err and "Traceback" not in err


def _superlink_pids(flwr_home: Path) -> list[int]:
    found = subprocess.run(["pgrep", "-f", str(flwr_home)], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def test_flwr_run_runs_the_same_app(tmp_path):
    """`flwr run .` with a private FLWR_HOME; the background SuperLink it starts is stopped afterwards."""
    flwr = Path(sys.executable).with_name("flwr")
    home = tmp_path / "flwr-home"
    home.mkdir()
    out = tmp_path / "flwr-out"
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": "39491",
        "FLWR_LOCAL_CONTROL_API_PORT": "39492",
        "PATH": f"{flwr.parent}{os.pathsep}{os.environ['PATH']}",
    }
    app = tmp_path / "app"
    shutil.copytree(ROOT, app, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "__pycache__", ".*cache"))
    run_config = (
        " ".join(
            f"{k}={v!r}" if isinstance(v, str) else f"{k}={str(v).lower()}"
            for k, v in load_config(None, SMALL).to_flat().items()
            if k in {s.split("=")[0] for s in SMALL}
        )
        + f" output.dir={str(out)!r}"
    )
    try:
        done = subprocess.run(
            [
                str(flwr),
                "run",
                str(app),
                "local",
                "--stream",
                "--federation-config",
                "num-supernodes=3 client-resources-num-cpus=1",
                "--run-config",
                run_config,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=420,
        )
    finally:
        for pid in _superlink_pids(home):
            os.kill(pid, signal.SIGTERM)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert sorted(metrics.loc[metrics["client"] == "global", "round"]) == [0, 1, 2]
    assert (out / "barriers.parquet").exists()
