"""Client mod: differentially private prediction payloads (Message API).

:class:`DpPredictionsMod` wraps the train handler of
:func:`clients.client_app.distillation_client_app`. On every ``TRAIN`` reply it takes the
client's logits on the proxy samples (array ``"logits"`` of the reply's ``ArrayRecord``
``"reply"``), turns them into probabilities (softmax, temperature 1), clips them in L2
(:mod:`flhet_strategies.core.dp.clipping`) and adds the client's share
``N(0, (z S)^2 / n)`` of the Gaussian noise, so that the sum of ``n`` replies carries
``N(0, (z S)^2)`` (:mod:`flhet_strategies.core.dp.gaussian`), all in the core step
:func:`flhet_strategies.core.dp.prediction_noise.privatize_predictions` that the compat
wrapper :class:`clients.dp_predictions_numpy_client.DpPredictionsNumPyClient` shares.
The label histogram (``"class_counts"``) is exact private information and is dropped
unless asked for.

Encodings of the noisy reply
----------------------------
``"log-probabilities"`` (default) -- works with today's DS-FL server. The noisy row is
clamped to ``min_probability``, renormalised onto the simplex (post-processing of this
client's own release) and sent as ``"logits" = log q``. The server's DS-FL step at
temperature 1 computes ``softmax(log q) = q``, so its consensus is the weighted mean of
the clients' noisy distributions ``q_i`` (then entropy reduction, also post-processing).
The clamping is not linear, so the noise does **not** add up across clients: a server
that sees the replies sees each client with noise multiplier ``z / sqrt(n)``. Use it
with ``num_clients = 1`` (local DP, each reply carries the full ``z``), or account
``z / sqrt(n)``.

``"probabilities"`` -- for distributed DP proper: the unclamped noisy clipped
probabilities go out as array ``"noisy_probabilities"`` (``"logits"`` is removed, so a
server that does not know this encoding rejects the reply instead of misreading it).
The server must sum the replies linearly, through a secure sum or a DP-aware
aggregation, with public weights; the sum of ``n`` shares carries ``z``. Post-process
the sum with :func:`flhet_strategies.core.dp.noisy_rows_to_probabilities`.

Either way the reply gets a ``ConfigRecord`` ``"dp"`` describing what was done
(encoding, noise std, payload bound ``S``, ``n``, clip mode), for the server to check.

Parameters come from the train message's config record (keys ``dp-noise-multiplier``,
``dp-clip-norm``, ``dp-clip-mode``, ``dp-num-clients``, defined in
:mod:`flhet_strategies.core.dp.private_consensus`; the server knows the cohort size
``n``) and fall back to the mod's construction arguments. A ``FedConsensus`` built
with ``PrivateConsensus(mode="distributed")`` sends them every round.
"""

from __future__ import annotations

from logging import INFO

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.logger import log

from flhet_strategies.core.dp import CLIP_MODES
from flhet_strategies.core.dp.prediction_noise import (
    PREDICTION_ENCODINGS,
    PredictionNoiseSettings,
    privatize_predictions,
)
from flhet_strategies.core.dp.private_consensus import (
    CLIP_MODE_KEY,
    CLIP_NORM_KEY,
    NOISE_MULTIPLIER_KEY,
    NOISY_PROBABILITIES_ARRAY,
    NUM_CLIENTS_KEY,
)
from flhet_strategies.message_api import CONFIG_KEY, REPLY_KEY
from flhet_strategies.records import arrays_to_record, record_to_arrays

from .error_reply import error_reply as _error_reply

DP_RECORD_KEY = "dp"
"""Reply ``ConfigRecord`` describing the applied mechanism."""

ENCODINGS = PREDICTION_ENCODINGS


