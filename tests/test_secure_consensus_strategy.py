"""SecureConsensus (SecureSum around a flhet strategy) and PaillierMod on real Flower Messages.

Messages are serialized and deserialized between server and clients (Flower's own
protobuf conversion), as the runtime does; keys are real 2048-bit Paillier keys. The
client apps here are stand-ins that speak flhet's wire format (``"arrays"`` and
``"config"`` down, ``"arrays"`` and ``"metrics"`` up) with fixed predictions per round.
"""

from __future__ import annotations

from collections.abc import Iterator
from uuid import uuid4

import numpy as np
import pytest
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.supercore.task_identity import TaskIdentity

from clients.faces.wrappers import PaillierConsensusMod, PaillierMod
from flhet_strategies import wire
from flhet_strategies.aggregation.logit_consensus import ConsensusConfig, logit_consensus
from flhet_strategies.aggregation.weighted_sum import client_weights
from flhet_strategies.algorithms.consensus import ConsensusSumRule, RoundPlan
from flhet_strategies.algorithms.prototypes import FedProtoServer
from flhet_strategies.faces.records import arrays_to_record, instruction_of, record_to_arrays
from flhet_strategies.privacy.paillier import (
    CiphertextAggregator,
    EncryptedVector,
    KeyHolder,
    SecureSumCodec,
    save_key_holder,
)
from flhet_strategies.privacy.paillier.secure_sum import SecureSum
from flhet_strategies.privacy.paillier.spec import SecureSumSpec
from flhet_strategies.protocol import Reply
from flhet_strategies.strategies import FedConsensus, FedProto, FedTGP, SecureConsensus
from flhet_strategies.weighting.base import uniform_weights
from key_audit import assert_holds_no_private_key

