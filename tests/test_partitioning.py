"""Tests for simulations.data.partitioning (flwr-datasets partitioners over label arrays)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulations.data.loaders import load_dataset
from simulations.data.partitioning import PartitionerSpec, partition_indices

IID = PartitionerSpec("iid", {})
DIRICHLET_01 = PartitionerSpec("dirichlet", {"alpha": 0.1})


@pytest.fixture(scope="module")
def digit_labels() -> np.ndarray:
    """Real labels: scikit-learn digits training split (1347 samples, 10 classes)."""
    return load_dataset("digits")[0].y


def _distinct_classes(labels, parts):
    return [len(np.unique(labels[p])) for p in parts]


# ---------------------------------------------------------------- PartitionerSpec


def test_spec_fills_defaults_and_round_trips_through_dict():
    spec = PartitionerSpec("dirichlet", {"alpha": 1})
    assert spec.to_dict() == {
        "name": "dirichlet",
        "alpha": 1.0,
        "min_partition_size": 10,
        "self_balancing": False,
    }
    assert PartitionerSpec.from_dict(spec.to_dict()) == spec
    assert hash(PartitionerSpec.from_dict(spec.to_dict())) == hash(spec)
    assert PartitionerSpec("pathological", {"num_classes_per_partition": 2}).params[
        "class_assignment_mode"
    ] == "first-deterministic"


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("shards", {}, "Unknown partitioner"),
        ("iid", {"alpha": 1.0}, "Unknown parameter"),
        ("dirichlet", {}, "needs parameter"),
        ("dirichlet", {"alpha": 0.0}, "positive"),
        ("dirichlet", {"alpha": True}, "positive number"),
        ("dirichlet", {"alpha": 0.5, "min_partition_size": -1}, "non-negative"),
        ("dirichlet", {"alpha": 0.5, "self_balancing": "yes"}, "True or False"),
        ("pathological", {"num_classes_per_partition": 0}, "at least 1"),
        ("pathological", {"num_classes_per_partition": 2, "class_assignment_mode": "x"}, "one of"),
    ],
)
def test_spec_rejects_bad_config(name, params, message):
    with pytest.raises(ValueError, match=message):
        PartitionerSpec(name, params)


def test_from_dict_needs_a_name():
    with pytest.raises(ValueError, match="'name'"):
        PartitionerSpec.from_dict({"alpha": 0.1})


# ---------------------------------------------------------------- partition_indices


@settings(max_examples=30, deadline=None)
@given(
    num_samples=st.integers(20, 300),
    num_classes=st.integers(2, 6),
    num_partitions=st.integers(1, 6),
    which=st.sampled_from(["iid", "dirichlet"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_partitions_are_disjoint_and_cover_all_samples(
    num_samples, num_classes, num_partitions, which, seed
):
    labels = np.random.default_rng(seed).integers(0, num_classes, num_samples)
    spec = IID if which == "iid" else PartitionerSpec(
        "dirichlet", {"alpha": 1.0, "min_partition_size": 0}
    )
    parts = partition_indices(labels, num_partitions, spec, seed)
    assert len(parts) == num_partitions
    joined = np.concatenate(parts)
    assert joined.dtype == np.int64
    assert len(joined) == len(np.unique(joined)) == num_samples  # disjoint and covering
    assert joined.min() >= 0 and joined.max() < num_samples


@pytest.mark.parametrize(
    "spec",
    [
        IID,
        DIRICHLET_01,
        PartitionerSpec(
            "pathological", {"num_classes_per_partition": 2, "class_assignment_mode": "random"}
        ),
    ],
    ids=["iid", "dirichlet", "pathological"],
)
@pytest.mark.filterwarnings("ignore:Classes.*will NOT be used:UserWarning")
def test_partitions_are_deterministic_per_seed_and_differ_across_seeds(spec, digit_labels):
    first = partition_indices(digit_labels, 10, spec, seed=3)
    again = partition_indices(digit_labels, 10, spec, seed=3)
    other = partition_indices(digit_labels, 10, spec, seed=4)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert any(
        len(a) != len(b) or not np.array_equal(np.sort(a), np.sort(b))
        for a, b in zip(first, other)
    )


def test_dirichlet_low_alpha_is_more_skewed_than_iid(digit_labels):
    iid = _distinct_classes(digit_labels, partition_indices(digit_labels, 10, IID, seed=0))
    skewed = _distinct_classes(
        digit_labels, partition_indices(digit_labels, 10, DIRICHLET_01, seed=0)
    )
    assert np.mean(iid) == 10
    assert np.mean(skewed) < 7
    sizes = [len(p) for p in partition_indices(digit_labels, 10, DIRICHLET_01, seed=0)]
    assert min(sizes) >= 10  # default min_partition_size


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pathological_gives_exactly_k_classes_per_client(k, digit_labels):
    spec = PartitionerSpec("pathological", {"num_classes_per_partition": k})
    parts = partition_indices(digit_labels, 10, spec, seed=0)
    assert _distinct_classes(digit_labels, parts) == [k] * 10
    joined = np.concatenate(parts)
    assert len(joined) == len(np.unique(joined))


@pytest.mark.parametrize(
    ("labels", "num_partitions", "seed", "message"),
    [
        (np.zeros((4, 2), np.int64), 2, 0, "1-D integer"),
        (np.zeros(4, np.float32), 2, 0, "1-D integer"),
        (np.zeros(4, np.int64), 0, 0, "between 1"),
        (np.zeros(4, np.int64), 5, 0, "between 1"),
        (np.zeros(4, np.int64), 2, -1, "seed"),
    ],
)
def test_partition_indices_rejects_bad_input(labels, num_partitions, seed, message):
    with pytest.raises(ValueError, match=message):
        partition_indices(labels, num_partitions, IID, seed)


def test_impossible_dirichlet_constraint_gives_actionable_error():
    labels = np.repeat(np.arange(5), 20)
    spec = PartitionerSpec("dirichlet", {"alpha": 0.05, "min_partition_size": 30})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flwr-datasets warns on every resampling try
        with pytest.raises(ValueError, match="Increase alpha"):
            partition_indices(labels, 5, spec, seed=0)
