"""FedAvg through a Paillier secure sum, compat API (``flwr.server.strategy``).

The compat face of :class:`~flhet_strategies.secure_fedavg.SecureFedAvg`, for
``ServerApp(server_fn=...)`` deployments whose clients are ``NumPyClient`` s wrapped in
:class:`clients.paillier_numpy_client.PaillierNumPyClient`::

    inner = FedAvg(fraction_fit=1.0, initial_parameters=ndarrays_to_parameters(init))
    strategy = SecureFedAvgCompat(inner, load_public_key("keys/paillier_public.bin"),
                                  clip_bound=4.0, bits=16, max_examples=10_000)
    ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=10))

Both faces share one core (:mod:`flhet_strategies.core.secure_sum.model_server` on the
server, :mod:`~flhet_strategies.core.secure_sum.model_client` on the clients), so they
encode, check and sum identically; see :mod:`flhet_strategies.secure_fedavg` for the
protocol, who decrypts (the clients, from the relayed encrypted sum) and why clients
encrypt their weights rather than updates.

On the wire: after round 1 the ``Parameters`` the server holds and sends are one
``uint8`` ndarray, the encrypted sum, and the fit/evaluate config says so
(``"secure-fedavg-encrypted": True``); every ``FitRes`` must carry one ``uint8``
ndarray, the client's encrypted share, with ``num_examples`` as FedAvg's weight (also
inside the encryption). The inner FedAvg must be given ``initial_parameters`` (the
public initial model fixes the structure). Its ``evaluate_fn`` runs on the initial
model only: afterwards the server holds ciphertexts; evaluate on the clients.
"""

from __future__ import annotations

import time
from logging import WARNING

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.logger import log
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg, Strategy

from .core.secure_sum.model_updates import ENCRYPTED_FLAG_KEY, SPEC_CONFIG_KEY, SecureModelSpec
from .secure_fedavg_base import SecureFedAvgRounds