NUM_PROXY, CLASSES, PER_ROUND = 300, 10, 40
NODES = {101: 0, 102: 1, 103: 2, 104: 3}   # Flower node id -> client id
COUNTS = np.array([
    [0, 0, 0, 40, 50, 60, 70, 80, 90, 100],
    [100, 90, 80, 70, 0, 0, 0, 10, 20, 30],
    [5, 5, 5, 5, 5, 5, 5, 5, 5, 5],
    [30, 30, 30, 30, 30, 30, 30, 30, 30, 30],
])
CONTEXT_KEY = wire.SUM_CONTEXT_PREFIX + wire.CONSENSUS_INDICES


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[None]:
    """The process identity Flower's runtime sets before app code builds Messages."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture(scope="module")
def holder() -> KeyHolder:
    return KeyHolder.generate()


@pytest.fixture(scope="module")
def other_holder() -> KeyHolder:
    return KeyHolder.generate()


class LocalGrid:
    """Grid stand-in: lists the nodes and records anything the strategy would send itself
    (nothing: every request rides on the messages the strategy returns)."""

    def __init__(self) -> None:
        self.sent: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(NODES)

    def send_and_receive(self, messages, timeout=None) -> list[Message]:
        self.sent.extend(messages)
        raise AssertionError("the strategy sends nothing synchronously")


def deliver(messages, mods) -> list[Message]:
    """What a Grid does with evaluation messages: give each an id, run the node's ClientApp
    (its mod, an evaluate function, and a train function that must not be reached)."""
    replies = []
    for msg in messages:
        assert msg.metadata.message_type == MessageType.EVALUATE
        msg.metadata.__dict__["_message_id"] = str(uuid4())
        client_id = NODES[msg.metadata.dst_node_id]
        app = ClientApp(mods=[mods[client_id]])
        app.train()(_train_must_not_run)
        app.evaluate()(_evaluate)
        replies.append(transported(app(transported(msg), context(client_id))))
    return replies


def _train_must_not_run(msg: Message, ctx: Context) -> Message:
    raise AssertionError("evaluation messages never reach the train function")


def _evaluate(msg: Message, ctx: Context) -> Message:
    """Scores like flhet_client_app: nothing when ``flhet-evaluate`` is False."""
    config = msg.content.config_records[wire.CONFIG]
    assert wire.ENCRYPTED_SUM not in msg.content.array_records.get(wire.ARRAYS, {})
    metrics = {"client-id": NODES[ctx.node_id]}
    if config.get(wire.EVALUATE, True):
        metrics.update({"client_accuracy": 0.5, "global_accuracy": 0.4})
    return Message(RecordDict({wire.METRICS: MetricRecord(metrics)}), reply_to=msg)


def transported(msg: Message) -> Message:
    """The message as the other side receives it (serialized and parsed again)."""
    return message_from_proto(message_to_proto(msg))


def context(client_id: int, node_config: dict | None = None) -> Context:
    node_id = {cid: nid for nid, cid in NODES.items()}[client_id]
    return Context(run_id=1, node_id=node_id, node_config=node_config or {},
                   state=RecordDict(), run_config={})


def config_of(msg: Message) -> ConfigRecord:
    return msg.content.config_records[wire.CONFIG]


def arrays_of(msg: Message) -> dict[str, np.ndarray]:
    return record_to_arrays(msg.content.array_records[wire.ARRAYS])


def spec_of(msg: Message) -> SecureSumSpec:
    return SecureSumSpec.from_json(config_of(msg)[wire.SECURE_SPEC])


def client_logits(client_id: int, server_round: int, rows: int) -> np.ndarray:
    rng = np.random.default_rng([client_id, server_round])
    return (rng.normal(size=(rows, CLASSES)) * 3).astype(np.float32)


def client_app(client_id: int, seen: list):
    """A train handler replying like the consensus client half: logits, class counts."""

    def handler(msg: Message, ctx: Context) -> Message:
        instruction = instruction_of(msg)
        plan = RoundPlan.from_arrays(instruction.server_round, instruction.arrays)
        seen.append(plan)
        content = RecordDict({
            wire.ARRAYS: arrays_to_record({
                "logits": client_logits(client_id, plan.server_round, len(plan.proxy_indices)),
                "class_counts": COUNTS[client_id]}),
            wire.METRICS: MetricRecord({"num-examples": int(COUNTS[client_id].sum()),
                                        "client-id": client_id, "train_loss": 1.0,
                                        "kd_loss": 0.5}),
        })
        return Message(content, reply_to=msg)

    return handler


def secure_strategy(holder: KeyHolder, decryption: str = "delegate", **inner) -> SecureConsensus:
    fed = FedConsensus(num_proxy=NUM_PROXY, num_classes=CLASSES, proxy_per_round=PER_ROUND,
                       min_available_nodes=len(NODES), **inner)
    return SecureConsensus(fed, holder.public_key, max_examples=1000, decryption=decryption)


def holder_mods(holder: KeyHolder) -> dict[int, PaillierMod]:
    return {cid: PaillierMod(key_holder=holder) for cid in NODES.values()}


def run_round(strategy, server_round, mods, seen, drop=(), extra_replies=(), grid=None,
              handlers=None):
    """Configure a round, let every client's mod and app answer, aggregate the replies."""
    messages = list(strategy.configure_train(server_round, ArrayRecord(), ConfigRecord(),
                                             grid or LocalGrid()))
    replies = []
    for msg in messages:
        client_id = NODES[msg.metadata.dst_node_id]
        if client_id in drop:
            continue
        handler = handlers[client_id] if handlers else client_app(client_id, seen[client_id])
        replies.append(mods[client_id](transported(msg), context(client_id), handler))
    replies = [transported(r) for r in replies] + list(extra_replies)
    return messages, replies, strategy.aggregate_train(server_round, replies)


def evaluate_round(strategy, server_round, mods, grid=None):
    """The round's evaluation messages, delivered; what the strategy made of the replies."""
    messages = list(strategy.configure_evaluate(server_round, ArrayRecord(), ConfigRecord(),
                                                grid or LocalGrid()))
    return messages, strategy.aggregate_evaluate(server_round, deliver(messages, mods))


def requests_in(messages) -> list[Message]:
    return [m for m in messages if config_of(m).get(wire.DECRYPT_REQUEST, False)]


# ---------------------------------------------------------------- the protocol end to end


