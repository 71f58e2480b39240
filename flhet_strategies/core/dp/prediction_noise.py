"""Distributed DP for prediction payloads: one client's clipped probabilities plus its noise share.

Pure numpy, no Flower import. The client step of distributed differential privacy for
the DS-FL consensus (:class:`.private_consensus.PrivateConsensus` with
``mode="distributed"``), shared by both client faces (the Message-API mod
:class:`clients.mods.dp_predictions.DpPredictionsMod` and the compat wrapper
:class:`clients.dp_predictions_numpy_client.DpPredictionsNumPyClient`):

1. the client's logits on the round's ``m`` proxy samples become probabilities
   (softmax, temperature 1);
2. they are clipped in L2 (:func:`.clipping.clip_payload`, ``"flat"`` to ``S`` or
   ``"per-row"`` to ``r``, so ``S = r sqrt(m)``);
3. the client adds its share ``N(0, (z S)^2 / n)`` to every entry
   (:func:`.gaussian.add_noise_share`), ``n`` being the cohort size the server
   announced, so that the sum of ``n`` replies carries ``N(0, (z S)^2)``;
4. the result is encoded: ``"probabilities"`` (linear, what a summing server needs) or
   ``"log-probabilities"`` (clamped onto the simplex, then ``log``; does not add up
   across clients, see the mod's docstring).

The server sends ``z``, the clip parameter, the clip mode and ``n`` in the train config
under the keys of :mod:`.private_consensus` (:meth:`PrivateConsensus.client_config`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..consensus import softmax
from .clipping import CLIP_MODES, clip_payload, payload_norm_bound
from .gaussian import add_noise_share, noise_share_std
from .postprocess import noisy_rows_to_probabilities
from .private_consensus import (
    CLIP_MODE_KEY,
    CLIP_NORM_KEY,
    NOISE_MULTIPLIER_KEY,
    NUM_CLIENTS_KEY,
)
from .update_noise import _config_value, _positive_count, _positive_number

PREDICTION_ENCODINGS = ("log-probabilities", "probabilities")
"""How a noisy payload is sent: clamped log-probabilities, or linear probabilities."""

PREDICTION_NOISE_KEYS = (NOISE_MULTIPLIER_KEY, CLIP_NORM_KEY, CLIP_MODE_KEY, NUM_CLIENTS_KEY)
"""Train-config keys of distributed prediction noise: ``z``, clip, clip mode, ``n``."""


@dataclass(frozen=True)
class PredictionNoiseSettings:
    """What a client needs to clip its predictions and add its share of the noise.

    Parameters
    ----------
    noise_multiplier : float
        ``z``: the noise on the *sum* of the cohort's clipped payloads is ``z * S``.
    clip_norm : float
        The clipping parameter: ``S`` with ``"flat"``, the row bound ``r`` with
        ``"per-row"``.
    num_clients : int (default: 1)
        ``n``, the replies the noise is split over (1 is local DP).
    clip_mode : str (default: "flat")
        ``"flat"`` or ``"per-row"``.

    Raises
    ------
    ValueError
        If a number is not positive and finite, ``num_clients`` is not a positive
        integer, or ``clip_mode`` is unknown (the message names the config key).
    """

    noise_multiplier: float
    clip_norm: float
    num_clients: int = 1
    clip_mode: str = "flat"

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_multiplier",
                           _positive_number(self.noise_multiplier, NOISE_MULTIPLIER_KEY))
        object.__setattr__(self, "clip_norm", _positive_number(self.clip_norm, CLIP_NORM_KEY))
        object.__setattr__(self, "num_clients",
                           _positive_count(self.num_clients, NUM_CLIENTS_KEY))
        if self.clip_mode not in CLIP_MODES:
            raise ValueError(f"'{CLIP_MODE_KEY}' must be one of {CLIP_MODES}, "
                             f"got {self.clip_mode!r}")
        object.__setattr__(self, "clip_mode", str(self.clip_mode))

    def norm_bound(self, num_rows: int) -> float:
        """``S``, the L2 bound of a clipped payload of ``num_rows`` proxy rows."""
        return payload_norm_bound(self.clip_norm, self.clip_mode, num_rows)

    def share_std(self, num_rows: int) -> float:
        """Standard deviation ``z S / sqrt(n)`` of this client's noise share per entry."""
        return noise_share_std(self.noise_multiplier, self.norm_bound(num_rows), self.num_clients)

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any],
        noise_multiplier: float | None = None,
        clip_norm: float | None = None,
        num_clients: int | None = 1,
        clip_mode: str = "flat",
        owner: str = "the client",
    ) -> "PredictionNoiseSettings":
        """Read the settings from a train config, falling back to the given defaults.

        Parameters
        ----------
        config : Mapping
            The train config (a Flower ``ConfigRecord`` or the compat ``fit`` config);
            its :data:`PREDICTION_NOISE_KEYS` win over the defaults.
        noise_multiplier, clip_norm, num_clients, clip_mode : optional
            Defaults for keys the server did not send.
        owner : str (default: "the client")
            Who holds the defaults, for the error message.

        Raises
        ------
        ValueError
            Naming the key that is missing from both or has a bad value.
        """
        return cls(*(_config_value(config, key, default, owner,
                                   "PrivateConsensus(mode='distributed')")
                     for key, default in ((NOISE_MULTIPLIER_KEY, noise_multiplier),
                                          (CLIP_NORM_KEY, clip_norm),
                                          (NUM_CLIENTS_KEY, num_clients),
                                          (CLIP_MODE_KEY, clip_mode))))


