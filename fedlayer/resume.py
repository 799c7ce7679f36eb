"""Resume a run after a crash: every completed round leaves one consistent checkpoint.

The commit of round R (after its tables are written):
  1. checkpoints/round-R/ gets global.safetensors (the global model), shared.safetensors (each key's
     last shared value, once there is one), personal-<partition>.safetensors (each client's
     personal layers, kept by the server with personal="server"), keyed by partition id: node ids
     change between runs, and the server strategy's own state (`strategies.state`: FedAdam's
     moments, FedAvgM's momentum, ...): strategy.json (scalars) and strategy.safetensors (arrays);
  2. state.json {"round": R, ...} is written atomically, LAST: it names a complete round folder;
  3. older round folders are deleted.
A crash at any point leaves state.json naming a complete round; the tables may hold rows of the
round after it, which a resume drops.

Resuming reads state.json, checks that RUN_DIR/config.toml still describes the same experiment (only
the OPERATIONAL keys may change, e.g. a longer federation.timeout), truncates the tables to rounds
<= R, restores the strategy state (each partition id mapped to its new node id) and runs rounds
R+1..N through `RoundOffset`. Client sampling, fault injection and the clients' RNG are functions of
(seed, round, partition), so the resumed rounds are those an uninterrupted run would have had, and
so are the tables.

What resumes exactly: fedlayer's LayerSelective / BarrierAware (choices table included) around any
Flower strategy whose state `strategies.state` saves: every strategy of flwr.serverapp.strategy but
FedXgbCyclic (the differential-privacy wrappers add unseeded noise: no two of their runs are equal),
and a user's strategy with the methods `state()` / `load_state()` or without state of its own; a run
whose strategy keeps other state says so when it starts (`strategies.state.unsaved_note`).
personal="client" cannot resume at all: its personal layers lived in the clients' memory, which the
crash took.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from fedlayer.atomic import write_bytes
from fedlayer.checkpoints import check_state_fits, load_checkpoint, save_checkpoint
from fedlayer.config import Config
from fedlayer.errors import RunError
from fedlayer.results import RunDirectory
from strategies.layerwise import SelectiveState
from strategies.state import StrategyState
from strategies.wrapper import StrategyWrapper

STATE_FILE = "state.json"
STRATEGY_JSON, STRATEGY_ARRAYS = "strategy.json", "strategy.safetensors"  # in a round folder
ROUND_FOLDER = re.compile(r"round-(\d+)")
# config keys that do not change what a run computes: a resumed run may change them in RUN_DIR/config.toml
OPERATIONAL = (
    "federation.timeout",
    "federation.min_clients",
    "simulation.num_cpus",
    "simulation.num_gpus",
    "simulation.ray_address",
    "simulation.keep_freed_memory",
    "output.dir",
    "output.checkpoints",
    "output.overwrite",
)


@dataclass(frozen=True)
class RoundState:
    """The content of state.json: the last committed round and what its folder holds."""

    round: int
    rounds: int
    experiment: dict  # the config's keys that change results (flat), to check a resumed run's config
    average_keys: list[str]
    personal: list[int]  # partitions with personal layers (a personal-<partition>.safetensors)

    @property
    def finished(self) -> bool:
        return self.round >= self.rounds


def round_folder(run_dir: RunDirectory, server_round: int):
    return run_dir.checkpoints / f"round-{server_round}"


def commit_round(
    run_dir: RunDirectory,
    cfg: Config,
    server_round: int,
    arrays: ArrayRecord,
    state: SelectiveState,
    strategy: StrategyState,
) -> None:
    """Write round `server_round`'s checkpoint, then state.json (the commit), then drop older rounds.

    `state` is LayerSelective's (`snapshot`), `strategy` the wrapped strategy's own (`strategies.state_of`).
    """
    folder = round_folder(run_dir, server_round)
    if folder.exists():  # left by a crashed attempt at this round
        shutil.rmtree(folder)
    save_checkpoint(arrays.to_torch_state_dict(), folder / "global.safetensors")
    if state.shared:  # empty before the first round
        save_checkpoint(state.shared.to_torch_state_dict(), folder / "shared.safetensors")
    personal = sorted(pid for pid, record in state.personal.items() if record)  # empty: nothing personal
    for pid in personal:
        save_checkpoint(state.personal[pid].to_torch_state_dict(), folder / f"personal-{pid}.safetensors")
    write_strategy_state(folder, strategy)
    saved = RoundState(server_round, cfg.federation.rounds, experiment(cfg), list(state.average_keys), personal)
    write_bytes(run_dir.path / STATE_FILE, json.dumps(asdict(saved), indent=1).encode())
    prune_rounds(run_dir, keep=server_round)


def prune_rounds(run_dir: RunDirectory, keep: int) -> None:
    """Delete every round folder but `keep`'s."""
    if not run_dir.checkpoints.is_dir():
        return
    for folder in run_dir.checkpoints.iterdir():
        match = ROUND_FOLDER.fullmatch(folder.name)
        if match and int(match.group(1)) != keep and folder.is_dir():
            shutil.rmtree(folder)


