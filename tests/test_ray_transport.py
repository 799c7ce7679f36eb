"""Flower's ArrayRecords between fedlayer's simulation driver and its Ray actors: byte for byte, out of band, a
model sent to many clients stored once (`fedlayer.ray_transport`), and actors that hold two messages at a time
(`fedlayer.flower_runtime.pipelined_actors`)."""

from __future__ import annotations

import gc
import importlib
import pickle

import numpy as np
import pytest
import ray
import torch
from flwr.app import Array, ArrayRecord
from flwr.simulation.ray_transport.ray_actor import BasicActorPool
from ray import cloudpickle

from fedlayer import ray_transport
from fedlayer.config import load_config
from fedlayer.flower_runtime import pipelined_actors
from fedlayer.records import array_record
from fedlayer.simulation import WORKER_SETUP_HOOK, ray_init_args

BIG = ray_transport.SHARE_MIN_BYTES // 4 + 10  # float32 values: just over the sharing threshold


def record(seed: int = 0) -> ArrayRecord:
    """A model-like record: a large and a small float tensor, an integer buffer, and an Array Flower serialised
    itself (another byte layout), in a fixed key order."""
    rng = np.random.default_rng(seed)
    out = array_record(
        {
            "fc.weight": torch.from_numpy(rng.standard_normal(BIG).astype(np.float32)),
            "fc.bias": torch.from_numpy(rng.standard_normal(3).astype(np.float32)),
            "bn.num_batches_tracked": torch.tensor(7),
        }
    )
    out["fortran"] = Array(np.asfortranarray(rng.standard_normal((4, 3))))
    return out


def same(a: ArrayRecord, b: ArrayRecord) -> bool:
    return list(a.keys()) == list(b.keys()) and all(
        (x.dtype, tuple(x.shape), x.stype, x.data) == (y.dtype, tuple(y.shape), y.stype, y.data)
        and type(y.data) is bytes
        for x, y in zip(a.values(), b.values(), strict=True)
    )


def test_a_record_pickles_out_of_band_and_comes_back_byte_for_byte():
    sent = record()
    with ray_transport.shared_arrays():  # no array is sent twice: nothing is stored, Ray need not run
        buffers: list[pickle.PickleBuffer] = []
        payload = cloudpickle.dumps(sent, protocol=5, buffer_callback=buffers.append)
    assert sum(len(b.raw()) for b in buffers) == sum(len(a.data) for a in sent.values())  # every array's bytes
    assert len(payload) < 2_000  # the metadata only
    assert same(sent, pickle.loads(payload, buffers=buffers))


def test_the_driver_reducer_is_installed_for_the_simulation_only():
    assert ArrayRecord not in cloudpickle.CloudPickler.dispatch
    with ray_transport.shared_arrays():
        assert cloudpickle.CloudPickler.dispatch[ArrayRecord] is ray_transport._reduce_record
    assert ArrayRecord not in cloudpickle.CloudPickler.dispatch


def test_ray_workers_install_the_reducer_at_start():
    module, _, name = WORKER_SETUP_HOOK.rpartition(".")
    assert getattr(importlib.import_module(module), name) is ray_transport.install_in_worker
    cfg = load_config(None, [])
    assert ray_init_args(cfg, verbose=False)["runtime_env"]["worker_process_setup_hook"] == WORKER_SETUP_HOOK


@ray.remote(num_cpus=0)
class Receiver:
    """Hands back what it received, and whether its own ArrayRecords would travel out of band."""

    def echo(self, received: ArrayRecord) -> tuple[ArrayRecord, list[int], bool]:
        installed = cloudpickle.CloudPickler.dispatch.get(ArrayRecord) is ray_transport._reduce_record
        return received, [id(array.data) for array in received.values()], installed


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=1, **ray_init_args(load_config(None, []), verbose=False))
    try:
        yield
    finally:
        ray.shutdown()


def test_a_model_sent_to_many_clients_is_stored_once_and_released_with_it(local_ray):
    receiver = Receiver.remote()
    sent = record(1)
    with ray_transport.shared_arrays() as sharing:
        replies = [ray.get(receiver.echo.remote(sent)) for _ in range(3)]
        assert sharing.stored() == 1  # the one array over the threshold, from its second sending on
        for received, _, installed in replies:
            assert same(sent, received) and installed  # byte for byte both ways; the actor's replies out of band
        assert replies[1][1][0] == replies[2][1][0]  # the later messages share the actor's one copy of it
        another = record(2)
        assert same(another, ray.get(receiver.echo.remote(another))[0])
        del sent, another, replies
        gc.collect()
        assert len(sharing) == 0  # forgotten (and its stored copy released) with the arrays


def test_an_array_whose_bytes_were_replaced_is_sent_anew(local_ray):
    receiver = Receiver.remote()
    sent = record(3)
    with ray_transport.shared_arrays():
        ray.get(receiver.echo.remote(sent))
        ray.get(receiver.echo.remote(sent))  # stored now
        sent["fc.weight"].data = record(4)["fc.weight"].data  # the same Array object, other values
        received = ray.get(receiver.echo.remote(sent))[0]
    assert received["fc.weight"].data == sent["fc.weight"].data


class FakeActor:
    def __init__(self, name: str, terminated: list[str]):
        self.name, self.terminated = name, terminated
        self.terminate = type("Method", (), {"remote": lambda _: terminated.append(name)})()


def fake_pool(terminated: list[str]) -> BasicActorPool:
    pool = BasicActorPool.__new__(BasicActorPool)  # no Ray cluster to size it from
    names = iter("abcd")
    pool.pool, pool.num_actors, pool._future_to_actor = [], 0, {}
    pool.create_actor_fn = lambda: FakeActor(next(names), terminated)
    return pool


def test_pipelined_actors_each_hold_two_messages_and_are_terminated_once():
    terminated: list[str] = []
    original = BasicActorPool.add_actors_to_pool
    with pipelined_actors(depth=2):
        pool = fake_pool(terminated)
        pool.add_actors_to_pool(2)
        assert [actor.name for actor in pool.pool] == ["a", "b", "a", "b"]
        assert pool.num_actors == 4  # the Ray backend's worker threads: one per message in flight
        taken = [pool.pool.pop(), pool.pool.pop(), pool.pool.pop()]  # three messages in flight
        assert sorted(actor.name for actor in taken) == ["a", "b", "b"] and pool.is_actor_available()
        pool.pool.extend(taken)
        pool.terminate_all_actors()
    assert sorted(terminated) == ["a", "b"]
    assert BasicActorPool.add_actors_to_pool is original  # Flower's own afterwards
    plain = fake_pool(terminated)
    plain.add_actors_to_pool(2)
    assert len(plain.pool) == plain.num_actors == 2
