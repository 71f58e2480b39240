"""Distributed DP for model updates: one client's clipped update plus its noise share.

Pure numpy, no Flower import. The client step of distributed differential privacy for
FedAvg, shared by both client faces (the Message-API mod
:class:`clients.mods.dp_update_noise.DpUpdateNoiseMod` and the compat wrapper
:class:`clients.dp_update_numpy_client.DpUpdateNumPyClient`):

1. the update is what the client returns minus what it received, all arrays together;
2. it is clipped to L2 norm ``S`` over all its entries (:func:`.clipping.clip_by_l2_norm`
   on the flattened update, the norm Flower's ``compute_clip_model_update`` uses);
3. the client adds its share ``N(0, (z S)^2 / m)`` to every entry
   (:func:`.gaussian.add_noise_share`), ``m`` being the cohort size the server announced,
   so that the sum of the ``m`` replies carries ``N(0, (z S)^2)``;
4. it returns received + noisy clipped update, in the dtypes of its own arrays.

The server (``DpFedAvg(..., clipping="distributed")``) sends ``z``, ``S`` and ``m`` in the
train config under the keys of :mod:`.private_consensus` (:data:`UPDATE_NOISE_KEYS`) and
averages the replies as plain FedAvg does; the noise the weighted mean really carries is
:func:`flhet_strategies.privacy.round_budget.distributed_mean_noise_multiplier`.

The guarantee at ``z`` is for whoever sees only the aggregate (secure aggregation, or a
trusted aggregator that releases only the mean). Whoever sees one reply sees it with
noise multiplier ``z / sqrt(m)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .clipping import clip_by_l2_norm
from .gaussian import add_noise_share, noise_share_std
from .private_consensus import CLIP_NORM_KEY, NOISE_MULTIPLIER_KEY, NUM_CLIENTS_KEY

UPDATE_NOISE_KEYS = (NOISE_MULTIPLIER_KEY, CLIP_NORM_KEY, NUM_CLIENTS_KEY)
"""Train-config keys of distributed update noise: ``z``, ``S`` and the cohort size ``m``."""


def _positive_number(value: Any, key: str) -> float:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"'{key}' must be a positive finite number, got {value!r}")
    return float(value)


def _positive_count(value: Any, key: str) -> int:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or int(value) != value or value < 1:
        raise ValueError(f"'{key}' must be a positive integer, got {value!r}")
    return int(value)


def _config_value(config: Mapping[str, Any], key: str, default: Any, owner: str,
                  sender: str) -> Any:
    """``config[key]``, else ``default``; a ValueError naming ``key`` if both are missing."""
    value = config.get(key, default)
    if value is None:
        raise ValueError(f"'{key}' is neither in the train config nor given to {owner}; the "
                         f"server sends it with {sender}")
    return value


@dataclass(frozen=True)
class UpdateNoiseSettings:
    """The three numbers a client needs to add its share of the noise to its update.

    Parameters
    ----------
    noise_multiplier : float
        ``z``: the noise on the *sum* of the cohort's clipped updates is ``z * S``.
    clipping_norm : float
        ``S``, the L2 bound on the update.
    num_clients : int
        ``m``, the cohort size the noise is split over.

    Raises
    ------
    ValueError
        If a value is not positive and finite (``num_clients`` not a positive integer).
    """

    noise_multiplier: float
    clipping_norm: float
    num_clients: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_multiplier",
                           _positive_number(self.noise_multiplier, NOISE_MULTIPLIER_KEY))
        object.__setattr__(self, "clipping_norm",
                           _positive_number(self.clipping_norm, CLIP_NORM_KEY))
        object.__setattr__(self, "num_clients",
                           _positive_count(self.num_clients, NUM_CLIENTS_KEY))

    @property
    def share_std(self) -> float:
        """Standard deviation ``z S / sqrt(m)`` of this client's noise share."""
        return noise_share_std(self.noise_multiplier, self.clipping_norm, self.num_clients)

    def to_config(self) -> dict[str, float | int]:
        """The train-config entries the server sends (keys :data:`UPDATE_NOISE_KEYS`)."""
        return {NOISE_MULTIPLIER_KEY: self.noise_multiplier,
                CLIP_NORM_KEY: self.clipping_norm, NUM_CLIENTS_KEY: self.num_clients}

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any],
        noise_multiplier: float | None = None,
        clipping_norm: float | None = None,
        num_clients: int | None = None,
    ) -> "UpdateNoiseSettings":
        """Read the settings from a train config, falling back to the given defaults.

        Parameters
        ----------
        config : Mapping
            The train config (a Flower ``ConfigRecord`` or the compat ``fit`` config);
            its :data:`UPDATE_NOISE_KEYS` win over the defaults.
        noise_multiplier, clipping_norm, num_clients : optional
            Defaults for keys the server did not send.

        Raises
        ------
        ValueError
            Naming the key that is missing from both or has a bad value.
        """
        defaults = (noise_multiplier, clipping_norm, num_clients)
        return cls(*(_config_value(config, key, default, "the client",
                                   "DpFedAvg(..., clipping='distributed')")
                     for key, default in zip(UPDATE_NOISE_KEYS, defaults)))


