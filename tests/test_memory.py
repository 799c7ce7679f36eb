"""fedlayer's malloc settings are applied in the process and in the processes it starts.

The settings are read back (glibc's allocator state, its tunables, the environment), never timed:
`fedlayer bench memory` measures what they save.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedlayer.memory import SETTINGS, is_glibc, keep_freed_memory, malloc_tunables

BLOCK = 16 << 20  # over glibc's default mmap threshold, under fedlayer's

# Allocates and frees BLOCK in a new thread (as the ServerApp's analysis thread does) and reports
# what glibc's allocator did with it (mallinfo2: glibc >= 2.33).
MALLOC_PROBE = f"""
import ctypes, json, sys, threading
from fedlayer.memory import keep_freed_memory

applied = keep_freed_memory() if sys.argv[1] == "keep" else None


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split())]


libc = ctypes.CDLL(None)
if not hasattr(libc, "mallinfo2"):
    sys.exit(77)
libc.malloc.restype, libc.free.argtypes, libc.mallinfo2.restype = ctypes.c_void_p, [ctypes.c_void_p], MallInfo2
seen = {{}}


def allocate_and_free():
    mapped = libc.mallinfo2().hblkhd
    block = libc.malloc({BLOCK})
    seen["mapped"] = libc.mallinfo2().hblkhd - mapped
    libc.free(block)
    seen["kept"] = libc.mallinfo2().keepcost


thread = threading.Thread(target=allocate_and_free)
thread.start()
thread.join()
print(json.dumps({{"applied": applied, **seen}}))
"""

glibc = pytest.mark.skipif(not is_glibc(), reason="these are glibc's settings")


def _python(code: str, *args: str, env: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    if done.returncode == 77:
        pytest.skip("glibc older than 2.33 (no mallinfo2)")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _env(tunables: str | None = None) -> dict:
    """This environment without any malloc settings, plus `tunables` as GLIBC_TUNABLES."""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}
    return env if tunables is None else {**env, "GLIBC_TUNABLES": tunables}


def _keeps_freed_memory(probe: dict) -> bool:
    """The block came from the heap (not a mapping of its own) and stayed in the main heap once freed:
    all three settings at work (mmap threshold, trim threshold, one arena for every thread)."""
    return probe["mapped"] == 0 and probe["kept"] >= BLOCK


@glibc
def test_glibc_defaults_give_a_large_freed_block_back():
    """The probe tells the settings apart: without them the block has its own mapping, unmapped on free."""
    probe = _python(MALLOC_PROBE, "defaults", env=_env())
    assert probe["mapped"] >= BLOCK and not _keeps_freed_memory(probe)


@glibc
def test_keep_freed_memory_applies_the_settings_to_its_own_process():
    probe = _python(MALLOC_PROBE, "keep", env=_env())
    assert probe["applied"] is True and _keeps_freed_memory(probe)


@glibc
def test_a_process_started_with_the_tunables_keeps_freed_memory():
    """As Ray's workers and multiprocessing pools start: GLIBC_TUNABLES only, no call of their own."""
    assert _keeps_freed_memory(_python(MALLOC_PROBE, "defaults", env=_env(malloc_tunables())))


@glibc
def test_processes_started_after_keep_freed_memory_inherit_the_settings(monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert keep_freed_memory() is True
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ['GLIBC_TUNABLES'])"], capture_output=True, text=True
    )
    assert child.stdout.strip() == malloc_tunables()
    loader = _dynamic_loader()
    if loader is None:
        pytest.skip("this Python has no dynamic loader")
    listed = subprocess.run([loader, "--list-tunables"], capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip(f"{loader} cannot list its tunables (glibc older than 2.33)")
    in_force = dict(line.split(": ", 1) for line in listed.stdout.splitlines() if ": " in line)
    for name, (_, value) in SETTINGS.items():
        assert int(in_force[name].split()[0], 0) == value, (name, in_force[name])


def _dynamic_loader() -> str | None:
    """The dynamic loader (ld.so) this Python runs under: the mapping at the auxiliary vector's AT_BASE."""
    words = memoryview(Path("/proc/self/auxv").read_bytes()).cast("L")
    base = dict(zip(words[::2], words[1::2], strict=True)).get(7)  # AT_BASE, 0 for a static executable
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and int(fields[0].split("-")[0], 16) == base:
            return fields[5]
    return None


def test_tunables_keep_a_users_own_settings_and_add_the_rest():
    assert malloc_tunables("") == ":".join(f"{name}={value}" for name, (_, value) in SETTINGS.items())
    mine = malloc_tunables("glibc.malloc.arena_max=4:glibc.elision.enable=1")
    assert mine.startswith("glibc.malloc.arena_max=4:glibc.elision.enable=1:")
    assert mine.count("arena_max") == 1 and "glibc.malloc.trim_threshold=" in mine
    assert malloc_tunables(mine) == mine


@glibc
def test_children_inherit_a_users_own_settings_too(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert keep_freed_memory() is True
    assert os.environ["GLIBC_TUNABLES"] == malloc_tunables("glibc.malloc.arena_max=2")
