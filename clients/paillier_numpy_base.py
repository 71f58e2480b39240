"""Shared shell of flhet's compat-API Paillier wrappers (a ``NumPyClient`` around a ``NumPyClient``).

:class:`PaillierNumPyBase` holds what
:class:`~clients.paillier_numpy_client.PaillierNumPyClient` (secure FedAvg) and
:class:`~clients.secure_consensus_numpy_client.SecureConsensusNumPyClient` (secure
consensus) do alike: validate the wrapped client and the Paillier settings
(:class:`~clients.mods.paillier_base.PaillierClientSettings`), build the key holder's
client steps on first use, delegate ``get_properties``/``get_parameters``, and refuse a
``fit`` without a secure-sum spec unless its phase may go in clear.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.client import NumPyClient

from flhet_strategies.consensus_server import PHASE_KEY

from .mods.paillier_base import PaillierClientSettings


class PaillierNumPyBase(PaillierClientSettings, NumPyClient):
    """Base of a ``NumPyClient`` wrapper whose replies leave it only Paillier-encrypted.

    Parameters
    ----------
    client : NumPyClient
        The wrapped client.
    key_path : str or Path, optional
        The private key file (see :class:`PaillierClientSettings`).
    context : flwr.app.Context, optional
        The node's context, to find the key file in its config.
    **settings
        The keyword options of :class:`PaillierClientSettings` (``key_holder``,
        ``node_config_key``, ``workers``, ``decrypt_workers``, ``short_exponent``,
        ``require_secure``, ``plaintext_phases``).

    Raises
    ------
    TypeError
        If ``client`` is not a ``NumPyClient``; otherwise as
        :class:`PaillierClientSettings`.

    Notes
    -----
    A subclass sets :attr:`sum_client_type` (a class taking ``holder, *, workers,
    decrypt_workers, short_exponent``) and, for the refusal message,
    :attr:`plaintext_what` and :attr:`server_wrapper`.
    """

    sum_client_type: type = type(None)
    """The key holder's client steps (e.g. ``ModelSumClient``, ``ConsensusSumClient``)."""

    plaintext_what = "replies"
    """What would leave in clear without a spec (for the refusal message)."""

    server_wrapper = "the secure server strategy"
    """The server wrapper that asks for a secure sum (for the refusal message)."""

    def __init__(self, client: NumPyClient, key_path: str | Path | None = None, *,
                 context: Context | None = None, **settings) -> None:
        if not isinstance(client, NumPyClient):
            raise TypeError(f"client must be a NumPyClient, got {type(client).__name__}")
        PaillierClientSettings.__init__(self, key_path, **settings)
        self.client = client
        self._context = context
        self._sum_client = None

    def sum_client(self):
        """This client's :attr:`sum_client_type` instance (the key is loaded on first use)."""
        if self._sum_client is None:
            self._sum_client = self.sum_client_type(
                self.key_holder_for(self._context), workers=self.workers,
                decrypt_workers=self.decrypt_workers, short_exponent=self.short_exponent)
        return self._sum_client

    def get_properties(self, config):
        """Delegate to the wrapped client."""
        return self.client.get_properties(config)

    def get_parameters(self, config):
        """Delegate to the wrapped client."""
        return self.client.get_parameters(config)

    def check_plaintext_allowed(self, config, spec_key: str) -> None:
        """Raise ``ValueError`` unless a ``fit`` without ``spec_key`` may answer in clear.

        Parameters
        ----------
        config : dict
            The fit config (its ``"flhet-phase"`` names the phase, default ``"main"``).
        spec_key : str
            The config key of the secure-sum spec the server did not send.
        """
        phase = str(config.get(PHASE_KEY, "main"))
        if not self.allows_plaintext(phase):
            raise ValueError(
                f"{type(self).__name__}: the server did not ask for a secure sum (no "
                f"'{spec_key}' in the fit config); refusing to send plaintext "
                f"{self.plaintext_what} (phase {phase!r}). Wrap the server strategy in "
                f"{self.server_wrapper}, or list the phase in plaintext_phases.")


__all__ = ["PaillierNumPyBase"]
