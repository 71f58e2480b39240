"""Conversion between named numpy arrays and Flower Message-API records."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord


def arrays_to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Pack named numpy arrays into an ``ArrayRecord`` (names preserved)."""
    record = ArrayRecord()
    for name, value in arrays.items():
        record[name] = Array(np.ascontiguousarray(value))
    return record


def record_to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Unpack an ``ArrayRecord`` into named numpy arrays."""
    return {name: array.numpy() for name, array in record.items()}


def record_nbytes(record: ArrayRecord) -> int:
    """Bytes of serialized array data in a record (communication accounting)."""
    return int(sum(len(array.data) for array in record.values()))
