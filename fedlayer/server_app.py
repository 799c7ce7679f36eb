"""Flower ServerApp: the configured strategy, observed every round by the barrier analysis.

`FederatedRun` is one run of one config: `prepare` checks everything and creates the run directory
(`resume` continues one from its last committed round, see `fedlayer.resume`); `main` is the ServerApp
body (partition discovery, seeded sampling, `Strategy.start`); `server_strategy` builds the chain of
wrappers the configured strategy runs in. The module-level `app` serves `flwr run .`, reading the
config from Flower's run-config.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from flwr.supercore.exit import add_exit_handler
from rich.console import Console

from fedlayer import protocol
from fedlayer.checkpoints import absolute_checkpoint
from fedlayer.config import Config, config_from_flat, load_config
from fedlayer.console import make_console
from fedlayer.data.specs import absolute_spec
from fedlayer.errors import FedlayerError, RunError
from fedlayer.layers import model_layers
from fedlayer.memory import keep_freed_memory
from fedlayer.model_specs import absolute_model_spec
from fedlayer.observer import RoundRecorder, barrier_analysis
from fedlayer.plots.runs import plot_run
from fedlayer.results import RunDirectory, task_terms
from fedlayer.resume import (
    STATE_FILE,
    RoundOffset,
    RoundState,
    check_resumable,
    commit_round,
    load_round,
    read_state,
)
from fedlayer.runlock import claim
from fedlayer.task import client_initial_state, dataset_for, new_model, partitions_for
from fedlayer.task_kinds import LANGUAGE
from fedlayer.training import Metrics, default_device
from strategies import (
    BarrierAware,
    Guarded,
    LayerSelective,
    Observed,
    SeededGrid,
    build_strategy,
    clients_per_round,
    query_partitions,
    restore_state,
    state_of,
    unsaved_note,
)
from strategies.sampling import is_simulation_grid

DISCOVERY_TIMEOUT_S = 600.0
RAY_STOP_TIMEOUT_S = 3.0  # Flower force-exits 5 s after `flwr stop`


def faithful(cfg: Config, run_dir: RunDirectory) -> Config:
    """`cfg` as the run directory records it: where the run really went (`output.dir`, whatever --out
    said) and a strategy file, a dataset's file or folder, a model's file or folder and the clients' initial
    checkpoints by their absolute paths, so `--resume` works from any working directory."""
    changes: dict = {
        "output": {"dir": str(run_dir.path)},
        "data": {"dataset": absolute_spec(cfg.data.dataset)},
        "model": {"name": absolute_model_spec(cfg.model.name)},
        "federation": {"init_checkpoints": [absolute_checkpoint(c) for c in cfg.federation.init_checkpoints]},
    }
    module, sep, name = cfg.strategy.class_.rpartition(":")
    if sep and module.endswith(".py"):
        changes["strategy"] = {"class": f"{Path(module).expanduser().resolve()}:{name}"}
    return cfg.replace(**changes)


class FederatedRun:
    """One run of one config: validated inputs, the strategy, the recorder and the run directory."""

    def __init__(
        self,
        cfg: Config,
        run_dir: RunDirectory,
        console: Console,
        *,
        tag: str | None = None,
        resumed: RoundState | None = None,
    ):
        self.cfg = cfg = faithful(cfg, run_dir)
        self.tag = tag  # names this run to the clients (their personal state) when runs share a grid
        self.run_dir = run_dir
        self.console = console
        self.partitions = partitions_for(cfg)  # loads the dataset: a missing one fails here
        self.model = new_model(cfg)
        # init = "checkpoints": each read once, now (a missing or misfit one fails before anything is created)
        self.checkpoint_starts = (
            {p: client_initial_state(cfg, p, self.model) for p in range(cfg.federation.clients)}
            if cfg.federation.init == "checkpoints"
            else {}
        )
        self.layers = model_layers(self.model, cfg.analysis.layer_unit)  # the unit of the selectors and groups
        device = default_device()  # the server's GPU, if it has one, evaluates and analyses
        self.strategy = self._build_strategy()
        note = unsaved_note(self.strategy)
        if note:
            console.print(f"[yellow]warning[/]: {note}")
        self.recorder = RoundRecorder(
            cfg,
            run_dir,
            self.model,
            self.strategy,
            device,
            on_commit=self._commit_round,
            on_round_end=self._report_round,
        )
        self.analysis = barrier_analysis(cfg, self.strategy, self.model, device, on_round=self.recorder.on_analysis)
        self.resumed = resumed  # the committed round this run continues from
        self.error: FedlayerError | None = None  # why the run stopped early (Flower may swallow it)
        if resumed is not None and not resumed.finished:
            run_dir.load(resumed.round)
            if isinstance(self.strategy, BarrierAware):
                self.strategy.restore_history(run_dir.table("choices"))
        self.started = time.perf_counter()
        self.round_finished_at: dict[int, float] = {}  # perf_counter() when each round was committed

    @property
    def strategy_label(self) -> str:
        s = self.cfg.strategy
        return s.class_ or s.name if not s.average else f"{s.class_ or s.name} (average {s.average})"

    @classmethod
    def prepare(cls, cfg: Config, out: str | Path | None = None, *, console: Console | None = None) -> FederatedRun:
        """Check data, partitions, model and strategy; only then create the run directory."""
        run = cls(cfg, RunDirectory(out or cfg.output.dir), console or make_console(stderr=True))
        run.prepare_directory()
        return run

    @classmethod
    def resume(cls, path: str | Path, *, console: Console | None = None) -> FederatedRun:
        """Continue the run in `path` after its last committed round, with its own config.toml.

        `.resumed.finished` says whether there is anything left to run.
        """
        run_dir = RunDirectory(path)
        saved = read_state(run_dir)
        cfg = load_config(run_dir.path / "config.toml")
        check_resumable(cfg, saved, run_dir)
        return cls(cfg, run_dir, console or make_console(stderr=True), resumed=saved)

    def prepare_directory(self) -> None:
        """Create the run directory with the resolved config, the partitions and, for a language dataset, its
        vocabulary (vocabulary.json: the token of each id, in id order), which reads the model's outputs."""
        self.run_dir.create()
        self.run_dir.write_text("config.toml", self.cfg.to_toml())
        self.partitions.save(self.run_dir.path / "partitions.json")
        data = dataset_for(self.cfg)
        if data.task == LANGUAGE:
            self.run_dir.write_text("vocabulary.json", json.dumps(list(data.class_names)))

    def _build_strategy(self) -> LayerSelective:
        """The configured strategy, wrapped for layer-wise averaging; selectors are checked here."""
        s, fed = self.cfg.strategy, self.cfg.federation
        sampled = clients_per_round(fed.clients, fed.fraction)
        return build_strategy(
            name=s.name,
            class_path=s.class_ or None,
            kwargs=dict(s.kwargs),
            average=s.average or None,
            personal=s.personal,
            layers=self.layers,
            layer_unit=self.cfg.analysis.layer_unit,
            model_name=self.cfg.model.name,
            measure=self._layer_barriers,
            threshold=s.threshold,
            client_init=self._client_init if fed.init != "same" else None,
            fraction_train=1.0,
            fraction_evaluate=1.0,
            min_train_nodes=sampled,
            min_evaluate_nodes=sampled,
            min_available_nodes=sampled,
        )

    def _client_init(self, partition: int) -> dict[str, torch.Tensor]:
        """Where client `partition` starts (`federation.init`: its own initialisation or checkpoint)."""
        if partition in self.checkpoint_starts:
            return self.checkpoint_starts[partition]
        return client_initial_state(self.cfg, partition, self.model)

    def main(self, grid: Grid, context: Context) -> None:
        """The ServerApp body: find which node holds which partition, then run the strategy."""
        self.start(grid, query_partitions(grid, self.cfg.federation.clients, timeout=DISCOVERY_TIMEOUT_S))

    def start(self, grid: Grid, node_to_partition: dict[int, int]) -> None:
        """All rounds of this run on `grid`; several runs can share one grid (and one Ray start) in turn."""
        cfg, fed = self.cfg, self.cfg.federation
        seeded = SeededGrid(grid, cfg.seed, fed.fraction, node_to_partition, query_timeout=fed.timeout)
        initial, done = ArrayRecord(self.model.state_dict()), 0
        if self.resumed is not None:
            initial, state, kept = load_round(self.run_dir, self.resumed, self.model)
            self.strategy.restore(state)
            if kept is not None:
                restore_state(self.strategy, kept)
            done = self.resumed.round
        if self.resumed is None and fed.init != "same" and self.analysis.due(0):
            # the clients start apart: the barriers between their initial models are round 0's
            self.analysis.analyse(0, {str(pid): self._client_init(pid) for pid in range(fed.clients)})
        strategy = self.server_strategy(done)
        tag = self.run_dir.path.name if self.tag is None else self.tag
        train_config, evaluate_config = ConfigRecord({protocol.RUN_TAG: tag}), ConfigRecord({protocol.RUN_TAG: tag})
        if fed.proximal_mu > 0:
            train_config[protocol.PROXIMAL_MU] = fed.proximal_mu
        self.started = time.perf_counter()
        try:
            strategy.start(
                grid=seeded,
                initial_arrays=initial,
                num_rounds=fed.rounds - done,
                timeout=fed.timeout,
                train_config=train_config,
                evaluate_config=evaluate_config,
                evaluate_fn=self.recorder.end_of_round,
            )
        except FedlayerError as exc:
            self.error = exc
            raise
        plot_run(self.run_dir.path)

    def _layer_barriers(self, server_round: int, client_states: Mapping[str, Mapping[str, np.ndarray]]) -> dict:
        """The barrier-aware strategy's measure: the analysis' single-layer barriers of this round."""
        return self.analysis.layer_barriers(server_round, client_states)

    def server_strategy(self, done: int = 0) -> Strategy:
        """The strategy `Strategy.start` drives, outermost first.

        - RoundOffset (resumed runs only) counts rounds from the last committed one, `done`;
        - Guarded records client faults and bad updates and leaves them out;
        - Observed hands the accepted replies and the bytes sent each way to the recorder (metrics, client models);
        - BarrierAnalysis measures the layer-wise barriers between the replying clients' models;
        - LayerSelective (or BarrierAware) averages the selected layers with the Flower strategy.
        """
        fed = self.cfg.federation
        observed = Observed(
            self.analysis,
            on_train=self.recorder.on_train,
            on_evaluate=self.recorder.on_evaluate,
            on_traffic=self.recorder.on_traffic,
        )
        guarded = Guarded(
            observed, min_replies=fed.min_clients, on_failures=self.recorder.on_failures, timeout=fed.timeout
        )
        return RoundOffset(guarded, done) if done else guarded

    def _commit_round(self, server_round: int, arrays: ArrayRecord) -> None:
        commit_round(
            self.run_dir,
            self.cfg,
            server_round,
            arrays,
            self.strategy.snapshot(),
            state_of(self.strategy),
        )

    def _report_round(self, server_round: int, metrics: Metrics) -> None:
        analysis_s = self.analysis.seconds.get(server_round)
        self.round_finished_at[server_round] = now = time.perf_counter()
        elapsed = now - self.started
        analysis = f"  analysis {analysis_s:5.1f}s" if analysis_s is not None else ""
        label = "initial model" if server_round == 0 else f"round {server_round}/{self.cfg.federation.rounds}"
        terms = task_terms(self.recorder.task)
        perplexity = f"  perplexity {metrics.perplexity:.2f}" if terms.perplexity else ""
        self.console.print(
            f"  {label:<14} global test {terms.accuracy} {100 * metrics.accuracy:5.1f}%  "
            f"loss {metrics.loss:.3f}{perplexity}{self._personalised(server_round)}{analysis}  [{elapsed:6.1f}s]"
            f"{self._left_out(server_round)}",
            soft_wrap=True,
        )

    def _personalised(self, server_round: int) -> str:
        """With personal layers, the clients' own models are what counts: their mean local test accuracy
        (over clients, as the comparison's personal_accuracy_mean)."""
        if not self.strategy.personal_keys:
            return ""
        table = self.run_dir.latest("metrics")
        local = table[(table["round"] == server_round) & (table["split"] == "local-test") & (table["status"] == "ok")]
        if local.empty:
            return ""
        return f"  personalised {100 * local['accuracy'].mean():5.1f}%"

    def _left_out(self, server_round: int) -> str:
        """The clients of this round that failed, timed out or were rejected (their reasons: metrics.parquet)."""
        table = self.run_dir.latest("metrics")
        bad = table[(table["round"] == server_round) & (table["status"] != "ok")]
        if bad.empty:
            return ""
        return "  left out: " + ", ".join(
            f"{c} ({split} {status})"
            for c, split, status in zip(bad["client"], bad["split"], bad["status"], strict=True)
        )

    def raise_if_failed(self) -> None:
        """Flower swallows some server-side failures; a run without its final round is one of them."""
        if self.error is not None:
            raise self.error
        metrics = self.run_dir.table("metrics")
        last = int(metrics["round"].max()) if not metrics.empty else -1
        if last < self.cfg.federation.rounds:
            raise RunError(
                f"the run stopped after round {last} of {self.cfg.federation.rounds}; "
                "rerun with --verbose to see Flower's log"
            )


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """`flwr run .`: the config comes from the run-config; outputs go to its (absolute) output.dir.

    An output.dir that holds a stopped run of the same experiment is continued after its last
    committed round: after a crash (of the SuperLink, say) the same `flwr run` command continues the
    run, as `fedlayer run --resume` does in a simulation; output.overwrite = true starts it over. A
    fedlayer error is printed as one line before Flower reports the failed run.
    """
    cfg = config_from_flat(context.run_config)
    if cfg.simulation.keep_freed_memory:
        keep_freed_memory()  # this process evaluates and analyses every round
    if is_simulation_grid(grid):
        add_exit_handler(_stop_ray, run_before_force_exit=True)
    console = make_console(stderr=True)
    run_dir = RunDirectory(Path(cfg.output.dir).resolve())
    note = functools.partial(console.print, "note:", markup=False)  # a lock taken over, an old run cleared
    try:
        stopped = _stopped_run(cfg, run_dir)
        if stopped is None:
            run = FederatedRun(cfg, run_dir, console)
            with claim(run_dir.path, overwrite=cfg.output.overwrite, note=note):
                run.prepare_directory()
                run.main(grid, context)
            return
        with claim(run_dir.path, resume=True, note=note):
            run = FederatedRun(cfg, run_dir, console, resumed=stopped)
            console.print(
                f"continuing the stopped run in {run_dir.path} after its last committed round, "
                f"{stopped.round} of {stopped.rounds} (output.overwrite = true would start it over)"
            )
            run.main(grid, context)
    except FedlayerError as exc:
        console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        raise


