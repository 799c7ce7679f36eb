"""Keeping freed memory removes the page faults of the barrier engine's repeated activations."""

import os
import subprocess
import sys

import pytest

from fedlayer.memory import SETTINGS, is_glibc, keep_freed_memory, malloc_tunables

# The engine runs in a thread, as the per-round analysis does in the ServerApp's thread.
ENGINE_FAULTS = """
import sys
from fedlayer.memory import keep_freed_memory

if sys.argv[1] == "keep":
    assert keep_freed_memory()
import resource, threading, torch
from fedlayer.analysis import CurveEngine
from fedlayer.models import build_model

torch.set_num_threads(1)
torch.manual_seed(0)
model = build_model("cnn", (1, 28, 28), 10)
a, b = ({k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()} for _ in range(2))
engine = CurveEngine(model, (torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))))


def measure():
    for _ in range(2):  # warm up: the heap grows to the working set
        engine.curves(a, b, groups=["layers", "full"], alphas=5)
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    engine.curves(a, b, groups=["layers", "full"], alphas=5)
    print(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)


thread = threading.Thread(target=measure)
thread.start()
thread.join()
"""

glibc = pytest.mark.skipif(not is_glibc(), reason="these are glibc's settings")


def _engine_page_faults(mode: str, tunables: str | None = None) -> int:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    done = subprocess.run(
        [sys.executable, "-c", ENGINE_FAULTS, mode], capture_output=True, text=True, check=True, env=env
    )
    return int(done.stdout.split()[-1])


@glibc
def test_the_engine_stops_page_faulting_in_this_process_and_in_the_processes_it_starts():
    default = _engine_page_faults("default")
    in_process = _engine_page_faults("keep")
    inherited = _engine_page_faults("default", tunables=malloc_tunables())  # as Ray's workers start
    assert in_process < default / 4 and inherited < default / 4, (default, in_process, inherited)


def test_tunables_keep_a_users_own_settings_and_add_the_rest():
    assert malloc_tunables("") == ":".join(f"{name}={value}" for name, (_, value) in SETTINGS.items())
    mine = malloc_tunables("glibc.malloc.arena_max=4:glibc.elision.enable=1")
    assert mine.startswith("glibc.malloc.arena_max=4:glibc.elision.enable=1:")
    assert mine.count("arena_max") == 1 and "glibc.malloc.trim_threshold=" in mine
    assert malloc_tunables(mine) == mine


@glibc
def test_children_inherit_the_settings(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert keep_freed_memory() is True
    assert os.environ["GLIBC_TUNABLES"] == malloc_tunables("glibc.malloc.arena_max=2")