@pytest.mark.parametrize("decryption", ["delegate", "every_client"])
def test_two_secure_rounds_give_every_client_the_plaintext_consensus(holder, decryption) -> None:
    strategy = secure_strategy(holder, decryption)
    mods = holder_mods(holder)
    seen: dict[int, list] = {cid: [] for cid in NODES.values()}

    messages, replies, (record, metrics) = run_round(strategy, 1, mods, seen, drop=(3,))
    spec = spec_of(messages[0])
    assert spec.max_summands == 4 and spec.key_fingerprint == holder.fingerprint.hex()
    assert spec.sum_layout.weighting == "sample_count_class_counts"
    for reply in replies:   # what the server receives: one uint8 share, no predictions
        arrays = arrays_of(reply)
        assert set(arrays) == {wire.ENCRYPTED_SHARE}
        assert arrays[wire.ENCRYPTED_SHARE].dtype == np.uint8
        assert reply.content.metric_records[wire.METRICS]["num-examples"] > 0
    assert all(len(plan.consensus_indices) == 0 for cid in (0, 1, 2) for plan in seen[cid])
    # node 3 dropped out: its message got no reply, one failure (tests/test_round_timeout.py)
    assert metrics["num-accepted"] == 3 and metrics["num-rejected"] == 1
    assert set(record) == {wire.ENCRYPTED_SUM, CONTEXT_KEY}
    entry = strategy.history[0]
    assert entry["accepted"] == ["0", "1", "2"] and entry["num_failures"] == 1
    assert entry["sum_decryption"] is None
    assert entry["bytes_up"] == sum(arrays_of(r)[wire.ENCRYPTED_SHARE].nbytes for r in replies)

    grid = LocalGrid()
    evaluation, summary = evaluate_round(strategy, 1, mods, grid)
    assert len(evaluation) == len(NODES) and summary["client_accuracy_mean"] == 0.5
    requests = requests_in(evaluation)
    if decryption == "delegate":   # one request, to a rotating node, on its evaluation
        assert len(requests) == 1
        assert requests[0].metadata.dst_node_id == sorted(NODES)[2 % len(NODES)]
        carried = arrays_of(requests[0])
        assert EncryptedVector.from_array(carried[wire.ENCRYPTED_SUM],
                                          holder.public_key).num_summands == 3
        np.testing.assert_array_equal(carried[CONTEXT_KEY], strategy.core.proxy_indices(1))
    else:
        assert not requests
    messages, _, _ = run_round(strategy, 2, mods, seen, grid=grid)
    assert not grid.sent                                     # nothing sent synchronously
    plan_sent = arrays_of(messages[0])
    assert plan_sent["consensus"].shape == (0, CLASSES)      # no plaintext from the server
    assert strategy.history[1]["sum_decryption"] == (
        "delegated" if decryption == "delegate" else "every_client")
    if decryption == "delegate":   # the plan holds a seal instead of the sum
        assert wire.ENCRYPTED_SUM not in plan_sent
        assert plan_sent[wire.SEALED_SUM].dtype == np.uint8
    else:
        assert wire.SEALED_SUM not in plan_sent
        assert EncryptedVector.from_array(plan_sent[wire.ENCRYPTED_SUM],
                                          holder.public_key).num_summands == 3
    round_one = strategy.core.proxy_indices(1)
    np.testing.assert_array_equal(plan_sent[CONTEXT_KEY], round_one)
    arrived = [0, 1, 2]
    expected = logit_consensus(
        np.stack([client_logits(cid, 1, PER_ROUND) for cid in arrived]),
        COUNTS[arrived].sum(axis=1).astype(float), ConsensusConfig(), COUNTS[arrived])
    received = [seen[cid][-1] for cid in NODES.values()]
    for plan in received:
        np.testing.assert_array_equal(plan.consensus_indices, round_one)
        np.testing.assert_array_equal(plan.consensus, received[0].consensus)  # all alike
    diff = np.abs(received[0].consensus - expected)
    assert diff.mean() < 2e-3
    assert np.mean(received[0].consensus.argmax(1) == expected.argmax(1)) >= 0.95
    assert strategy.history[1]["bytes_down"] > strategy.history[0]["bytes_down"]


