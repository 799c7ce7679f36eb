"""The ClientApp's fast ArrayRecord conversions give exactly what Flower's own give."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from fedlayer.client_app import array_record, tensors

STATE = {
    "conv.weight": torch.randn(4, 3, 5, 5),
    "fc.weight": torch.randn(6, 4).t(),  # not C-contiguous: Flower writes it in Fortran order
    "norm.num_batches_tracked": torch.tensor(7),
    "norm.running_mean": torch.randn(3).double(),
    "half": torch.randn(2, 3).half(),
    "mask": torch.tensor([True, False]),
    "empty": torch.zeros(0, 5),
}


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


@pytest.mark.parametrize(
    "record",
    [
        ArrayRecord(STATE),
        ArrayRecord([np.arange(6, dtype=np.int64).reshape(2, 3), np.asfortranarray(np.ones((3, 2), np.float32))]),
        ArrayRecord({"raw": Array(dtype="float32", shape=(2,), stype="numpy.ndarray", data=Array(np.ones(2)).data)}),
    ],
    ids=["state-dict", "numpy-list", "header-disagrees-with-fields"],
)
def test_tensors_read_what_flower_reads(record):
    fast, flower = tensors(record), record.to_torch_state_dict()
    assert list(fast) == list(flower)
    for key in flower:
        assert fast[key].dtype == flower[key].dtype and fast[key].shape == flower[key].shape, key
        assert torch.equal(fast[key], flower[key]), key
