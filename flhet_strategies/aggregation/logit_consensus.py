"""Consensus of client predictions on a public proxy set (FedMD, DS-FL).

Pure numpy: stacked client logits ``(num_clients, num_samples, num_classes)`` in, soft
targets ``(num_samples, num_classes)`` out. FedMD: Li & Wang, 2019,
https://arxiv.org/abs/1910.03581. DS-FL with entropy reduction aggregation (ERA):
Itahara et al., IEEE TMC 2021, https://arxiv.org/abs/2008.06180.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONSENSUS_MODES = ("fedmd", "dsfl")


def softmax(logits: np.ndarray, temperature: float = 1.0, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax of ``logits / temperature`` in float64.

    Parameters
    ----------
    logits : np.ndarray
        Scores of any shape; the softmax runs over ``axis``.
    temperature : float (default: 1.0)
        Softening temperature, must be positive.
    axis : int (default: -1)
        Axis holding the classes.

    Returns
    -------
    np.ndarray
        Probabilities (float64) of the same shape as ``logits``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def entropy_reduction(probs: np.ndarray, temperature: float) -> np.ndarray:
    """DS-FL entropy reduction aggregation (ERA): ``softmax(probs / temperature)``.

    A temperature below one sharpens the averaged probabilities, lowering the entropy
    of the soft targets, which DS-FL shows speeds up and stabilises training on
    non-IID data.

    Parameters
    ----------
    probs : np.ndarray
        Averaged class probabilities, shape ``(num_samples, num_classes)``.
    temperature : float
        ERA temperature (DS-FL uses 0.1).

    Returns
    -------
    np.ndarray
        Sharpened probabilities of the same shape.
    """
    return softmax(probs, temperature=temperature, axis=-1)


def class_vote_weights(class_counts: np.ndarray, client_weights: np.ndarray) -> np.ndarray:
    """Per-class vote weights ``W[i, c] = w_i n_ic / sum_j w_j n_jc``.

    Client ``i``'s opinion on class ``c`` counts in proportion to how many training
    samples of class ``c`` it holds (scaled by its client weight ``w_i``): a client that
    never saw a class has no vote on it. A class that no participating client holds
    falls back to the plain client weights.

    Note that this needs each client's label histogram on the server: the histogram is
    revealed to whoever aggregates. Protect it with the privacy features (secure sum /
    DP) where that matters.

    Parameters
    ----------
    class_counts : np.ndarray
        Label histograms, shape ``(num_clients, num_classes)``, non-negative.
    client_weights : np.ndarray
        Non-negative client weights, shape ``(num_clients,)``.

    Returns
    -------
    np.ndarray
        Weights of shape ``(num_clients, num_classes)``; every column sums to one.
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    w = np.asarray(client_weights, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != w.shape[0]:
        raise ValueError(
            f"class_counts must be (num_clients, num_classes) matching {w.shape[0]} "
            f"client weights, got shape {counts.shape}"
        )
    if np.any(counts < 0) or not np.all(np.isfinite(counts)):
        raise ValueError("class_counts must be finite and non-negative")
    votes = counts * w[:, None]
    totals = votes.sum(axis=0, keepdims=True)
    fallback = (w / w.sum())[:, None] * np.ones_like(votes)
    return np.where(totals > 0, votes / np.where(totals > 0, totals, 1.0), fallback)


@dataclass(frozen=True)
class ConsensusConfig:
    """How client predictions are turned into one soft target per proxy sample.

    Parameters
    ----------
    mode : str (default: "dsfl")
        ``"fedmd"`` averages the clients' logits (FedMD's class-score consensus), then
        applies ``softmax(. / temperature)``. ``"dsfl"`` averages the clients'
        probabilities ``softmax(logits / temperature)`` (DS-FL) and, if
        ``era_temperature`` is set, sharpens them with entropy reduction.
    temperature : float (default: 1.0)
        Softening temperature applied to client logits.
    era_temperature : float or None (default: 0.1)
        DS-FL entropy-reduction temperature; ``None`` disables ERA. Ignored for FedMD.
    class_vote_weighting : bool (default: True)
        Weight client ``i``'s prediction for class ``c`` by ``n_ic / sum_j n_jc``
        (see :func:`class_vote_weights`). Needs the clients' label histograms.
    """

    mode: str = "dsfl"
    temperature: float = 1.0
    era_temperature: float | None = 0.1
    class_vote_weighting: bool = True

    def __post_init__(self) -> None:
        if self.mode not in CONSENSUS_MODES:
            raise ValueError(f"mode must be one of {CONSENSUS_MODES}, got {self.mode!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.era_temperature is not None and self.era_temperature <= 0:
            raise ValueError(
                f"era_temperature must be positive or None, got {self.era_temperature}"
            )


def logit_consensus(
    logits: np.ndarray,
    client_weights: np.ndarray,
    config: ConsensusConfig,
    class_counts: np.ndarray | None = None,
) -> np.ndarray:
    """Weighted consensus of client predictions on the same proxy samples.

    Parameters
    ----------
    logits : np.ndarray
        Client logits, shape ``(num_clients, num_samples, num_classes)``.
    client_weights : np.ndarray
        Non-negative weights, shape ``(num_clients,)``, not all zero (e.g. sample
        counts, or contribution scores).
    config : ConsensusConfig
        The consensus rule.
    class_counts : np.ndarray, optional
        Label histograms ``(num_clients, num_classes)``; required when
        ``config.class_vote_weighting`` is set.

    Returns
    -------
    np.ndarray
        Soft targets (float32), shape ``(num_samples, num_classes)``, rows sum to one.
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 3:
        raise ValueError(f"logits must be (clients, samples, classes), got {z.shape}")
    w = np.asarray(client_weights, dtype=np.float64)
    if w.shape != (z.shape[0],):
        raise ValueError(f"need {z.shape[0]} client weights, got shape {w.shape}")
    if np.any(w < 0) or not np.all(np.isfinite(w)) or w.sum() <= 0:
        raise ValueError(f"client weights must be finite, non-negative, not all zero: {w}")

    if config.class_vote_weighting:
        if class_counts is None:
            raise ValueError("class_vote_weighting needs the clients' class_counts")
        weights = class_vote_weights(class_counts, w)  # (n, C), columns sum to 1
    else:
        weights = np.repeat((w / w.sum())[:, None], z.shape[2], axis=1)

    if config.mode == "fedmd":
        mean_logits = np.einsum("nc,nmc->mc", weights, z)
        target = softmax(mean_logits, temperature=config.temperature)
    else:
        probs = softmax(z, temperature=config.temperature)
        mean_probs = np.einsum("nc,nmc->mc", weights, probs)
        mean_probs /= mean_probs.sum(axis=1, keepdims=True)
        if config.era_temperature is not None:
            target = entropy_reduction(mean_probs, config.era_temperature)
        else:
            target = mean_probs
    return target.astype(np.float32)
