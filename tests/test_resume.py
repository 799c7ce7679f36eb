"""Resume: a run stopped after a committed round continues to the same tables as an uninterrupted run.

In process (seconds): the crash is an exception from a hook, after round 2's commit or in round 3
between its tables and its commit. With Ray (slow): `fedlayer run` killed with SIGKILL, then
`fedlayer run --resume`; and the same config run one client at a time and two in parallel.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from flwr.app import Context, RecordDict
from inprocess_grid import InProcessGrid

from fedlayer.checkpoints import load_checkpoint
from fedlayer.cli import main as cli
from fedlayer.client_app import make_client_app
from fedlayer.config import load_config
from fedlayer.errors import FedlayerError
from fedlayer.server_app import FederatedRun

BASE = [
    "data.dataset=digits",
    "data.partition=dirichlet",
    "data.alpha=1.0",
    "model.name=mlp",
    "federation.clients=4",
    "federation.rounds=4",
    "federation.batch_size=32",
    "federation.lr=0.1",
    "analysis.samples=64",
    "analysis.alphas=3",
]
TABLES = ("metrics", "barriers", "curves", "choices")


class Crash(Exception):
    """Stands for the process dying."""


def execute(run: FederatedRun, node_seed: int) -> None:
    grid = InProcessGrid(make_client_app(run.cfg), run.cfg.federation.clients, node_seed=node_seed)
    run.main(grid, Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}))


def crash_after_commit(run: FederatedRun, server_round: int) -> None:
    report = run.recorder.on_round_end

    def crashing(r, metrics):
        report(r, metrics)
        if r == server_round:
            raise Crash

    run.recorder.on_round_end = crashing


def crash_before_commit(run: FederatedRun, server_round: int) -> None:
    """The tables of `server_round` are written, its checkpoint and state.json are not."""
    commit = run.recorder.on_commit

    def crashing(r, arrays):
        if r == server_round:
            raise Crash
        commit(r, arrays)

    run.recorder.on_commit = crashing


def tables(path: Path) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(path / f"{name}.parquet") for name in TABLES if (path / f"{name}.parquet").exists()}


def assert_same_tables(a: Path, b: Path) -> None:
    first, second = tables(a), tables(b)
    assert first.keys() == second.keys()
    for name in first:
        pd.testing.assert_frame_equal(first[name], second[name], check_exact=True, obj=name)


def state_round(path: Path) -> int:
    return json.loads((path / "state.json").read_text())["round"]


@pytest.mark.parametrize(
    ("overrides", "crash", "at"),
    [
        (
            ["strategy.name=fedper", "federation.fraction=0.75", "federation.fault_probability=0.3"],
            crash_after_commit,
            2,
        ),
        (["strategy.name=barrier-aware", "strategy.threshold=0.05", "analysis.every=2"], crash_before_commit, 3),
        (  # clients first sampled after the crash still start from their own initialisation
            [
                "strategy.name=fedper",
                "federation.fraction=0.5",
                "federation.init=per-client",
                "federation.lr_per_client=[0.1,0.05,0.2,0.1]",
            ],
            crash_after_commit,
            2,
        ),
    ],
    ids=["fedper-sampled-faulty", "barrier-aware", "fedper-per-client-init"],
)
def test_a_resumed_run_ends_with_the_tables_of_an_uninterrupted_one(tmp_path, overrides, crash, at):
    cfg = load_config(None, [*BASE, *overrides])
    whole = FederatedRun.prepare(cfg, tmp_path / "whole")
    execute(whole, node_seed=1)

    broken = FederatedRun.prepare(cfg, tmp_path / "broken")
    crash(broken, at)
    with pytest.raises(Crash):
        execute(broken, node_seed=2)
    assert state_round(tmp_path / "broken") == 2
    resumed = FederatedRun.resume(tmp_path / "broken")
    assert resumed.resumed.round == 2 and not resumed.resumed.finished
    execute(resumed, node_seed=3)  # other node ids: state is restored by partition

    assert_same_tables(tmp_path / "whole", tmp_path / "broken")
    assert state_round(tmp_path / "broken") == 4
    assert [p.name for p in (tmp_path / "broken" / "checkpoints").glob("round-*")] == ["round-4"]
    files = sorted(p.relative_to(tmp_path / "whole") for p in (tmp_path / "whole").glob("checkpoints/**/*.safetensors"))
    assert files == sorted(
        p.relative_to(tmp_path / "broken") for p in (tmp_path / "broken").glob("checkpoints/**/*.safetensors")
    )
    assert Path("checkpoints/round-4/global.safetensors") in files
    for name in files:
        a, b = load_checkpoint(tmp_path / "whole" / name), load_checkpoint(tmp_path / "broken" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_round_folder_holds_each_clients_personal_layers_by_partition(tmp_path):
    run = FederatedRun.prepare(
        load_config(None, [*BASE, "strategy.name=fedper", "federation.rounds=1", "analysis.every=0"]), tmp_path / "run"
    )
    execute(run, node_seed=None)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["round"] == 1 and state["rounds"] == 1 and state["personal"] == [0, 1, 2, 3]
    personal = load_checkpoint(tmp_path / "run" / "checkpoints" / "round-1" / "personal-2.safetensors")
    assert set(personal) == {"fc3.weight", "fc3.bias"}


def test_resume_needs_a_run_directory_with_state_json(tmp_path):
    with pytest.raises(FedlayerError, match="no such run directory"):
        FederatedRun.resume(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.toml").write_text("")
    with pytest.raises(FedlayerError, match="has no state.json"):
        FederatedRun.resume(tmp_path / "empty")


def stopped_run(tmp_path: Path, *overrides: str) -> Path:
    run = FederatedRun.prepare(load_config(None, [*BASE, "analysis.every=0", *overrides]), tmp_path / "run")
    crash_after_commit(run, 1)
    with pytest.raises(Crash):
        execute(run, node_seed=None)
    return tmp_path / "run"


def test_resume_refuses_personal_layers_kept_by_the_clients(tmp_path):
    path = stopped_run(tmp_path, "strategy.name=fedper", "strategy.personal=client")
    with pytest.raises(FedlayerError, match="personal = 'client' the personal layers were kept in the clients"):
        FederatedRun.resume(path)


def test_resume_refuses_a_changed_experiment_but_not_a_longer_timeout(tmp_path):
    path = stopped_run(tmp_path)
    config = path / "config.toml"
    original = config.read_text()
    config.write_text(original.replace("lr = 0.1", "lr = 0.2"))
    with pytest.raises(FedlayerError, match=r"config.toml was changed .*\(federation.lr = 0.1 -> 0.2\)"):
        FederatedRun.resume(path)
    config.write_text(original.replace("timeout = 600.0", "timeout = 900.0"))
    assert FederatedRun.resume(path).cfg.federation.timeout == 900.0


def test_cli_resume_of_a_finished_run_says_so(tmp_path, capsys):
    run = FederatedRun.prepare(load_config(None, [*BASE, "federation.rounds=1", "analysis.every=0"]), tmp_path / "run")
    execute(run, node_seed=None)
    assert cli(["run", "--resume", str(tmp_path / "run")]) == 0
    assert "is finished: all 1 rounds are done" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "federation.rounds=9"], "--set cannot be given with --resume"),
        (["some.toml"], "CONFIG cannot be given with --resume"),
    ],
)
def test_cli_resume_takes_no_other_config(tmp_path, capsys, args, message):
    assert cli(["run", "--resume", str(tmp_path), *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_run_needs_a_config_or_resume(capsys):
    assert cli(["run"]) == 2
    assert "give an experiment CONFIG" in capsys.readouterr().err


# ---------------------------------------------------------------------- with Ray (slow)

RAY = [*BASE, "federation.fault_probability=0.3", "analysis.pairs=3"]


def write_config(tmp_path: Path, name: str, *overrides: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(load_config(None, [*RAY, *overrides, f"output.dir={tmp_path / name}"]).to_toml())
    return path


def fedlayer(*args: str) -> subprocess.Popen:
    """`fedlayer ...` in its own process group (Ray's processes with it), so that all of it can be killed."""
    return subprocess.Popen(
        [sys.executable, "-m", "fedlayer.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(process: subprocess.Popen, timeout: float = 200) -> None:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    assert process.returncode == 0, output[-3000:]


@pytest.fixture(scope="module")
def ray_reference(tmp_path_factory) -> Path:
    """An uninterrupted Ray run: two clients in parallel (simulation.num_cpus = 1 on 2 cores)."""
    tmp_path = tmp_path_factory.mktemp("reference")
    finish(fedlayer("run", str(write_config(tmp_path, "whole", "simulation.num_cpus=1"))))
    return tmp_path / "whole"


@pytest.mark.slow
def test_one_client_at_a_time_and_two_in_parallel_give_identical_tables(tmp_path, ray_reference):
    finish(fedlayer("run", str(write_config(tmp_path, "serial", "simulation.num_cpus=2"))))
    first, second = tables(ray_reference), tables(tmp_path / "serial")
    assert first.keys() == second.keys() and {"metrics", "barriers", "curves"} <= first.keys()
    for name in first:
        pd.testing.assert_frame_equal(first[name], second[name], check_exact=True, obj=name)


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_uninterrupted_tables(tmp_path, ray_reference):
    config = write_config(tmp_path, "killed", "simulation.num_cpus=1")
    run_dir = tmp_path / "killed"
    process = fedlayer("run", str(config))
    deadline = time.monotonic() + 200
    try:
        while not ((run_dir / "state.json").exists() and state_round(run_dir) >= 2):
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no round 2 within 200 s"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
    assert state_round(run_dir) < 4
    finish(fedlayer("run", "--resume", str(run_dir)))
    assert state_round(run_dir) == 4
    for name in ("metrics", "barriers", "curves"):
        pd.testing.assert_frame_equal(tables(ray_reference)[name], tables(run_dir)[name], check_exact=True, obj=name)


@pytest.mark.slow
def test_ctrl_c_stops_a_run_at_once_quietly_and_it_resumes_to_the_uninterrupted_tables(tmp_path, ray_reference):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it (Ray's processes included)."""
    config = write_config(tmp_path, "interrupted", "simulation.num_cpus=1")
    run_dir = tmp_path / "interrupted"
    process = fedlayer("run", str(config))
    deadline = time.monotonic() + 200
    while not ((run_dir / "state.json").exists() and state_round(run_dir) >= 1):
        assert process.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline, "no round 1 within 200 s"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    try:
        output, _ = process.communicate(timeout=60)  # a hang guard: it waited for the round timeout (600 s) before
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    assert process.returncode == 130, output[-3000:]
    kept = state_round(run_dir)
    assert 1 <= kept < 4
    said = " ".join(output.split())  # the console wraps long lines
    assert f"round {kept} of 4 is kept in {run_dir}; continue with `fedlayer run --resume {run_dir}`" in said
    for noise in ("timeout", "Traceback", "Error", "\x1b["):
        assert noise not in output, output[-3000:]
    finish(fedlayer("run", "--resume", str(run_dir)))
    for name in ("metrics", "barriers", "curves"):
        pd.testing.assert_frame_equal(tables(ray_reference)[name], tables(run_dir)[name], check_exact=True, obj=name)
