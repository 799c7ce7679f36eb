"""Keep freed memory in the process, so PyTorch's CPU ops do not page-fault on every activation.

PyTorch allocates each activation afresh with malloc. glibc's malloc hands large freed blocks back
to the operating system (it trims the heap, maps big blocks separately and drops the extra heaps of
threads' arenas), so the next operation of the same size faults its pages in again, zeroed by the
kernel. For the barrier engine at the demo's settings that was about 115,000 page faults per
client pair and a third of its time. One arena, with high trim and mmap thresholds, keeps those
blocks for reuse; numbers are unaffected. This is the remedy of PyTorch's CPU tuning guide (an
allocator that keeps memory, such as jemalloc), done with glibc's own settings.

`keep_freed_memory()` applies them to this process (the arena limit only holds for threads that
have not allocated yet, so call it first thing) and, through GLIBC_TUNABLES, to every process it
starts afterwards: Ray's workers, which run the simulated clients, and multiprocessing pools.
Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

# glibc tunable -> (mallopt parameter from malloc.h, value)
SETTINGS = {
    "glibc.malloc.arena_max": (-8, 1),  # every thread allocates from the main heap, which the trim threshold governs
    "glibc.malloc.trim_threshold": (-1, 1 << 30),  # keep up to 1 GiB of free heap before giving any back
    "glibc.malloc.mmap_threshold": (-3, 32 << 20),  # blocks under 32 MiB (glibc's maximum) come from the heap
}


def is_glibc() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def malloc_tunables(existing: str = "") -> str:
    """A GLIBC_TUNABLES value: `existing` with fedlayer's settings added where it does not set them."""
    entries = [entry for entry in existing.split(":") if entry]
    named = {entry.split("=", 1)[0] for entry in entries}
    entries += [f"{name}={value}" for name, (_, value) in SETTINGS.items() if name not in named]
    return ":".join(entries)


def keep_freed_memory() -> bool:
    """Apply the settings to this process and the processes it starts; False where that is impossible.

    Cheap to call again (clients call it per message): malloc is set once per process, and only
    the environment is brought up to date.
    """
    if not is_glibc():
        return False
    os.environ["GLIBC_TUNABLES"] = malloc_tunables(os.environ.get("GLIBC_TUNABLES", ""))
    return _set_malloc()


@functools.cache
def _set_malloc() -> bool:
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return all([bool(mallopt(parameter, value)) for parameter, value in SETTINGS.values()])
