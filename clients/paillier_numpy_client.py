"""Compat-API client side of a secure FedAvg: a ``NumPyClient`` wrapping any ``NumPyClient``.

:class:`PaillierNumPyClient` is the client half of
:class:`~flhet_strategies.secure_fedavg_compat.SecureFedAvgCompat`, as
:class:`clients.mods.paillier_fedavg.PaillierFedAvgMod` is of the Message-API face; both
delegate to :class:`~flhet_strategies.core.secure_sum.model_client.ModelSumClient`. In
``fit`` it decrypts the relayed encrypted sum into the global model's ndarrays (round 1:
the public initial model passes unchanged), calls the wrapped client's ``fit``, and
returns one ``uint8`` ndarray, the encrypted share of the trained weights weighted by
``num_examples``; ``evaluate`` decrypts and evaluates. See
:mod:`flhet_strategies.secure_fedavg` for the protocol.
"""

from __future__ import annotations

from collections.abc import Collection
from logging import WARNING
from pathlib import Path

import numpy as np
from flwr.app import Context
from flwr.client import NumPyClient
from flwr.common.logger import log

from flhet_strategies.consensus_server import PHASE_KEY
from flhet_strategies.core.secure_sum import KeyHolder
from flhet_strategies.core.secure_sum.model_client import ModelSumClient
from flhet_strategies.core.secure_sum.model_updates import (
    CLIPPED_METRIC,
    ENCRYPTED_FLAG_KEY,
    SPEC_CONFIG_KEY,
    SecureModelSpec,
)

from .mods.paillier_base import KEY_PATH_NODE_CONFIG, PaillierClientSettings


class PaillierNumPyClient(PaillierClientSettings, NumPyClient):
    """Wrap a ``NumPyClient`` so that its weights leave it only Paillier-encrypted.

    Parameters
    ----------
    client : NumPyClient
        The wrapped client (any model, any framework).
    key_path : str or Path, optional
        The private key file (from a key dealer). If omitted, the node config (then the
        run config) entry ``node_config_key`` of ``context`` names it.
    key_holder : KeyHolder, optional
        The key itself instead of a file.
    context : flwr.app.Context, optional
        The node's context, to find the key file in its config.
    node_config_key : str (default: "paillier-key-path")
        Config key of the key file path.
    workers : int (default: 1)
        Threads computing Paillier randomness while the wrapped client trains.
    decrypt_workers : int, optional
        Threads decrypting the sum (default: every core this process may use).
    short_exponent : bool (default: True)
        Damgard-Jurik-Nielsen short-exponent randomness; False uses ``r**n``.
    require_secure : bool (default: True)
        Raise in ``fit`` when the server did not ask for a secure sum, so that plaintext
        weights never leave the client by mistake.
    plaintext_phases : Collection[str] (default: ())
        Phases (fit config ``"flhet-phase"``) allowed in clear anyway.

    Notes
    -----
    ``get_parameters`` is delegated: it is only called when the server has no initial
    parameters, which :class:`SecureFedAvgCompat` refuses.

    Examples
    --------
    >>> def client_fn(context):                                         # doctest: +SKIP
    ...     return PaillierNumPyClient(MyClient(...), context=context).to_client()
    """

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        client: NumPyClient,
        key_path: str | Path | None = None,
        *,
        key_holder: KeyHolder | None = None,
        context: Context | None = None,
        node_config_key: str = KEY_PATH_NODE_CONFIG,
        workers: int = 1,
        decrypt_workers: int | None = None,
        short_exponent: bool = True,
        require_secure: bool = True,
        plaintext_phases: Collection[str] = (),
    ) -> None:
        if not isinstance(client, NumPyClient):
            raise TypeError(f"client must be a NumPyClient, got {type(client).__name__}")
        self._init_paillier_settings(key_path, key_holder, node_config_key, workers,
                                     decrypt_workers, short_exponent, require_secure,
                                     plaintext_phases)
        self.client = client
        self._context = context
        self._model_client: ModelSumClient | None = None

    def __repr__(self) -> str:
        return f"PaillierNumPyClient({type(self.client).__name__})"

    def model_client(self) -> ModelSumClient:
        """This client's :class:`.ModelSumClient` (the key is loaded on first use)."""
        if self._model_client is None:
            holder = self.key_holder_for(self._context)
            self._model_client = ModelSumClient(
                holder, workers=self.workers, decrypt_workers=self.decrypt_workers,
                short_exponent=self.short_exponent)
        return self._model_client

    def get_properties(self, config):
        """Delegate to the wrapped client."""
        return self.client.get_properties(config)

    def get_parameters(self, config):
        """Delegate to the wrapped client (the initial model only; see the class notes)."""
        return self.client.get_parameters(config)

    def fit(self, parameters, config):
        """Decrypt the global model, train the wrapped client, return its encrypted share.

        Returns
        -------
        tuple
            ``([share], num_examples, metrics)``: one ``uint8`` ndarray, the wrapped
            client's ``num_examples``, and its metrics plus ``"secure-clipped-values"``.

        Raises
        ------
        ValueError
            If the server did not ask for a secure sum (and the phase is not allowed in
            clear), the sum does not decrypt, or the trained model does not fit the spec.
        """
        spec = self._spec(config)
        if spec is None:
            phase = str(config.get(PHASE_KEY, "main"))
            if not self.allows_plaintext(phase):
                raise ValueError(
                    "PaillierNumPyClient: the server did not ask for a secure sum (no "
                    f"'{SPEC_CONFIG_KEY}' in the fit config); refusing to send plaintext "
                    f"weights (phase {phase!r}). Wrap the server strategy in "
                    "SecureFedAvgCompat, or list the phase in plaintext_phases.")
            return self.client.fit(parameters, config)
        model_client = self.model_client()
        model_client.prepare(spec)            # randomness computes while the client trains
        arrays = self._global_model(spec, parameters, config)
        trained, num_examples, metrics = self.client.fit(arrays, config)
        share = model_client.encrypt(spec, trained, num_examples)
        if share.num_clipped:
            log(WARNING, "PaillierNumPyClient: clipped %s of %s values to +-%s",
                share.num_clipped, spec.num_params, spec.clip_bound)
        return [share.payload], num_examples, {**metrics,
                                               CLIPPED_METRIC: float(share.num_clipped)}

    def evaluate(self, parameters, config):
        """Decrypt the global model and let the wrapped client evaluate it."""
        spec = self._spec(config)
        if spec is not None:
            parameters = self._global_model(spec, parameters, config)
        return self.client.evaluate(parameters, config)

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _spec(config) -> SecureModelSpec | None:
        if SPEC_CONFIG_KEY not in config:
            return None
        return SecureModelSpec.from_json(str(config[SPEC_CONFIG_KEY]))

    def _global_model(self, spec: SecureModelSpec, parameters, config) -> list[np.ndarray]:
        if not config.get(ENCRYPTED_FLAG_KEY, False):
            return spec.check_arrays(parameters)       # the public initial model
        if len(parameters) != 1:
            raise ValueError(
                f"the encrypted global model must be one uint8 ndarray, got {len(parameters)}")
        return self.model_client().decrypt(spec, parameters[0]).arrays


__all__ = ["PaillierNumPyClient"]
