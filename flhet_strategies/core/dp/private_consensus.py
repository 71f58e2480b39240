"""Differentially private DS-FL consensus: the combine step with client-level DP.

The server's DS-FL consensus is a mean of the clients' probability payloads
``P_i = softmax(logits_i / T)``, shape ``(m, C)`` on the round's ``m`` proxy samples,
followed by entropy reduction (ERA). :class:`PrivateConsensus` makes the released
consensus ``(epsilon, delta)``-DP at the client level:

* the payloads are clipped to the L2 bound ``S`` (:mod:`.clipping`; ``"per-row"``
  clipping to row bound ``r`` gives ``S = r sqrt(m)``, and ``r = 1`` clips nothing,
  since a probability row has L2 norm at most 1);
* their **sum**, with equal weights, gets Gaussian noise ``N(0, (z S)^2)`` per entry:
  from the server (``"central"``, :func:`.gaussian.add_central_noise`) or as shares
  ``N(0, (z S)^2 / n)`` that each of the ``n`` sampled clients adds before sending
  (``"distributed"``, :class:`clients.mods.dp_predictions.DpPredictionsMod` with the
  ``"probabilities"`` encoding, :func:`.gaussian.add_noise_share`);
* dividing by the public cohort size, clamping onto the simplex
  (:func:`.postprocess.noisy_rows_to_probabilities`) and ERA are post-processing.

Weights are equal on purpose: a sample-count or contribution weight would be
data-dependent and change the sensitivity; per-class vote weights would need the
clients' exact label histograms. The accountant gets ``z`` (or, in distributed mode,
``z sqrt(received / expected)`` when clients dropped out:
:func:`.gaussian.realized_noise_multiplier`); the sensitivity of the sum is derived in
:mod:`.sensitivity` (``S`` for add-or-remove-one, ``sqrt(2) S`` for replace-one).

Noise per entry of the mean is ``z S / n = z r sqrt(m) / n``: it grows with the proxy
samples per round and shrinks with the cohort. Client-level DP therefore wants few
proxy samples per round and many clients: with 10 clients, ``m = 100`` and ``z = 2``
the noise std per entry is 2, far above any class probability.

Rows whose noisy consensus is not significantly confident are dropped (``min_margin``,
in the spirit of PATE's confident aggregation): a row is released only if its noisy top
class beats the runner-up by ``min_margin`` standard deviations of that difference.
The decision reads only the noised mean, so it is post-processing and costs no privacy;
it keeps clients from distilling on noise. The released ``consensus_indices`` are the
kept rows; if fewer than ``min_rows`` rows pass, none is released: a client distilling
jointly with its private batches cycles the consensus rows through every batch, so one or
two rows would be fitted hundreds of times in a round (measured on Fashion-MNIST: a
single released row cost 11 points of client accuracy for that round).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..consensus import ConsensusConfig, entropy_reduction, softmax
from .clipping import CLIP_MODES, clip_payload, payload_norm_bound
from .gaussian import add_central_noise, realized_noise_multiplier
from .postprocess import noisy_rows_to_probabilities

DP_MODES = ("central", "distributed")
"""Who adds the noise: the server to the clipped sum, or each client its share."""

NOISE_MULTIPLIER_KEY = "dp-noise-multiplier"
"""Train-config key: ``z``, noise std on the sum of the cohort's replies over ``S``."""

CLIP_NORM_KEY = "dp-clip-norm"
"""Train-config key: the clipping parameter (``S`` flat, the row bound ``r`` per row)."""

CLIP_MODE_KEY = "dp-clip-mode"
"""Train-config key: ``"flat"`` or ``"per-row"``."""

NUM_CLIENTS_KEY = "dp-num-clients"
"""Train-config key: ``n``, the replies whose noise shares make up the sum."""

NOISY_PROBABILITIES_ARRAY = "noisy_probabilities"
"""Reply array of clipped probabilities plus a noise share (distributed mode)."""


