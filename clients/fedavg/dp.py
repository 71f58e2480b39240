"""Distributed DP for FedAvg model updates, client side of both faces (the user's own app).

:class:`DpUpdateNoiseMod` (Message API) and :class:`DpUpdateNumPyClient` (compat) send the
received model plus the clipped update plus this client's noise share. Do not add
Flower's ``fixedclipping_mod``: the step clips. See docs/privacy_fedavg.md.
"""

from __future__ import annotations

from logging import INFO

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.logger import log

from flwr.client import NumPyClient

from flhet_strategies import wire
from flhet_strategies.privacy.dp.noise_share import NoiseShareSettings, privatize_update

from ..faces.steps import error_reply as _error_reply


def train_config(msg: Message) -> ConfigRecord:
    """The message's ConfigRecord holding the DP keys, else its only one, else empty."""
    records = msg.content.config_records
    for record in records.values():
        if any(key in record for key in (wire.DP_NOISE_MULTIPLIER, wire.DP_CLIP_NORM,
                                          wire.DP_NUM_CLIENTS)):
            return record
    if len(records) == 1:
        return next(iter(records.values()))
    return ConfigRecord()


class DpUpdateNoiseMod:
    """Clip the model update of a ``TRAIN`` reply and add this client's noise share.

    Parameters
    ----------
    noise_multiplier : float, optional
        ``z`` of the sum of the cohort's updates; the config key ``"dp-noise-multiplier"``
        overrides it.
    clipping_norm : float, optional
        ``S``, the L2 bound on the update; ``"dp-clip-norm"`` overrides it.
    num_clients : int, optional
        ``m``, the shares in the sum; ``"dp-num-clients"`` overrides it.
    rng : numpy.random.Generator, optional
        For tests only: a fixed generator. By default every reply draws from a fresh
        OS-seeded generator, so clients in one simulation never share noise.

    Examples
    --------
    ::

        app = ClientApp(mods=[DpUpdateNoiseMod()])   # all three values from the server
    """

    def __init__(
        self,
        noise_multiplier: float | None = None,
        clipping_norm: float | None = None,
        num_clients: int | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        if None not in (noise_multiplier, clipping_norm, num_clients):
            NoiseShareSettings(noise_multiplier, clipping_norm, num_clients)  # validate now
        self.noise_multiplier = noise_multiplier
        self.clipping_norm = clipping_norm
        self.num_clients = num_clients
        self.rng = rng

    def settings(self, msg: Message) -> NoiseShareSettings:
        """``z``, ``S`` and ``m`` for ``msg``: its train config, else the mod's arguments."""
        return NoiseShareSettings.from_config(
            train_config(msg), self.noise_multiplier, self.clipping_norm, self.num_clients,
            owner="DpUpdateNoiseMod")

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        """Run the app, then send received + clipped update + noise share.

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
            The privatized reply, the app's own error reply, or an error reply
            (``MOD_FAILED_PRECONDITION``) saying what was wrong.
        """
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        try:
            settings = self.settings(msg)
        except ValueError as err:
            return _error_reply(msg, f"DpUpdateNoiseMod: {err}")
        if len(msg.content.array_records) != 1:
            return _error_reply(msg, "DpUpdateNoiseMod expects exactly one ArrayRecord in the "
                                f"train message, found {sorted(msg.content.array_records)}")
        sent = next(iter(msg.content.array_records.values()))
        names, received = list(sent.keys()), sent.to_numpy_ndarrays()
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        if len(reply.content.array_records) != 1:
            return _error_reply(msg, "DpUpdateNoiseMod expects exactly one ArrayRecord in the "
                                f"reply, found {sorted(reply.content.array_records)}")
        key, returned = next(iter(reply.content.array_records.items()))
        if list(returned.keys()) != names:
            return _error_reply(msg, f"DpUpdateNoiseMod: the reply's arrays {list(returned)} "
                                f"are not the ones sent {names}")
        try:
            noisy = privatize_update(received, returned.to_numpy_ndarrays(), settings, self.rng)
        except ValueError as err:
            return _error_reply(msg, f"DpUpdateNoiseMod: {err}")
        reply.content[key] = ArrayRecord({name: Array(np.asarray(array))
                                          for name, array in zip(names, noisy)})
        log(INFO, "DpUpdateNoiseMod: update clipped to L2 %.4g, noise share std %.4g "
            "(z=%s, %d clients)", settings.clip_norm, settings.share_std(1),
            settings.noise_multiplier, settings.num_clients)
        return reply


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
            NoiseShareSettings(noise_multiplier, clipping_norm, num_clients)  # validate now
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
        settings = NoiseShareSettings.from_config(
            config, self.noise_multiplier, self.clipping_norm, self.num_clients,
            owner="DpUpdateNumPyClient")
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


__all__ = ["DpUpdateNoiseMod", "DpUpdateNumPyClient", "train_config"]