def _float_arrays(arrays: Sequence[np.ndarray], what: str) -> list[np.ndarray]:
    out = []
    for i, array in enumerate(arrays):
        array = np.asarray(array)
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(
                f"{what} array {i} has dtype {array.dtype}: noise can only be added to "
                "floating-point parameters")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{what} array {i} contains NaN/Inf values")
        out.append(array)
    return out


def model_update(
    received: Sequence[np.ndarray], returned: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """``returned - received`` array by array (float64), after checking they match.

    Parameters
    ----------
    received : Sequence[np.ndarray]
        The global model the client was sent.
    returned : Sequence[np.ndarray]
        The client's trained model: as many arrays, same shapes, floating point.

    Raises
    ------
    ValueError
        If the lists differ in length or shapes, or hold non-float or non-finite arrays.
    """
    sent = _float_arrays(received, "received")
    trained = _float_arrays(returned, "returned")
    if len(sent) != len(trained):
        raise ValueError(f"the client returned {len(trained)} arrays for the {len(sent)} it "
                         "received")
    for i, (a, b) in enumerate(zip(sent, trained)):
        if a.shape != b.shape:
            raise ValueError(f"array {i}: returned shape {b.shape} != received shape {a.shape}")
    return [b.astype(np.float64) - a.astype(np.float64) for a, b in zip(sent, trained)]


def privatize_update(
    received: Sequence[np.ndarray],
    returned: Sequence[np.ndarray],
    settings: UpdateNoiseSettings,
    rng: np.random.Generator | None = None,
) -> list[np.ndarray]:
    """Received + the clipped update + this client's noise share ``N(0, (z S)^2 / m)``.

    Parameters
    ----------
    received : Sequence[np.ndarray]
        The global model the client was sent.
    returned : Sequence[np.ndarray]
        The client's trained model (same number and shapes of floating arrays).
    settings : UpdateNoiseSettings
        ``z``, ``S`` and ``m``.
    rng : numpy.random.Generator, optional
        For tests; by default a fresh OS-seeded generator per call.

    Returns
    -------
    list[np.ndarray]
        The arrays to send, each in the dtype and shape of ``returned``.
    """
    update = model_update(received, returned)
    flat = np.concatenate([u.ravel() for u in update]) if update else np.zeros(0)
    clipped = clip_by_l2_norm(flat, settings.clipping_norm)
    noisy = add_noise_share(clipped, settings.noise_multiplier, settings.clipping_norm,
                            settings.num_clients, rng)
    out, start = [], 0
    for base, trained in zip(received, returned):
        size = int(np.asarray(base).size)
        piece = noisy[start:start + size].reshape(np.shape(base))
        start += size
        out.append((np.asarray(base, dtype=np.float64) + piece).astype(np.asarray(trained).dtype))
    return out


__all__ = ["UPDATE_NOISE_KEYS", "UpdateNoiseSettings", "model_update", "privatize_update"]
