"""Secure logit consensus for Flower's compat API (``flwr.server.strategy``).

:class:`SecureConsensusCompat` wraps a
:class:`~flhet_strategies.compat_api.FedConsensusCompat` the way
:class:`~flhet_strategies.secure_consensus_strategy.SecureConsensus` wraps a
:class:`~flhet_strategies.message_api.FedConsensus`; both are thin shells over
:class:`~flhet_strategies.secure_consensus_server.SecureConsensusServer`, so they build
the same specs, check and multiply shares identically and never hold a private key.
Clients are ``NumPyClient`` s wrapped in
:class:`clients.secure_consensus_numpy_client.SecureConsensusNumPyClient`::

    inner = FedConsensusCompat(num_proxy=5000, num_classes=10, num_rounds=30)
    strategy = SecureConsensusCompat(inner, load_public_key("keys/paillier_public.bin"),
                                     max_examples=4096)
    ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=30))

On the wire
-----------
- ``FitIns``: ``Parameters`` hold the five arrays of :data:`SECURE_PLAN_ARRAY_KEYS`:
  the inner plan ``[proxy_indices, consensus_indices, consensus]`` with an *empty*
  ``consensus``, then ``encrypted_consensus`` (the previous round's encrypted sum) and
  ``sealed_consensus`` (the same consensus, decrypted by one client and sealed for the
  cohort); at most one of the last two is non-empty. The config carries the round's
  :class:`.SecureConsensusSpec` (``"secure-consensus-spec"``). A plain
  ``DistillationNumPyClient`` refuses five plan arrays, so it fails in ``fit`` instead of
  sending its predictions in clear.
- ``FitRes``: one ``uint8`` ndarray, the client's encrypted share; ``num_examples`` (its
  weight, also inside the encryption) and metrics. Anything else, plaintext
  ``[logits, class_counts]`` included, is rejected (logged, counted as a failure in the
  inner history) and never aggregated.
- Delegated decryption (``decryption="delegate"``, the default): the compat API has no
  side channel, so the request rides along with the evaluation. After round ``r``'s
  sum is made, one evaluated client (rotating by round) gets ``EvaluateIns`` whose
  ``Parameters`` are ``[encrypted_sum, consensus_indices]`` and whose config has
  ``"secure-decrypt-request": True`` and the spec; it decrypts, seals, and returns the
  seal as ``bytes`` in its evaluation metrics (``"sealed_consensus"``), which the
  wrapper removes before the inner strategy summarises the evaluation. Round ``r + 1``
  then ships the seal (tens of kilobytes) instead of the sum. When round ``r`` has no
  evaluation (``evaluate_every``, ``fraction_evaluate=0``) or the answer is missing or
  bad, round ``r + 1`` falls back to every client decrypting the sum. Give the inner
  strategy ``num_rounds`` so that nothing is decrypted after the last round.
"""

from __future__ import annotations

from logging import INFO

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
from flwr.server.strategy import Strategy
from phe import PaillierPublicKey

from .compat_api import FedConsensusCompat
from .consensus_server import NUM_EXAMPLES_KEY, REPLY_ARRAY_KEYS, ClientResult, client_id_of
from .core.distillation import PLAN_ARRAY_KEYS
from .core.secure_consensus import (
    DECRYPT_FAILED_METRIC,
    DECRYPT_REQUEST_KEY,
    ENCRYPTED_CONSENSUS_ARRAY,
    ENCRYPTED_CONTRIBUTION_ARRAY,
    SEALED_CONSENSUS_ARRAY,
    SPEC_CONFIG_KEY,
)
from .secure_consensus_server import DecryptRequest, SecureConsensusServer, SecureConsensusViews

SECURE_PLAN_ARRAY_KEYS = PLAN_ARRAY_KEYS + (ENCRYPTED_CONSENSUS_ARRAY, SEALED_CONSENSUS_ARRAY)
"""Order of the ``FitIns`` arrays of a secure round (absent ones are empty ``uint8``)."""

DECRYPT_ERROR_METRIC = "secure-decrypt-error"
"""Evaluation metric (str) of a client that could not decrypt the sum for the cohort."""