@dataclass(frozen=True)
class PrivateConsensus:
    """Client-level DP for the DS-FL combine step.

    Parameters
    ----------
    noise_multiplier : float
        ``z = sigma / S``: noise standard deviation on the clipped sum over the bound
        (Flower's convention; see
        :func:`flhet_strategies.privacy.accounting.noise_multiplier_for_epsilon`).
    clip_norm : float (default: 1.0)
        The clipping parameter: ``S`` with ``"flat"``, the row bound ``r`` with
        ``"per-row"``.
    mode : str (default: "central")
        ``"central"`` (the server clips and noises) or ``"distributed"`` (replies
        arrive clipped and noised by the clients' mod; the server only sums).
    clip_mode : str (default: "per-row")
        ``"flat"`` or ``"per-row"``.
    seed : int, optional
        Seed of the server's noise (central mode), for reproducible experiments;
        OS entropy when omitted. Each round draws from ``(seed, round)``.
    min_margin : float or None (default: 2.0)
        Release only rows whose noisy top-1 minus top-2 mean probability exceeds
        ``min_margin * sqrt(2) * sigma / n`` (``sigma / n`` the noise std of an entry of
        the mean); ``None`` releases every row.
    min_rows : int (default: 10)
        Release nothing when fewer rows pass ``min_margin`` (capped at the round's rows).
    """

    noise_multiplier: float
    clip_norm: float = 1.0
    mode: str = "central"
    clip_mode: str = "per-row"
    seed: int | None = None
    min_margin: float | None = 2.0
    min_rows: int = 10

    def __post_init__(self) -> None:
        if isinstance(self.min_rows, bool) or not isinstance(self.min_rows, int) \
                or self.min_rows < 0:
            raise ValueError(f"min_rows must be a non-negative int, got {self.min_rows!r}")
        if self.min_margin is not None and not (math.isfinite(self.min_margin)
                                                and self.min_margin >= 0):
            raise ValueError(f"min_margin must be a non-negative number or None, "
                             f"got {self.min_margin!r}")
        for name in ("noise_multiplier", "clip_norm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if self.mode not in DP_MODES:
            raise ValueError(f"mode must be one of {DP_MODES}, got {self.mode!r}")
        if self.clip_mode not in CLIP_MODES:
            raise ValueError(f"clip_mode must be one of {CLIP_MODES}, got {self.clip_mode!r}")

    def check_consensus(self, config: ConsensusConfig) -> None:
        """Raise ``ValueError`` for a consensus rule this mechanism cannot privatize."""
        if config.mode != "dsfl":
            raise ValueError(
                "differential privacy is implemented for the DS-FL consensus (mean of "
                f"probabilities), not for mode {config.mode!r}"
            )
        if config.class_vote_weighting:
            raise ValueError(
                "differential privacy needs class_vote_weighting = False: per-class vote "
                "weights use the clients' exact label histograms"
            )

    def norm_bound(self, num_rows: int) -> float:
        """``S``, the L2 bound of one client's payload of ``num_rows`` proxy rows."""
        return payload_norm_bound(self.clip_norm, self.clip_mode, num_rows)

    def client_config(self, num_clients: int) -> dict[str, object]:
        """Train-config entries that tell a distributed-DP client mod what to add."""
        return {NOISE_MULTIPLIER_KEY: float(self.noise_multiplier),
                CLIP_NORM_KEY: float(self.clip_norm), CLIP_MODE_KEY: self.clip_mode,
                NUM_CLIENTS_KEY: int(num_clients)}

    def combine(
        self,
        predictions: Sequence[np.ndarray],
        config: ConsensusConfig,
        server_round: int,
        num_expected: int | None = None,
    ) -> tuple[np.ndarray, float, np.ndarray]:
        """The private consensus of one round and the noise multiplier it carries.

        Parameters
        ----------
        predictions : Sequence[np.ndarray]
            One ``(m, C)`` array per accepted client: raw logits (central) or clipped
            noisy probabilities (distributed).
        config : ConsensusConfig
            The DS-FL rule (temperature, ERA); see :meth:`check_consensus`.
        server_round : int
            The round (seeds the central noise).
        num_expected : int, optional
            Distributed mode: the cohort size the clients split the noise for
            (default: the number of predictions).

        Returns
        -------
        tuple[np.ndarray, float, np.ndarray]
            Soft targets of the released rows (float32, rows on the simplex), the
            realized ``z`` to give the accountant, and the boolean mask of released
            rows among the ``m`` (see ``min_margin``).
        """
        self.check_consensus(config)
        if not predictions:
            raise ValueError("no predictions to combine")
        stacked = np.stack([np.asarray(p, dtype=np.float64) for p in predictions])
        if stacked.ndim != 3:
            raise ValueError(f"predictions must be (samples, classes) each, got {stacked.shape[1:]}")
        received, num_rows = stacked.shape[0], stacked.shape[1]
        if self.mode == "central":
            clipped = [clip_payload(softmax(p, config.temperature), self.clip_norm, self.clip_mode)
                       for p in stacked]
            rng = None if self.seed is None else np.random.default_rng([self.seed, server_round])
            total = add_central_noise(np.sum(clipped, axis=0), self.noise_multiplier,
                                      self.norm_bound(num_rows), rng)
            realized = float(self.noise_multiplier)
        else:
            expected = received if num_expected is None else int(num_expected)
            total = stacked.sum(axis=0)
            realized = realized_noise_multiplier(self.noise_multiplier, expected, received)
        mean, keep = self.release(total / received, realized, received, config)
        return mean, realized, keep

    def release(
        self,
        noisy_mean: np.ndarray,
        realized: float,
        received: int,
        config: ConsensusConfig,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Post-process a noised mean into the released consensus (no privacy cost).

        The steps :meth:`combine` applies after the noise, shared with the clients of a
        Paillier secure consensus that decrypt a sum of distributed noise shares
        (:meth:`flhet_strategies.core.secure_consensus.SecureConsensusSpec.decode`):
        the :meth:`confident_rows` filter (``min_margin``, ``min_rows``), clamping onto
        the simplex (:func:`.postprocess.noisy_rows_to_probabilities`) and ERA.

        Parameters
        ----------
        noisy_mean : np.ndarray
            The noised sum over ``received``, ``(m, C)``.
        realized : float
            The noise multiplier the sum carries (:func:`.gaussian.realized_noise_multiplier`).
        received : int
            Payloads in the sum.
        config : ConsensusConfig
            The DS-FL rule (its ``era_temperature``).

        Returns
        -------
        tuple[np.ndarray, np.ndarray]
            float32 soft targets of the released rows and the boolean mask of those rows.
        """
        noisy_mean = np.asarray(noisy_mean, dtype=np.float64)
        if noisy_mean.ndim != 2 or not np.all(np.isfinite(noisy_mean)):
            raise ValueError(f"noisy_mean must be a finite (rows, classes) array, "
                             f"got shape {noisy_mean.shape}")
        if isinstance(received, bool) or int(received) != received or received < 1:
            raise ValueError(f"received must be a positive integer, got {received!r}")
        entry_std = realized * self.norm_bound(noisy_mean.shape[0]) / int(received)
        keep = self.confident_rows(noisy_mean, entry_std)
        mean = noisy_rows_to_probabilities(noisy_mean[keep])
        if config.era_temperature is not None and len(mean):
            mean = entropy_reduction(mean, config.era_temperature)
        return mean.astype(np.float32), keep

    def confident_rows(self, noisy_mean: np.ndarray, entry_std: float) -> np.ndarray:
        """Mask of rows whose top-1 beats the top-2 by ``min_margin`` noise stds
        (none if fewer than ``min_rows`` do).

        Parameters
        ----------
        noisy_mean : np.ndarray
            The noised mean, ``(m, C)``.
        entry_std : float
            Noise standard deviation of one entry of the mean.
        """
        if self.min_margin is None or noisy_mean.shape[1] < 2:
            return np.ones(len(noisy_mean), dtype=bool)
        top2 = np.sort(noisy_mean, axis=1)[:, -2:]
        keep = (top2[:, 1] - top2[:, 0]) > self.min_margin * math.sqrt(2.0) * entry_std
        if keep.sum() < min(self.min_rows, len(keep)):
            keep[:] = False
        return keep
