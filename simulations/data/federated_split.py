"""Build a federated split of a real dataset: clients' private data, public proxy, test set.

:func:`make_federated_split` draws a stratified public proxy set (with a labeled
validation slice kept on the server), partitions the rest among the clients (75/25
train/test each) and keeps the test part as the global test set. Layout and index
bookkeeping: docs/data.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from sklearn.model_selection import train_test_split

from simulations.data.loaders import ArrayDataset, load_dataset
from simulations.data.partitioning import PartitionerSpec, partition_indices

MIN_CLIENT_SAMPLES = 2


@dataclass(frozen=True, eq=False)
class ClientData:
    """One client's private data.

    Parameters
    ----------
    client_id : int
        Partition id, ``0 <= client_id < num_clients``.
    train : ArrayDataset
        The client's local training data.
    test : ArrayDataset
        The client's local test data (same label distribution as ``train``).
    class_counts : np.ndarray
        ``int64`` label histogram of ``train``, shape ``(num_classes,)``.
    train_indices : np.ndarray or None (default: None)
        Positions of ``train`` in the source dataset's training part; ``None`` for data
        built by hand.
    test_indices : np.ndarray or None (default: None)
        Positions of ``test`` in the source dataset's training part.
    """

    client_id: int
    train: ArrayDataset
    test: ArrayDataset
    class_counts: np.ndarray
    train_indices: np.ndarray | None = None
    test_indices: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class FederatedSplit:
    """A dataset split for model-heterogeneous federated learning.

    Parameters
    ----------
    clients : list[ClientData]
        Private data of each client, indexed by ``client_id``.
    proxy_x : np.ndarray
        Unlabeled public proxy inputs shared with all clients, ``float32 (N, C, H, W)``.
    proxy_validation : ArrayDataset
        Labeled slice of the proxy set kept by the server.
    proxy_validation_indices : np.ndarray
        Rows of ``proxy_x`` that form ``proxy_validation`` (``int64``, sorted).
    global_test : ArrayDataset
        Test set shared by all methods (the FedDF convention).
    num_classes : int
        Number of classes.
    input_shape : tuple[int, int, int]
        ``(C, H, W)`` of every image.
    proxy_indices : np.ndarray or None (default: None)
        Positions of the rows of ``proxy_x`` in the source dataset's training part.
    """

    clients: list[ClientData]
    proxy_x: np.ndarray
    proxy_validation: ArrayDataset
    proxy_validation_indices: np.ndarray
    global_test: ArrayDataset
    num_classes: int
    input_shape: tuple[int, int, int]
    proxy_indices: np.ndarray | None = None


def make_federated_split(
    dataset: str,
    num_clients: int,
    partitioner: PartitionerSpec,
    *,
    proxy_size: int = 5000,
    proxy_validation_size: int = 1000,
    private_size: int | None = None,
    global_test_size: int | None = None,
    client_test_fraction: float = 0.25,
    seed: int = 0,
    data_dir: str | None = None,
) -> FederatedSplit:
    """Split ``dataset`` into a public proxy set, per-client data and a global test set.

    The result is cached per process on all arguments, so every simulated client in a
    process gets the same object without rebuilding it. See docs/data.md for
    the layout.

    Parameters
    ----------
    dataset : str
        A name accepted by :func:`simulations.data.loaders.load_dataset`.
    num_clients : int
        Number of clients (partitions), at least 1.
    partitioner : PartitionerSpec
        How private data is divided among clients.
    proxy_size : int (default: 5000)
        Number of training samples set aside as the public proxy set (0 for none).
    proxy_validation_size : int (default: 1000)
        Size of the labeled proxy slice kept by the server, ``<= proxy_size``.
    private_size : int or None (default: None)
        If given, only a random subset of this many non-proxy samples is partitioned.
    global_test_size : int or None (default: None)
        If given, a stratified random subset of the test part of this size.
    client_test_fraction : float (default: 0.25)
        Fraction of each client's data held out as its local test set, in ``(0, 1)``;
        at least one sample goes to each side.
    seed : int (default: 0)
        Non-negative seed for every random choice.
    data_dir : str or None (default: None)
        Passed to :func:`load_dataset`.

    Returns
    -------
    FederatedSplit
        The split; its arrays are read-only (shared per-process cache).
    """
    _check_int("num_clients", num_clients, minimum=1)
    _check_int("proxy_size", proxy_size, minimum=0)
    _check_int("proxy_validation_size", proxy_validation_size, minimum=0)
    _check_int("seed", seed, minimum=0)
    if private_size is not None:
        _check_int("private_size", private_size, minimum=1)
    if global_test_size is not None:
        _check_int("global_test_size", global_test_size, minimum=1)
    if proxy_validation_size > proxy_size:
        raise ValueError(
            f"proxy_validation_size ({proxy_validation_size}) cannot exceed proxy_size "
            f"({proxy_size}): the validation slice is part of the proxy set"
        )
    if not isinstance(partitioner, PartitionerSpec):
        raise TypeError(f"partitioner must be a PartitionerSpec, got {type(partitioner).__name__}")
    if not (isinstance(client_test_fraction, (int, float)) and 0 < client_test_fraction < 1):
        raise ValueError(f"client_test_fraction must be in (0, 1), got {client_test_fraction!r}")
    return _make_cached(
        dataset,
        int(num_clients),
        partitioner,
        int(proxy_size),
        int(proxy_validation_size),
        None if private_size is None else int(private_size),
        None if global_test_size is None else int(global_test_size),
        float(client_test_fraction),
        int(seed),
        None if data_dir is None else str(data_dir),
    )


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _seed_of(seq: np.random.SeedSequence) -> int:
    """A 32-bit integer seed (what sklearn and flwr-datasets accept) from a seed sequence."""
    return int(seq.generate_state(1)[0])


def _split_off(
    indices: np.ndarray, labels: np.ndarray, size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into ``(rest, part)`` with ``len(part) == size``.

    Stratified by ``labels[indices]`` when sklearn can (every class has two samples and
    both sides can hold every class); otherwise a plain random split.
    """
    try:
        rest, part = train_test_split(
            indices, test_size=size, stratify=labels[indices], random_state=seed
        )
    except ValueError:
        rest, part = train_test_split(indices, test_size=size, random_state=seed)
    return np.asarray(rest, dtype=np.int64), np.asarray(part, dtype=np.int64)


