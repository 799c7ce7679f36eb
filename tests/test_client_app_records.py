"""The fast ArrayRecord conversions (`fedlayer.records`, used by the ClientApp and the server) give exactly what
Flower's own give."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from fedlayer.records import DecodedArray, array_record, plain, tensors, values, view

STATE = {
    "conv.weight": torch.randn(4, 3, 5, 5),
    "fc.weight": torch.randn(6, 4).t(),  # not C-contiguous: Flower writes it in Fortran order
    "norm.num_batches_tracked": torch.tensor(7),
    "norm.running_mean": torch.randn(3).double(),
    "half": torch.randn(2, 3).half(),
    "mask": torch.tensor([True, False]),
    "empty": torch.zeros(0, 5),
}
RECORDS = [  # as Flower writes a state dict and a list of arrays, and bytes whose header is not the fields'
    ArrayRecord(STATE),
    ArrayRecord([np.arange(6, dtype=np.int64).reshape(2, 3), np.asfortranarray(np.ones((3, 2), np.float32))]),
    ArrayRecord({"raw": Array(dtype="float32", shape=(2,), stype="numpy.ndarray", data=Array(np.ones(2)).data)}),
]
RECORD_IDS = ["state-dict", "numpy-list", "header-disagrees-with-fields"]


def test_array_record_writes_flowers_bytes():
    fast, flower = array_record(STATE), ArrayRecord(STATE)
    assert list(fast) == list(flower)
    for key in STATE:
        assert (fast[key].dtype, fast[key].shape, fast[key].stype) == (
            flower[key].dtype,
            flower[key].shape,
            flower[key].stype,
        ), key
        assert fast[key].data == flower[key].data, key


@pytest.mark.parametrize("record", RECORDS, ids=RECORD_IDS)
def test_tensors_read_what_flower_reads(record):
    fast, flower = tensors(record), record.to_torch_state_dict()
    assert list(fast) == list(flower)
    for key in flower:
        assert fast[key].dtype == flower[key].dtype and fast[key].shape == flower[key].shape, key
        assert torch.equal(fast[key], flower[key]), key


@pytest.mark.parametrize("record", RECORDS, ids=RECORD_IDS)
def test_values_are_flowers_fresh_writable_arrays_and_views_read_the_same(record):
    for key, array in record.items():
        flower, fresh, seen = array.numpy(), values(array), view(array)
        for got in (fresh, seen):
            assert got.dtype == flower.dtype and got.shape == flower.shape, key
            np.testing.assert_array_equal(got, flower, err_msg=key)
        assert fresh.flags.writeable and not np.shares_memory(fresh, np.frombuffer(array.data, np.uint8)), key
        fresh[...] = 0  # a copy: the Array's bytes are untouched
        np.testing.assert_array_equal(array.numpy(), flower, err_msg=key)


def test_a_view_reads_the_arrays_bytes_where_their_layout_allows_else_flowers_copy():
    record = ArrayRecord(STATE)
    seen = view(record["conv.weight"])
    assert not seen.flags.writeable and np.shares_memory(seen, np.frombuffer(record["conv.weight"].data, np.uint8))
    assert view(record["fc.weight"]).flags.writeable  # written in Fortran order: Flower's own path


def test_a_decoded_array_is_the_same_array_and_flowers_averaging_gives_the_same_bytes():
    records = [ArrayRecord({k: v + i for k, v in STATE.items() if v.dtype.is_floating_point}) for i in range(3)]
    for record in records:
        for array in record.values():
            decoded = DecodedArray.of(array)
            assert decoded.data is array.data  # the same bytes, not copied
            assert plain(decoded) == array and type(plain(decoded)) is Array and plain(array) is array
            np.testing.assert_array_equal(decoded.numpy(), array.numpy())
            assert decoded.numpy().flags.writeable

    def contents(decoded: bool) -> list[RecordDict]:
        return [
            RecordDict(
                {
                    "arrays": ArrayRecord({k: DecodedArray.of(a) if decoded else a for k, a in r.items()}),
                    "metrics": MetricRecord({"n": 10 + i}),
                }
            )
            for i, r in enumerate(records)
        ]

    fast, flower = aggregate_arrayrecords(contents(True), "n"), aggregate_arrayrecords(contents(False), "n")
    assert list(fast) == list(flower)
    assert all(fast[key].data == flower[key].data for key in flower)  # bit for bit
