"""Validation of untrusted client replies, and the consensus payload weight functions see.

Replies are untrusted: the checks here reject anything of the wrong shape, a
non-floating dtype, NaN/Inf, or a bad example count, with a message that says which.
:class:`ClientPayload` is a validated consensus reply, as weight functions receive it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..protocol import Reply, client_sort_key


class PayloadError(ValueError):
    """A client reply that cannot be aggregated (wrong shape, dtype, NaN/Inf...)."""


@dataclass(frozen=True)
class ClientPayload:
    """One client's reply to a distillation round.

    Parameters
    ----------
    client_id : str
        Stable client identifier (the simulation's partition id, or the node id).
    logits : np.ndarray
        Predictions on the requested proxy samples, ``(num_samples, num_classes)``.
    num_examples : int
        Number of private training examples (the default aggregation weight).
    class_counts : np.ndarray, optional
        Label histogram of the private training data, ``(num_classes,)``; needed for
        per-class vote weighting.
    """

    client_id: str
    logits: np.ndarray
    num_examples: int
    class_counts: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        """Bytes of array data this payload carried."""
        extra = 0 if self.class_counts is None else np.asarray(self.class_counts).nbytes
        return int(np.asarray(self.logits).nbytes + extra)


def check_floating(name: str, value: object, shape: tuple[int, ...]) -> np.ndarray:
    """A finite floating array of exactly ``shape``, as float32.

    Raises
    ------
    PayloadError
        Naming the array and what is wrong (dtype, shape, NaN/Inf).
    """
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.floating):
        raise PayloadError(f"{name} must be a floating array, got dtype {array.dtype}")
    if array.shape != tuple(shape):
        raise PayloadError(f"{name} must have shape {tuple(shape)}, got {array.shape}")
    if not np.all(np.isfinite(array)):
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise PayloadError(f"{name} contain {bad} NaN/Inf values")
    return array.astype(np.float32, copy=False)


def required_floating(arrays: Mapping[str, object], name: str,
                      shape: tuple[int, ...]) -> np.ndarray:
    """A reply's array ``name``, checked by :func:`check_floating`.

    Raises
    ------
    PayloadError
        If ``arrays`` has no ``name`` (naming those it has), or as :func:`check_floating`.
    """
    if name not in arrays:
        raise PayloadError(f"the reply has no '{name}' array; found {sorted(arrays)}")
    return check_floating(name, arrays[name], shape)


def validated(replies: Sequence[Reply], check: Callable[[Reply], tuple]
              ) -> tuple[list[tuple], dict[str, str]]:
    """``(client id, *check(reply))`` of the replies ``check`` accepts, in client-id order
    (a fixed summation order), and client id -> the :class:`PayloadError` of the others."""
    valid, rejected = [], {}
    for reply in sorted(replies, key=lambda r: client_sort_key(r.client_id)):
        try:
            valid.append((reply.client_id, *check(reply)))
        except PayloadError as error:
            rejected[reply.client_id] = str(error)
    return valid, rejected


def check_num_examples(value: object) -> int:
    """A positive integer example count.

    Raises
    ------
    PayloadError
        If it is not a positive integer.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
            or not np.isfinite(value) or int(value) != value:
        raise PayloadError(f"num_examples must be an integer, got {value!r}")
    if value <= 0:
        raise PayloadError(f"num_examples must be positive, got {value}")
    return int(value)


def check_class_counts(value: object, num_classes: int, required: bool) -> np.ndarray | None:
    """A label histogram ``(num_classes,)``, finite and non-negative, as float64.

    Raises
    ------
    PayloadError
        If it is missing but ``required``, of the wrong shape, negative or non-finite.
    """
    if value is None:
        if required:
            raise PayloadError("class_counts missing but the aggregation needs them")
        return None
    counts = np.asarray(value)
    if counts.shape != (num_classes,):
        raise PayloadError(f"class_counts must have shape ({num_classes},), got {counts.shape}")
    if not np.issubdtype(counts.dtype, np.number) or not np.all(np.isfinite(counts)) \
            or np.any(counts < 0):
        raise PayloadError("class_counts must be finite and non-negative")
    return counts.astype(np.float64)


def validate_payload(
    payload: ClientPayload, num_samples: int, num_classes: int, need_class_counts: bool
) -> ClientPayload:
    """Check a client payload and return it with float32 logits.

    Parameters
    ----------
    payload : ClientPayload
        The reply to check.
    num_samples : int
        Number of proxy samples the server asked for this round.
    num_classes : int
        Number of classes of the task.
    need_class_counts : bool
        Whether a label histogram is required (per-class vote weighting).

    Returns
    -------
    ClientPayload
        The same payload with logits cast to float32.

    Raises
    ------
    PayloadError
        If the logits are not a floating array of shape ``(num_samples, num_classes)``
        with finite values, if ``num_examples`` is not a positive integer, or if the
        class histogram is missing, of the wrong shape, negative or non-finite.
    """
    logits = check_floating("logits", payload.logits, (num_samples, num_classes))
    return ClientPayload(
        client_id=str(payload.client_id),
        logits=logits,
        num_examples=check_num_examples(payload.num_examples),
        class_counts=check_class_counts(payload.class_counts, num_classes, need_class_counts),
    )
