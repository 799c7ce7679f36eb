"""Exact resume of server strategies with state (`strategies.state`): FedAdam's moments, FedAvgM's momentum,
a user's strategy with `state()` / `load_state()`; and the warning a run starts with when its strategy
keeps state that cannot be saved.

In process (seconds): the crash is an exception from a hook, as in test_resume.py. With Ray (slow):
`fedlayer run` killed with SIGKILL, then `fedlayer run --resume`.
"""

import contextlib
import io
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedXgbCyclic,
    FedYogi,
)
from flwr.serverapp.strategy.fedopt import FedOpt
from rich.console import Console
from test_resume import (
    BASE,
    Crash,
    assert_same_tables,
    crash_after_commit,
    crash_before_commit,
    execute,
    fedlayer,
    finish,
    state_round,
    write_config,
)

from fedlayer.checkpoints import load_checkpoint
from fedlayer.config import load_config
from fedlayer.results import RunDirectory
from fedlayer.resume import read_strategy_state, write_strategy_state
from fedlayer.server_app import FederatedRun
from strategies import LayerSelective, restore_state, state_of, stock_strategies, unsaved_note
from strategies.state import KEPT, _attributes_set

# the four server optimisers, with settings under which their state matters (FedAvgM: momentum on)
OPTIMISERS = {
    "FedAdam": "{ eta = 0.01 }",
    "FedYogi": "{ eta = 0.01 }",
    "FedAdagrad": "{ eta = 0.01 }",
    "FedAvgM": "{ server_momentum = 0.9 }",
}
# Killed with SIGKILL under Ray: one of FedOpt's family (FedYogi and FedAdagrad keep the same moments
# through the same code) and FedAvgM; all four resume in process above.
KILLED = ("FedAdam", "FedAvgM")
STATEFUL_FILE = '''
import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import FedAvg


class Smoothed(FedAvg):
    """FedAvg whose new global model is an exponential moving average of the aggregates."""

    def __init__(self, decay=0.5, **kwargs):
        super().__init__(**kwargs)
        self.decay = decay
        self.average = None  # the moving average, by key
        self.updates = 0

    def aggregate_train(self, server_round, replies):
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None:
            new = {key: array.numpy() for key, array in arrays.items()}
            old = self.average or new
            self.average = {key: self.decay * old[key] + (1 - self.decay) * new[key] for key in new}
            self.updates += 1
            arrays = ArrayRecord({key: Array(value) for key, value in self.average.items()})
        return arrays, metrics
'''
PROTOCOL_METHODS = """
    def state(self):
        return self.average or {}, {"updates": self.updates, "has_average": self.average is not None}

    def load_state(self, arrays, scalars):
        self.average = arrays if scalars["has_average"] else None
        self.updates = scalars["updates"]
"""


def interrupted_and_uninterrupted(tmp_path: Path, overrides: list[str], crash) -> None:
    """Run `overrides` whole and with a crash in rounds 2..3, resume the second: same tables, same checkpoints."""
    cfg = load_config(None, [*BASE, *overrides])
    execute(FederatedRun.prepare(cfg, tmp_path / "whole"), node_seed=1)
    broken = FederatedRun.prepare(cfg, tmp_path / "broken")
    crash(broken, 2 if crash is crash_after_commit else 3)
    with pytest.raises(Crash):
        execute(broken, node_seed=2)
    assert state_round(tmp_path / "broken") == 2
    execute(FederatedRun.resume(tmp_path / "broken"), node_seed=3)  # other node ids
    assert_same_ends(tmp_path / "whole", tmp_path / "broken")


