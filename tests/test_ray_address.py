"""Ray that is there, or not: an empty address is a fresh local instance, a dead one fails fast; SIGTERM stops."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from fedlayer.config import load_config
from fedlayer.errors import ConfigError, RunError
from fedlayer.simulation import check_ray_address, ray_init_args


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_empty_address_means_a_fresh_ray_instance_on_this_machine_never_a_remembered_cluster():
    cfg = load_config(None, [])
    assert ray_init_args(cfg, verbose=False)["address"] == "local"
    given = load_config(None, ["simulation.ray_address='10.0.0.7:6379'"])
    assert ray_init_args(given, verbose=False)["address"] == "10.0.0.7:6379"


def test_a_cluster_nobody_listens_at_fails_at_once_naming_the_address():
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(RunError, match=rf"cannot reach the Ray cluster at simulation.ray_address = '{address}'"):
        check_ray_address(address)
    assert time.monotonic() - started < 30  # a hang guard, not a measured figure: Ray alone retries for minutes


def test_a_listening_head_passes_and_local_choices_are_not_checked():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        check_ray_address(f"127.0.0.1:{server.getsockname()[1]}")
    for address in ("", "local", "auto"):
        check_ray_address(address)


def test_an_address_without_a_port_is_a_config_error():
    with pytest.raises(ConfigError, match=r"simulation.ray_address': invalid value 'myhost'; expected host:port"):
        check_ray_address("myhost")


def test_sigterm_stops_a_command_as_ctrl_c_does():
    script = (
        "import argparse, time\n"
        "import fedlayer.cli as cli\n"
        "def command(args):\n"
        "    print('running', flush=True)\n"
        "    time.sleep(60)\n"
        "parser = argparse.ArgumentParser()\n"
        "parser.set_defaults(func=command, verbose=False, debug=False)\n"
        "cli.build_parser = lambda: parser\n"
        "raise SystemExit(cli.main([]))\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "running"  # the command runs: main() has set its handlers
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 130
    assert "fedlayer: interrupted" in err


@pytest.fixture
def ray_head():
    """A Ray cluster's head on the loopback, started by `ray start --head --block` in a process group of
    its own and stopped by signalling that group only (never `ray stop`, which stops every cluster here)."""
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    ray = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen(
        [
            ray,
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                check_ray_address(f"127.0.0.1:{port}", timeout=1)
                break
            except RunError:
                assert head.poll() is None, "ray start --head exited"
                assert time.monotonic() < deadline, "the Ray head did not listen within 120 s"
                time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, signal.SIGKILL)
            shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_a_run_joins_a_ray_cluster_given_by_its_address(tmp_path, ray_head):
    config = tmp_path / "joined.toml"
    overrides = ["data.dataset=digits", "model.name=mlp", "federation.clients=3", "federation.rounds=2",
                 "analysis.samples=32", "analysis.alphas=3", f"output.dir={tmp_path / 'joined'}"]  # fmt: skip
    config.write_text(load_config(None, overrides).to_toml())
    done = subprocess.run(
        [sys.executable, "-m", "fedlayer.cli", "run", str(config), "--set", f"simulation.ray_address={ray_head!r}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    metrics = pd.read_parquet(tmp_path / "joined" / "metrics.parquet")
    assert sorted(metrics["round"].unique()) == [0, 1, 2]
    assert set(metrics.loc[metrics["split"] == "train", "client"]) == {"0", "1", "2"}
