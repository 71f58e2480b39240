"""Client payloads of the distillation protocol and their validation.

A client's reply to a distillation round is its logits on the proxy samples the
server asked for, its number of private training examples and (optionally) its label
histogram. Replies are untrusted: :func:`validate_payload` rejects anything of the
wrong shape, a non-floating dtype, or NaN/Inf, with a message that says which.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def client_sort_key(client_id: object) -> tuple:
    """Sort key for client ids: numeric ids in numeric order, then the others.

    Aggregating in a fixed client order (not arrival order) makes every floating-point
    sum, and so every run, reproducible.
    """
    text = str(client_id)
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


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
    logits = np.asarray(payload.logits)
    if not np.issubdtype(logits.dtype, np.floating):
        raise PayloadError(f"logits must be a floating array, got dtype {logits.dtype}")
    if logits.shape != (num_samples, num_classes):
        raise PayloadError(
            f"logits must have shape ({num_samples}, {num_classes}), got {logits.shape}"
        )
    if not np.all(np.isfinite(logits)):
        bad = int(np.size(logits) - np.count_nonzero(np.isfinite(logits)))
        raise PayloadError(f"logits contain {bad} NaN/Inf values")
    if isinstance(payload.num_examples, bool) or int(payload.num_examples) != payload.num_examples:
        raise PayloadError(f"num_examples must be an integer, got {payload.num_examples!r}")
    if payload.num_examples <= 0:
        raise PayloadError(f"num_examples must be positive, got {payload.num_examples}")
    counts = payload.class_counts
    if need_class_counts and counts is None:
        raise PayloadError("class_counts missing but per-class vote weighting is on")
    if counts is not None:
        counts = np.asarray(counts)
        if counts.shape != (num_classes,):
            raise PayloadError(
                f"class_counts must have shape ({num_classes},), got {counts.shape}"
            )
        if not np.all(np.isfinite(counts)) or np.any(counts < 0):
            raise PayloadError("class_counts must be finite and non-negative")
    return ClientPayload(
        client_id=str(payload.client_id),
        logits=logits.astype(np.float32, copy=False),
        num_examples=int(payload.num_examples),
        class_counts=None if counts is None else counts.astype(np.float64),
    )