def test_uniform_weights_without_class_votes_take_the_8_bit_fast_path(holder) -> None:
    strategy = secure_strategy(holder, weight_fn=uniform_weights,
                               consensus=ConsensusConfig(class_vote_weighting=False))
    spec = strategy.algorithm.spec(1, 4)
    assert spec.value_bits == 8 and spec.sum_layout.weighting == "uniform"
    mods = holder_mods(holder)
    seen: dict[int, list] = {cid: [] for cid in NODES.values()}
    run_round(strategy, 1, mods, seen)
    evaluate_round(strategy, 1, mods)
    run_round(strategy, 2, mods, seen)
    assert strategy.history[1]["sum_decryption"] == "delegated"
    config = ConsensusConfig(class_vote_weighting=False)
    expected = logit_consensus(np.stack([client_logits(cid, 1, PER_ROUND) for cid in range(4)]),
                               np.ones(4), config)
    assert np.abs(seen[0][-1].consensus - expected).mean() < 2e-3


def test_a_round_without_evaluation_sends_the_decryptor_a_task_only_message(holder) -> None:
    strategy = secure_strategy(holder, fraction_evaluate=0.0)
    mods = holder_mods(holder)
    seen: dict[int, list] = {cid: [] for cid in NODES.values()}
    run_round(strategy, 1, mods, seen)
    grid = LocalGrid()
    messages, summary = evaluate_round(strategy, 1, mods, grid)
    assert len(messages) == 1 and requests_in(messages) == messages
    assert messages[0].metadata.dst_node_id == sorted(NODES)[2]
    assert config_of(messages[0])[wire.EVALUATE] is False    # it only decrypts
    assert summary is None                                   # nobody scored
    run_round(strategy, 2, mods, seen, grid=grid)
    assert not grid.sent
    assert strategy.history[1]["sum_decryption"] == "delegated"
    expected = logit_consensus(np.stack([client_logits(cid, 1, PER_ROUND) for cid in range(4)]),
                               COUNTS.sum(axis=1).astype(float), ConsensusConfig(), COUNTS)
    for cid in NODES.values():
        assert np.abs(seen[cid][-1].consensus - expected).mean() < 2e-3


# ---------------------------------------------------------------- bad replies


def test_foreign_key_malformed_and_plaintext_replies_are_rejected_and_the_round_goes_on(
    holder, other_holder
) -> None:
    strategy = secure_strategy(holder)
    mods = holder_mods(holder)
    seen: dict[int, list] = {cid: [] for cid in NODES.values()}
    messages = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), LocalGrid()))
    spec = spec_of(messages[0])
    good = [transported(mods[cid](transported(messages[cid]), context(cid),
                                  client_app(cid, seen[cid]))) for cid in (0, 1)]
    share = arrays_of(good[0])[wire.ENCRYPTED_SHARE]

    def reply(client_id, arrays, error=None):
        msg = transported(messages[client_id % len(messages)])
        if error is not None:
            return transported(Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                             reason=error), reply_to=msg))
        return transported(Message(RecordDict({
            wire.ARRAYS: arrays_to_record(arrays),
            wire.METRICS: MetricRecord({"num-examples": int(np.sum(arrays.get(
                "class_counts", 100))), "client-id": client_id})}),
            reply_to=msg))

    layout = spec.sum_layout
    values = ConsensusSumRule.terms(layout, {"logits": client_logits(2, 1, PER_ROUND)}, {})
    weights = {t.name: client_weights(layout, t, COUNTS[2], 50) for t in layout.terms}
    foreign_codec = SecureSumCodec(other_holder.public_key, spec.num_values, spec.max_summands,
                                   (0.0, float((1 << spec.value_bits) - 1)), spec.value_bits,
                                   workers=1)
    foreign = foreign_codec.encrypt(spec.encode(values, weights)[0])
    bad = [
        reply(2, {wire.ENCRYPTED_SHARE: foreign.to_array()}),
        reply(3, {wire.ENCRYPTED_SHARE: share[:-7]}),
        reply(4, {"logits": client_logits(4, 1, PER_ROUND), "class_counts": COUNTS[0]}),
        reply(5, {}, error="out of memory"),
    ]
    record, metrics = strategy.aggregate_train(1, good + bad)
    entry = strategy.history[0]
    assert entry["accepted"] == ["0", "1"]
    assert "another" in entry["rejected"]["2"] or "key" in entry["rejected"]["2"]
    assert "bytes" in entry["rejected"]["3"]
    assert "plaintext" in entry["rejected"]["4"] and "PaillierMod" in entry["rejected"]["4"]
    assert entry["num_failures"] == 4 and metrics["num-rejected"] == 4
    encrypted = EncryptedVector.from_array(record[wire.ENCRYPTED_SUM].numpy(),
                                           holder.public_key)
    assert encrypted.num_summands == 2
    spec.decode(holder.decrypt_sum(encrypted), 2)   # the sum of the two good shares decodes


