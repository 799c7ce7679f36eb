"""Flower's Arrays to numpy and torch and back, byte for byte as Flower does it, without its per-array overhead.

Flower's `Array.numpy()` reads the .npy bytes through `np.load`: it parses the header with
`ast.literal_eval` and copies the data out in 256 KiB chunks, each copied twice. For a model of a few
megabytes that is most of what a small client or a server aggregating 50 replies spends outside the
arithmetic. An Array whose bytes are exactly the header `np.save` writes for its dtype and shape
followed by that many bytes of data (what Flower's `Array(ndarray)` and `Array(tensor)` write) holds
its values C-ordered right after the header: `values` reads them from there. Anything else (another
header, Fortran order, another serialisation type) takes Flower's own path.

- `values(array)`: a fresh, writable array, as `Array.numpy()` returns (one copy);
- `view(array)`: a read-only view of the Array's bytes (no copy), for code that only reads;
- `tensors(record)`: `record.to_torch_state_dict()` as read-only views, for `load_state_dict` to copy;
- `array_record(state)`: `ArrayRecord(state)`, the same bytes, with one copy per tensor;
- `DecodedArray`: an Array whose `numpy()` is `values`, for a strategy that decodes every reply;
- `Decoded(record, base)`: a state dict over `base` whose tensors are decoded when first read.
"""

from __future__ import annotations

import functools
import io
import math
import warnings
from collections.abc import Iterator, Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.common.constant import SType
from numpy.lib import format as npy_format


@functools.cache
def npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The bytes `np.save` (so Flower's `Array`) writes before the data of a C-ordered array."""
    buffer = io.BytesIO()
    header = {"descr": npy_format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    npy_format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def _direct(array: Array) -> np.ndarray | None:
    """A read-only view of the values right after the header, when the bytes are laid out as `np.save` writes
    a C-ordered array of the Array's dtype and shape; else None."""
    if array.stype != SType.NUMPY:
        return None
    dtype, shape = np.dtype(array.dtype), tuple(array.shape)
    header, count, data = npy_header(dtype, shape), math.prod(shape), array.data
    if len(data) != len(header) + count * dtype.itemsize or not data.startswith(header):
        return None
    return np.frombuffer(data, dtype, count, offset=len(header)).reshape(shape)


def view(array: Array) -> np.ndarray:
    """The Array's values without a copy where its layout allows (read-only then), else `array.numpy()`."""
    direct = _direct(array)
    return Array.numpy(array) if direct is None else direct


def values(array: Array) -> np.ndarray:
    """What `array.numpy()` returns (a fresh, writable array), with one copy instead of Flower's reading."""
    direct = _direct(array)
    return Array.numpy(array) if direct is None else direct.copy()


def tensors(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """`record.to_torch_state_dict()` without copies: read-only tensors viewing the arrays' bytes, for
    `load_state_dict` (which copies) or other code that only reads. Never write to them."""
    with warnings.catch_warnings():  # torch warns (once) that a view of `bytes` is not writable
        warnings.simplefilter("ignore", UserWarning)
        return {key: torch.from_numpy(view(array)) for key, array in record.items()}


def array_record(state: dict[str, torch.Tensor]) -> ArrayRecord:
    """`ArrayRecord(state)`, byte for byte, copying each tensor once (`np.save` writes to a buffer in
    chunks, which Flower then copies out)."""
    record = ArrayRecord()
    for key, tensor in state.items():
        data = tensor.detach().cpu().numpy()
        if data.flags.c_contiguous:
            raw = b"".join((npy_header(data.dtype, data.shape), data.data))
            record[key] = Array(dtype=str(data.dtype), shape=data.shape, stype=SType.NUMPY, data=raw)
        else:
            record[key] = Array(data)
    return record


class DecodedArray(Array):
    """An Array (the same bytes, not copied) whose `numpy()` is `values`: what Flower's returns, faster.

    `strategies.LayerSelective` hands the replies to the wrapped strategy in these, so that Flower's
    averaging (`aggregate_arrayrecords`: `value.numpy() * weight` per reply and key) decodes each reply
    with one copy. `plain` turns one back into a Flower Array.
    """

    @classmethod
    def of(cls, array: Array) -> DecodedArray:
        return cls(dtype=array.dtype, shape=tuple(array.shape), stype=array.stype, data=array.data)

    def numpy(self) -> np.ndarray:
        return values(self)


def plain(array: Array) -> Array:
    """A `DecodedArray` as a Flower Array (same bytes); any other Array as it is."""
    if isinstance(array, DecodedArray):
        return Array(dtype=array.dtype, shape=tuple(array.shape), stype=array.stype, data=array.data)
    return array


class Decoded(Mapping[str, torch.Tensor]):
    """A state dict of an ArrayRecord's arrays over a `base` state dict (`{**base, **arrays}`), each tensor
    decoded when first read, as `ArrayRecord.to_torch_state_dict()` does (`values`).

    A round's measurement reads the models of the few clients its pairs name: decoding all the replies
    (50 in a cross-device round) up front would cost more than the rest of the bookkeeping.
    """

    def __init__(self, arrays: ArrayRecord, base: Mapping[str, torch.Tensor] | None = None) -> None:
        self._arrays = arrays
        self._base: Mapping[str, torch.Tensor] = base if base is not None else {}
        self._keys = [*self._base.keys(), *(key for key in arrays.keys() if key not in self._base)]
        self._decoded: dict[str, torch.Tensor] = {}

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._arrays:
            return self._base[key]
        if key not in self._decoded:
            self._decoded[key] = torch.from_numpy(values(self._arrays[key]))
        return self._decoded[key]

    def __contains__(self, key: object) -> bool:
        return key in self._arrays or key in self._base

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)
