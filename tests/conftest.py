"""Shared test settings: one torch thread (2-core machines), quiet Flower, no telemetry."""

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_LOG_LEVEL", "WARNING")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

import tempfile  # noqa: E402

# Partitions computed by one test process are cached on disk for the next (deployed ClientApps start
# a process per message); keep the suite's cache private so it never sees a developer's.
os.environ.setdefault("FEDLAYER_CACHE", tempfile.mkdtemp(prefix="fedlayer-test-cache-"))