def test_a_share_of_another_layout_or_a_presummed_share_is_rejected(holder) -> None:
    strategy = secure_strategy(holder)
    mods = holder_mods(holder)
    messages = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), LocalGrid()))
    replies = [transported(mods[cid](transported(messages[cid]), context(cid),
                                     client_app(cid, []))) for cid in range(4)]
    spec = strategy.algorithm.spec(1, 4)
    layout = spec.sum_layout

    def codec(max_summands):
        return SecureSumCodec(holder.public_key, spec.num_values, max_summands,
                              (0.0, float((1 << spec.value_bits) - 1)), spec.value_bits,
                              workers=1)

    def share(client_id, codec_):
        values = ConsensusSumRule.terms(
            layout, {"logits": client_logits(client_id, 1, PER_ROUND)}, {})
        weights = {t.name: client_weights(layout, t, COUNTS[client_id], 100)
                   for t in layout.terms}
        return codec_.encrypt(spec.encode(values, weights)[0])

    other_layout = share(2, codec(2))   # carry room for 2 clients, not the round's 4
    replies[2].content[wire.ARRAYS] = arrays_to_record(
        {wire.ENCRYPTED_SHARE: other_layout.to_array()})
    summed = CiphertextAggregator(holder.public_key).add(share(2, codec(4)),
                                                         share(3, codec(4))).result()
    replies[3].content[wire.ARRAYS] = arrays_to_record({wire.ENCRYPTED_SHARE: summed.to_array()})
    strategy.aggregate_train(1, replies)
    entry = strategy.history[0]
    assert entry["accepted"] == ["0", "1"]
    assert "layout" in entry["rejected"]["2"]
    assert "one client's vector" in entry["rejected"]["3"]


# ---------------------------------------------------------------- keys on the server


def test_the_server_wrapper_holds_no_private_key(holder) -> None:
    strategy = secure_strategy(holder)
    mods = holder_mods(holder)
    seen: dict[int, list] = {cid: [] for cid in NODES.values()}
    run_round(strategy, 1, mods, seen)
    evaluate_round(strategy, 1, mods)
    run_round(strategy, 2, mods, seen)
    assert strategy.history[1]["sum_decryption"] == "delegated"   # a seal passed through it
    assert isinstance(strategy.algorithm, SecureSum)
    assert_holds_no_private_key(strategy, holder)
    strategy.algorithm.leak = [{"key": holder}]     # the audit does find a held key
    with pytest.raises(AssertionError):
        assert_holds_no_private_key(strategy, holder)
    strategy.algorithm.leak = holder._private_key.p
    with pytest.raises(AssertionError):
        assert_holds_no_private_key(strategy, holder)


def test_the_wrapper_refuses_private_keys_and_rules_it_cannot_compute(holder) -> None:
    fed = FedConsensus(num_proxy=NUM_PROXY, num_classes=CLASSES)
    with pytest.raises(TypeError, match="never hold the private key"):
        SecureConsensus(fed, holder, max_examples=10)
    with pytest.raises(TypeError, match="never hold the private key"):
        SecureConsensus(fed, holder._private_key, max_examples=10)
    with pytest.raises(ValueError, match="DS-FL"):
        SecureConsensus(FedConsensus(NUM_PROXY, CLASSES, consensus=ConsensusConfig(mode="fedmd")),
                        holder.public_key, max_examples=10)
    with pytest.raises(ValueError, match="weight_fn"):
        SecureConsensus(FedConsensus(NUM_PROXY, CLASSES, weight_fn=lambda p, r, i: np.ones(len(p))),
                        holder.public_key, max_examples=10)
    with pytest.raises(TypeError, match="FedConsensus"):
        SecureConsensus(object(), holder.public_key, max_examples=10)
    with pytest.raises(ValueError, match="max_examples"):   # counts weigh: a bound is needed
        SecureConsensus(fed, holder.public_key)
    with pytest.raises(ValueError, match="decryption"):
        SecureConsensus(fed, holder.public_key, max_examples=10, decryption="server")
    with pytest.raises(TypeError, match="weighted sum"):    # FedTGP has no sum to encrypt
        SecureConsensus(FedTGP(CLASSES, 4, server_epochs=1), holder.public_key, max_examples=10)