def assert_same_ends(whole: Path, resumed: Path) -> None:
    """The same tables, and the same global model and strategy state in the last round's checkpoint."""
    assert_same_tables(whole, resumed)
    folder = Path("checkpoints/round-4")
    for name in ("global.safetensors", "strategy.safetensors"):
        a, b = load_checkpoint(whole / folder / name), load_checkpoint(resumed / folder / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert (whole / folder / "strategy.json").read_text() == (resumed / folder / "strategy.json").read_text()


@pytest.mark.parametrize(
    ("name", "crash"),
    [
        ("FedAdam", crash_after_commit),
        ("FedYogi", crash_before_commit),
        ("FedAdagrad", crash_after_commit),
        ("FedAvgM", crash_before_commit),
    ],
)
def test_a_resumed_server_optimiser_continues_its_state_exactly(tmp_path, name, crash):
    overrides = [
        "strategy.name=fedper",  # LayerSelective: the optimiser sees the body only
        f"strategy.class={name}",
        f"strategy.kwargs={OPTIMISERS[name]}",
        "federation.fraction=0.75",
        "analysis.every=0",
    ]
    interrupted_and_uninterrupted(tmp_path, overrides, crash)


def test_a_users_strategy_with_state_and_load_state_resumes_exactly(tmp_path):
    path = tmp_path / "smoothed.py"
    path.write_text(STATEFUL_FILE + PROTOCOL_METHODS)
    overrides = ["strategy.name=fedper", f"strategy.class={path}:Smoothed", "analysis.every=0"]
    console = io.StringIO()
    FederatedRun(load_config(None, [*BASE, *overrides]), RunDirectory(tmp_path / "probe"), Console(file=console))
    assert console.getvalue() == ""  # no warning: its state is saved
    interrupted_and_uninterrupted(tmp_path, overrides, crash_after_commit)
    saved = read_strategy_state(tmp_path / "broken" / "checkpoints" / "round-4")
    assert saved.tree["strategy"]["scalars"] == {"updates": 4, "has_average": True}
    assert set(saved.arrays) == {f"strategy.{key}" for key in saved.tree["strategy"]["arrays"]} != set()


def test_a_strategy_with_state_it_cannot_save_is_named_when_the_run_starts(tmp_path):
    path = tmp_path / "smoothed.py"
    path.write_text(STATEFUL_FILE)  # no state() / load_state()
    console = io.StringIO()
    cfg = load_config(None, [*BASE, f"strategy.class={path}:Smoothed"])
    FederatedRun(cfg, RunDirectory(tmp_path / "run"), Console(file=console, width=400))
    assert not (tmp_path / "run").exists()  # named before anything runs or is written
    text = " ".join(console.getvalue().split())
    assert "warning: the strategy keeps state between rounds that fedlayer cannot save: " in text
    assert "Smoothed (self.average, self.updates)" in text and "state() and load_state()" in text

    for saved in ("FedAdam", "FedAvgM"):
        console = io.StringIO()
        cfg = load_config(None, [*BASE, f"strategy.class={saved}"])
        FederatedRun(cfg, RunDirectory(tmp_path / "run"), Console(file=console))
        assert console.getvalue() == ""


class Counting(FedAvg):
    """A user's subclass of a stateless Flower strategy: stateless too unless its own methods change self."""

    def aggregate_evaluate(self, server_round, replies):
        replies = list(replies)
        self.seen = getattr(self, "seen", 0) + len(replies)
        return super().aggregate_evaluate(server_round, replies)


class Plain(FedAdam):
    def summary(self):
        print("plain FedAdam")
        super().summary()


def test_unsaved_state_looks_at_a_users_own_methods_and_through_wrappers():
    assert unsaved_note(LayerSelective(Plain(), "all")) is None  # FedAdam's state is saved
    note = unsaved_note(LayerSelective(DifferentialPrivacyClientSideAdaptiveClipping(Counting(), 0.1, 2), "all"))
    assert note is not None and "Counting (self.seen)" in note
    assert "FedXgbCyclic (self.registered_nodes)" in unsaved_note(FedXgbCyclic())


def test_kept_lists_every_flower_strategy_and_all_its_code_changes_between_rounds():
    for name, cls in stock_strategies().items():
        assert cls in KEPT, name
        kept = KEPT[cls]
        declared = {f"self.{a}" for a in (*kept.saved, *kept.per_round, *kept.unsaved)}
        changed = {a for base in cls.__mro__ if base.__module__.startswith("flwr") for a in _attributes_set(base) or []}
        assert changed <= declared, f"{name} changes {sorted(changed - declared)} between rounds"


class Accountant:
    """Stands for Flower's RdpAccountant (dp-accounting is not installed): JSON state."""

    def __init__(self) -> None:
        self.releases: list[dict] = []

    def state_dict(self) -> dict:
        return {"releases": list(self.releases)}

    def load_state_dict(self, state: dict) -> None:
        self.releases = list(state["releases"])


def arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "fc1.weight": rng.normal(size=(3, 4)).astype(np.float32),
        "fc1.bias": rng.normal(size=3),
        "bn.num_batches_tracked": np.array(7.0),
    }


