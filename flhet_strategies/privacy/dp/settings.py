"""Settings of client-level differential privacy on a weighted sum (Flower-free).

:class:`DpSettings` is the Gaussian mechanism any weighted-sum algorithm takes
(:class:`~flhet_strategies.privacy.dp.mechanism.DifferentialPrivacy`);
:class:`PrivateConsensus` adds the consensus' confident-row release filter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ... import wire
from .clipping import CLIP_MODES, payload_norm_bound

DP_MODES = ("central", "distributed")
"""Who adds the noise: the server to the clipped sum, or each client its share."""


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


@dataclass(frozen=True)
class DpSettings:
    """The Gaussian mechanism on a sum of clipped client contributions.

    Parameters
    ----------
    noise_multiplier : float
        ``z = sigma / S``: noise standard deviation on the sum over the clipping bound
        (Flower's convention; see
        :func:`flhet_strategies.privacy.dp.accounting.noise_multiplier_for_epsilon`).
    clip_norm : float (default: 1.0)
        The clipping parameter: ``S`` with ``"flat"``, the row bound ``r`` with
        ``"per-row"`` (then ``S = r sqrt(rows)``).
    mode : str (default: "central")
        ``"central"`` (the server clips and noises the sum) or ``"distributed"`` (each
        of the ``n`` sampled clients clips and adds ``N(0, (z S)^2 / n)``; the server
        only sums).
    clip_mode : str (default: "per-row")
        ``"flat"`` or ``"per-row"``.
    seed : int, optional
        Seed of the server's noise (central mode) for reproducible experiments; OS
        entropy when omitted. Each round draws from ``(seed, round)``.
    """

    noise_multiplier: float
    clip_norm: float = 1.0
    mode: str = "central"
    clip_mode: str = "per-row"
    seed: int | None = None

    def __post_init__(self) -> None:
        _positive("noise_multiplier", self.noise_multiplier)
        _positive("clip_norm", self.clip_norm)
        if self.mode not in DP_MODES:
            raise ValueError(f"mode must be one of {DP_MODES}, got {self.mode!r}")
        if self.clip_mode not in CLIP_MODES:
            raise ValueError(f"clip_mode must be one of {CLIP_MODES}, got {self.clip_mode!r}")

    def norm_bound(self, num_rows: int) -> float:
        """``S``, the L2 bound of one client's contribution of ``num_rows`` rows."""
        return payload_norm_bound(self.clip_norm, self.clip_mode, num_rows)

    def client_config(self, num_clients: int) -> dict[str, object]:
        """Config entries telling a distributed-DP client what to add."""
        return {wire.DP_NOISE_MULTIPLIER: float(self.noise_multiplier),
                wire.DP_CLIP_NORM: float(self.clip_norm), wire.DP_CLIP_MODE: self.clip_mode,
                wire.DP_NUM_CLIENTS: int(num_clients)}


@dataclass(frozen=True)
class PrivateConsensus(DpSettings):
    """Client-level DP of the DS-FL consensus: :class:`DpSettings` plus its release filter.

    The consensus is released through
    :class:`~flhet_strategies.privacy.dp.mechanism.DifferentialPrivacy` like any weighted
    sum; weights are equal and per-class votes off (both would need exact private
    counts). Rows whose noisy top class does not lead the runner-up by ``min_margin``
    noise standard deviations of that difference are withheld (post-processing, free),
    and nothing is released when fewer than ``min_rows`` rows pass: a client distilling
    jointly cycles the released rows through every private batch, so one or two rows
    would be fitted hundreds of times.

    Parameters
    ----------
    noise_multiplier, clip_norm, mode, clip_mode, seed
        As :class:`DpSettings`.
    min_margin : float or None (default: 2.0)
        The filter in noise standard deviations; ``None`` releases every row.
    min_rows : int (default: 10)
        Release nothing when fewer rows pass.
    """

    min_margin: float | None = 2.0
    min_rows: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.min_rows, bool) or not isinstance(self.min_rows, int) \
                or self.min_rows < 0:
            raise ValueError(f"min_rows must be a non-negative int, got {self.min_rows!r}")
        if self.min_margin is not None and not (math.isfinite(self.min_margin)
                                                and self.min_margin >= 0):
            raise ValueError(f"min_margin must be a non-negative number or None, "
                             f"got {self.min_margin!r}")


__all__ = ["DP_MODES", "DpSettings", "PrivateConsensus"]
