"""Server half of a secure logit consensus: a wrapper around :class:`FedConsensus`.

:class:`SecureConsensus` composes around a :class:`~flhet_strategies.message_api.FedConsensus`
the way Flower's ``DifferentialPrivacyServerSideFixedClipping(FedAvg(...))`` composes
around FedAvg. Its clients run :class:`clients.mods.paillier_consensus.PaillierConsensusMod`.
Each round:

1. ``configure_train``: the inner strategy samples nodes and builds the plan; the wrapper
   adds the round's :class:`.SecureConsensusSpec` (train config
   ``"secure-consensus-spec"``) and, from the second round on, the previous round's
   consensus in a form the server cannot read: by default one client (rotating each
   round) has decrypted the sum and sealed the consensus for the cohort under a key
   derived from the Paillier private key (plan array ``"sealed_consensus"``; one
   decryption per round instead of one per client). That request travels with the
   previous round's evaluation requests, so the decryption overlaps the evaluation. If that
   client fails, or with ``decryption="every_client"``, the plan carries the encrypted
   sum itself (``"encrypted_consensus"``) and every client decrypts it. Either way the
   ``consensus_indices`` travel in clear and ``consensus`` is empty, so a client without
   the mod fails loudly instead of training without targets.
2. ``aggregate_train``: every reply must hold one encrypted share under the announced
   public key and layout (array ``"encrypted_contribution"``). Shares that are missing,
   malformed, under another key, of another layout, pre-summed, or that come with
   plaintext logits are rejected with a log line and counted as failures, in the inner
   strategy's ``history``; the others are multiplied together
   (:class:`.CiphertextAggregator`, public key only). Clients that dropped out are
   simply not in the sum, whose header carries how many are.

The wrapper never decrypts and holds no private key; the consensus exists in plaintext
only on the clients. Evaluation is the inner strategy's (the decryption request that
rides along is set aside before the inner strategy sees the replies).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from phe import PaillierPublicKey

from .consensus_server import NUM_EXAMPLES_KEY, client_id_of
from .core.distillation import AggregationOutcome
from .core.payload import client_sort_key
from .core.secure_consensus import (
    DECRYPT_FAILED_METRIC,
    DECRYPT_REPLY_KEY,
    DECRYPT_REQUEST_KEY,
    ENCRYPTED_CONSENSUS_ARRAY,
    ENCRYPTED_CONTRIBUTION_ARRAY,
    SEALED_CONSENSUS_ARRAY,
    SPEC_CONFIG_KEY,
    SecureConsensusSpec,
)
from .core.secure_sum import (
    CiphertextAggregator,
    EncryptedVector,
    SecureSumError,
    key_fingerprint,
    validate_public_key,
)
from .core.weighting import sample_count_weights, uniform_weights
from .message_api import CONFIG_KEY, METRICS_KEY, PLAN_KEY, REPLY_KEY, FedConsensus
from .records import arrays_to_record

_WEIGHTINGS = {sample_count_weights: "sample_count", uniform_weights: "uniform"}

DECRYPTION_MODES = ("delegate", "every_client")
"""Who decrypts the sum: one client per round for the cohort, or every client."""


class SecureConsensus(Strategy):
    """Logit-consensus distillation where the server only ever sees ciphertexts.

    Parameters
    ----------
    strategy : FedConsensus
        The inner strategy: sampling, plans, recipe, evaluation and history. Its
        consensus must be DS-FL (``mode="dsfl"``) and its weights sample counts or
        uniform (the clients weight their own shares).
    public_key : phe.PaillierPublicKey
        The key dealer's public key (at least 2048 bits). A private key or a
        ``KeyHolder`` is refused.
    max_examples : int
        Public bound on any client's number of training examples; it bounds the votes
        (see :meth:`.SecureConsensusSpec.for_consensus`).
    probability_bits : int (default: 8)
        Quantization bits of a probability (error at most ``1 / (2 (2**bits - 1))``).
    vote_bits : int (default: 16)
        Most bits of an integer vote; votes are exact when ``max_examples`` allows.
    decryption : str (default: "delegate")
        ``"delegate"``: one client (rotating) decrypts each sum and seals the consensus
        for the cohort (a ``TRAIN`` message holding ``"secure-decrypt-request"``, which
        the client's mod answers; one decryption per round). The request rides along
        with the round's evaluation requests, so the decryption overlaps the evaluation;
        without an evaluation it is sent before the next round's plans. If it fails, the
        round falls back to ``"every_client"``: every client receives the encrypted sum
        and decrypts it.
    decrypt_timeout : float (default: 300)
        Seconds to wait for the delegated decryption.

    Examples
    --------
    ::

        public_key = load_public_key("keys/paillier_public.bin")
        strategy = SecureConsensus(FedConsensus(num_proxy=5000, num_classes=10),
                                   public_key, max_examples=4096)
        strategy.start(grid=grid, num_rounds=30)
    """

    def __init__(
        self,
        strategy: FedConsensus,
        public_key: PaillierPublicKey,
        *,
        max_examples: int,
        probability_bits: int = 8,
        vote_bits: int = 16,
        decryption: str = "delegate",
        decrypt_timeout: float = 300.0,
    ) -> None:
        super().__init__()
        if decryption not in DECRYPTION_MODES:
            raise ValueError(f"decryption must be one of {DECRYPTION_MODES}, got {decryption!r}")
        if not decrypt_timeout > 0:
            raise ValueError(f"decrypt_timeout must be positive, got {decrypt_timeout!r}")
        if not isinstance(strategy, FedConsensus):
            raise TypeError(
                f"SecureConsensus wraps a FedConsensus strategy, got {type(strategy).__name__}")
        self.strategy = strategy
        self.public_key = validate_public_key(public_key)
        protocol = strategy.server.protocol
        weighting = _WEIGHTINGS.get(protocol.weight_fn)
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
        self.decrypt_timeout = float(decrypt_timeout)
        self._fingerprint = key_fingerprint(self.public_key).hex()
        self.spec(1, 1)  # validates the consensus mode and the bit budget now
        self._specs: dict[int, SecureConsensusSpec] = {}
        self._encrypted_sum: np.ndarray | None = None
        self._sum_indices = np.zeros(0, dtype=np.int64)
        self._query_bytes_up: dict[int, int] = {}
        self._decrypted_by: dict[int, str] = {}
        self._sum_round: int | None = None
        self._last_spec: SecureConsensusSpec | None = None
        self._pending_request: tuple | None = None
        self._early_seal: tuple | None = None

    def __repr__(self) -> str:
        return f"SecureConsensus({type(self.strategy).__name__}, key={self._fingerprint})"

    # ------------------------------------------------------------------ delegation

    @property
    def server(self):
        """The inner strategy's :class:`~flhet_strategies.consensus_server.ConsensusServer`."""
        return self.strategy.server

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
        return self._sum_indices, self._encrypted_sum

    def spec(self, server_round: int, max_summands: int) -> SecureConsensusSpec:
        """The secure consensus spec of a round with ``max_summands`` sampled clients."""
        protocol = self.strategy.server.protocol
        return SecureConsensusSpec.for_consensus(
            protocol.consensus_config, len(protocol.proxy_indices(server_round)),
            protocol.num_classes, max_summands, weighting=self.weighting,
            max_examples=self.max_examples, probability_bits=self.probability_bits,
            vote_bits=self.vote_bits, key_fingerprint=self._fingerprint)

    def summary(self) -> None:
        """Log the secure-sum settings, then the inner strategy's."""
        log(INFO, "\t├──> Paillier secure consensus: key %s, %s weights, %s-bit "
            "probabilities, votes up to %s bits", self._fingerprint, self.weighting,
            self.probability_bits, self.vote_bits)
        self.strategy.summary()

    def start(self, grid: Grid, initial_arrays: ArrayRecord | None = None, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
              ) -> Result:
        """Run ``num_rounds`` rounds (see ``flwr.serverapp.strategy.Strategy.start``).

        The result's ``arrays`` hold the final *encrypted* consensus.
        """
        self.strategy.server.num_rounds = num_rounds
        return super().start(grid, initial_arrays or ArrayRecord(), num_rounds, timeout,
                             train_config, evaluate_config, evaluate_fn)

    # ------------------------------------------------------------------ training

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """The inner plan plus the round's spec and the previous round's encrypted sum."""
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        if not messages:
            return messages
        spec = self.spec(server_round, len(messages))
        self._specs[server_round] = spec
        extra = {"consensus_indices": self._sum_indices,
                 "consensus": np.zeros((0, spec.num_classes), dtype=np.float32)}
        query_bytes_down = 0
        if self._encrypted_sum is not None:
            sealed = None
            if self.decryption == "delegate":
                sealed = self._take_early_seal(server_round)
                if sealed is None:   # no evaluation to overlap with: ask now, and wait
                    nodes = sorted(msg.metadata.dst_node_id for msg in messages)
                    request = self._decrypt_request(nodes, server_round, spec)
                    start = time.perf_counter()
                    replies = list(grid.send_and_receive([request], timeout=self.decrypt_timeout))
                    sealed = self._sealed_from(replies, request, server_round,
                                               time.perf_counter() - start)
                if sealed is not None:
                    query_bytes_down = self._encrypted_sum.nbytes + self._sum_indices.nbytes
            if sealed is not None:
                extra[SEALED_CONSENSUS_ARRAY] = sealed
            else:
                extra[ENCRYPTED_CONSENSUS_ARRAY] = self._encrypted_sum
            self._decrypted_by[server_round] = "delegated" if sealed is not None else "every_client"
        for msg in messages:
            plan = msg.content.array_records[PLAN_KEY]
            for name, value in arrays_to_record(extra).items():
                plan[name] = value
            msg.content.config_records[CONFIG_KEY][SPEC_CONFIG_KEY] = spec.to_json()
        attached = sum(extra[k].nbytes for k in extra if k != "consensus")
        # The inner strategy counted the plan it built; add what the wrapper attached.
        self.strategy.server.history.start_round(
            server_round, attached * len(messages) + query_bytes_down)
        return messages

    # ------------------------------------------------------------------ delegated decryption

    def _decrypt_request(self, nodes: list[int], for_round: int,
                         spec: SecureConsensusSpec) -> Message:
        """A message asking one of ``nodes`` (rotating by round) to decrypt and seal the sum."""
        node = nodes[for_round % len(nodes)]
        content = RecordDict({
            DECRYPT_REQUEST_KEY: arrays_to_record({
                ENCRYPTED_CONSENSUS_ARRAY: self._encrypted_sum,
                "consensus_indices": self._sum_indices}),
            CONFIG_KEY: ConfigRecord({SPEC_CONFIG_KEY: spec.to_json(),
                                      "server-round": int(for_round)}),
        })
        # A TRAIN message: Flower runs client mods only around registered functions, and
        # every distillation ClientApp registers train; the mod answers it, not the app.
        return Message(content=content, dst_node_id=node, message_type=MessageType.TRAIN)

    def _sealed_from(self, replies: list[Message], request: Message, for_round: int,
                     seconds: float) -> np.ndarray | None:
        """The sealed consensus in the answer to ``request``; ``None`` (logged) if there is none."""
        node = request.metadata.dst_node_id
        reason, sealed = None, None
        if not replies:
            reason = f"no answer within {self.decrypt_timeout:.0f} s"
        elif replies[0].has_error():
            reason = replies[0].error.reason
        else:
            record = replies[0].content.array_records.get(DECRYPT_REPLY_KEY, ArrayRecord())
            sealed = record[SEALED_CONSENSUS_ARRAY].numpy() \
                if SEALED_CONSENSUS_ARRAY in record else None
            if sealed is None or sealed.dtype != np.uint8 or sealed.ndim != 1:
                reason, sealed = f"the answer holds no 1-D uint8 '{SEALED_CONSENSUS_ARRAY}'", None
        if reason is not None:
            log(WARNING, "round %s: node %s did not decrypt the consensus for the cohort (%s); "
                "every client decrypts it instead", for_round, node, reason)
            return None
        self._query_bytes_up[for_round] = int(sealed.nbytes)
        log(INFO, "round %s: node %s decrypted and sealed the consensus for the cohort "
            "(%.2f s)", for_round, node, seconds)
        return sealed

    def _take_early_seal(self, server_round: int) -> np.ndarray | None:
        """The seal a client made during the previous round's evaluation, if it fits."""
        early, self._early_seal = self._early_seal, None
        if early is None or early[0] != server_round or \
                not np.array_equal(early[1], self._sum_indices):
            return None
        return early[2]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check every encrypted share and multiply the valid ones into the encrypted sum."""
        replies = list(replies)
        spec = self._specs.pop(server_round, None) or self.spec(server_round, max(1, len(replies)))
        layout = spec.layout(self.public_key.n.bit_length() - 1)
        failures, bytes_up, decrypt_failed = 0, 0, 0
        shares: list[tuple[str, EncryptedVector, dict]] = []
        rejected: dict[str, str] = {}
        for msg in replies:
            if msg.has_error():
                log(INFO, "round %s: node %s failed: %s", server_round,
                    msg.metadata.src_node_id, msg.error.reason)
                failures += 1
                continue
            metrics = dict(msg.content.metric_records.get(METRICS_KEY, MetricRecord()))
            client_id = client_id_of(metrics, msg.metadata.src_node_id)
            record = msg.content.array_records.get(REPLY_KEY, ArrayRecord())
            bytes_up += int(sum(array.numpy().nbytes for array in record.values()))
            decrypt_failed += int(metrics.get(DECRYPT_FAILED_METRIC, 0) > 0)
            try:
                shares.append((client_id, self._check_share(record, metrics, layout), metrics))
            except (SecureSumError, ValueError) as error:
                rejected[client_id] = str(error)
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
        bytes_up += self._query_bytes_up.pop(server_round, 0)
        outcome = AggregationOutcome(consensus=None, accepted=accepted, rejected=rejected,
                                     weights=weights, bytes_up=bytes_up)
        history = self.strategy.server.history
        history.record_train(server_round, outcome, failures)
        entry = next(e for e in history.rounds if e["round"] == server_round)
        entry["consensus_decryption"] = self._decrypted_by.pop(server_round, None)
        metrics_out = {"num-accepted": float(len(accepted)),
                       "num-rejected": float(len(rejected) + failures),
                       "num-decrypt-failed": float(decrypt_failed)}
        for key in ("train_loss", "kd_loss"):
            values = [float(m[key]) for cid, _, m in shares if cid in accepted and key in m]
            if values:
                metrics_out[key] = float(np.mean(values))
        if not accepted:
            return None, MetricRecord(metrics_out)
        self._encrypted_sum = aggregator.result().to_array()
        self._sum_indices = self.strategy.server.protocol.proxy_indices(server_round)
        self._sum_round, self._last_spec = server_round, spec
        log(INFO, "round %s: encrypted consensus of %s clients (%s ciphertexts, %.1f KiB)",
            server_round, len(accepted), layout.num_ciphertexts, self._encrypted_sum.nbytes / 1024)
        record = arrays_to_record({ENCRYPTED_CONSENSUS_ARRAY: self._encrypted_sum,
                                   "consensus_indices": self._sum_indices})
        return record, MetricRecord(metrics_out)

    def _check_share(self, record: ArrayRecord, metrics: dict, layout) -> EncryptedVector:
        if "logits" in record or "class_counts" in record:
            raise ValueError(
                "the reply carries plaintext predictions or class counts (discarded, never "
                "aggregated): the client does not run PaillierConsensusMod")
        if ENCRYPTED_CONTRIBUTION_ARRAY not in record:
            raise ValueError(
                f"the reply has no '{ENCRYPTED_CONTRIBUTION_ARRAY}' array; found "
                f"{sorted(record)}")
        num_examples = metrics.get(NUM_EXAMPLES_KEY, 0)
        if isinstance(num_examples, bool) or int(num_examples) != num_examples or num_examples <= 0:
            raise ValueError(f"num-examples must be a positive integer, got {num_examples!r}")
        vector = EncryptedVector.from_array(record[ENCRYPTED_CONTRIBUTION_ARRAY].numpy(),
                                            self.public_key)
        layout.check_same(vector.layout, "the encrypted share")
        if vector.num_summands != 1:
            raise ValueError(
                f"a share must hold one client's vector, this one claims {vector.num_summands}")
        return vector

    def _weights(self, shares: list[tuple[str, EncryptedVector, dict]]) -> dict[str, float]:
        if not shares:
            return {}
        if self.weighting == "uniform":
            return {cid: 1.0 / len(shares) for cid, _, _ in shares}
        counts = np.array([float(m[NUM_EXAMPLES_KEY]) for _, _, m in shares])
        return {cid: float(w) for (cid, _, _), w in zip(shares, counts / counts.sum())}

    # ------------------------------------------------------------------ evaluation

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """The inner strategy's evaluation requests, plus, when delegating, the request to
        decrypt this round's sum, so that the decryption overlaps the evaluation."""
        messages = list(self.strategy.configure_evaluate(server_round, arrays, config, grid))
        self._pending_request = None
        num_rounds = self.strategy.server.num_rounds
        last_round = num_rounds is not None and server_round >= num_rounds
        if self.decryption == "delegate" and messages and not last_round \
                and self._sum_round == server_round and self._last_spec is not None:
            nodes = sorted({msg.metadata.dst_node_id for msg in messages})
            request = self._decrypt_request(nodes, server_round + 1, self._last_spec)
            self._pending_request = (server_round + 1, request, self._sum_indices,
                                     time.perf_counter())
            messages.append(request)
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """The inner strategy's evaluation summary (the decryption answer set aside)."""
        replies = list(replies)
        if self._pending_request is not None:
            for_round, request, indices, start = self._pending_request
            self._pending_request = None
            request_id = request.metadata.message_id   # set by the Grid when it was sent

            def is_answer(reply: Message) -> bool:
                if request_id:
                    return reply.metadata.reply_to_message_id == request_id
                return DECRYPT_REPLY_KEY in reply.content.array_records

            answer = [r for r in replies if is_answer(r)]
            replies = [r for r in replies if not is_answer(r)]
            sealed = self._sealed_from(answer, request, for_round, time.perf_counter() - start)
            self._early_seal = None if sealed is None else (for_round, indices, sealed)
        return self.strategy.aggregate_evaluate(server_round, replies)


__all__ = ["DECRYPTION_MODES", "SecureConsensus"]
