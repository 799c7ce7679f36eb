"""Shared test settings: one torch thread (2-core machines), quiet Flower, no telemetry."""

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_LOG_LEVEL", "WARNING")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

import signal  # noqa: E402
import tempfile  # noqa: E402

import pytest  # noqa: E402

# A shell that starts the suite in the background (`make test &`, no job control) makes it ignore SIGINT, and
# every process it starts inherits that. fedlayer honours an ignored SIGINT (as under nohup), so the Ctrl-C
# tests need a terminal's default back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Partitions computed by one test process are cached on disk for the next (deployed ClientApps start
# a process per message); keep the suite's cache private so it never sees a developer's.
os.environ.setdefault("FEDLAYER_CACHE", tempfile.mkdtemp(prefix="fedlayer-test-cache-"))


@pytest.fixture(scope="session")
def example_hf_folder(tmp_path_factory):
    """A function giving the folder simulations/examples/make_hf_folder.py writes, written once per session
    when first asked for."""
    from shipped_configs import write_example_hf_folder

    written: list = []

    def folder():
        if not written:
            written.append(write_example_hf_folder(tmp_path_factory.mktemp("examples") / "fashion-mnist-hf"))
        return written[0]

    return folder


@pytest.fixture(scope="session")
def pythia_pair(tmp_path_factory):
    """A function giving the two tiny GPT-NeoX folders of the Pythia stand-in, written once per session when
    first asked for."""
    from pythia_stand_in import write_pair

    written: list = []

    def pair():
        if not written:
            written.extend(write_pair(tmp_path_factory.mktemp("pythia")))
        return written

    return pair


@pytest.fixture
def in_process(monkeypatch):
    """`fedlayer run` and `compare` on the in-process grid instead of Ray."""
    from inprocess_grid import in_process_engine

    import fedlayer.simulation

    monkeypatch.setattr(fedlayer.simulation, "simulate", in_process_engine)
