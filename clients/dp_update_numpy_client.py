"""Distributed DP for FedAvg model updates, compat face: a ``NumPyClient`` around a ``NumPyClient``.

:class:`DpUpdateNumPyClient` does for ``ClientApp(client_fn=...)`` deployments what
:class:`clients.mods.dp_update_noise.DpUpdateNoiseMod` does for Message-API apps, with
the same core step (:func:`flhet_strategies.core.dp.update_noise.privatize_update`): its
``fit`` returns the received parameters plus the wrapped client's update, clipped to L2
``S``, plus this client's noise share ``N(0, (z S)^2 / m)``. The server
(:class:`flhet_strategies.dp_fedavg_compat.DpFedAvgCompat` with ``clipping="distributed"``)
sends ``z``, ``S`` and the round's cohort size ``m`` in the fit config::

    client_fn = lambda context: DpUpdateNumPyClient(MyClient(...)).to_client()

Do not also use Flower's ``fixedclipping_mod``: the wrapper clips.
"""

from __future__ import annotations

import numpy as np
from flwr.client import NumPyClient

from flhet_strategies.core.dp.update_noise import UpdateNoiseSettings, privatize_update


class DpUpdateNumPyClient(NumPyClient):
    """Wrap a ``NumPyClient`` so that its ``fit`` sends a clipped, noised update.

    Parameters
    ----------
    client : NumPyClient
        The wrapped client; ``evaluate``, ``get_parameters`` and ``get_properties`` are
        delegated unchanged.
    noise_multiplier, clipping_norm, num_clients : optional
        Fallbacks for the fit-config keys ``"dp-noise-multiplier"``, ``"dp-clip-norm"``
        and ``"dp-num-clients"``.
    rng : numpy.random.Generator, optional
        For tests only; by default every ``fit`` draws from a fresh OS-seeded generator.

    Raises
    ------
    TypeError
        If ``client`` is not a ``NumPyClient``.
    """

    def __init__(
        self,
        client: NumPyClient,
        noise_multiplier: float | None = None,
        clipping_norm: float | None = None,
        num_clients: int | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        if not isinstance(client, NumPyClient):
            raise TypeError(f"client must be a NumPyClient, got {type(client).__name__}")
        if None not in (noise_multiplier, clipping_norm, num_clients):
            UpdateNoiseSettings(noise_multiplier, clipping_norm, num_clients)  # validate now
        self.client = client
        self.noise_multiplier = noise_multiplier
        self.clipping_norm = clipping_norm
        self.num_clients = num_clients
        self.rng = rng

    def fit(self, parameters, config):
        """Train the wrapped client; return received + clipped update + noise share.

        Raises
        ------
        ValueError
            If ``z``, ``S`` or ``m`` is missing or bad, or the returned arrays do not
            match the received ones (Flower reports it as the client's failure).
        """
        settings = UpdateNoiseSettings.from_config(
            config, self.noise_multiplier, self.clipping_norm, self.num_clients)
        received = [np.array(p, copy=True) for p in parameters]
        returned, num_examples, metrics = self.client.fit(parameters, config)
        return privatize_update(received, returned, settings, self.rng), num_examples, metrics

    def evaluate(self, parameters, config):
        """Delegate to the wrapped client."""
        return self.client.evaluate(parameters, config)

    def get_parameters(self, config):
        """Delegate to the wrapped client."""
        return self.client.get_parameters(config)

    def get_properties(self, config):
        """Delegate to the wrapped client."""
        return self.client.get_properties(config)


__all__ = ["DpUpdateNumPyClient"]