class SecureFedAvgCompat(SecureFedAvgRounds, Strategy):
    """Compat-API FedAvg where the server only multiplies Paillier ciphertexts.

    Parameters
    ----------
    strategy : flwr.server.strategy.FedAvg
        The inner strategy: sampling, configs, metric aggregation; it must have
        ``initial_parameters``. Its aggregation must be FedAvg's weighted mean
        (FedAvg, FedProx); server-side optimizers are refused.
    public_key : phe.PaillierPublicKey
        The key dealer's public key (at least 2048 bits); a private key is refused.
    clip_bound : float
        ``B``: clients clip every weight to ``[-B, B]``.
    bits : int (default: 16)
        Quantization bits per value.
    weighting : str (default: "sample_count")
        ``"sample_count"`` (``FitRes.num_examples``, inside the encryption) or ``"uniform"``.
    max_examples : int, optional
        Public bound on any client's ``num_examples``; required with ``"sample_count"``.
    vote_bits : int (default: 16)
        Most bits of an integer weight.
    """

    inner_type = FedAvg
    aggregate_method = "aggregate_fit"
    api = "flwr.server.strategy"
    other_api = "flwr.serverapp.strategy"
    other_face = "SecureFedAvg"

    @property
    def encrypted_model(self) -> np.ndarray | None:
        """The latest encrypted sum (``uint8``), or None before the first aggregation."""
        if self._encrypted is None:
            return None
        return parameters_to_ndarrays(self._encrypted)[0]

    # ------------------------------------------------------------------ setup

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """The inner strategy's (public) initial parameters, which fix the model structure.

        Raises
        ------
        ValueError
            If the inner strategy has none (a client's parameters would leave it in
            clear).
        """
        parameters = self.strategy.initialize_parameters(client_manager)
        if parameters is None:
            raise ValueError(
                "SecureFedAvgCompat needs FedAvg(initial_parameters=...): the model "
                "structure comes from the public initial model")
        self.server.set_structure(parameters_to_ndarrays(parameters))
        self._log_settings("Paillier secure FedAvg (compat)")
        return parameters

    def _is_encrypted(self, parameters: Parameters) -> bool:
        return self._encrypted is not None and (
            parameters is self._encrypted or parameters.tensors == self._encrypted.tensors)

    def _with_spec(self, parameters: Parameters, config: dict, spec: SecureModelSpec) -> dict:
        return {**config, SPEC_CONFIG_KEY: spec.to_json(),
                ENCRYPTED_FLAG_KEY: self._is_encrypted(parameters)}

    # ------------------------------------------------------------------ training

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        """The inner strategy's instructions, each with the round's spec in its config."""
        instructions = self.strategy.configure_fit(server_round, parameters, client_manager)
        if not instructions:
            return instructions
        initial = None if self._is_encrypted(parameters) else parameters_to_ndarrays(parameters)
        spec = self._open_round(server_round, len(instructions),
                                sum(len(tensor) for tensor in parameters.tensors), initial)
        return [(proxy, FitIns(ins.parameters, self._with_spec(ins.parameters, ins.config, spec)))
                for proxy, ins in instructions]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Check every encrypted share and multiply the valid ones into the encrypted sum."""
        start = time.perf_counter()
        spec = self._round_spec(server_round, len(results))
        if failures and not self.strategy.accept_failures:
            log(WARNING, "round %s: %s failures and accept_failures=False; no aggregation",
                server_round, len(failures))
            return None, {}
        shares: list[tuple[str, object]] = []
        rejected: dict[str, str] = {}
        by_id: dict[str, FitRes] = {}
        bytes_up = 0
        for proxy, res in results:
            bytes_up += sum(len(tensor) for tensor in res.parameters.tensors)
            try:
                arrays = parameters_to_ndarrays(res.parameters)
            except (ValueError, OSError, EOFError) as error:
                rejected[proxy.cid] = f"the parameters are not ndarrays: {error}"
                continue
            if len(arrays) != 1:
                rejected[proxy.cid] = (
                    f"expected one encrypted share, got {len(arrays)} arrays (plaintext "
                    "weights are discarded, never aggregated); the client is not wrapped "
                    "in PaillierNumPyClient")
                continue
            shares.append((proxy.cid, arrays[0]))
            by_id[proxy.cid] = res
        shares.sort(key=lambda share: share[0])
        outcome = self._sum_shares(server_round, spec, shares, rejected, "client")
        metrics: dict[str, Scalar] = {}
        if outcome.accepted and self.strategy.fit_metrics_aggregation_fn is not None:
            metrics = self.strategy.fit_metrics_aggregation_fn(
                [(by_id[cid].num_examples, by_id[cid].metrics) for cid in outcome.accepted])
        encrypted_sum = self._close_round(server_round, spec, outcome, rejected,
                                          bytes_up=bytes_up, num_failures=len(failures),
                                          started=start)
        if encrypted_sum is None:
            return None, metrics
        self._encrypted = ndarrays_to_parameters([encrypted_sum])
        return self._encrypted, metrics

    # ------------------------------------------------------------------ evaluation

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager
                           ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """The inner strategy's evaluation instructions, each with the spec."""
        instructions = self.strategy.configure_evaluate(server_round, parameters,
                                                        client_manager)
        if not instructions:
            return instructions
        spec = self.server.spec(len(instructions))
        sized = sum(len(tensor) for tensor in parameters.tensors)
        self.server.record(server_round, bytes_down_evaluate=sized * len(instructions))
        return [(proxy, EvaluateIns(ins.parameters,
                                    self._with_spec(ins.parameters, ins.config, spec)))
                for proxy, ins in instructions]

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        """The inner strategy's aggregation (the clients evaluated the decrypted model)."""
        return self.strategy.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round: int, parameters: Parameters
                 ) -> tuple[float, dict[str, Scalar]] | None:
        """The inner ``evaluate_fn`` on the public initial model; None once encrypted."""
        if self._is_encrypted(parameters):
            return None
        return self.strategy.evaluate(server_round, parameters)


__all__ = ["SecureFedAvgCompat"]