DECRYPT_ANSWER_METRICS = (SEALED_CONSENSUS_ARRAY, DECRYPT_ERROR_METRIC, DECRYPT_FAILED_METRIC)
"""Evaluation metrics of the delegated decryption, removed before the inner summary."""


def _named_reply(arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    """A ``FitRes``'s arrays by name, for the share checks (which reject all but one share)."""
    if len(arrays) == 1:
        return {ENCRYPTED_CONTRIBUTION_ARRAY: arrays[0]}
    if len(arrays) == len(REPLY_ARRAY_KEYS):   # a plaintext [logits, class_counts] reply
        return dict(zip(REPLY_ARRAY_KEYS, arrays))
    return {f"array_{i}": array for i, array in enumerate(arrays)}


class SecureConsensusCompat(SecureConsensusViews, Strategy):
    """Compat-API logit-consensus distillation where the server only sees ciphertexts.

    Parameters
    ----------
    strategy : FedConsensusCompat
        The inner strategy: sampling, plans, recipe, evaluation and history. Its
        consensus must be DS-FL (``mode="dsfl"``) and its weights sample counts or
        uniform (the clients weight their own shares).
    public_key : phe.PaillierPublicKey
        The key dealer's public key (at least 2048 bits). A private key or a
        ``KeyHolder`` is refused.
    max_examples : int
        Public bound on any client's number of training examples; it bounds the votes.
    probability_bits : int (default: 8)
        Quantization bits of a probability (error at most ``1 / (2 (2**bits - 1))``).
    vote_bits : int (default: 16)
        Most bits of an integer vote.
    decryption : str (default: "delegate")
        ``"delegate"``: one evaluated client per round decrypts the sum and seals the
        consensus for the cohort (see the module notes); ``"every_client"``: every
        client receives the encrypted sum and decrypts it.

    Raises
    ------
    TypeError
        If ``strategy`` is not a :class:`FedConsensusCompat` or the key is private.
    ValueError
        As :class:`.SecureConsensusServer`.
    """

    def __init__(
        self,
        strategy: FedConsensusCompat,
        public_key: PaillierPublicKey,
        *,
        max_examples: int,
        probability_bits: int = 8,
        vote_bits: int = 16,
        decryption: str = "delegate",
    ) -> None:
        super().__init__()
        if not isinstance(strategy, FedConsensusCompat):
            raise TypeError("SecureConsensusCompat wraps a FedConsensusCompat strategy, got "
                            f"{type(strategy).__name__}; for FedConsensus use SecureConsensus")
        if strategy.server.protocol.privacy is not None:
            raise ValueError(
                "SecureConsensusCompat does not support differential privacy yet (the compat "
                "client does not add noise shares before encrypting); use the Message API "
                "(SecureConsensus with PaillierConsensusMod and DpPredictionsMod)")
        self.strategy = strategy
        self.secure = SecureConsensusServer(
            strategy.server, public_key, max_examples=max_examples,
            probability_bits=probability_bits, vote_bits=vote_bits, decryption=decryption)
        self._pending: tuple[DecryptRequest, str] | None = None

    def __repr__(self) -> str:
        return f"SecureConsensusCompat({self.strategy!r}, key={self.secure.fingerprint})"

    # ------------------------------------------------------------------ training

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """No global model (the inner strategy's empty parameters); logs the settings."""
        self.secure.log_settings()
        return self.strategy.initialize_parameters(client_manager)

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        """The inner plan with the round's spec and the previous round's sum (or its seal)."""
        instructions = self.strategy.configure_fit(server_round, parameters, client_manager)
        if not instructions:
            return instructions
        sealed = None
        if self.secure.has_sum() and self.decryption == "delegate":
            sealed = self.secure.take_seal(server_round)
            if sealed is None:
                log(INFO, "round %s: no client decrypted the sum for the cohort during the "
                    "evaluation; every client decrypts it", server_round)
        spec, extra = self.secure.begin_round(server_round, len(instructions), sealed)
        inner = instructions[0][1]
        plan = dict(zip(PLAN_ARRAY_KEYS, parameters_to_ndarrays(inner.parameters)))
        plan.update(extra)
        arrays = [plan.get(key, np.zeros(0, dtype=np.uint8)) for key in SECURE_PLAN_ARRAY_KEYS]
        fit_ins = FitIns(ndarrays_to_parameters(arrays),
                         {**inner.config, SPEC_CONFIG_KEY: spec.to_json()})
        return [(proxy, fit_ins) for proxy, _ in instructions]

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Check every encrypted share and multiply the valid ones into the encrypted sum.

        Returns ``[encrypted_sum, consensus_indices]`` as the new parameters (what the
        server holds: ciphertexts only).
        """
        parsed = []
        for proxy, res in results:
            metrics = {**res.metrics, NUM_EXAMPLES_KEY: res.num_examples}
            try:
                arrays = parameters_to_ndarrays(res.parameters)
            except (ValueError, OSError, EOFError):
                arrays = []
            parsed.append(ClientResult(client_id_of(metrics, proxy.cid), _named_reply(arrays),
                                       metrics))
        arrays, metrics = self.secure.aggregate_train(server_round, parsed, len(failures))
        if arrays is None:
            return None, metrics
        return ndarrays_to_parameters([arrays[ENCRYPTED_CONSENSUS_ARRAY],
                                       arrays["consensus_indices"]]), metrics

    # ------------------------------------------------------------------ evaluation

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager
                           ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """The inner evaluation instructions; when delegating, one of them also asks its
        client to decrypt this round's sum and seal it for the next round's cohort."""
        instructions = self.strategy.configure_evaluate(server_round, parameters, client_manager)
        self._pending = None
        if not instructions or not self.secure.delegates_after(server_round):
            return instructions
        request = self.secure.decrypt_request(server_round + 1)
        chosen = request.pick([proxy.cid for proxy, _ in instructions])
        asked = []
        for proxy, ins in instructions:
            if proxy.cid == chosen:
                ins = EvaluateIns(
                    ndarrays_to_parameters([request.arrays[ENCRYPTED_CONSENSUS_ARRAY],
                                            request.arrays["consensus_indices"]]),
                    {**ins.config, DECRYPT_REQUEST_KEY: True,
                     SPEC_CONFIG_KEY: request.spec.to_json()})
            asked.append((proxy, ins))
        self._pending = (request, chosen)
        return asked

    def aggregate_evaluate(self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]],
                           failures: list) -> tuple[float | None, dict[str, Scalar]]:
        """The inner summary, after taking the sealed consensus out of the chosen reply."""
        if self._pending is not None:
            request, chosen = self._pending
            self._pending = None
            answer = next((res for proxy, res in results if proxy.cid == chosen), None)
            sealed, problem = None, None
            if answer is None:
                problem = "its evaluation failed or did not arrive"
            elif DECRYPT_ERROR_METRIC in answer.metrics:
                problem = str(answer.metrics[DECRYPT_ERROR_METRIC])
            elif isinstance(answer.metrics.get(SEALED_CONSENSUS_ARRAY), bytes):
                sealed = np.frombuffer(answer.metrics[SEALED_CONSENSUS_ARRAY], dtype=np.uint8)
            else:
                problem = (f"its evaluation metrics hold no '{SEALED_CONSENSUS_ARRAY}' bytes "
                           "(is the client wrapped in SecureConsensusNumPyClient?)")
            self.secure.receive_seal(request, chosen, sealed, problem, keep=True)
        cleaned = [(proxy, EvaluateRes(res.status, res.loss, res.num_examples,
                                       {k: v for k, v in res.metrics.items()
                                        if k not in DECRYPT_ANSWER_METRICS}))
                   for proxy, res in results]
        return self.strategy.aggregate_evaluate(server_round, cleaned, failures)

    def evaluate(self, server_round: int, parameters: Parameters
                 ) -> tuple[float, dict[str, Scalar]] | None:
        """No centralized evaluation: the server holds ciphertexts only."""
        return None


__all__ = ["DECRYPT_ERROR_METRIC", "SECURE_PLAN_ARRAY_KEYS", "SecureConsensusCompat"]
