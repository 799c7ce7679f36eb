"""How Flower's arrays travel between fedlayer's simulation and its Ray actors: copied once, and a model sent
to many clients stored once.

Ray pickles a task's arguments and its result. Flower's `Array` holds its values in one `bytes` object, which
pickle copies into the pickled payload and Ray copies again into its object store; the receiving process
reads it out once more. A cross-device round sends the same global model to each of its 50 clients and
gets 50 trained models back: the copies, not the arithmetic, were most of what a small client's message
cost beyond its training. Here every `ArrayRecord` is pickled by `_reduce_record`:

- each array's bytes travel out of band (pickle protocol 5 buffers), which Ray writes straight into its
  object store and the receiver reads from there: one copy less on each side;
- in the simulation's driver (`shared_arrays`), an array of `SHARE_MIN_BYTES` or more that is sent a second
  time while it is alive (the global model, sent to every sampled client) is put into the object store
  once; each later message carries a reference, which the actor resolves with one `ray.get` per record.
  The stored copy is released when the array is (a round's arrays, when the strategy drops them).

The receiver rebuilds the same `ArrayRecord`: the same keys in the same order, and Arrays whose `data` is
`bytes`, byte for byte. It works for any ClientApp and strategy. The workers install the reducer through
Ray's worker set-up hook (`install_in_worker`, named in `fedlayer.simulation.ray_init_args`), so replies
travel out of band too.
"""

from __future__ import annotations

import contextlib
import functools
import pickle
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from flwr.app import Array, ArrayRecord

SHARE_MIN_BYTES = 1 << 16  # smaller arrays are cheaper inline than as an object of their own


@dataclass
class _Seen:
    """An array the driver has sent, while it lives: its bytes (to notice a replaced `data`), the weak
    reference that forgets it, and, from its second sending on, its copy in Ray's object store."""

    data: bytes
    alive: weakref.ref
    stored: Any = None  # ray.ObjectRef


class _Sharing:
    """The driver's registry of sent arrays, by identity, each entry dropped when its array is collected."""

    def __init__(self) -> None:
        self._seen: dict[int, _Seen] = {}
        # Flower's worker threads pickle messages concurrently; reentrant, because the garbage collector may
        # run a forgetting callback inside `reference`
        self._lock = threading.RLock()

    def reference(self, array: Array) -> Any:
        """The array's copy in the object store if it was sent before, else None (and it is remembered)."""
        import numpy as np
        import ray

        key = id(array)
        with self._lock:
            seen = self._seen.get(key)
            if seen is None or seen.data is not array.data:
                self._seen[key] = _Seen(array.data, weakref.ref(array, functools.partial(self._forget, key)))
                return None
            if seen.stored is None:
                seen.stored = ray.put(np.frombuffer(array.data, np.uint8))
            return seen.stored

    def _forget(self, key: int, _: weakref.ref) -> None:
        with self._lock:
            self._seen.pop(key, None)

    def __len__(self) -> int:
        """How many sent arrays are alive (for tests)."""
        return len(self._seen)

    def stored(self) -> int:
        """How many of them have a copy in the object store (for tests)."""
        return sum(seen.stored is not None for seen in self._seen.values())


_sharing: _Sharing | None = None  # set in the driver while `shared_arrays` is active


class _Received:
    """A worker's copies of the stored arrays of the last record that had any, by object id: a round's
    messages to one actor all carry the same global model, which is then fetched and copied once. The
    copies are `bytes`, immutable, so the records of several messages can share them."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}

    def get(self, stored: list[Any]) -> list[bytes]:
        keys = [reference.binary() for reference in stored]
        missing = [(reference, key) for reference, key in zip(stored, keys, strict=True) if key not in self._data]
        if missing:
            import ray

            fetched = ray.get([reference for reference, _ in missing])
            self._data.update((key, bytes(view)) for (_, key), view in zip(missing, fetched, strict=True))
        data = [self._data[key] for key in keys]  # a key twice where a record ties two names to one array
        self._data = dict(zip(keys, data, strict=True))
        return data


_received = _Received()


def _rebuild_record(items: list[tuple[str, str, tuple[int, ...], str, Any]], stored: list[Any]) -> ArrayRecord:
    """The ArrayRecord `_reduce_record` took apart; an item whose data is None is the next of `stored`."""
    fetched = iter(_received.get(stored) if stored else ())
    record = ArrayRecord()
    for key, dtype, shape, stype, data in items:
        record[key] = Array(dtype=dtype, shape=shape, stype=stype, data=next(fetched) if data is None else bytes(data))
    return record


def _reduce_record(record: ArrayRecord) -> tuple:
    """Pickle an ArrayRecord as its arrays' metadata and out-of-band bytes (or, in the driver, references)."""
    items, stored = [], []
    for key, array in record.items():
        large = len(array.data) >= SHARE_MIN_BYTES
        reference = _sharing.reference(array) if _sharing is not None and large else None
        if reference is not None:
            stored.append(reference)
        data = None if reference is not None else pickle.PickleBuffer(array.data)
        items.append((key, array.dtype, tuple(array.shape), array.stype, data))
    return _rebuild_record, (items, stored)


def _install() -> None:
    from ray import cloudpickle

    cloudpickle.CloudPickler.dispatch[ArrayRecord] = _reduce_record


def install_in_worker() -> None:
    """Ray's worker set-up hook: this worker's ArrayRecords (an actor's replies) travel out of band."""
    _install()


@contextlib.contextmanager
def shared_arrays() -> Iterator[_Sharing]:
    """In the driver, for the duration of a simulation: ArrayRecords out of band, arrays sent twice stored once."""
    from ray import cloudpickle

    global _sharing
    previous = cloudpickle.CloudPickler.dispatch.get(ArrayRecord)
    _sharing = _Sharing()
    _install()
    try:
        yield _sharing
    finally:
        _sharing = None
        if previous is None:
            cloudpickle.CloudPickler.dispatch.pop(ArrayRecord, None)
        else:
            cloudpickle.CloudPickler.dispatch[ArrayRecord] = previous
