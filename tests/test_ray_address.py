"""Ray that is there, or not: an empty address is a fresh local instance, a dead one fails fast; SIGTERM stops."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest

from fedlayer.config import load_config
from fedlayer.errors import ConfigError, RunError
from fedlayer.simulation import backend_config, check_ray_address


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_empty_address_means_a_fresh_ray_instance_on_this_machine_never_a_remembered_cluster():
    cfg = load_config(None, [])
    assert backend_config(cfg, verbose=False)["init_args"]["address"] == "local"
    given = load_config(None, ["simulation.ray_address='10.0.0.7:6379'"])
    assert backend_config(given, verbose=False)["init_args"]["address"] == "10.0.0.7:6379"


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
