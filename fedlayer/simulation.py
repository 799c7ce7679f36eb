"""Run one config on Flower's simulation engine (Ray backend) and leave the results in a run directory.

Everything that can be checked without training (config, dataset, partitions, model, strategy,
selectors) is checked before Ray starts and before the run directory is created, so a bad input
costs nothing and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from fedlayer.config import Config
from fedlayer.console import make_console
from fedlayer.errors import ConfigError, RunError
from fedlayer.memory import keep_freed_memory
from fedlayer.results import RunDirectory
from fedlayer.runlock import claim

if TYPE_CHECKING:
    from flwr.app import Context
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid

    from fedlayer.server_app import FederatedRun

ServerMain = Callable[["Grid", "Context"], None]  # what a ServerApp's @main() function is

RAY_CONNECT_TIMEOUT_S = 10.0
WORKER_SETUP_HOOK = "fedlayer.ray_transport.install_in_worker"
QUIET_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
# Ray runs its workers at niceness 15 (`RAY_worker_niceness`): its own processes then stay responsive on a
# busy cluster, but a simulated client then yields its core to any other process of the machine (a nice-0
# process gets 28 times its share of a contended core), while the same training without Ray would not. The
# clients are the run's work: they run at the niceness of the run (`nice fedlayer run` still lowers it all).
CLIENT_ENV = {"RAY_worker_niceness": "0"}


@contextlib.contextmanager
def quiet_logs(verbose: bool) -> Iterator[None]:
    """Turn Flower's and Ray's chatter down unless `verbose`, for the duration of a simulation.

    Flower logs each ClientApp exception with its traceback as an error; fedlayer reports those
    clients itself (progress line, metrics.parquet), so Flower is turned down to critical only.
    What Flower does print is printed once, without colour codes unless stderr is a terminal.
    The environment (`QUIET_ENV`, inherited by Ray's workers) is restored afterwards.
    """
    with _environment(QUIET_ENV), _quiet_loggers(verbose), _plain_flower_log():
        yield


@contextlib.contextmanager
def _plain_flower_log() -> Iterator[None]:
    """Flower's log lines through its own handler only (not the root logger's as well, which the CLI
    configures), coloured only on a terminal."""
    from flwr.common.logger import update_console_handler

    flower = logging.getLogger("flwr")
    propagate, flower.propagate = flower.propagate, False
    update_console_handler(colored=sys.stderr.isatty())
    try:
        yield
    finally:
        flower.propagate = propagate
        update_console_handler(colored=True)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables the user has not set, and restore the environment afterwards."""
    added = [key for key in values if key not in os.environ]
    os.environ.update({key: values[key] for key in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


@contextlib.contextmanager
def _quiet_loggers(verbose: bool) -> Iterator[None]:
    if verbose:
        yield
        return
    loggers = [logging.getLogger(name) for name in ("flwr", "ray", "filelock", "datasets")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL if lg.name == "flwr" else logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def backend_config(cfg: Config) -> dict:
    """Flower's Ray backend settings: one torch thread per simulated client unless the config says more."""
    return {"client_resources": {"num_cpus": cfg.simulation.num_cpus, "num_gpus": cfg.simulation.num_gpus}}


def ray_init_args(cfg: Config, verbose: bool) -> dict:
    """How `start_ray` calls `ray.init`.

    An empty `simulation.ray_address` means a fresh Ray instance on this machine, always ("local"):
    never a cluster that Ray's own files or RAY_ADDRESS name (which may have died long ago). The
    workers get the driver's `sys.path` (as Flower gives them), so a user's strategy or model file
    imports there too, and send their ArrayRecords out of band (`fedlayer.ray_transport`).
    """
    pythonpath = os.pathsep.join([*sys.path, *filter(None, [os.environ.get("PYTHONPATH")])])
    return {
        "address": cfg.simulation.ray_address or "local",
        "include_dashboard": False,
        "logging_level": "INFO" if verbose else "ERROR",
        "log_to_driver": verbose,
        "runtime_env": {"env_vars": {"PYTHONPATH": pythonpath}, "worker_process_setup_hook": WORKER_SETUP_HOOK},
    }


@contextlib.contextmanager
def started_ray(cfg: Config, verbose: bool) -> Iterator[None]:
    """Ray, started here rather than by Flower (which then uses it), and shut down afterwards.

    SIGINT is ignored while Ray starts, so the processes it starts on this machine ignore it too: a
    Ctrl-C in a terminal reaches every process of the terminal's process group, and a Ray worker
    killed in the middle of a message would leave Flower waiting for its reply forever. The driver
    alone acts on Ctrl-C (`fedlayer.interrupt`) and stops them.
    """
    import ray

    ignored = threading.current_thread() is threading.main_thread()  # signal handlers are the main thread's
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if ignored else None
    try:
        ray.init(**ray_init_args(cfg, verbose))
    finally:
        if ignored:
            signal.signal(signal.SIGINT, previous)
    try:
        yield
    finally:
        ray.shutdown()


def check_ray_address(address: str, timeout: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """Fail at once, naming the address, when the Ray cluster a config names cannot be reached.

    Ray itself retries an unreachable cluster for minutes; a TCP connection to its head says in
    seconds whether anything listens there. "" (a local instance), "local" and "auto" are not checked.
    """
    if address in ("", "local", "auto"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(
            f"config key 'simulation.ray_address': invalid value {address!r}; expected host:port of a Ray "
            "cluster's head (e.g. 127.0.0.1:6379), or '' for a Ray instance on this machine"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RunError(
            f"cannot reach the Ray cluster at simulation.ray_address = {address!r}: {exc.strerror or exc}; "
            "start it (ray start --head), fix the address, or leave it empty for a Ray instance on this machine"
        ) from None


def run_simulation(
    cfg: Config, out: str | Path | None = None, *, verbose: bool = False, console: Console | None = None
) -> FederatedRun:
    """Train `cfg` on the simulation engine; return the finished run (its directory is `.run_dir`)."""
    from fedlayer.server_app import FederatedRun

    console = console or make_console(stderr=True)
    started = time.perf_counter()
    run = FederatedRun(cfg, RunDirectory(out or cfg.output.dir), console)  # validates everything first
    with claim(run.run_dir.path, overwrite=cfg.output.overwrite, note=_noter(console)):
        run.prepare_directory()
        console.print(
            f"[bold]fedlayer[/] run -> {run.run_dir.path}  ({cfg.federation.clients} clients, "
            f"{cfg.federation.rounds} rounds, strategy {run.strategy_label})"
        )
        return _simulate(run, started, verbose=verbose, console=console)


def resume_simulation(run_dir: str | Path, *, verbose: bool = False, console: Console | None = None) -> FederatedRun:
    """Continue the run in `run_dir` from its last committed round (see `fedlayer.resume`)."""
    from fedlayer.server_app import FederatedRun

    console = console or make_console(stderr=True)
    started = time.perf_counter()
    with claim(run_dir, resume=True, note=_noter(console)):
        run: FederatedRun = FederatedRun.resume(run_dir, console=console)
        resumed = run.resumed
        assert resumed is not None  # FederatedRun.resume always continues a committed round
        done, rounds = resumed.round, run.cfg.federation.rounds
        if resumed.finished:
            console.print(f"{run.run_dir.path} is finished: all {rounds} rounds are done; nothing to resume")
            return run
        console.print(
            f"[bold]fedlayer[/] resume -> {run.run_dir.path}  (rounds {done + 1}..{rounds} of {rounds}, "
            f"strategy {run.strategy_label})"
        )
        return _simulate(run, started, verbose=verbose, console=console)


def _noter(console: Console):
    """How the run-directory lock tells the user what it did."""
    return lambda text: console.print(f"[yellow]note[/]: {text}")


def _how_to_continue(run: FederatedRun) -> str:
    """What an interrupted run kept, and the command that continues it (or why none can)."""
    from fedlayer.resume import check_resumable, read_state

    try:
        saved = read_state(run.run_dir)
        check_resumable(run.cfg, saved, run.run_dir)
    except RunError as exc:
        return str(exc)
    folder = run.run_dir.path
    return f"round {saved.round} of {saved.rounds} is kept in {folder}; continue with `fedlayer run --resume {folder}`"


def _simulate(run: FederatedRun, started: float, *, verbose: bool, console: Console) -> FederatedRun:
    from fedlayer.client_app import make_client_app

    console.print("starting Flower's simulation engine (Ray)...")
    try:
        simulate(run.main, make_client_app(run.cfg), run.cfg, verbose=verbose)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/]: {_how_to_continue(run)}")
        raise
    run.raise_if_failed()
    console.print(f"done in {time.perf_counter() - started:.1f}s; results in {run.run_dir.path}")
    return run


def simulate(main: ServerMain, client_app: ClientApp, cfg: Config, *, verbose: bool = False) -> None:
    """Run a ServerApp main function against `cfg.federation.clients` simulated nodes of `client_app` on
    Flower's simulation engine (Ray backend, `cfg.simulation` resources), logs quiet unless `verbose`.
    Ctrl-C or SIGTERM stop it promptly (`fedlayer.interrupt`) and raise KeyboardInterrupt."""
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation as flower_run_simulation

    from fedlayer.flower_runtime import pipelined_actors, prompt_dispatch
    from fedlayer.interrupt import Interruptible
    from fedlayer.ray_transport import shared_arrays

    check_ray_address(cfg.simulation.ray_address)
    server = Interruptible(main)
    server_app = ServerApp()
    server_app.main()(server.serve)
    if cfg.simulation.keep_freed_memory:
        keep_freed_memory()  # before Ray starts: its worker processes inherit the settings
    with (
        quiet_logs(verbose),
        _environment(CLIENT_ENV),
        started_ray(cfg, verbose),
        server.signals(),
        prompt_dispatch(),
        pipelined_actors(),
        shared_arrays(),
    ):
        flower_run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=cfg.federation.clients,
            backend_config=backend_config(cfg),
            verbose_logging=verbose,
        )
