"""Pluggable client weights for aggregation.

A weight function maps the round's accepted payloads to one non-negative weight per
client. The default is the number of private training examples (as FedAvg); the
contribution features replace it with Shapley-based weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..aggregation.payload import ClientPayload

WeightFn = Callable[[Sequence[ClientPayload], int, np.ndarray], np.ndarray]
"""Signature of a weight function: ``(payloads, server_round, proxy_indices) -> weights``.

``payloads`` are the round's validated payloads in client-id order, ``proxy_indices``
the proxy samples their logits refer to (row ``k`` of every payload's logits is proxy
sample ``proxy_indices[k]``), and the result holds one non-negative weight per payload.
"""


def sample_count_weights(
    payloads: Sequence[ClientPayload], server_round: int, proxy_indices: np.ndarray | None = None
) -> np.ndarray:
    """Weight each client by its number of private training examples.

    Parameters
    ----------
    payloads : Sequence[ClientPayload]
        The round's accepted payloads.
    server_round : int
        The current round (unused; part of the :data:`WeightFn` signature).
    proxy_indices : np.ndarray, optional
        The round's proxy indices (unused).

    Returns
    -------
    np.ndarray
        ``num_examples`` of each payload as float64.
    """
    return np.array([p.num_examples for p in payloads], dtype=np.float64)


def uniform_weights(
    payloads: Sequence[ClientPayload], server_round: int, proxy_indices: np.ndarray | None = None
) -> np.ndarray:
    """Weight every client equally (one client, one vote).

    Parameters
    ----------
    payloads : Sequence[ClientPayload]
        The round's accepted payloads.
    server_round : int
        The current round (unused).
    proxy_indices : np.ndarray, optional
        The round's proxy indices (unused).

    Returns
    -------
    np.ndarray
        Ones, float64.
    """
    return np.ones(len(payloads), dtype=np.float64)
