"""Distributed DP for the logit consensus, compat face: a ``NumPyClient`` around a ``NumPyClient``.

:class:`DpPredictionsNumPyClient` does for ``ClientApp(client_fn=...)`` deployments what
:class:`clients.mods.dp_predictions.DpPredictionsMod` (``encoding="probabilities"``) does
for Message-API apps, with the same core step
(:func:`flhet_strategies.core.dp.prediction_noise.privatize_predictions`): its ``fit``
returns, instead of ``[logits, class_counts]``, the single array
``[noisy_probabilities]``: the wrapped client's softmax probabilities on the proxy
samples, clipped in L2, plus this client's noise share ``N(0, (z S)^2 / n)``. The label
histogram is exact private information and is not sent. The server
(:class:`flhet_strategies.compat_api.FedConsensusCompat` with
``PrivateConsensus(mode="distributed")``) sends ``z``, the clip, the clip mode and the
round's cohort size ``n`` in the fit config and sums the replies::

    client_fn = lambda context: DpPredictionsNumPyClient(
        DistillationNumPyClient(client, client_id, context)).to_client()
"""

from __future__ import annotations

import numpy as np
from flwr.client import NumPyClient

from flhet_strategies.core.dp.prediction_noise import (
    PredictionNoiseSettings,
    privatize_predictions,
)

NOISE_STD_METRIC = "dp-noise-std"
"""Fit metric: the standard deviation of the noise share this client added per entry."""


class DpPredictionsNumPyClient(NumPyClient):
    """Wrap a distillation ``NumPyClient`` so that its ``fit`` sends noisy clipped probabilities.

    Parameters
    ----------
    client : NumPyClient
        The wrapped client, e.g. a :class:`clients.numpy_client.DistillationNumPyClient`:
        its ``fit`` returns ``[logits, class_counts]`` (or ``[logits]``). ``evaluate``,
        ``get_parameters`` and ``get_properties`` are delegated unchanged.
    noise_multiplier, clip_norm, num_clients, clip_mode : optional
        Fallbacks for the fit-config keys ``"dp-noise-multiplier"``, ``"dp-clip-norm"``,
        ``"dp-num-clients"`` and ``"dp-clip-mode"`` (the server sends all four).
    rng : numpy.random.Generator, optional
        For tests only; by default every ``fit`` draws from a fresh OS-seeded generator,
        so clients in one simulation never share noise.

    Raises
    ------
    TypeError
        If ``client`` is not a ``NumPyClient``.
    ValueError
        If the fallbacks given are bad.
    """

    def __init__(
        self,
        client: NumPyClient,
        noise_multiplier: float | None = None,
        clip_norm: float | None = None,
        num_clients: int | None = None,
        clip_mode: str = "flat",
        rng: np.random.Generator | None = None,
    ) -> None:
        if not isinstance(client, NumPyClient):
            raise TypeError(f"client must be a NumPyClient, got {type(client).__name__}")
        if None not in (noise_multiplier, clip_norm, num_clients):   # validate now
            PredictionNoiseSettings(noise_multiplier, clip_norm, num_clients, clip_mode)
        self.client = client
        self.noise_multiplier = noise_multiplier
        self.clip_norm = clip_norm
        self.num_clients = num_clients
        self.clip_mode = clip_mode
        self.rng = rng

    def fit(self, parameters, config):
        """Train the wrapped client; return ``[noisy_probabilities]``.

        Raises
        ------
        ValueError
            If ``z``, the clip, the clip mode or ``n`` is missing or bad (before the
            wrapped client trains), or the wrapped client's reply holds no finite
            ``(samples, classes)`` logits (Flower reports it as the client's failure).
        """
        settings = PredictionNoiseSettings.from_config(
            config, self.noise_multiplier, self.clip_norm, self.num_clients, self.clip_mode,
            owner="DpPredictionsNumPyClient")
        reply, num_examples, metrics = self.client.fit(parameters, config)
        if len(reply) not in (1, 2):
            raise ValueError("the wrapped client must return [logits, class_counts], got "
                             f"{len(reply)} arrays")
        noisy = privatize_predictions(reply[0], settings, "probabilities", rng=self.rng)
        return [noisy.values], num_examples, {**metrics, NOISE_STD_METRIC: noisy.noise_std}

    def evaluate(self, parameters, config):
        """Delegate to the wrapped client."""
        return self.client.evaluate(parameters, config)

    def get_parameters(self, config):
        """Delegate to the wrapped client."""
        return self.client.get_parameters(config)

    def get_properties(self, config):
        """Delegate to the wrapped client."""
        return self.client.get_properties(config)


__all__ = ["NOISE_STD_METRIC", "DpPredictionsNumPyClient"]
