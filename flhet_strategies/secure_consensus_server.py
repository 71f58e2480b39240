"""API-neutral server logic of a Paillier secure logit consensus.

:class:`SecureConsensusServer` is to the secure strategies what
:class:`~flhet_strategies.consensus_server.ConsensusServer` is to the plain ones: the
Message-API wrapper :class:`~flhet_strategies.secure_consensus_strategy.SecureConsensus`
and the compat wrapper :class:`~flhet_strategies.secure_consensus_compat.SecureConsensusCompat`
only translate between their Flower types and the plain dicts of numpy arrays used here.
Per round it

- builds the round's :class:`.SecureConsensusSpec` and what the wrappers attach to the
  inner strategy's plan (:meth:`SecureConsensusServer.begin_round`: the previous round's
  encrypted sum, or the consensus one client sealed for the cohort);
- plans, and takes the answers of, the delegated decryption
  (:meth:`~SecureConsensusServer.decrypt_request`,
  :meth:`~SecureConsensusServer.receive_seal`);
- checks every client's encrypted share and multiplies the valid ones
  (:meth:`~SecureConsensusServer.aggregate_train`); bad shares go, with their reason,
  into the inner strategy's history as rejections.

It holds the public key only and never decrypts.

Distributed differential privacy: when the inner strategy's protocol has
``privacy=PrivateConsensus(mode="distributed")``, the round's spec carries it (signed
noisy probabilities in a public bound, uniform weights, no votes: see
:mod:`flhet_strategies.core.secure_consensus`), the inner strategy already sends the
noise parameters (:meth:`.PrivateConsensus.client_config` of the cohort) with the train
config, and every sum is composed into the inner strategy's :class:`.RoundBudget` with
the realized noise multiplier (shares summed vs cohort), through
:meth:`.ConsensusServer.record_release`, so each history entry carries ``epsilon`` and
``delta``. Central DP is refused: the server would have to see the sum it noises.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from logging import INFO, WARNING

import numpy as np
from flwr.common.logger import log
from phe import PaillierPublicKey

from .consensus_server import NUM_EXAMPLES_KEY, ClientResult, ConsensusServer, privacy_metrics
from .core.distillation import AggregationOutcome
from .core.dp.gaussian import realized_noise_multiplier
from .core.dp.private_consensus import NOISY_PROBABILITIES_ARRAY
from .core.payload import client_sort_key
from .core.secure_consensus import (
    DECRYPT_FAILED_METRIC,
    ENCRYPTED_CONSENSUS_ARRAY,
    ENCRYPTED_CONTRIBUTION_ARRAY,
    SEALED_CONSENSUS_ARRAY,
    SecureConsensusSpec,
)
from .core.secure_sum import (
    CiphertextAggregator,
    EncryptedVector,
    SecureSumError,
    key_fingerprint,
    validate_public_key,
)
from .core.secure_sum.aggregate import one_client_share
from .core.weighting import sample_count_weights, uniform_weights

_WEIGHTINGS = {sample_count_weights: "sample_count", uniform_weights: "uniform"}

DECRYPTION_MODES = ("delegate", "every_client")
"""Who decrypts the sum: one client per round for the cohort, or every client."""


@dataclass(frozen=True)
class DecryptRequest:
    """A request to one client to decrypt the latest sum and seal it for the cohort.

    Parameters
    ----------
    for_round : int
        The round whose clients will receive the sealed consensus.
    arrays : dict[str, np.ndarray]
        ``"encrypted_consensus"`` (the sum, ``uint8``) and ``"consensus_indices"``.
    spec : SecureConsensusSpec
        The spec to decode the sum with.
    started : float
        ``time.perf_counter()`` when the request was made.
    """

    for_round: int
    arrays: dict[str, np.ndarray]
    spec: SecureConsensusSpec
    started: float

    def pick(self, nodes: Sequence):
        """The node (of ``nodes``, in sorted order) that decrypts: rotates by round."""
        ordered = sorted(nodes)
        if not ordered:
            raise ValueError("no node to send the decryption request to")
        return ordered[self.for_round % len(ordered)]

    @property
    def nbytes(self) -> int:
        """Bytes of the request's arrays."""
        return int(sum(array.nbytes for array in self.arrays.values()))