# ---------------------------------------------------------------- the client mod


def _train_message(holder, strategy=None, server_round: int = 1) -> Message:
    strategy = strategy or secure_strategy(holder)
    return transported(list(strategy.configure_train(server_round, ArrayRecord(),
                                                     ConfigRecord(), LocalGrid()))[0])


def test_the_earlier_mod_name_is_the_same_mod() -> None:
    assert PaillierConsensusMod is PaillierMod


def test_mod_refuses_to_send_plaintext_when_the_server_asks_for_none(holder) -> None:
    msg = transported(Message(RecordDict({wire.CONFIG: ConfigRecord({"server-round": 1})}),
                              dst_node_id=101, message_type=MessageType.TRAIN))
    calls: list = []
    reply = PaillierMod(key_holder=holder)(msg, context(0), client_app(0, calls))
    assert reply.has_error() and not calls
    assert reply.error.code == ErrorCode.MOD_FAILED_PRECONDITION
    assert "refusing to send a plaintext" in reply.error.reason


def test_mod_passes_evaluate_messages_and_plaintext_runs_when_allowed(holder) -> None:
    evaluate = Message(RecordDict({wire.CONFIG: ConfigRecord({})}), dst_node_id=101,
                       message_type=MessageType.EVALUATE)
    handled: list = []

    def evaluate_app(msg, ctx):
        handled.append(msg)
        return Message(RecordDict({wire.METRICS: MetricRecord({"client_accuracy": 0.5})}),
                       reply_to=msg)

    mod = PaillierMod(key_holder=holder)
    answer = mod(evaluate, context(0), evaluate_app)
    assert not answer.has_error() and handled
    assert answer.content.metric_records[wire.METRICS]["client_accuracy"] == 0.5
    assert not arrays_of(answer)                       # no seal: nothing was asked
    plain = Message(RecordDict({wire.CONFIG: ConfigRecord({"server-round": 1}),
                                wire.ARRAYS: arrays_to_record({
                                    "proxy_indices": np.arange(5),
                                    "consensus_indices": np.zeros(0, np.int64),
                                    "consensus": np.zeros((0, CLASSES), np.float32)})}),
                    dst_node_id=101, message_type=MessageType.TRAIN)
    reply = PaillierMod(key_holder=holder, require_secure=False)(
        plain, context(0), client_app(0, []))
    assert "logits" in arrays_of(reply)
    # A Flower App's baselines share the federation: only the listed phases go in clear.
    mod = PaillierMod(key_holder=holder, plaintext_phases=("local_only",))
    for phase, allowed in (("local_only", True), ("main", False)):
        msg = transported(plain)
        config_of(msg)["flhet-phase"] = phase
        reply = mod(msg, context(0), client_app(0, []))
        assert reply.has_error() != allowed
    assert "phase 'main'" in reply.error.reason


def test_mod_refuses_a_spec_for_another_key(holder, other_holder) -> None:
    calls: list = []
    reply = PaillierMod(key_holder=other_holder)(_train_message(holder), context(0),
                                                 client_app(0, calls))
    assert reply.has_error() and not calls
    assert reply.error.code == ErrorCode.MOD_FAILED_PRECONDITION
    assert holder.fingerprint.hex() in reply.error.reason


@pytest.mark.parametrize("decryption, array", [("every_client", wire.ENCRYPTED_SUM),
                                               ("delegate", wire.SEALED_SUM)])