class DpPredictionsMod:
    """Clip and noise the proxy-set predictions of flhet's distillation replies.

    Parameters
    ----------
    noise_multiplier : float, optional
        ``z`` for the sum of the cohort's replies; the config key
        ``"dp-noise-multiplier"`` overrides it.
    clip_norm : float, optional
        Clipping parameter; ``"dp-clip-norm"`` overrides it. With flat clipping, values
        at or above ``sqrt(m)`` clip nothing (a probability payload of ``m`` rows has L2
        norm at most ``sqrt(m)``).
    num_clients : int (default: 1)
        ``n``, shares in the sum; ``"dp-num-clients"`` overrides it. 1 is local DP.
    clip_mode : str (default: "flat")
        ``"flat"`` (whole payload to norm ``S``) or ``"per-row"`` (each proxy sample's
        row to norm ``clip_norm``, so ``S = clip_norm * sqrt(m)``).
    encoding : str (default: "log-probabilities")
        ``"log-probabilities"`` or ``"probabilities"`` (see the module docstring).
    min_probability : float (default: 1e-6)
        Clamp floor of the log-probability encoding.
    keep_class_counts : bool (default: False)
        Send the exact label histogram too (it is not protected by the noise).
    rng : numpy.random.Generator, optional
        For tests only: a fixed generator. By default every reply draws from a fresh
        OS-seeded generator, so clients in one simulation never share noise.

    Examples
    --------
    ::

        app = distillation_client_app(factory, mods=[DpPredictionsMod(clip_norm=10.0)])
    """

    def __init__(
        self,
        noise_multiplier: float | None = None,
        clip_norm: float | None = None,
        num_clients: int = 1,
        clip_mode: str = "flat",
        encoding: str = "log-probabilities",
        min_probability: float = 1e-6,
        keep_class_counts: bool = False,
        rng: np.random.Generator | None = None,
    ) -> None:
        if clip_mode not in CLIP_MODES:
            raise ValueError(f"clip_mode must be one of {CLIP_MODES}, got {clip_mode!r}")
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
        if not 0.0 < min_probability < 1e-2:
            raise ValueError(f"min_probability must be in (0, 0.01), got {min_probability!r}")
        self.noise_multiplier = noise_multiplier
        self.clip_norm = clip_norm
        self.num_clients = num_clients
        self.clip_mode = clip_mode
        self.encoding = encoding
        self.min_probability = float(min_probability)
        self.keep_class_counts = bool(keep_class_counts)
        self.rng = rng

    def _parameters(self, msg: Message) -> PredictionNoiseSettings:
        config = msg.content.config_records.get(CONFIG_KEY, ConfigRecord())
        return PredictionNoiseSettings.from_config(
            config, self.noise_multiplier, self.clip_norm, self.num_clients, self.clip_mode,
            owner="DpPredictionsMod")

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        """Run the app, then privatize the predictions of a ``TRAIN`` reply.

        Parameters
        ----------
        msg : Message
            The message from the ServerApp.
        context : Context
            The node's context.
        call_next : ClientAppCallable
            The next mod or the ClientApp.

        Returns
        -------
        Message
            The reply with noisy predictions, the app's own error reply, or an error
            reply (``MOD_FAILED_PRECONDITION``) saying what was missing.
        """
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        try:
            settings = self._parameters(msg)
        except ValueError as err:
            return _error_reply(msg, str(err))
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        records = reply.content.array_records
        if REPLY_KEY not in records or "logits" not in records[REPLY_KEY]:
            return _error_reply(
                msg, f"DpPredictionsMod expects array 'logits' in the reply's ArrayRecord "
                f"'{REPLY_KEY}' (flhet distillation protocol); found {sorted(records)}")
        arrays = record_to_arrays(records[REPLY_KEY])
        logits = np.asarray(arrays.pop("logits"))
        try:
            noisy = privatize_predictions(logits, settings, self.encoding,
                                          self.min_probability, self.rng)
        except ValueError as err:
            return _error_reply(msg, f"DpPredictionsMod: {err}")
        arrays["logits" if self.encoding == "log-probabilities"
               else NOISY_PROBABILITIES_ARRAY] = noisy.values
        if not self.keep_class_counts:
            arrays.pop("class_counts", None)
        reply.content[REPLY_KEY] = arrays_to_record(arrays)
        reply.content[DP_RECORD_KEY] = ConfigRecord({
            "encoding": self.encoding, "noise-std": noisy.noise_std,
            "norm-bound": noisy.norm_bound, "noise-multiplier": settings.noise_multiplier,
            "num-clients": settings.num_clients, "clip-mode": settings.clip_mode,
        })
        log(INFO, "DpPredictionsMod: %s predictions clipped to L2 %.4g (%s), noise std %.4g",
            logits.shape, noisy.norm_bound, settings.clip_mode, noisy.noise_std)
        return reply


__all__ = [
    "CLIP_MODE_KEY",
    "CLIP_NORM_KEY",
    "DP_RECORD_KEY",
    "ENCODINGS",
    "NOISE_MULTIPLIER_KEY",
    "NOISY_PROBABILITIES_ARRAY",
    "NUM_CLIENTS_KEY",
    "DpPredictionsMod",
]
