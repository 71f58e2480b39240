"""A label-noise client matched to an honest twin, for contribution experiments.

:func:`with_label_noise_twin` gives the noisy client fresh samples of exactly its twin's
size and class mix, then flips a share of its training labels (its test labels stay
true). How the samples are drawn: docs/data.md.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import numpy as np

from .federated_split import ClientData, FederatedSplit
from .loaders import ArrayDataset, load_dataset

__all__ = ["flip_labels", "with_label_noise_twin"]


def flip_labels(
    labels: np.ndarray, fraction: float, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """Give ``round(fraction * n)`` random labels a different, uniformly drawn class.

    Parameters
    ----------
    labels : np.ndarray
        Integer labels in ``0 .. num_classes - 1``.
    fraction : float
        Share of labels to flip, in ``[0, 1]``.
    num_classes : int
        Number of classes, at least 2.
    rng : np.random.Generator
        Randomness.

    Returns
    -------
    np.ndarray
        A new int64 array; exactly ``round(fraction * n)`` entries differ from ``labels``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    if num_classes < 2:
        raise ValueError(f"flipping labels needs at least 2 classes, got {num_classes}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}"
        )
    flipped = labels.copy()
    chosen = rng.choice(labels.size, size=int(round(fraction * labels.size)), replace=False)
    shift = rng.integers(1, num_classes, size=chosen.size)  # never 0: always another class
    flipped[chosen] = (labels[chosen] + shift) % num_classes
    return flipped


def _draw_like(
    pool: np.ndarray, pool_labels: np.ndarray, counts: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Indices from ``pool`` with ``counts[c]`` samples of each class ``c``; drawn ones removed."""
    chosen = []
    for label, count in enumerate(counts):
        if count == 0:
            continue
        candidates = np.flatnonzero(pool_labels == label)
        if candidates.size < count:
            raise ValueError(
                f"the label-noise client needs {count} fresh samples of class {label} to match "
                f"its twin, but only {candidates.size} are unused by clients and the proxy set; "
                "lower data.private_size (or pick a twin with fewer samples of that class)"
            )
        chosen.append(candidates[rng.choice(candidates.size, size=int(count), replace=False)])
    return np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)


@lru_cache(maxsize=4)
def with_label_noise_twin(
    split: FederatedSplit,
    noisy_id: int,
    twin_id: int,
    flip_fraction: float,
    seed: int,
    dataset: str,
    data_dir: str | None = None,
) -> FederatedSplit:
    """Replace client ``noisy_id``'s data by a label-noise copy of ``twin_id``'s size and mix.

    See docs/data.md for how the samples are drawn. The result is cached per
    process (keyed on the split object, which :func:`make_federated_split` caches
    too), so every simulated client sees the same split.

    Parameters
    ----------
    split : FederatedSplit
        The split made by :func:`~simulations.data.federated_split.make_federated_split`
        from ``dataset`` (with index bookkeeping).
    noisy_id : int
        The client that gets noisy labels.
    twin_id : int
        Its honest twin (unchanged).
    flip_fraction : float
        Share of the noisy client's training labels to flip, in ``[0, 1]``.
    seed : int
        Seed of the draw and the flips.
    dataset : str
        The dataset name the split was made from.
    data_dir : str or None (default: None)
        As given to ``make_federated_split``.

    Returns
    -------
    FederatedSplit
        The same split with client ``noisy_id`` replaced.

    Raises
    ------
    ValueError
        For bad ids, a split without index bookkeeping, or too few unused samples.
    """
    num_clients = len(split.clients)
    if not (0 <= noisy_id < num_clients and 0 <= twin_id < num_clients) or noisy_id == twin_id:
        raise ValueError(
            f"noisy_id ({noisy_id}) and twin_id ({twin_id}) must be different client ids "
            f"in [0, {num_clients})"
        )
    if split.proxy_indices is None or any(c.train_indices is None for c in split.clients):
        raise ValueError(
            "the split has no index bookkeeping (built by hand?); cannot draw fresh samples"
        )
    train = load_dataset(dataset, data_dir)[0]
    used = np.concatenate(
        [split.proxy_indices]
        + [np.concatenate([c.train_indices, c.test_indices])
           for c in split.clients if c.client_id != noisy_id]
    )
    pool = np.setdiff1d(np.arange(len(train), dtype=np.int64), used)
    rng = np.random.default_rng([int(seed), 0x1ABE1, int(noisy_id)])
    twin = split.clients[twin_id]
    test_counts = np.bincount(twin.test.y, minlength=split.num_classes)
    train_idx = pool[_draw_like(pool, train.y[pool], twin.class_counts, rng)]
    pool = np.setdiff1d(pool, train_idx)
    test_idx = pool[_draw_like(pool, train.y[pool], test_counts, rng)]
    train_idx, test_idx = rng.permutation(train_idx), rng.permutation(test_idx)
    clean = train.subset(train_idx)
    noisy_y = flip_labels(clean.y, flip_fraction, split.num_classes, rng)
    noisy = ClientData(
        client_id=noisy_id,
        train=ArrayDataset(x=clean.x, y=noisy_y),
        test=train.subset(test_idx),
        class_counts=np.bincount(noisy_y, minlength=split.num_classes).astype(np.int64),
        train_indices=train_idx,
        test_indices=test_idx,
    )
    for array in (noisy.train.x, noisy.train.y, noisy.test.x, noisy.test.y, noisy.class_counts,
                  train_idx, test_idx):
        array.flags.writeable = False
    clients = list(split.clients)
    clients[noisy_id] = noisy
    return replace(split, clients=clients)