def _stop_ray() -> None:
    """A Flower exit handler: `flwr stop` (or Ctrl-C) ends the simulation runtime's flwr-simulation process with
    os._exit after 5 s, skipping Ray's shutdown. Ray's raylet and GCS, this process's children, are then
    killed with it, and Ray's DashboardAgent and RuntimeEnvAgent, the raylet's children, finding it killed, try
    to report that to the dead GCS and are left behind for minutes. So every process below this one is asked
    to stop (SIGTERM) and, if still there after a few seconds, killed. (`ray.shutdown()` cannot do it: Flower's
    workers still call Ray, and the first call after it ends the process before Ray has stopped its own.)
    Nothing to do once Ray has stopped (after a run that ended by itself)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    import psutil  # Ray's copy (ray/thirdparty_files), importable once ray is

    family = psutil.Process().children(recursive=True)
    for process in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(family, timeout=RAY_STOP_TIMEOUT_S)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def _stopped_run(cfg: Config, run_dir: RunDirectory) -> RoundState | None:
    """The last committed round of a stopped run of `cfg`'s experiment in `run_dir`, or None for a new run."""
    if cfg.output.overwrite or not (run_dir.path / STATE_FILE).is_file():
        return None
    saved = read_state(run_dir)
    if saved.finished:
        return None  # a finished run: `claim` refuses to overwrite it
    try:
        check_resumable(faithful(cfg, run_dir), saved, run_dir)
    except RunError as exc:
        raise RunError(
            f"output.dir {str(run_dir.path)!r} holds a stopped run that this run-config cannot continue ({exc}); "
            "give another output.dir, or output.overwrite = true to replace that run"
        ) from None
    return saved
