"""Real datasets, flwr-datasets partitioning and federated splits for flhet simulations."""

from simulations.data.federated_split import ClientData, FederatedSplit, make_federated_split
from simulations.data.loaders import (
    NORMALIZATION,
    SUPPORTED_DATASETS,
    ArrayDataset,
    load_dataset,
    read_idx_gz,
)
from simulations.data.partitioning import PARTITIONER_NAMES, PartitionerSpec, partition_indices

__all__ = [
    "NORMALIZATION",
    "PARTITIONER_NAMES",
    "SUPPORTED_DATASETS",
    "ArrayDataset",
    "ClientData",
    "FederatedSplit",
    "PartitionerSpec",
    "load_dataset",
    "make_federated_split",
    "partition_indices",
    "read_idx_gz",
]