def fill(strategy, rng: np.random.Generator) -> None:
    """Give every attribute `KEPT` saves a value no fresh instance has."""
    if isinstance(strategy, FedOpt):
        strategy.m_t, strategy.v_t = arrays(rng), arrays(rng)
    elif isinstance(strategy, FedAvgM):
        strategy.current_arrays = ArrayRecord({k: Array(v) for k, v in arrays(rng).items()})
        strategy.momentum_vector = list(arrays(rng).values())
    elif hasattr(strategy, "accountant"):
        strategy.accountant.releases.append({"noise_multiplier": 1.5, "sample_size": 2})
    else:
        strategy.clipping_norm = float(rng.uniform())


def saved_values(strategy) -> dict:
    values = {}
    for level in (strategy, getattr(strategy, "strategy", None)):
        for name in KEPT[type(level)].saved if level is not None else ():
            value = getattr(level, name)
            if isinstance(value, ArrayRecord):
                value = {k: a.numpy() for k, a in value.items()}
            values[f"{type(level).__name__}.{name}"] = value.state_dict() if name == "accountant" else value
    return values


def assert_same(a, b) -> None:
    if isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    else:
        assert type(a) is type(b) and a == b


FACTORIES = {
    "FedAdam": lambda: FedAdam(),
    "FedYogi": lambda: FedYogi(),
    "FedAdagrad": lambda: FedAdagrad(),
    "FedOpt": lambda: FedOpt(),
    "FedAvgM": lambda: FedAvgM(server_momentum=0.9),
    "DP-server-adaptive(FedAdam)": lambda: DifferentialPrivacyServerSideAdaptiveClipping(FedAdam(), 0.1, 2),
    "DP-client-adaptive(FedAvgM)": lambda: DifferentialPrivacyClientSideAdaptiveClipping(FedAvgM(), 0.1, 2),
    "DP-server-fixed": lambda: DifferentialPrivacyServerSideFixedClipping(FedAvg(), 0.1, 1.0, 2),
    "DP-client-fixed": lambda: DifferentialPrivacyClientSideFixedClipping(FedAvg(), 0.1, 1.0, 2),
}


@pytest.mark.parametrize("name", FACTORIES)
def test_each_flower_strategys_state_round_trips_through_a_round_folder(tmp_path, name):
    rng = np.random.default_rng(0)
    original, fresh = FACTORIES[name](), FACTORIES[name]()
    for strategy in (original, fresh):
        if hasattr(strategy, "accountant"):
            strategy.accountant = Accountant()
    for level in (original, getattr(original, "strategy", None)):
        if level is not None and KEPT[type(level)].saved:
            fill(level, rng)
    write_strategy_state(tmp_path, state_of(LayerSelective(original, "all")))  # through fedlayer's wrapper
    restore_state(LayerSelective(fresh, "all"), read_strategy_state(tmp_path))
    assert_same(saved_values(fresh), saved_values(original))
    assert not any(path.suffix == ".pkl" for path in tmp_path.iterdir())


# ---------------------------------------------------------------------- with Ray (slow)


@pytest.mark.slow
@pytest.mark.parametrize("name", KILLED)
def test_a_stateful_run_killed_with_sigkill_resumes_to_the_uninterrupted_tables(tmp_path, name):
    """The uninterrupted run is an in-process one (the same tables as Ray's: clients are seeded by
    partition and round): one Ray start fewer per case."""
    overrides = ["strategy.name=fedper", f"strategy.class={name}", f"strategy.kwargs={OPTIMISERS[name]}"]
    config = write_config(tmp_path, "killed", "simulation.num_cpus=1", *overrides)
    execute(FederatedRun.prepare(load_config(config), tmp_path / "whole"), node_seed=1)
    run_dir = tmp_path / "killed"
    process = fedlayer("run", str(config))
    deadline = time.monotonic() + 200
    try:
        while not ((run_dir / "state.json").exists() and state_round(run_dir) >= 2):
            if process.poll() is not None:
                pytest.fail(f"the run ended before it could be killed: {process.communicate()[0][-3000:]}")
            assert time.monotonic() < deadline, "no round 2 within 200 s"
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):  # the run's process group is gone if it ended
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
    assert state_round(run_dir) < 4
    finish(fedlayer("run", "--resume", str(run_dir)))
    assert state_round(run_dir) == 4
    assert_same_ends(tmp_path / "whole", run_dir)