def test_a_consensus_that_does_not_decrypt_is_reported_and_training_goes_on(
    holder, decryption, array
) -> None:
    strategy = secure_strategy(holder, decryption)
    mods = holder_mods(holder)
    seen: dict[int, list] = {cid: [] for cid in NODES.values()}
    run_round(strategy, 1, mods, seen)
    evaluate_round(strategy, 1, mods)
    msg = _train_message(holder, strategy, 2)       # round 2 plan, with the sum or its seal
    plan = arrays_of(msg)
    corrupted = plan[array].copy()
    corrupted[-3] ^= 0x5A                            # flip bits near the end
    plan[array] = corrupted
    msg.content[wire.ARRAYS] = arrays_to_record(plan)
    calls: list = []
    reply = mods[0](msg, context(0), client_app(0, calls))
    assert not reply.has_error()
    assert len(calls[0].consensus_indices) == 0      # trained without a consensus
    assert reply.content.metric_records[wire.METRICS][wire.DECRYPT_FAILED_METRIC] == 1.0
    assert set(arrays_of(reply)) == {wire.ENCRYPTED_SHARE}   # and still sent its share
    _, metrics = strategy.aggregate_train(2, [transported(reply)])
    assert metrics["num-decrypt-failed"] == 1 and metrics["num-accepted"] == 1


def test_mod_errors_on_replies_outside_the_protocol(holder) -> None:
    def fedavg_like_app(msg, ctx):
        return Message(RecordDict({"arrays": arrays_to_record({"w": np.ones(3)})}), reply_to=msg)

    reply = PaillierMod(key_holder=holder)(_train_message(holder), context(0), fedavg_like_app)
    assert reply.has_error() and "'logits'" in reply.error.reason
    assert reply.error.code == ErrorCode.MOD_FAILED_PRECONDITION


def test_mod_reads_the_key_file_named_in_the_node_config_inside_a_client_app(holder,
                                                                             tmp_path) -> None:
    path = save_key_holder(holder, tmp_path / "paillier_private.json")
    app = ClientApp(mods=[PaillierMod()])
    app.train()(client_app(0, []))
    reply = app(_train_message(holder), context(0, {"paillier-key-path": str(path)}))
    assert not reply.has_error()
    assert set(arrays_of(reply)) == {wire.ENCRYPTED_SHARE}
    missing = app(_train_message(holder), context(0))
    assert missing.has_error() and "paillier-key-path" in missing.error.reason
    shared = Context(run_id=1, node_id=101, node_config={}, state=RecordDict(),
                     run_config={"paillier-key-path": str(path)})   # flwr run, one machine
    assert not app(_train_message(holder), shared).has_error()


def test_a_failed_delegated_decryption_falls_back_to_every_client(holder, other_holder) -> None:
    strategy = secure_strategy(holder)
    mods = holder_mods(holder)
    seen: dict[int, list] = {cid: [] for cid in NODES.values()}
    run_round(strategy, 1, mods, seen)
    wrong_key = {**mods, 2: PaillierMod(key_holder=other_holder)}  # round 2's decryptor
    evaluation, summary = evaluate_round(strategy, 1, wrong_key)
    assert [m.metadata.dst_node_id for m in requests_in(evaluation)] == [103]
    assert summary["client_accuracy_mean"] == 0.5   # the error answer did not break it
    messages, _, _ = run_round(strategy, 2, mods, seen)
    plan_sent = arrays_of(messages[0])
    assert wire.ENCRYPTED_SUM in plan_sent and wire.SEALED_SUM not in plan_sent
    assert strategy.history[1]["sum_decryption"] == "every_client"
    consensus = [seen[cid][-1].consensus for cid in NODES.values()]
    assert consensus[0].shape == (PER_ROUND, CLASSES)
    assert all(np.array_equal(c, consensus[0]) for c in consensus)


