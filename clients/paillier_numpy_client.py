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

from logging import WARNING

import numpy as np
from flwr.common.logger import log

from flhet_strategies.core.secure_sum.model_client import ModelSumClient
from flhet_strategies.core.secure_sum.model_updates import (
    CLIPPED_METRIC,
    ENCRYPTED_FLAG_KEY,
    SPEC_CONFIG_KEY,
    SecureModelSpec,
)

from .paillier_numpy_base import PaillierNumPyBase


class PaillierNumPyClient(PaillierNumPyBase):
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

    sum_client_type = ModelSumClient
    plaintext_what = "weights"
    server_wrapper = "SecureFedAvgCompat"

    def __repr__(self) -> str:
        return f"PaillierNumPyClient({type(self.client).__name__})"

    def model_client(self) -> ModelSumClient:
        """This client's :class:`.ModelSumClient` (the key is loaded on first use)."""
        return self.sum_client()

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
            self.check_plaintext_allowed(config, SPEC_CONFIG_KEY)
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
