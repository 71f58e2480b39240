"""Tests for simulations.data.federated_split on real data (digits, Fashion-MNIST)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulations.data.federated_split import _make_cached, make_federated_split
from simulations.data.loaders import FASHION_MNIST_DIR, load_dataset
from simulations.data.partitioning import PartitionerSpec

IID = PartitionerSpec("iid", {})
DIRICHLET = PartitionerSpec("dirichlet", {"alpha": 0.5})


def _digits_split(**overrides):
    kwargs = dict(proxy_size=300, proxy_validation_size=100, seed=0)
    kwargs.update(overrides)
    num_clients = kwargs.pop("num_clients", 5)
    partitioner = kwargs.pop("partitioner", DIRICHLET)
    return make_federated_split("digits", num_clients, partitioner, **kwargs)


def _client_indices(split):
    return [np.concatenate([c.train_indices, c.test_indices]) for c in split.clients]


def test_proxy_is_disjoint_from_every_client_and_clients_from_each_other():
    split = _digits_split()
    proxy = set(split.proxy_indices.tolist())
    assert len(proxy) == 300
    seen: set[int] = set()
    for indices in _client_indices(split):
        as_set = set(indices.tolist())
        assert len(as_set) == len(indices)
        assert not as_set & proxy
        assert not as_set & seen
        seen |= as_set
    # Without private_size every non-proxy training sample goes to some client.
    assert len(seen) + len(proxy) == len(load_dataset("digits")[0])


def test_index_bookkeeping_matches_the_arrays():
    split = _digits_split()
    train, _, _ = load_dataset("digits")
    np.testing.assert_array_equal(split.proxy_x, train.x[split.proxy_indices])
    for client in split.clients:
        np.testing.assert_array_equal(client.train.x, train.x[client.train_indices])
        np.testing.assert_array_equal(client.test.y, train.y[client.test_indices])


def test_client_split_is_75_25_and_class_counts_match_train_labels():
    split = _digits_split()
    for client in split.clients:
        n = len(client.train) + len(client.test)
        assert len(client.test) == math.ceil(0.25 * n)
        assert client.class_counts.dtype == np.int64
        assert client.class_counts.shape == (split.num_classes,)
        np.testing.assert_array_equal(
            client.class_counts, np.bincount(client.train.y, minlength=split.num_classes)
        )


def test_validation_slice_lies_inside_the_proxy_set():
    split = _digits_split()
    rows = split.proxy_validation_indices
    assert len(rows) == len(split.proxy_validation) == 100
    assert np.all(np.diff(rows) > 0) and rows.min() >= 0 and rows.max() < len(split.proxy_x)
    np.testing.assert_array_equal(split.proxy_validation.x, split.proxy_x[rows])
    train, _, _ = load_dataset("digits")
    np.testing.assert_array_equal(split.proxy_validation.y, train.y[split.proxy_indices[rows]])


def test_proxy_set_follows_the_class_distribution():
    split = _digits_split()
    train, _, _ = load_dataset("digits")
    proxy_counts = np.bincount(train.y[split.proxy_indices], minlength=10)
    expected = np.bincount(train.y) * 300 / len(train)
    assert np.all(np.abs(proxy_counts - expected) <= 1)


def test_private_size_and_global_test_size_subsample():
    split = _digits_split(private_size=200, global_test_size=90, num_clients=4, partitioner=IID)
    assert sum(len(c.train) + len(c.test) for c in split.clients) == 200
    assert len(split.global_test) == 90
    assert np.bincount(split.global_test.y).tolist() == [9] * 10  # stratified subset
    full = _digits_split(private_size=200, num_clients=4, partitioner=IID)
    assert len(full.global_test) == len(load_dataset("digits")[1])
    assert full.input_shape == (1, 8, 8) and full.num_classes == 10


def test_split_is_cached_deterministic_and_seed_dependent():
    first = _digits_split(seed=7)
    assert _digits_split(seed=7) is first
    _make_cached.cache_clear()
    rebuilt = _digits_split(seed=7)
    assert rebuilt is not first
    np.testing.assert_array_equal(rebuilt.proxy_indices, first.proxy_indices)
    for a, b in zip(rebuilt.clients, first.clients):
        np.testing.assert_array_equal(a.train_indices, b.train_indices)
        np.testing.assert_array_equal(a.test_indices, b.test_indices)
    other = _digits_split(seed=8)
    assert not np.array_equal(np.sort(other.proxy_indices), np.sort(first.proxy_indices))


def test_cached_split_arrays_are_read_only():
    split = _digits_split()
    with pytest.raises(ValueError, match="read-only"):
        split.clients[0].train.x[0] = 0.0
    with pytest.raises(ValueError, match="read-only"):
        split.proxy_x[0] = 0.0


@settings(max_examples=15, deadline=None)
@given(
    num_clients=st.integers(1, 8),
    proxy_size=st.integers(0, 400),
    validation_fraction=st.floats(0, 1),
    test_fraction=st.floats(0.05, 0.95),
    seed=st.integers(0, 1000),
)
def test_split_invariants_hold_for_random_configs(
    num_clients, proxy_size, validation_fraction, test_fraction, seed
):
    split = make_federated_split(
        "digits",
        num_clients,
        IID,
        proxy_size=proxy_size,
        proxy_validation_size=int(validation_fraction * proxy_size),
        private_size=300,
        client_test_fraction=test_fraction,
        seed=seed,
    )
    assert len(split.clients) == num_clients and len(split.proxy_x) == proxy_size
    everything = np.concatenate([split.proxy_indices, *_client_indices(split)])
    assert len(everything) == len(np.unique(everything)) == proxy_size + 300
    for client in split.clients:
        assert len(client.train) >= 1 and len(client.test) >= 1


@pytest.mark.skipif(
    not os.path.isdir(FASHION_MNIST_DIR), reason="needs `apt-get install -y dataset-fashion-mnist`"
)
# 6 clients with 2 classes each cannot cover 10 classes: flwr-datasets warns, as it should.
@pytest.mark.filterwarnings("ignore:Classes.*will NOT be used:UserWarning")
def test_fashion_mnist_pathological_split_end_to_end():
    spec = PartitionerSpec("pathological", {"num_classes_per_partition": 2})
    split = make_federated_split(
        "fashion_mnist", 6, spec, proxy_size=1000, proxy_validation_size=200,
        private_size=600, global_test_size=500, seed=1,
    )
    assert split.input_shape == (1, 28, 28) and split.proxy_x.shape == (1000, 1, 28, 28)
    assert len(split.global_test) == 500
    for client in split.clients:
        labels = np.concatenate([client.train.y, client.test.y])
        assert len(np.unique(labels)) == 2
        assert np.count_nonzero(client.class_counts) <= 2


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"proxy_size": 1340}, "proxy_size=1340 is too large"),
        ({"num_clients": 0}, "num_clients"),
        ({"proxy_validation_size": 301}, "cannot exceed proxy_size"),
        ({"private_size": 2000}, "private_size=2000 exceeds"),
        ({"global_test_size": 451}, "global_test_size=451 exceeds"),
        ({"client_test_fraction": 1.0}, r"\(0, 1\)"),
        ({"seed": -1}, "seed"),
        ({"num_clients": 20, "private_size": 30, "partitioner": IID}, "at least 2"),
    ],
)
def test_bad_config_gives_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        _digits_split(**overrides)


def test_partitioner_must_be_a_spec():
    with pytest.raises(TypeError, match="PartitionerSpec"):
        make_federated_split("digits", 2, {"name": "iid"})