def test_the_decryption_request_rides_along_with_the_evaluation(holder) -> None:
    strategy = secure_strategy(holder)
    mods = holder_mods(holder)
    seen: dict[int, list] = {cid: [] for cid in NODES.values()}
    run_round(strategy, 1, mods, seen)
    grid = LocalGrid()
    evaluation = list(strategy.configure_evaluate(1, ArrayRecord(), ConfigRecord(), grid))
    requests = requests_in(evaluation)
    assert len(evaluation) == len(NODES) and len(requests) == 1
    assert config_of(requests[0])[wire.EVALUATE] is True       # it also scores
    answers = deliver(evaluation, mods)
    sealed = [a for a in answers if wire.SEALED_REPLY in a.content.array_records[wire.ARRAYS]]
    assert len(sealed) == 1 and sealed[0].metadata.src_node_id == 103
    assert wire.DECRYPT_ERROR_METRIC not in sealed[0].content.metric_records[wire.METRICS]
    metrics = strategy.aggregate_evaluate(1, answers)
    assert metrics["client_accuracy_mean"] == 0.5   # the answer did not reach the inner summary
    assert not any("sealed" in key for key in metrics)
    messages, _, _ = run_round(strategy, 2, mods, seen, grid=grid)
    assert not grid.sent                             # nothing more to ask before round 2
    plan_sent = arrays_of(messages[0])
    assert wire.SEALED_SUM in plan_sent
    assert strategy.history[1]["sum_decryption"] == "delegated"
    expected = logit_consensus(np.stack([client_logits(cid, 1, PER_ROUND) for cid in range(4)]),
                               COUNTS.sum(axis=1).astype(float), ConsensusConfig(), COUNTS)
    assert np.abs(seen[0][-1].consensus - expected).mean() < 2e-3
    # After the last round nothing is decrypted for a round that will not come.
    strategy.driver.plan(2)
    last = list(strategy.configure_evaluate(2, ArrayRecord(), ConfigRecord(), grid))
    assert len(last) == len(NODES)
    assert not requests_in(last)
    assert not any(wire.ENCRYPTED_SUM in arrays_of(m) for m in last)


# ---------------------------------------------------------------- any weighted sum: FedProto


PROTO_DIM = 4


def prototypes_of(client_id: int, server_round: int) -> np.ndarray:
    rng = np.random.default_rng([client_id, server_round, 9])
    protos = rng.normal(size=(CLASSES, PROTO_DIM)).astype(np.float32) * 2
    protos[COUNTS[client_id] == 0] = 0.0
    return protos


def prototype_app(client_id: int, seen: list):
    """A train handler replying like the prototype client half."""

    def handler(msg: Message, ctx: Context) -> Message:
        instruction = instruction_of(msg)
        seen.append(instruction)
        content = RecordDict({
            wire.ARRAYS: arrays_to_record({
                wire.PROTOTYPES: prototypes_of(client_id, instruction.server_round),
                wire.CLASS_COUNTS: COUNTS[client_id]}),
            wire.METRICS: MetricRecord({"num-examples": int(COUNTS[client_id].sum()),
                                        "client-id": client_id, "train_loss": 1.0}),
        })
        return Message(content, reply_to=msg)

    return handler


def test_secure_fedproto_gives_every_client_the_plaintext_prototypes(holder) -> None:
    strategy = SecureConsensus(FedProto(CLASSES, PROTO_DIM, min_available_nodes=len(NODES)),
                               holder.public_key, max_examples=1000)
    mods = holder_mods(holder)
    seen: dict[int, list] = {cid: [] for cid in NODES.values()}
    handlers = {cid: prototype_app(cid, seen[cid]) for cid in NODES.values()}
    messages, replies, (record, _) = run_round(strategy, 1, mods, seen, handlers=handlers)
    spec = spec_of(messages[0])
    assert spec.sum_layout.algorithm == "fedproto" and spec.bits == 16
    assert all(set(arrays_of(r)) == {wire.ENCRYPTED_SHARE} for r in replies)
    assert set(record) == {wire.ENCRYPTED_SUM}           # prototypes need no public context
    evaluate_round(strategy, 1, mods)
    run_round(strategy, 2, mods, seen, handlers=handlers)
    assert strategy.history[1]["sum_decryption"] == "delegated"
    plain = FedProtoServer(CLASSES, PROTO_DIM)
    plain.aggregate(1, [Reply(str(c), {wire.PROTOTYPES: prototypes_of(c, 1),
                                       wire.CLASS_COUNTS: COUNTS[c]},
                              {wire.NUM_EXAMPLES: int(COUNTS[c].sum())}) for c in range(4)])
    expected, mask = plain.prototypes
    term = spec.sum_layout.term(wire.PROTOTYPES)
    bound = spec.error_bound(term, 4, COUNTS.sum(axis=0))
    for cid in NODES.values():
        got = seen[cid][-1].arrays
        np.testing.assert_array_equal(got[wire.PROTOTYPE_MASK], mask.astype(np.uint8))
        assert np.all(np.abs(got[wire.GLOBAL_PROTOTYPES] - expected)
                      <= bound[:, None] + 8 * np.finfo(np.float32).eps)
    assert strategy.core.prototypes[1].sum() == 0        # never formed in plaintext
    assert_holds_no_private_key(strategy, holder)