def read_state(run_dir: RunDirectory) -> RoundState:
    """state.json of a run directory, or a clear error saying why there is none."""
    path = run_dir.path / STATE_FILE
    if not run_dir.path.is_dir():
        raise RunError(f"cannot resume {str(run_dir.path)!r}: no such run directory")
    if not path.is_file():
        raise RunError(
            f"cannot resume {str(run_dir.path)!r}: it has no {STATE_FILE}, so no round of it was "
            "committed (not a run directory, or the run stopped before its initial model was "
            "evaluated); start the run again with `fedlayer run CONFIG`"
        )
    try:
        return RoundState(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise RunError(f"cannot resume {str(run_dir.path)!r}: {STATE_FILE} is damaged ({exc})") from exc


def experiment(cfg: Config) -> dict:
    """The config's keys that change what a run computes, flat (`section.key`: value)."""
    return {key: value for key, value in cfg.to_flat().items() if key not in OPERATIONAL}


def check_resumable(cfg: Config, saved: RoundState, run_dir: RunDirectory) -> None:
    """Refuse what cannot continue: a changed experiment, or personal layers that lived on the clients."""
    now = experiment(cfg)
    changed = sorted(key for key in now.keys() | saved.experiment.keys() if now.get(key) != saved.experiment.get(key))
    if changed:
        details = ", ".join(f"{key} = {saved.experiment.get(key)!r} -> {now.get(key)!r}" for key in changed)
        raise RunError(
            f"cannot resume {str(run_dir.path)!r}: its config.toml was changed after the run started "
            f"({details}); only {', '.join(OPERATIONAL)} may change"
        )
    if cfg.strategy.personal == "client" and 0 < saved.round < saved.rounds:
        raise RunError(
            f"cannot resume {str(run_dir.path)!r} (stopped after round {saved.round}): with "
            "strategy.personal = 'client' the personal layers were kept in the clients' memory and "
            "were lost with them; only personal = 'server' runs can resume"
        )


def write_strategy_state(folder: Path, strategy: StrategyState) -> None:
    """The strategy's state into a round folder: arrays (if any) in safetensors, then the JSON tree."""
    if strategy.arrays:
        save_checkpoint(strategy.arrays, folder / STRATEGY_ARRAYS)
    write_bytes(folder / STRATEGY_JSON, json.dumps(strategy.tree, indent=1).encode())


def read_strategy_state(folder: Path) -> StrategyState | None:
    """The strategy state a round folder holds; None for a folder from before fedlayer saved it."""
    if not (folder / STRATEGY_JSON).is_file():
        return None
    arrays = load_checkpoint(folder / STRATEGY_ARRAYS) if (folder / STRATEGY_ARRAYS).is_file() else {}
    return StrategyState(dict(arrays), json.loads((folder / STRATEGY_JSON).read_text()))


def load_round(
    run_dir: RunDirectory, saved: RoundState, model: torch.nn.Module
) -> tuple[ArrayRecord, SelectiveState, StrategyState | None]:
    """The committed round's global model (checked against `model`, in its key order), LayerSelective's
    state and the wrapped strategy's own (None if the round folder predates it)."""
    folder = round_folder(run_dir, saved.round)
    arrays = load_checkpoint(folder / "global.safetensors")
    check_state_fits(model, arrays, what=f"the global model of round {saved.round}")
    order = list(model.state_dict())
    shared = load_checkpoint(folder / "shared.safetensors") if (folder / "shared.safetensors").exists() else {}
    personal = {pid: ArrayRecord(load_checkpoint(folder / f"personal-{pid}.safetensors")) for pid in saved.personal}
    state = SelectiveState(
        list(saved.average_keys), ArrayRecord({k: shared[k] for k in order if k in shared}), personal
    )
    return ArrayRecord({key: arrays[key] for key in order}), state, read_strategy_state(folder)


class RoundOffset(StrategyWrapper):
    """Runs rounds offset+1 .. offset+num_rounds: `Strategy.start` always counts from 1.

    The wrapped strategy (and, through Flower's config "server-round", the ClientApps) sees the true
    round numbers, and so does `evaluate_fn`, which is not called for round `offset` (recorded by the
    run being continued).
    """

    def __init__(self, strategy: Strategy, offset: int) -> None:
        super().__init__(strategy)
        self.offset = offset

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_train(server_round + self.offset, arrays, config, grid)

    def aggregate_train(
        self,
        server_round: int,
        replies: Iterable[Message],
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round + self.offset, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round + self.offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round + self.offset, replies)

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        shifted = None
        if evaluate_fn is not None:

            def shifted(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
                return None if server_round == 0 else evaluate_fn(server_round + self.offset, arrays)

        return super().start(
            grid=grid,
            initial_arrays=initial_arrays,
            num_rounds=num_rounds,
            timeout=timeout,
            train_config=train_config,
            evaluate_config=evaluate_config,
            evaluate_fn=shifted,
        )
