"""Non-IID partitions: every sample in at most one client, seeded, skew follows alpha, saved with a hash."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fedlayer.config import load_config
from fedlayer.data import load_dataset
from fedlayer.data.partition import METHODS, Partitions, make_partitions, partition_labels, partitions_from_config
from fedlayer.errors import FedlayerError

PROPERTY = settings(max_examples=25, deadline=None)


@pytest.fixture(scope="module")
def digits_labels() -> np.ndarray:
    return load_dataset("digits").train_y.numpy()


@st.composite
def labelled(draw):
    """Labels with at least 8 samples per class (enough for 8 clients to share any class)."""
    num_classes = draw(st.integers(2, 10))
    extra = draw(st.integers(0, 150))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    labels = np.concatenate([np.repeat(np.arange(num_classes), 8), rng.integers(0, num_classes, extra)])
    return rng.permutation(labels), num_classes


def _build(labels, num_classes, clients, method, seed, k=2):
    try:
        return make_partitions(
            labels,
            clients,
            method,
            seed=seed,
            alpha=0.5,
            classes_per_client=min(k, num_classes),
            shards_per_client=2,
            test_fraction=0.25,
            num_classes=num_classes,
            groups=_groups(labels),
        )
    except FedlayerError as exc:  # a Dirichlet draw may not fit tiny data: that is reported, not a bug
        assume("larger alpha" not in str(exc))
        raise


def _groups(labels: np.ndarray) -> np.ndarray:
    """8 natural groups (enough for up to 8 clients), interleaved so each holds many classes."""
    return np.arange(len(labels)) % 8


def _all_indices(parts: Partitions) -> list[np.ndarray]:
    return [idx for c in parts.clients for idx in (c.train_indices, c.test_indices)]


@PROPERTY
@given(labelled(), st.integers(1, 8), st.sampled_from(METHODS), st.integers(0, 1000))
def test_every_sample_lands_in_at_most_one_client(data, clients, method, seed):
    labels, num_classes = data
    parts = _build(labels, num_classes, clients, method, seed)
    assigned = np.concatenate(_all_indices(parts))
    assert len(assigned) == len(np.unique(assigned))  # train/test and clients disjoint
    assert all(len(c.train_indices) > 0 for c in parts.clients)
    dropped = np.setdiff1d(np.arange(len(labels)), assigned)
    if method in ("iid", "dirichlet"):
        assert len(dropped) == 0
    elif method == "shard":  # only the remainder after equal-size shards
        assert len(dropped) < clients * 2
    elif method == "natural":  # only samples of groups no client drew
        drawn = {int(_groups(labels)[c.train_indices[0]]) for c in parts.clients}
        assert not drawn & set(_groups(labels)[dropped].tolist())
    else:  # pathological: only samples of classes no client drew
        drawn = set(np.flatnonzero(parts.class_counts().sum(axis=0).to_numpy()))
        assert not drawn & set(labels[dropped].tolist())
    assert (parts.class_counts(labels).to_numpy() == parts.class_counts().to_numpy()).all()


@PROPERTY
@given(labelled(), st.integers(1, 8), st.sampled_from(METHODS), st.integers(0, 1000))
def test_same_seed_gives_identical_partitions(data, clients, method, seed):
    labels, num_classes = data
    first = _build(labels, num_classes, clients, method, seed)
    second = _build(labels, num_classes, clients, method, seed)
    assert first.content_hash == second.content_hash
    assert all(np.array_equal(a, b) for a, b in zip(_all_indices(first), _all_indices(second), strict=True))


@PROPERTY
@given(labelled(), st.integers(1, 8), st.integers(1, 4), st.integers(0, 1000))
def test_pathological_clients_hold_at_most_k_classes(data, clients, k, seed):
    labels, num_classes = data
    parts = _build(labels, num_classes, clients, "pathological", seed, k=k)
    assert ((parts.class_counts().to_numpy() > 0).sum(axis=1) <= min(k, num_classes)).all()


def _mean_entropy(parts: Partitions) -> float:
    counts = parts.class_counts().to_numpy().astype(float)
    p = counts / counts.sum(axis=1, keepdims=True)
    logs = np.log(np.where(p > 0, p, 1.0))  # 0 log 0 = 0
    return float(np.mean(-np.sum(p * logs, axis=1)))


def test_smaller_dirichlet_alpha_gives_more_skewed_clients(digits_labels):
    def entropy(alpha: float) -> float:  # averaged over seeds so one lucky draw cannot decide it
        return np.mean(
            [_mean_entropy(make_partitions(digits_labels, 5, "dirichlet", seed=s, alpha=alpha)) for s in range(3)]
        )

    skewed, uniform = entropy(0.05), entropy(100.0)
    assert uniform > 0.95 * np.log(10)  # near-uniform labels
    assert skewed < 0.6 * uniform


def test_different_seeds_give_different_partitions(digits_labels):
    hashes = {make_partitions(digits_labels, 5, "dirichlet", seed=s).content_hash for s in range(3)}
    assert len(hashes) == 3


def test_local_split_is_stratified_and_sized(digits_labels):
    parts = make_partitions(digits_labels, 4, "iid", seed=0, test_fraction=0.2)
    for c in parts.clients:
        n = len(c.train_indices) + len(c.test_indices)
        assert len(c.test_indices) == round(0.2 * n)
        expected = (c.train_counts + c.test_counts) * 0.2
        assert np.abs(c.test_counts - expected).max() <= 1.5


def test_single_sample_client_keeps_it_for_training():
    parts = make_partitions(np.array([0, 1, 0]), 3, "iid", seed=0, test_fraction=0.5)
    assert all(len(c.train_indices) == 1 and len(c.test_indices) == 0 for c in parts.clients)


def test_save_and_load_round_trip(tmp_path, digits_labels):
    parts = make_partitions(digits_labels, 5, "shard", seed=3, shards_per_client=3)
    path = parts.save(tmp_path / "partitions.json")
    loaded = Partitions.load(path)
    assert loaded.content_hash == parts.content_hash
    assert (loaded.method, loaded.params, loaded.seed, loaded.num_clients) == ("shard", parts.params, 3, 5)
    assert loaded.class_counts().equals(parts.class_counts())
    stored = json.loads(path.read_text())
    assert stored["clients"][0]["train_class_counts"] == parts.clients[0].train_counts.tolist()


def test_tampered_file_is_rejected(tmp_path, digits_labels):
    path = make_partitions(digits_labels, 5, "iid", seed=0).save(tmp_path / "partitions.json")
    payload = json.loads(path.read_text())
    payload["clients"][0]["train_indices"][0] = payload["clients"][1]["train_indices"][0]
    path.write_text(json.dumps(payload))
    with pytest.raises(FedlayerError, match="was modified"):
        Partitions.load(path)


def test_unreadable_file_is_an_error(tmp_path):
    (tmp_path / "p.json").write_text("{not json")
    with pytest.raises(FedlayerError, match="cannot read partitions file"):
        Partitions.load(tmp_path / "p.json")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "zipf"}, "unknown partition method 'zipf'; valid choices: iid, dirichlet"),
        ({"method": "dirichlet", "alpha": 0.0}, "alpha must be a positive number, got 0.0"),
        ({"method": "iid", "num_clients": 2000}, "2000 clients but only 1437 samples"),
        ({"method": "pathological", "classes_per_client": 0}, r"classes_per_client must be in 1\.\.10, got 0"),
        ({"method": "pathological", "classes_per_client": 11}, r"classes_per_client must be in 1\.\.10, got 11"),
        ({"method": "shard", "num_clients": 100, "shards_per_client": 20}, "too few samples per shard"),
        ({"method": "iid", "test_fraction": 1.0}, r"test_fraction must be in \[0, 1\), got 1.0"),
        ({"method": "dirichlet", "num_clients": 100, "alpha": 0.001}, "use a larger alpha or fewer clients"),
    ],
)
def test_bad_arguments_name_the_value_and_what_is_allowed(digits_labels, kwargs, message):
    kwargs = {"num_clients": 5, "seed": 0, **kwargs}
    with pytest.raises(FedlayerError, match=message):
        make_partitions(digits_labels, kwargs.pop("num_clients"), kwargs.pop("method"), **kwargs)


def test_partitions_from_config_subsamples_the_train_set():
    cfg = load_config(None, ["data.max_train_samples=300", "data.partition=iid", "federation.clients=4"])
    dataset = load_dataset("digits")
    parts = partitions_from_config(cfg, dataset)
    assigned = np.concatenate(_all_indices(parts))
    assert len(assigned) == 300 and assigned.max() > 300  # indices refer to the full train set
    assert parts.num_samples == len(dataset.train_y) and parts.dataset == "digits"
    assert parts.params["max_train_samples"] == 300
    assert partitions_from_config(cfg, dataset).content_hash == parts.content_hash


def _with_group_tests() -> tuple[Partitions, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A natural split into 4 of 6 groups of 60 samples, whose 18 test samples carry the same group ids; with
    the train labels and groups and the test labels and groups."""
    rng = np.random.default_rng(0)
    labels, groups = rng.integers(0, 3, 60), np.repeat(np.array(list("abcdef")), 10)
    test_labels, test_groups = rng.integers(0, 3, 18), np.array(list("fedcba") * 3)
    tests = {"test_labels": test_labels, "test_groups": test_groups}
    parts = make_partitions(labels, 4, "natural", seed=0, groups=groups, **tests)
    return parts, labels, groups, test_labels, test_groups