@dataclass(frozen=True)
class NoisyPredictions:
    """One client's privatized prediction payload.

    Parameters
    ----------
    values : np.ndarray
        float32 ``(m, C)``: noisy clipped probabilities, or their clamped logarithm.
    encoding : str
        One of :data:`PREDICTION_ENCODINGS`.
    norm_bound : float
        ``S``, the L2 bound of the clipped payload.
    noise_std : float
        Standard deviation of the added noise share per entry.
    """

    values: np.ndarray
    encoding: str
    norm_bound: float
    noise_std: float


def privatize_predictions(
    logits: np.ndarray,
    settings: PredictionNoiseSettings,
    encoding: str = "probabilities",
    min_probability: float = 1e-6,
    rng: np.random.Generator | None = None,
) -> NoisyPredictions:
    """Softmax, clip and add this client's noise share ``N(0, (z S)^2 / n)`` to its logits.

    Parameters
    ----------
    logits : np.ndarray
        The client's logits on the round's proxy samples, finite floats ``(m, C)``.
    settings : PredictionNoiseSettings
        ``z``, the clip, the clip mode and ``n``.
    encoding : str (default: "probabilities")
        ``"probabilities"`` (the unclamped noisy payload, which sums linearly) or
        ``"log-probabilities"`` (clamped to ``min_probability``, renormalised, ``log``).
    min_probability : float (default: 1e-6)
        Clamp floor of the log-probability encoding, in ``(0, 0.01)``.
    rng : numpy.random.Generator, optional
        For tests; by default a fresh OS-seeded generator per call.

    Returns
    -------
    NoisyPredictions
        The encoded payload with its bound and noise std.

    Raises
    ------
    ValueError
        If ``logits`` is not a finite floating ``(samples, classes)`` array, or
        ``encoding`` / ``min_probability`` is bad.
    """
    if encoding not in PREDICTION_ENCODINGS:
        raise ValueError(f"encoding must be one of {PREDICTION_ENCODINGS}, got {encoding!r}")
    if not 0.0 < min_probability < 1e-2:
        raise ValueError(f"min_probability must be in (0, 0.01), got {min_probability!r}")
    logits = np.asarray(logits)
    if logits.ndim != 2 or not np.issubdtype(logits.dtype, np.floating) \
            or not np.all(np.isfinite(logits)):
        raise ValueError(f"predictions need finite floating logits of shape (samples, classes); "
                         f"got dtype {logits.dtype}, shape {logits.shape}")
    bound = settings.norm_bound(logits.shape[0])
    clipped = clip_payload(softmax(logits), settings.clip_norm, settings.clip_mode)
    noisy = add_noise_share(clipped, settings.noise_multiplier, bound, settings.num_clients, rng)
    if encoding == "log-probabilities":
        values = np.log(noisy_rows_to_probabilities(noisy, floor=float(min_probability)))
    else:
        values = noisy
    return NoisyPredictions(values.astype(np.float32), encoding, bound,
                            noise_share_std(settings.noise_multiplier, bound, settings.num_clients))


__all__ = [
    "PREDICTION_ENCODINGS",
    "PREDICTION_NOISE_KEYS",
    "NoisyPredictions",
    "PredictionNoiseSettings",
    "privatize_predictions",
]