class SecureConsensusServer:
    """Public-key-only round logic of a secure consensus, shared by both Flower faces.

    Parameters
    ----------
    server : ConsensusServer
        The inner strategy's server: proxy sampling, recipe, rounds and history. Its
        consensus must be DS-FL (``mode="dsfl"``) and its weights sample counts or
        uniform (the clients weight their own shares).
    public_key : phe.PaillierPublicKey
        The key dealer's public key (at least 2048 bits). A private key or a
        ``KeyHolder`` is refused.
    max_examples : int
        Public bound on any client's number of training examples; it bounds the votes.
    probability_bits : int (default: 8)
        Quantization bits of a probability.
    vote_bits : int (default: 16)
        Most bits of an integer vote.
    decryption : str (default: "delegate")
        ``"delegate"`` (one client per round decrypts and seals the consensus for the
        cohort) or ``"every_client"``.

    With distributed DP in the inner protocol (``privacy``), clients are weighted
    equally whatever the weight function (as without encryption).

    Raises
    ------
    ValueError
        If ``decryption`` is unknown, the consensus is not DS-FL, the weights are not
        ones the clients can compute, the bit budget does not fit, or the inner
        protocol has central DP.
    TypeError
        If ``public_key`` is not a Paillier public key.
    """

    def __init__(
        self,
        server: ConsensusServer,
        public_key: PaillierPublicKey,
        *,
        max_examples: int,
        probability_bits: int = 8,
        vote_bits: int = 16,
        decryption: str = "delegate",
    ) -> None:
        if decryption not in DECRYPTION_MODES:
            raise ValueError(f"decryption must be one of {DECRYPTION_MODES}, got {decryption!r}")
        self.server = server
        self.public_key = validate_public_key(public_key)
        protocol = server.protocol
        self.privacy = protocol.privacy
        if self.privacy is not None and self.privacy.mode != "distributed":
            raise ValueError(
                f"a secure consensus supports distributed DP only, got mode "
                f"{self.privacy.mode!r}: central DP needs the server to see the plaintext "
                "sum it noises; use PrivateConsensus(mode='distributed')")
        weighting = ("uniform" if self.privacy is not None
                     else _WEIGHTINGS.get(protocol.weight_fn))
        if weighting is None:
            raise ValueError(
                "a secure consensus needs weights the clients compute themselves: the inner "
                "strategy's weight_fn must be sample_count_weights or uniform_weights, got "
                f"{getattr(protocol.weight_fn, '__name__', protocol.weight_fn)!r}")
        self.max_examples = int(max_examples)
        self.probability_bits = int(probability_bits)
        self.vote_bits = int(vote_bits)
        self.weighting = weighting
        self.decryption = decryption
        self.fingerprint = key_fingerprint(self.public_key).hex()
        self.spec(1, 1)  # validates the consensus mode and the bit budget now
        self._specs: dict[int, SecureConsensusSpec] = {}
        self._encrypted_sum: np.ndarray | None = None
        self._sum_indices = np.zeros(0, dtype=np.int64)
        self._sum_round: int | None = None
        self._last_spec: SecureConsensusSpec | None = None
        self._query_bytes_up: dict[int, int] = {}
        self._decrypted_by: dict[int, str] = {}
        self._early_seal: tuple[int, np.ndarray, np.ndarray] | None = None

    def __repr__(self) -> str:
        return f"SecureConsensusServer(key={self.fingerprint}, decryption={self.decryption!r})"

    @property
    def encrypted_consensus(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The latest ``(consensus_indices, encrypted sum as uint8)``; ``None`` before any."""
        return self._sum_indices, self._encrypted_sum

    def spec(self, server_round: int, max_summands: int) -> SecureConsensusSpec:
        """The secure consensus spec of a round with ``max_summands`` sampled clients."""
        protocol = self.server.protocol
        return SecureConsensusSpec.for_consensus(
            protocol.consensus_config, len(protocol.proxy_indices(server_round)),
            protocol.num_classes, max_summands, weighting=self.weighting,
            max_examples=self.max_examples, probability_bits=self.probability_bits,
            vote_bits=self.vote_bits, key_fingerprint=self.fingerprint,
            privacy=self.privacy)

    def log_settings(self) -> None:
        """Log the secure-sum settings (a strategy's ``summary``)."""
        log(INFO, "\t├──> Paillier secure consensus: key %s, %s weights, %s-bit "
            "probabilities, votes up to %s bits, decryption %s", self.fingerprint,
            self.weighting, self.probability_bits, self.vote_bits, self.decryption)
        if self.privacy is not None:
            log(INFO, "\t├──> distributed DP inside the sum: noise multiplier %s, clip %s "
                "(%s)", self.privacy.noise_multiplier, self.privacy.clip_norm,
                self.privacy.clip_mode)

    # ------------------------------------------------------------------ training plan

    def begin_round(self, server_round: int, num_clients: int,
                    sealed: np.ndarray | None = None
                    ) -> tuple[SecureConsensusSpec, dict[str, np.ndarray]]:
        """The round's spec and the arrays to put into every client's plan.

        The arrays replace the inner plan's ``consensus`` by an empty one (a client that
        cannot decrypt fails loudly instead of training without targets) and add the
        previous round's sum: ``"sealed_consensus"`` if ``sealed`` (one client decrypted
        it for the cohort), else ``"encrypted_consensus"``. Records the attached bytes
        (and those of a delegated decryption) in the inner history.

        Parameters
        ----------
        server_round : int
            The round.
        num_clients : int
            Clients sampled (the spec's ``max_summands``).
        sealed : np.ndarray, optional
            The consensus a client sealed for this round (``uint8``).
        """
        spec = self.spec(server_round, num_clients)
        self._specs[int(server_round)] = spec
        extra = {"consensus_indices": self._sum_indices,
                 "consensus": np.zeros((0, spec.num_classes), dtype=np.float32)}
        query_bytes_down = 0
        if self._encrypted_sum is not None:
            if sealed is not None:
                extra[SEALED_CONSENSUS_ARRAY] = np.asarray(sealed, dtype=np.uint8)
                query_bytes_down = self._encrypted_sum.nbytes + self._sum_indices.nbytes
            else:
                extra[ENCRYPTED_CONSENSUS_ARRAY] = self._encrypted_sum
            self._decrypted_by[int(server_round)] = (
                "delegated" if sealed is not None else "every_client")
        attached = sum(value.nbytes for key, value in extra.items() if key != "consensus")
        # The inner strategy counted the plan it built; add what the wrapper attached.
        self.server.history.start_round(server_round,
                                        attached * num_clients + query_bytes_down)
        return spec, extra

    # ------------------------------------------------------------------ delegated decryption

    def has_sum(self) -> bool:
        """Whether there is an encrypted sum the next round's clients need."""
        return self._encrypted_sum is not None

    def delegates_after(self, server_round: int) -> bool:
        """Whether to ask a client, during ``server_round``'s evaluation, to decrypt the
        sum that round made (delegated decryption, not after the last round)."""
        num_rounds = self.server.num_rounds
        last_round = num_rounds is not None and server_round >= num_rounds
        return (self.decryption == "delegate" and not last_round
                and self._sum_round == server_round and self._last_spec is not None)

    def decrypt_request(self, for_round: int,
                        spec: SecureConsensusSpec | None = None) -> DecryptRequest:
        """A request to decrypt the latest sum for the clients of ``for_round``.

        Raises
        ------
        ValueError
            If there is no sum yet.
        """
        if self._encrypted_sum is None:
            raise ValueError("there is no encrypted sum to decrypt yet")
        spec = spec or self._last_spec or self.spec(for_round, 1)
        return DecryptRequest(
            for_round=int(for_round),
            arrays={ENCRYPTED_CONSENSUS_ARRAY: self._encrypted_sum,
                    "consensus_indices": self._sum_indices},
            spec=spec, started=time.perf_counter())

    def receive_seal(self, request: DecryptRequest, node, sealed: np.ndarray | None,
                     problem: str | None = None, *, keep: bool = False) -> np.ndarray | None:
        """Check the answer to ``request``; return the sealed consensus or ``None`` (logged).

        Parameters
        ----------
        request : DecryptRequest
            What was asked.
        node : object
            Who was asked (for the log).
        sealed : np.ndarray, optional
            The answer's sealed consensus.
        problem : str, optional
            Why there is no usable answer (no reply, the client's error).
        keep : bool (default: False)
            Keep the seal for :meth:`take_seal` (an answer that arrived with an
            evaluation, before the round it is for); without a usable seal, drop any
            kept one.
        """
        if problem is None:
            if sealed is None:
                problem = f"the answer holds no '{SEALED_CONSENSUS_ARRAY}'"
            else:
                sealed = np.asarray(sealed)
                if sealed.dtype != np.uint8 or sealed.ndim != 1:
                    problem = f"the answer holds no 1-D uint8 '{SEALED_CONSENSUS_ARRAY}'"
        if problem is not None:
            log(WARNING, "round %s: node %s did not decrypt the consensus for the cohort (%s); "
                "every client decrypts it instead", request.for_round, node, problem)
            if keep:
                self._early_seal = None
            return None
        self._query_bytes_up[request.for_round] = int(sealed.nbytes)
        log(INFO, "round %s: node %s decrypted and sealed the consensus for the cohort "
            "(%.2f s)", request.for_round, node, time.perf_counter() - request.started)
        if keep:
            self._early_seal = (request.for_round,
                                request.arrays["consensus_indices"], sealed)
        return sealed

    def take_seal(self, server_round: int) -> np.ndarray | None:
        """The seal a client made during the previous round's evaluation, if it fits."""
        early, self._early_seal = self._early_seal, None
        if early is None or early[0] != server_round or \
                not np.array_equal(early[1], self._sum_indices):
            return None
        return early[2]

    # ------------------------------------------------------------------ aggregation

    def aggregate_train(self, server_round: int, results: Sequence[ClientResult],
                        failures: int) -> tuple[dict[str, np.ndarray] | None, dict[str, float]]:
        """Check every encrypted share and multiply the valid ones into the encrypted sum.

        Parameters
        ----------
        server_round : int
            The round.
        results : Sequence[ClientResult]
            The replies, with their named arrays as received (a valid one holds
            ``"encrypted_contribution"`` only) and metrics (``num-examples``).
        failures : int
            Clients that sent no reply or an error.

        Returns
        -------
        tuple
            ``{"encrypted_consensus", "consensus_indices"}`` or ``None`` when no share
            was accepted, and the round metrics (``num-accepted``, ``num-rejected``,
            ``num-decrypt-failed``, mean ``train_loss``/``kd_loss`` of the accepted).
        """
        if self.server.is_refused(server_round):
            return None, {}
        spec = self._specs.pop(int(server_round), None) or self.spec(server_round,
                                                                      max(1, len(results)))
        layout = spec.layout(self.public_key.n.bit_length() - 1)
        bytes_up, decrypt_failed = 0, 0
        shares: list[tuple[str, EncryptedVector, Mapping]] = []
        rejected: dict[str, str] = {}
        for result in results:
            bytes_up += int(sum(np.asarray(a).nbytes for a in result.arrays.values()))
            decrypt_failed += int(float(result.metrics.get(DECRYPT_FAILED_METRIC, 0) or 0) > 0)
            try:
                vector = self._check_share(result.arrays, result.metrics, layout)
                shares.append((result.client_id, vector, result.metrics))
            except (SecureSumError, ValueError) as error:
                rejected[result.client_id] = str(error)
        shares.sort(key=lambda share: client_sort_key(share[0]))
        aggregator = CiphertextAggregator(self.public_key)
        accepted: list[str] = []
        for client_id, vector, _ in shares:
            try:
                aggregator.add(vector)
                accepted.append(client_id)
            except SecureSumError as error:
                rejected[client_id] = str(error)
        if decrypt_failed:
            log(WARNING, "round %s: %s client(s) could not decrypt the consensus they "
                "received (see their logs); they trained without it", server_round,
                decrypt_failed)
        weights = self._weights([s for s in shares if s[0] in accepted])
        bytes_up += self._query_bytes_up.pop(int(server_round), 0)
        outcome = AggregationOutcome(consensus=None, accepted=accepted, rejected=rejected,
                                     weights=weights, bytes_up=bytes_up)
        history = self.server.history
        history.record_train(server_round, outcome, failures)
        entry = next(e for e in history.rounds if e["round"] == server_round)
        entry["consensus_decryption"] = self._decrypted_by.pop(int(server_round), None)
        metrics = {"num-accepted": float(len(accepted)),
                   "num-rejected": float(len(rejected) + failures),
                   "num-decrypt-failed": float(decrypt_failed)}
        for key in ("train_loss", "kd_loss"):
            values = [float(m[key]) for cid, _, m in shares if cid in accepted and key in m]
            if values:
                metrics[key] = float(np.mean(values))
        if not accepted:
            return None, metrics
        if self.privacy is not None:
            realized = realized_noise_multiplier(self.privacy.noise_multiplier,
                                                 spec.max_summands, len(accepted))
            metrics.update(privacy_metrics(self.server.record_release(server_round, realized)))
        self._encrypted_sum = aggregator.result().to_array()
        self._sum_indices = self.server.protocol.proxy_indices(server_round)
        self._sum_round, self._last_spec = int(server_round), spec
        log(INFO, "round %s: encrypted consensus of %s clients (%s ciphertexts, %.1f KiB)",
            server_round, len(accepted), layout.num_ciphertexts, self._encrypted_sum.nbytes / 1024)
        return {ENCRYPTED_CONSENSUS_ARRAY: self._encrypted_sum,
                "consensus_indices": self._sum_indices}, metrics

    def _check_share(self, arrays: Mapping[str, np.ndarray], metrics: Mapping,
                     layout) -> EncryptedVector:
        if {"logits", "class_counts", NOISY_PROBABILITIES_ARRAY} & set(arrays):
            raise ValueError(
                "the reply carries plaintext predictions or class counts (discarded, never "
                "aggregated): the client does not encrypt its share (it runs neither "
                "PaillierConsensusMod nor SecureConsensusNumPyClient)")
        if ENCRYPTED_CONTRIBUTION_ARRAY not in arrays:
            raise ValueError(
                f"the reply has no '{ENCRYPTED_CONTRIBUTION_ARRAY}' array; found "
                f"{sorted(arrays)}")
        num_examples = metrics.get(NUM_EXAMPLES_KEY, 0)
        if isinstance(num_examples, bool) or not isinstance(num_examples, (int, float)) \
                or int(num_examples) != num_examples or num_examples <= 0:
            raise ValueError(f"num-examples must be a positive integer, got {num_examples!r}")
        return one_client_share(np.asarray(arrays[ENCRYPTED_CONTRIBUTION_ARRAY]),
                                self.public_key, layout)

    def _weights(self, shares: list[tuple[str, EncryptedVector, Mapping]]) -> dict[str, float]:
        if not shares:
            return {}
        if self.weighting == "uniform":
            return {cid: 1.0 / len(shares) for cid, _, _ in shares}
        counts = np.array([float(m[NUM_EXAMPLES_KEY]) for _, _, m in shares])
        return {cid: float(w) for (cid, _, _), w in zip(shares, counts / counts.sum())}


class SecureConsensusViews:
    """What both Flower faces of a secure consensus expose of their state (a mixin).

    A subclass sets ``strategy`` (the inner strategy, which has ``server`` and
    ``history``) and ``secure`` (its :class:`SecureConsensusServer`).
    """

    strategy: object
    secure: SecureConsensusServer

    @property
    def server(self) -> ConsensusServer:
        """The inner strategy's :class:`~flhet_strategies.consensus_server.ConsensusServer`."""
        return self.strategy.server

    @property
    def public_key(self) -> PaillierPublicKey:
        """The public key shares are encrypted under."""
        return self.secure.public_key

    @property
    def decryption(self) -> str:
        """``"delegate"`` or ``"every_client"``."""
        return self.secure.decryption

    @property
    def history(self) -> list[dict]:
        """The inner strategy's per-round history.

        Each entry also holds ``consensus_decryption``: how the consensus the round's
        clients received was decrypted (``"delegated"``, ``"every_client"``, or ``None``
        in a round without one). ``weights`` are the client weights ``w_i``; per-class
        votes stay inside the encryption.
        """
        return self.strategy.history

    @property
    def encrypted_consensus(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The latest ``(consensus_indices, encrypted sum as uint8)``; ``None`` before any."""
        return self.secure.encrypted_consensus

    def spec(self, server_round: int, max_summands: int) -> SecureConsensusSpec:
        """The secure consensus spec of a round with ``max_summands`` sampled clients."""
        return self.secure.spec(server_round, max_summands)


__all__ = ["DECRYPTION_MODES", "DecryptRequest", "SecureConsensusServer", "SecureConsensusViews"]
