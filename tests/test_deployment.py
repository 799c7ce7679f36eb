"""`fedlayer certs`, and the same ServerApp/ClientApp on Flower's deployment engine over TLS.

The deployment tests start one `flower-superlink` (TLS) and two `flower-supernode`s on 127.0.0.1, each
holding one partition, and run a FedPer experiment with `flwr run`: with SuperNode authentication
(registering the SuperNodes' public keys), and with a SuperNode killed during a round and restarted.
Every process they start gets a private FLWR_HOME and is stopped afterwards, whatever happens.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from fedlayer.cli import main
from fedlayer.deploy import Certificates, make_certificates

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # flower-superlink, flower-supernode, flwr, flwr-clientapp live here
RUN_TIMEOUT_S = 420  # generous: every message starts a ClientApp process, and nodes poll every 3 s
# federation.timeout of the run that loses a node: far above a live node's reply (about 30 s here, each message
# starts a ClientApp process); the SuperLink answers for the dead node sooner (2 x its 30 s heartbeat interval)
NODE_TIMEOUT_S = 120


# --- fedlayer certs ---------------------------------------------------------------------------------------


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_certs_command_writes_a_ca_a_server_certificate_and_supernode_keys(tmp_path, capsys):
    out = tmp_path / "certs"
    assert main(["certs", str(out), "--host", "10.1.2.3", "--host", "myserver.example", "--supernode-keys", "2"]) == 0
    expected = {
        "ca.crt",
        "ca.key",
        "server.pem",
        "server.key",
        "supernode-0",
        "supernode-0.pub",
        "supernode-1",
        "supernode-1.pub",
    }
    assert {p.name for p in out.iterdir()} == expected
    assert "server.pem" in capsys.readouterr().out

    ca, server = _load(out / "ca.crt"), _load(out / "server.pem")
    server.verify_directly_issued_by(ca)  # raises unless the CA signed it
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]
    assert san.get_values_for_type(x509.DNSName) == ["myserver.example"]

    for private in ("ca.key", "server.key", "supernode-0", "supernode-1"):
        assert (out / private).stat().st_mode & 0o777 == 0o600, private
    for k in range(2):  # the format flower-supernode and `flwr supernode register` read
        key = load_ssh_private_key((out / f"supernode-{k}").read_bytes(), None)
        public = load_ssh_public_key((out / f"supernode-{k}.pub").read_bytes())
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
        assert public == key.public_key()


def test_certs_default_hosts_are_the_loopback_names(tmp_path):
    made = make_certificates(tmp_path)
    san = _load(made.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert made.supernode_keys == ()


@pytest.mark.parametrize("host", ["my server", "http://myserver:8000", "-bad.example", "a..b", "10.0.0", ""])
def test_certs_bad_host_is_a_clear_error_and_writes_nothing(tmp_path, capsys, host):
    out = tmp_path / "certs"
    assert main(["certs", str(out), f"--host={host}"]) == 2
    err = capsys.readouterr().err
    assert f"--host {host!r} is neither an IP address nor a DNS name" in err
    assert "myserver.example" in err  # a valid example
    assert not out.exists()


def test_certs_keep_existing_files_unless_forced(tmp_path, capsys):
    first = make_certificates(tmp_path).ca_cert.read_bytes()
    assert main(["certs", str(tmp_path)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "ca.crt").read_bytes() == first
    assert main(["certs", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "ca.crt").read_bytes() != first


# --- the deployment engine ----------------------------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


class Processes:
    """Background processes of one test, each in its own session with its own log file.

    Every process gets FLWR_HOME below `home`; `stop` ends the ones started here, their process
    groups, and any other process whose environment carries that FLWR_HOME (Flower starts helpers,
    such as flower-superexec, in sessions of their own).
    """

    def __init__(self, home: Path, logs: Path, env: dict[str, str]):
        self.home, self.logs, self.env = home, logs, env
        self.started: dict[str, subprocess.Popen] = {}
        logs.mkdir()

    def start(self, name: str, args: list[str], *, home: str | None = None) -> subprocess.Popen:
        """Start `args` as `name`, with FLWR_HOME `home`/`home` (default: its own, `home`/`name`)."""
        home = self.home / (home or name)
        home.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                args,
                env={**self.env, "FLWR_HOME": str(home)},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started[name] = proc
        return proc

    def wait(self, name: str, timeout: float, *, daemons: tuple[str, ...] = ()) -> None:
        """Wait for `name` to succeed; fail early (with every log) when it fails or a daemon dies."""
        proc, deadline = self.started[name], time.monotonic() + timeout
        while proc.poll() is None:
            dead = [d for d in daemons if self.started[d].poll() is not None]
            if dead or time.monotonic() > deadline:
                reason = f"{', '.join(dead)} exited" if dead else f"no result after {timeout:.0f}s"
                pytest.fail(f"{name}: {reason}\n{self.tails()}")
            time.sleep(0.5)
        assert proc.returncode == 0, f"{name} exited with {proc.returncode}\n{self.tails()}"

    def wait_for_port(self, name: str, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                return
            if self.started[name].poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{name} is not listening on port {port}\n{self.tails()}")
            time.sleep(0.5)

    def tails(self, chars: int = 2500) -> str:
        parts = []
        for name in self.started:
            text = (self.logs / f"{name}.log").read_text(errors="replace")
            parts.append(f"----- {name} (last {chars} characters) -----\n{text[-chars:]}")
        return "\n".join(parts)

    def _strays(self) -> list[int]:
        marker = f"FLWR_HOME={self.home}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                with contextlib.suppress(OSError):
                    if any(v.startswith(marker) for v in (entry / "environ").read_bytes().split(b"\0")):
                        found.append(int(entry.name))
        return found

    def _signal_all(self, sig: int) -> None:
        for proc in self.started.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)  # start_new_session: the group id is the pid
        for pid in self._strays():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def stop(self, grace: float = 10.0) -> None:
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (self._strays() or any(p.poll() is None for p in self.started.values())):
            time.sleep(0.2)
        self._signal_all(signal.SIGKILL)
        for proc in self.started.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


@pytest.fixture
def processes(tmp_path):
    env = {
        **os.environ,
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "FLWR_LOG_LEVEL": "INFO",
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    procs = Processes(tmp_path / "flwr-home", tmp_path / "logs", env)
    try:
        yield procs
    finally:
        procs.stop()


def _start_superlink(processes: Processes, certs: Certificates, *, auth: bool) -> int:
    """A TLS SuperLink (with SuperNode authentication if `auth`) and a `flwr` connection "deploy" to it; its port."""
    link_port = _free_ports(1)[0]
    args = [
        str(BIN / "flower-superlink"),
        "--port",
        str(link_port),
        "--ssl-ca-certfile",
        str(certs.ca_cert),
        "--ssl-certfile",
        str(certs.server_cert),
        "--ssl-keyfile",
        str(certs.server_key),
        "--disable-runtime-dependency-installation",
    ]
    processes.start("superlink", [*args, "--enable-supernode-auth"] if auth else args)
    cli_home = processes.home / "cli"
    cli_home.mkdir(parents=True)
    (cli_home / "config.toml").write_text(
        f'[superlink]\ndefault = "deploy"\n\n[superlink.deploy]\naddress = "127.0.0.1:{link_port}"\n'
        f'root-certificates = "{certs.ca_cert}"\n'
    )
    processes.wait_for_port("superlink", link_port, timeout=90)
    return link_port


def _start_supernode(
    processes: Processes, name: str, link_port: int, certs: Certificates, partition: int, *, key: Path | None = None
) -> None:
    """A SuperNode holding `partition` of 2, authenticated with the private `key` if given."""
    args = [
        str(BIN / "flower-supernode"),
        "--superlink",
        f"127.0.0.1:{link_port}",
        "--root-certificates",
        str(certs.ca_cert),
        "--node-config",
        f"partition-id={partition} num-partitions=2",
        "--port",
        str(_free_ports(1)[0]),
    ]
    processes.start(name, args if key is None else [*args, "--auth-supernode-private-key", str(key)])


def _start_flwr_run(processes: Processes, tmp_path: Path, out: Path, settings: str) -> None:
    """`flwr run --stream` of a copy of this project on the "deploy" SuperLink: 2 clients, digits, an MLP."""
    app = tmp_path / "app"
    shutil.copytree(ROOT, app, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "__pycache__", ".*cache"))
    run_config = (
        "data.dataset='digits' model.name='mlp' federation.clients=2 data.max_train_samples=0 "
        f"data.max_test_samples=0 output.dir='{out}' {settings}"
    )
    processes.start(
        "flwr-run", [str(BIN / "flwr"), "run", str(app), "deploy", "--stream", "--run-config", run_config], home="cli"
    )


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="finds stray Flower processes through /proc")
def test_superlink_and_two_supernodes_over_tls_with_supernode_auth_run_the_app(tmp_path, processes):
    certs = make_certificates(tmp_path / "certs", supernode_keys=2)
    link_port = _start_superlink(processes, certs, auth=True)
    for k, (_, public) in enumerate(certs.supernode_keys):  # only registered keys may connect
        processes.start(
            f"register-{k}", [str(BIN / "flwr"), "supernode", "register", str(public), "deploy"], home="cli"
        )
    for k in range(2):
        processes.wait(f"register-{k}", timeout=90, daemons=("superlink",))
    for k, (private, _) in enumerate(certs.supernode_keys):
        _start_supernode(processes, f"supernode-{k}", link_port, certs, k, key=private)
    out = tmp_path / "run"
    settings = "federation.rounds=2 strategy.name='fedper' analysis.every=1 analysis.pairs=0 analysis.samples=64"
    _start_flwr_run(processes, tmp_path, out, settings)
    processes.wait("flwr-run", timeout=RUN_TIMEOUT_S, daemons=("superlink", "supernode-0", "supernode-1"))
    try:
        _assert_two_round_run(out)
    except (AssertionError, OSError) as exc:
        pytest.fail(f"{exc}\n{processes.tails()}")


def _assert_two_round_run(out: Path) -> None:
    assert (out / "config.toml").exists()
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert sorted(metrics.loc[metrics["client"] == "global", "round"]) == [0, 1, 2]
    clients = metrics[metrics["client"] != "global"]
    assert set(clients["client"]) == {"0", "1"}
    assert set(clients["round"]) == {1, 2}
    barriers = pd.read_parquet(out / "barriers.parquet")
    assert set(barriers["round"]) == {1, 2}
    assert set(zip(barriers["client_a"], barriers["client_b"], strict=True)) == {("0", "1")}


def _committed_round(out: Path) -> int:
    """The last round the run in `out` committed (-1 before the first)."""
    with contextlib.suppress(OSError, ValueError):
        return int(json.loads((out / "state.json").read_text())["round"])
    return -1


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="finds stray Flower processes through /proc")
def test_a_supernode_killed_during_a_round_is_left_out_and_rejoins_when_restarted(tmp_path, processes):
    """SIGKILL one SuperNode (its whole process group: the node and its ClientApp) as round 2 starts and start
    it again at once: it comes back under a new node id. Round 2 goes on without it (a failure in
    metrics.parquet); from then on the new node serves partition 1, with its personal layers (FedPer's head)."""
    certs = make_certificates(tmp_path / "certs")
    link_port = _start_superlink(processes, certs, auth=False)  # a restarted node gets a new node id
    for k in range(2):
        _start_supernode(processes, f"supernode-{k}", link_port, certs, k)
    out = tmp_path / "run"
    settings = f"federation.rounds=3 federation.timeout={NODE_TIMEOUT_S} strategy.name='fedper' analysis.every=0"
    _start_flwr_run(processes, tmp_path, out, settings)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while _committed_round(out) < 1:  # round 2's messages go out as round 1 commits
        if time.monotonic() > deadline or processes.started["flwr-run"].poll() is not None:
            pytest.fail(f"round 1 never committed\n{processes.tails()}")
        time.sleep(0.2)
    os.killpg(processes.started["supernode-1"].pid, signal.SIGKILL)
    _start_supernode(processes, "supernode-1-restarted", link_port, certs, 1)
    processes.wait("flwr-run", timeout=RUN_TIMEOUT_S, daemons=("superlink", "supernode-0", "supernode-1-restarted"))
    try:
        metrics = pd.read_parquet(out / "metrics.parquet")
        assert sorted(metrics.loc[metrics["client"] == "global", "round"]) == [0, 1, 2, 3]
        clients = metrics[metrics["client"] != "global"].set_index(["client", "round", "split"])
        assert len(clients) == 2 * 3 * 2  # every client, round and split is recorded
        missed = set(clients.index[clients["status"] != "ok"])
        assert missed == {("1", 2, "train")}, missed  # the SuperLink reports the dead node after about 60 s:
        # by then the restarted one is connected, and round 2's evaluation reaches it
        # with its own head from round 1 (the initial head would be at chance level, 10 %), before it trained again
        assert clients.loc[("1", 2, "local-test"), "accuracy"] > 0.5
        log = (processes.logs / "flwr-run.log").read_text(errors="replace")
        assert re.search(r"partition 1 rejoined on node \d+ \(was node \d+\)", log), "no rejoin in the log"
    except (AssertionError, KeyError, OSError) as exc:
        pytest.fail(f"{exc!r}\n{processes.tails()}")
