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

With ``privacy=PrivateConsensus(mode="distributed")`` in the inner strategy the spec
asks for distributed-DP shares (clients run ``PaillierConsensusMod`` with
``DpPredictionsMod(encoding="probabilities")`` after it in the mods list), and every sum
is accounted in the inner strategy's budget (``epsilon``/``delta`` in its history);
central DP is refused.

The wrapper never decrypts and holds no private key; the consensus exists in plaintext
only on the clients. Evaluation is the inner strategy's (the decryption request that
rides along is set aside before the inner strategy sees the replies).

The round logic (specs, share checks, the ciphertext product, what goes into the plan,
the delegated decryption's bookkeeping) lives in the API-neutral
:class:`~flhet_strategies.secure_consensus_server.SecureConsensusServer`, shared with the
compat face :class:`~flhet_strategies.secure_consensus_compat.SecureConsensusCompat`; this
class only moves it in and out of Flower Messages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from phe import PaillierPublicKey

from .consensus_server import expected_cohort
from .core.secure_consensus import (
    DECRYPT_REPLY_KEY,
    DECRYPT_REQUEST_KEY,
    SEALED_CONSENSUS_ARRAY,
    SPEC_CONFIG_KEY,
)
from .message_api import (
    CONFIG_KEY,
    PLAN_KEY,
    FedConsensus,
    client_results,
)
from .records import arrays_to_record, record_to_arrays
from .secure_consensus_server import (
    DECRYPTION_MODES,
    DecryptRequest,
    SecureConsensusServer,
    SecureConsensusViews,
)


class SecureConsensus(SecureConsensusViews, Strategy):
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
        if not decrypt_timeout > 0:
            raise ValueError(f"decrypt_timeout must be positive, got {decrypt_timeout!r}")
        if not isinstance(strategy, FedConsensus):
            raise TypeError(
                f"SecureConsensus wraps a FedConsensus strategy, got {type(strategy).__name__}")
        self.strategy = strategy
        self.secure = SecureConsensusServer(
            strategy.server, public_key, max_examples=max_examples,
            probability_bits=probability_bits, vote_bits=vote_bits, decryption=decryption)
        self.decrypt_timeout = float(decrypt_timeout)
        self._pending_request: tuple[DecryptRequest, Message] | None = None

    def __repr__(self) -> str:
        return f"SecureConsensus({type(self.strategy).__name__}, key={self.secure.fingerprint})"

    # ------------------------------------------------------------------ delegation

    def summary(self) -> None:
        """Log the secure-sum settings, then the inner strategy's."""
        self.secure.log_settings()
        self.strategy.summary()

    def start(self, grid: Grid, initial_arrays: ArrayRecord | None = None, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
              ) -> Result:
        """Run ``num_rounds`` rounds (see ``flwr.serverapp.strategy.Strategy.start``).

        The result's ``arrays`` hold the final *encrypted* consensus. With a privacy
        budget, the rounds that fit in it (as the inner strategy's ``start``).
        """
        inner = self.strategy
        num_rounds = inner.server.cap_rounds(
            num_rounds, expected_cohort(inner.min_available_nodes, inner.fraction_train))
        return super().start(grid, initial_arrays or ArrayRecord(), num_rounds, timeout,
                             train_config, evaluate_config, evaluate_fn)

    # ------------------------------------------------------------------ training

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """The inner plan plus the round's spec and the previous round's encrypted sum."""
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        if not messages:
            return messages
        sealed = None
        if self.secure.has_sum() and self.decryption == "delegate":
            sealed = self.secure.take_seal(server_round)
            if sealed is None:   # no evaluation to overlap with: ask now, and wait
                request = self.secure.decrypt_request(
                    server_round, self.spec(server_round, len(messages)))
                message = self._request_message(
                    request, [msg.metadata.dst_node_id for msg in messages])
                replies = list(grid.send_and_receive([message], timeout=self.decrypt_timeout))
                sealed = self._sealed_from(replies, request, message)
        spec, extra = self.secure.begin_round(server_round, len(messages), sealed)
        for msg in messages:
            plan = msg.content.array_records[PLAN_KEY]
            for name, value in arrays_to_record(extra).items():
                plan[name] = value
            msg.content.config_records[CONFIG_KEY][SPEC_CONFIG_KEY] = spec.to_json()
        return messages

    # ------------------------------------------------------------------ delegated decryption

    @staticmethod
    def _request_message(request: DecryptRequest, nodes: list[int]) -> Message:
        """A message asking one of ``nodes`` (rotating by round) to decrypt and seal the sum."""
        content = RecordDict({
            DECRYPT_REQUEST_KEY: arrays_to_record(request.arrays),
            CONFIG_KEY: ConfigRecord({SPEC_CONFIG_KEY: request.spec.to_json(),
                                      "server-round": request.for_round}),
        })
        # A TRAIN message: Flower runs client mods only around registered functions, and
        # every distillation ClientApp registers train; the mod answers it, not the app.
        return Message(content=content, dst_node_id=request.pick(nodes),
                       message_type=MessageType.TRAIN)

    def _sealed_from(self, replies: list[Message], request: DecryptRequest, message: Message,
                     keep: bool = False) -> np.ndarray | None:
        """The sealed consensus in the answer to ``message``; ``None`` (logged) if there is none."""
        problem, sealed = None, None
        if not replies:
            problem = f"no answer within {self.decrypt_timeout:.0f} s"
        elif replies[0].has_error():
            problem = replies[0].error.reason
        else:
            record = replies[0].content.array_records.get(DECRYPT_REPLY_KEY, ArrayRecord())
            sealed = record_to_arrays(record).get(SEALED_CONSENSUS_ARRAY)
        return self.secure.receive_seal(request, message.metadata.dst_node_id, sealed,
                                        problem, keep=keep)

    # ------------------------------------------------------------------ aggregation

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check every encrypted share and multiply the valid ones into the encrypted sum."""
        results, failures = client_results(server_round, replies)
        arrays, metrics = self.secure.aggregate_train(server_round, results, failures)
        return (None if arrays is None else arrays_to_record(arrays)), MetricRecord(metrics)

    # ------------------------------------------------------------------ evaluation

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """The inner strategy's evaluation requests, plus, when delegating, the request to
        decrypt this round's sum, so that the decryption overlaps the evaluation."""
        messages = list(self.strategy.configure_evaluate(server_round, arrays, config, grid))
        self._pending_request = None
        if messages and self.secure.delegates_after(server_round):
            request = self.secure.decrypt_request(server_round + 1)
            message = self._request_message(
                request, sorted({msg.metadata.dst_node_id for msg in messages}))
            self._pending_request = (request, message)
            messages.append(message)
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """The inner strategy's evaluation summary (the decryption answer set aside)."""
        replies = list(replies)
        if self._pending_request is not None:
            request, message = self._pending_request
            self._pending_request = None
            request_id = message.metadata.message_id   # set by the Grid when it was sent

            def is_answer(reply: Message) -> bool:
                if request_id:
                    return reply.metadata.reply_to_message_id == request_id
                return DECRYPT_REPLY_KEY in reply.content.array_records

            answer = [r for r in replies if is_answer(r)]
            replies = [r for r in replies if not is_answer(r)]
            self._sealed_from(answer, request, message, keep=True)
        return self.strategy.aggregate_evaluate(server_round, replies)


__all__ = ["DECRYPTION_MODES", "SecureConsensus"]