def _read_only(*arrays: np.ndarray) -> None:
    for array in arrays:
        array.flags.writeable = False


def _frozen(dataset: ArrayDataset) -> ArrayDataset:
    _read_only(dataset.x, dataset.y)
    return dataset


@lru_cache(maxsize=4)
def _make_cached(
    dataset: str,
    num_clients: int,
    partitioner: PartitionerSpec,
    proxy_size: int,
    proxy_validation_size: int,
    private_size: int | None,
    global_test_size: int | None,
    client_test_fraction: float,
    seed: int,
    data_dir: str | None,
) -> FederatedSplit:
    train, test, num_classes = load_dataset(dataset, data_dir)
    if global_test_size is not None and global_test_size > len(test):
        raise ValueError(
            f"global_test_size={global_test_size} exceeds the {len(test)} test samples "
            f"of {dataset}"
        )
    (
        proxy_seq,
        validation_seq,
        private_seq,
        partition_seq,
        global_test_seq,
        clients_seq,
    ) = np.random.SeedSequence(seed).spawn(6)

    available = len(train) - MIN_CLIENT_SAMPLES * num_clients
    if proxy_size > available:
        raise ValueError(
            f"proxy_size={proxy_size} is too large: {dataset} has {len(train)} training "
            f"samples and {num_clients} clients need at least {MIN_CLIENT_SAMPLES} each; "
            f"use proxy_size <= {max(available, 0)}"
        )
    all_indices = np.arange(len(train), dtype=np.int64)
    if proxy_size > 0:
        pool, proxy_indices = _split_off(all_indices, train.y, proxy_size, _seed_of(proxy_seq))
    else:
        pool, proxy_indices = all_indices, np.empty(0, dtype=np.int64)

    validation_rows = np.sort(
        np.random.default_rng(validation_seq).choice(
            len(proxy_indices), size=proxy_validation_size, replace=False
        )
    ).astype(np.int64)

    if private_size is not None:
        if private_size > len(pool):
            raise ValueError(
                f"private_size={private_size} exceeds the {len(pool)} training samples "
                f"left after the proxy set ({proxy_size}); lower private_size or proxy_size"
            )
        pool = np.random.default_rng(private_seq).permutation(pool)[:private_size]

    parts = partition_indices(train.y[pool], num_clients, partitioner, _seed_of(partition_seq))
    clients = []
    for client_id, (part, client_seq) in enumerate(zip(parts, clients_seq.spawn(num_clients))):
        client_indices = pool[part]
        if len(client_indices) < MIN_CLIENT_SAMPLES:
            raise ValueError(
                f"Client {client_id} got {len(client_indices)} sample(s) from partitioner "
                f"{partitioner.to_dict()}; each client needs at least {MIN_CLIENT_SAMPLES} "
                "(one to train, one to test). Use fewer clients, a larger private_size, a "
                "larger Dirichlet alpha or min_partition_size."
            )
        num_test = min(
            max(1, math.ceil(client_test_fraction * len(client_indices))),
            len(client_indices) - 1,
        )
        train_idx, test_idx = _split_off(client_indices, train.y, num_test, _seed_of(client_seq))
        _read_only(train_idx, test_idx)
        class_counts = np.bincount(train.y[train_idx], minlength=num_classes).astype(np.int64)
        _read_only(class_counts)
        clients.append(
            ClientData(
                client_id=client_id,
                train=_frozen(train.subset(train_idx)),
                test=_frozen(train.subset(test_idx)),
                class_counts=class_counts,
                train_indices=train_idx,
                test_indices=test_idx,
            )
        )

    if global_test_size is not None and global_test_size < len(test):
        test_positions = np.arange(len(test), dtype=np.int64)
        _, chosen = _split_off(test_positions, test.y, global_test_size, _seed_of(global_test_seq))
        global_test = _frozen(test.subset(np.sort(chosen)))
    else:
        global_test = test

    proxy_x = train.x[proxy_indices]
    _read_only(proxy_x, proxy_indices, validation_rows)
    return FederatedSplit(
        clients=clients,
        proxy_x=proxy_x,
        proxy_validation=_frozen(train.subset(proxy_indices[validation_rows])),
        proxy_validation_indices=validation_rows,
        global_test=global_test,
        num_classes=num_classes,
        input_shape=tuple(int(d) for d in train.x.shape[1:]),
        proxy_indices=proxy_indices,
    )