def test_natural_split_with_test_groups_tests_each_client_on_its_groups_test_samples():
    parts, labels, groups, _, test_groups = _with_group_tests()
    assert parts.local_test == "test" and parts.params["groups"] == 6
    for client in parts.clients:
        (group,) = set(groups[client.train_indices])
        assert client.train_indices.tolist() == np.flatnonzero(groups == group).tolist()  # all of it trains
        assert client.test_indices.tolist() == np.flatnonzero(test_groups == group).tolist()
    plain = make_partitions(labels, 4, "natural", seed=0, groups=groups)
    assert [c.train_indices.tolist() for c in plain.clients] != [c.train_indices.tolist() for c in parts.clients]


def test_test_set_indices_round_trip_and_count(tmp_path):
    parts, labels, _, test_labels, _ = _with_group_tests()
    loaded = Partitions.load(parts.save(tmp_path / "partitions.json"))
    assert loaded.local_test == "test" and loaded.content_hash == parts.content_hash
    assert loaded.class_counts(labels, test_labels=test_labels).equals(parts.class_counts())
    with pytest.raises(FedlayerError, match="give its test_labels too"):
        loaded.class_counts(labels)
    stored = json.loads((tmp_path / "partitions.json").read_text())
    stored["local_test"] = "train"  # the same indices read as held-out train samples: not what was hashed
    (tmp_path / "partitions.json").write_text(json.dumps(stored))
    with pytest.raises(FedlayerError, match="was modified"):
        Partitions.load(tmp_path / "partitions.json")


def test_a_file_written_before_local_test_was_recorded_holds_out_train_samples(tmp_path, digits_labels):
    path = make_partitions(digits_labels, 3, "iid", seed=0).save(tmp_path / "partitions.json")
    stored = json.loads(path.read_text())
    del stored["local_test"]
    path.write_text(json.dumps(stored))
    assert Partitions.load(path).local_test == "train"


def test_language_labels_are_split_by_each_windows_next_token():
    windows = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 0]])
    assert partition_labels(windows).tolist() == [3, 6, 0]
    parts = make_partitions(partition_labels(windows), 3, "iid", seed=0, test_fraction=0.0, num_classes=9)
    assert parts.class_counts(windows).equals(parts.class_counts())
