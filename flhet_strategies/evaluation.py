"""Summaries of per-client evaluation metrics (pure numpy).

Each client reports its model's accuracy on its own test split (``client_accuracy``,
the HtFLlib / FedTGP convention) and on the shared global test set
(``global_accuracy``, the FedDF convention). The summary keeps both views and the
per-client values, which fairness metrics and contribution audits need.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from . import wire
from .protocol import client_sort_key


def summarize_client_metrics(per_client: Mapping[str, Mapping[str, float]]) -> dict:
    """Aggregate per-client evaluation metrics into one round summary.

    Parameters
    ----------
    per_client : Mapping[str, Mapping[str, float]]
        ``client_id -> metrics``; each metrics mapping has ``client_accuracy`` and
        optionally ``global_accuracy``.

    Returns
    -------
    dict
        ``client_accuracy_mean``, ``client_accuracy_std``, ``client_accuracy_min``,
        ``global_accuracy_mean`` (``None`` when no client reported it),
        ``num_clients`` and ``per_client`` (``client_id -> metrics`` as plain floats).
    """
    if not per_client:
        raise ValueError("no client metrics to summarize")
    ids = sorted(per_client, key=client_sort_key)
    local = np.array([float(per_client[c]["client_accuracy"]) for c in ids])
    glob = [per_client[c].get("global_accuracy") for c in ids]
    glob_values = np.array([float(g) for g in glob if g is not None])
    return {
        "client_accuracy_mean": float(local.mean()),
        "client_accuracy_std": float(local.std()),
        "client_accuracy_min": float(local.min()),
        "global_accuracy_mean": float(glob_values.mean()) if glob_values.size else None,
        "num_clients": len(ids),
        "per_client": {c: {k: float(v) for k, v in per_client[c].items()} for c in ids},
    }


def record_privacy_summary(metrics: Mapping[str, Mapping[str, object]]) -> dict:
    """Clients' record-level (DP-SGD) epsilon from their reply metrics.

    Parameters
    ----------
    metrics : Mapping[str, Mapping[str, object]]
        ``client_id -> reply metrics``; clients that report ``record-epsilon`` count.

    Returns
    -------
    dict
        ``epsilon_per_client`` (``client_id -> epsilon``), ``epsilon_mean``,
        ``epsilon_max`` and ``record_delta``; empty when no client reports epsilon.
    """
    spent = {c: float(m[wire.RECORD_EPSILON]) for c, m in metrics.items()
             if isinstance(m.get(wire.RECORD_EPSILON), (int, float))}
    if not spent:
        return {}
    ids = sorted(spent, key=client_sort_key)
    deltas = {float(m[wire.RECORD_DELTA]) for m in metrics.values()
              if isinstance(m.get(wire.RECORD_DELTA), (int, float))}
    values = np.array([spent[c] for c in ids])
    return {"epsilon_per_client": {c: spent[c] for c in ids},
            "epsilon_mean": float(values.mean()), "epsilon_max": float(values.max()),
            "record_delta": max(deltas) if deltas else None}
