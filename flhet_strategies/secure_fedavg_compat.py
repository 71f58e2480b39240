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
from logging import INFO, WARNING

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
from phe import PaillierPublicKey

from .core.secure_sum.model_server import ModelSumServer
from .core.secure_sum.model_updates import ENCRYPTED_FLAG_KEY, SPEC_CONFIG_KEY, SecureModelSpec


class SecureFedAvgCompat(Strategy):
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

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        strategy: FedAvg,
        public_key: PaillierPublicKey,
        *,
        clip_bound: float,
        bits: int = 16,
        weighting: str = "sample_count",
        max_examples: int | None = None,
        vote_bits: int = 16,
    ) -> None:
        super().__init__()
        if not isinstance(strategy, FedAvg):
            raise TypeError(
                "SecureFedAvgCompat wraps a flwr.server.strategy.FedAvg, got "
                f"{type(strategy).__name__}; for flwr.serverapp.strategy.FedAvg use "
                "SecureFedAvg")
        if type(strategy).aggregate_fit is not FedAvg.aggregate_fit:
            raise TypeError(
                f"{type(strategy).__name__} overrides FedAvg's aggregation; a secure sum "
                "computes FedAvg's weighted mean only")
        self.strategy = strategy
        self.server = ModelSumServer(public_key, clip_bound=clip_bound, bits=bits,
                                     weighting=weighting, max_examples=max_examples,
                                     vote_bits=vote_bits)
        self._specs: dict[int, SecureModelSpec] = {}
        self._encrypted: Parameters | None = None

    def __repr__(self) -> str:
        return f"SecureFedAvgCompat({self.strategy!r}, key={self.server.fingerprint})"

    @property
    def public_key(self) -> PaillierPublicKey:
        """The public key shares are encrypted under."""
        return self.server.public_key

    @property
    def history(self) -> list[dict]:
        """Per round: bytes down/up, accepted and rejected clients, failures, ciphertexts."""
        return self.server.history

    @property
    def encrypted_model(self) -> np.ndarray | None:
        """The latest encrypted sum (``uint8``), or None before the first aggregation."""
        if self._encrypted is None:
            return None
        return parameters_to_ndarrays(self._encrypted)[0]

    def spec(self, max_summands: int = 1) -> SecureModelSpec:
        """The spec of a round of ``max_summands`` clients (after the initial parameters)."""
        return self.server.spec(max_summands)

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
        settings = self.server.settings
        log(INFO, "Paillier secure FedAvg (compat): key %s, clip bound %s, %s-bit values, %s "
            "weights", self.server.fingerprint, settings["clip_bound"], settings["bits"],
            settings["weighting"])
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
        spec = self.server.spec(len(instructions))
        if not self._is_encrypted(parameters):
            spec.check_arrays(parameters_to_ndarrays(parameters))   # public initial model
        self._specs[server_round] = spec
        sized = sum(len(tensor) for tensor in parameters.tensors)
        self.server.record(server_round, bytes_down=sized * len(instructions),
                           cohort=len(instructions))
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
        spec = self._specs.pop(server_round, None) or self.server.spec(max(1, len(results)))
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
        outcome = self.server.aggregate(spec, shares)
        rejected.update(outcome.rejected)
        for cid, reason in sorted(rejected.items()):
            log(WARNING, "round %s: share of client %s rejected: %s", server_round, cid, reason)
        metrics: dict[str, Scalar] = {}
        if outcome.accepted and self.strategy.fit_metrics_aggregation_fn is not None:
            metrics = self.strategy.fit_metrics_aggregation_fn(
                [(by_id[cid].num_examples, by_id[cid].metrics) for cid in outcome.accepted])
        self.server.record(
            server_round, bytes_up=bytes_up, accepted=outcome.accepted, rejected=rejected,
            num_failures=len(failures),
            num_ciphertexts=spec.layout(self.public_key.n.bit_length() - 1).num_ciphertexts,
            seconds_aggregate=time.perf_counter() - start)
        if outcome.encrypted_sum is None:
            log(WARNING, "round %s: no share accepted; the global model stays", server_round)
            return None, metrics
        self._encrypted = ndarrays_to_parameters([outcome.encrypted_sum])
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
