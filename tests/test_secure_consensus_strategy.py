"""SecureConsensus (server wrapper) and PaillierConsensusMod (client mod) on real Flower Messages.

Messages are serialized and deserialized between server and clients (Flower's own
protobuf conversion), as the runtime does; keys are real 2048-bit Paillier keys.
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

from clients.mods.paillier_consensus import PaillierConsensusMod
from flhet_strategies.aggregation.logit_consensus import ConsensusConfig, logit_consensus
from flhet_strategies.core.distillation import RoundPlan
from flhet_strategies.core.secure_consensus import (
    DECRYPT_FAILED_METRIC,
    DECRYPT_REQUEST_KEY,
    ENCRYPTED_CONSENSUS_ARRAY,
    ENCRYPTED_CONTRIBUTION_ARRAY,
    SEALED_CONSENSUS_ARRAY,
    SPEC_CONFIG_KEY,
    SecureConsensusSpec,
)
from flhet_strategies.privacy.paillier import (
    CiphertextAggregator,
    EncryptedVector,
    KeyHolder,
    SecureSumCodec,
    save_key_holder,
)
from flhet_strategies.weighting.base import uniform_weights
from flhet_strategies.message_api import (
    CONFIG_KEY,
    METRICS_KEY,
    PLAN_KEY,
    REPLY_KEY,
    FedConsensus,
)
from flhet_strategies.faces.records import arrays_to_record, record_to_arrays
from flhet_strategies.secure_consensus_strategy import SecureConsensus
from key_audit import assert_holds_no_private_key

NUM_PROXY, CLASSES, PER_ROUND = 300, 10, 40
NODES = {101: 0, 102: 1, 103: 2, 104: 3}   # Flower node id -> client id
COUNTS = np.array([
    [0, 0, 0, 40, 50, 60, 70, 80, 90, 100],
    [100, 90, 80, 70, 0, 0, 0, 10, 20, 30],
    [5, 5, 5, 5, 5, 5, 5, 5, 5, 5],
    [30, 30, 30, 30, 30, 30, 30, 30, 30, 30],
])


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
    """Grid stand-in: lists the nodes, and delivers the wrapper's own messages (delegated
    decryption) through each node's mod in a real ClientApp, serialized both ways."""

    def __init__(self, mods: dict | None = None) -> None:
        self.mods = mods or {}
        self.sent: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(NODES)

    def send_and_receive(self, messages, timeout=None) -> list[Message]:
        self.sent.extend(messages)
        return deliver(messages, self.mods)


def deliver(messages, mods) -> list[Message]:
    """What a Grid does: give each message an id, run the node's ClientApp (its mod, an
    evaluate function, and a train function that decryption requests must not reach)."""
    replies = []
    for msg in messages:
        msg.metadata.__dict__["_message_id"] = str(uuid4())
        client_id = NODES[msg.metadata.dst_node_id]
        app = ClientApp(mods=[mods[client_id]])
        app.train()(_train_must_not_run)
        app.evaluate()(_evaluate)
        replies.append(transported(app(transported(msg), context(client_id))))
    return replies


def _train_must_not_run(msg: Message, ctx: Context) -> Message:
    raise AssertionError("the mod answers decryption requests itself")


def _evaluate(msg: Message, ctx: Context) -> Message:
    metrics = {"client_accuracy": 0.5, "global_accuracy": 0.4, "client-id": NODES[ctx.node_id]}
    return Message(RecordDict({METRICS_KEY: MetricRecord(metrics)}), reply_to=msg)


def transported(msg: Message) -> Message:
    """The message as the other side receives it (serialized and parsed again)."""
    return message_from_proto(message_to_proto(msg))


def context(client_id: int, node_config: dict | None = None) -> Context:
    node_id = {cid: nid for nid, cid in NODES.items()}[client_id]
    return Context(run_id=1, node_id=node_id, node_config=node_config or {},
                   state=RecordDict(), run_config={})


def spec_of(msg: Message) -> SecureConsensusSpec:
    return SecureConsensusSpec.from_json(msg.content.config_records[CONFIG_KEY][SPEC_CONFIG_KEY])


def client_logits(client_id: int, server_round: int, rows: int) -> np.ndarray:
    rng = np.random.default_rng([client_id, server_round])
    return (rng.normal(size=(rows, CLASSES)) * 3).astype(np.float32)


def client_app(client_id: int, seen: list):
    """A train handler replying like clients.client_app: logits, class counts, metrics."""

    def handler(msg: Message, ctx: Context) -> Message:
        config = msg.content.config_records[CONFIG_KEY]
        plan = RoundPlan.from_arrays(int(config["server-round"]),
                                     record_to_arrays(msg.content.array_records[PLAN_KEY]))
        seen.append(plan)
        content = RecordDict({
            REPLY_KEY: arrays_to_record({
                "logits": client_logits(client_id, plan.server_round, len(plan.proxy_indices)),
                "class_counts": COUNTS[client_id]}),
            METRICS_KEY: MetricRecord({"num-examples": int(COUNTS[client_id].sum()),
                                       "client-id": client_id, "train_loss": 1.0,
                                       "kd_loss": 0.5}),
        })
        return Message(content, reply_to=msg)

    return handler


def secure_strategy(holder: KeyHolder, decryption: str = "delegate", **inner) -> SecureConsensus:
    fed = FedConsensus(num_proxy=NUM_PROXY, num_classes=CLASSES, proxy_per_round=PER_ROUND,
                       min_available_nodes=len(NODES), **inner)
    return SecureConsensus(fed, holder.public_key, max_examples=1000, decryption=decryption)


def holder_mods(holder: KeyHolder) -> dict[int, PaillierConsensusMod]:
    return {cid: PaillierConsensusMod(key_holder=holder) for cid in NODES.values()}


def run_round(strategy, server_round, mods, seen, drop=(), extra_replies=(), grid=None):
    """Configure a round, let every client's mod and app answer, aggregate the replies."""
    messages = list(strategy.configure_train(server_round, ArrayRecord(), ConfigRecord(),
                                             grid or LocalGrid(mods)))
    replies = []
    for msg in messages:
        client_id = NODES[msg.metadata.dst_node_id]
        if client_id in drop:
            continue
        replies.append(mods[client_id](transported(msg), context(client_id),
                                       client_app(client_id, seen[client_id])))
    replies = [transported(r) for r in replies] + list(extra_replies)
    return messages, replies, strategy.aggregate_train(server_round, replies)


# ---------------------------------------------------------------- the protocol end to end


@pytest.mark.parametrize("decryption", ["delegate", "every_client"])
def test_two_secure_rounds_give_every_client_the_plaintext_consensus(holder, decryption) -> None:
    strategy = secure_strategy(holder, decryption)
    mods = holder_mods(holder)
    seen: dict[int, list] = {cid: [] for cid in NODES.values()}

    messages, replies, (record, metrics) = run_round(strategy, 1, mods, seen, drop=(3,))
    spec = spec_of(messages[0])
    assert spec.max_summands == 4 and spec.key_fingerprint == holder.fingerprint.hex()
    for reply in replies:   # what the server receives: one uint8 share, no predictions
        arrays = record_to_arrays(reply.content.array_records[REPLY_KEY])
        assert set(arrays) == {ENCRYPTED_CONTRIBUTION_ARRAY}
        assert arrays[ENCRYPTED_CONTRIBUTION_ARRAY].dtype == np.uint8
        assert reply.content.metric_records[METRICS_KEY]["num-examples"] > 0
    assert all(len(plan.consensus_indices) == 0 for cid in (0, 1, 2) for plan in seen[cid])
    assert metrics["num-accepted"] == 3 and metrics["num-rejected"] == 0
    assert set(record) == {ENCRYPTED_CONSENSUS_ARRAY, "consensus_indices"}
    entry = strategy.history[0]
    assert entry["accepted"] == ["0", "1", "2"] and entry["num_failures"] == 0
    assert entry["bytes_up"] == sum(
        r.content.array_records[REPLY_KEY][ENCRYPTED_CONTRIBUTION_ARRAY].numpy().nbytes
        for r in replies)

    grid = LocalGrid(mods)
    messages, _, _ = run_round(strategy, 2, mods, seen, grid=grid)
    plan_sent = record_to_arrays(messages[0].content.array_records[PLAN_KEY])
    assert plan_sent["consensus"].shape == (0, CLASSES)      # no plaintext from the server
    assert strategy.history[1]["consensus_decryption"] == (
        "delegated" if decryption == "delegate" else "every_client")
    if decryption == "delegate":   # one request, to a rotating node; the plan holds a seal
        assert len(grid.sent) == 1 and DECRYPT_REQUEST_KEY in grid.sent[0].content.array_records
        assert grid.sent[0].metadata.dst_node_id == sorted(NODES)[2 % len(NODES)]
        assert ENCRYPTED_CONSENSUS_ARRAY not in plan_sent
        assert plan_sent[SEALED_CONSENSUS_ARRAY].dtype == np.uint8
    else:
        assert not grid.sent and SEALED_CONSENSUS_ARRAY not in plan_sent
        assert EncryptedVector.from_array(plan_sent[ENCRYPTED_CONSENSUS_ARRAY],
                                          holder.public_key).num_summands == 3
    round_one = strategy.server.protocol.proxy_indices(1)
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
    spec = strategy.spec(1, 4)
    assert spec.value_bits == 8 and spec.weighting == "uniform"
    mods = {cid: PaillierConsensusMod(key_holder=holder) for cid in NODES.values()}
    seen: dict[int, list] = {cid: [] for cid in NODES.values()}
    run_round(strategy, 1, mods, seen)
    run_round(strategy, 2, mods, seen)
    config = ConsensusConfig(class_vote_weighting=False)
    expected = logit_consensus(np.stack([client_logits(cid, 1, PER_ROUND) for cid in range(4)]),
                               np.ones(4), config)
    assert np.abs(seen[0][-1].consensus - expected).mean() < 2e-3


# ---------------------------------------------------------------- bad replies


def test_foreign_key_malformed_and_plaintext_replies_are_rejected_and_the_round_goes_on(
    holder, other_holder
) -> None:
    strategy = secure_strategy(holder)
    mods = {cid: PaillierConsensusMod(key_holder=holder) for cid in NODES.values()}
    seen: dict[int, list] = {cid: [] for cid in NODES.values()}
    messages = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), LocalGrid(mods)))
    spec = spec_of(messages[0])
    good = [transported(mods[cid](transported(messages[cid]), context(cid),
                                  client_app(cid, seen[cid]))) for cid in (0, 1)]
    share = good[0].content.array_records[REPLY_KEY][ENCRYPTED_CONTRIBUTION_ARRAY].numpy()

    def reply(client_id, arrays, error=None):
        msg = transported(messages[client_id % len(messages)])
        if error is not None:
            return transported(Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                             reason=error), reply_to=msg))
        return transported(Message(RecordDict({
            REPLY_KEY: arrays_to_record(arrays),
            METRICS_KEY: MetricRecord({"num-examples": 100, "client-id": client_id})}),
            reply_to=msg))

    foreign_codec = SecureSumCodec(other_holder.public_key, spec.num_values, spec.max_summands,
                                   (0.0, float((1 << spec.value_bits) - 1)), spec.value_bits,
                                   workers=1)
    foreign = foreign_codec.encrypt(spec.encode(client_logits(2, 1, PER_ROUND), COUNTS[2], 50))
    bad = [
        reply(2, {ENCRYPTED_CONTRIBUTION_ARRAY: foreign.to_array()}),
        reply(3, {ENCRYPTED_CONTRIBUTION_ARRAY: share[:-7]}),
        reply(4, {"logits": client_logits(4, 1, PER_ROUND), "class_counts": COUNTS[0]}),
        reply(5, {}, error="out of memory"),
    ]
    record, metrics = strategy.aggregate_train(1, good + bad)
    entry = strategy.history[0]
    assert entry["accepted"] == ["0", "1"]
    assert "another" in entry["rejected"]["2"] or "key" in entry["rejected"]["2"]
    assert "bytes" in entry["rejected"]["3"]
    assert "PaillierConsensusMod" in entry["rejected"]["4"]
    assert entry["num_failures"] == 4 and metrics["num-rejected"] == 4
    encrypted = EncryptedVector.from_array(record[ENCRYPTED_CONSENSUS_ARRAY].numpy(),
                                           holder.public_key)
    assert encrypted.num_summands == 2
    spec.decode(holder.decrypt_sum(encrypted), 2)   # the sum of the two good shares decodes


def test_a_share_of_another_layout_or_a_presummed_share_is_rejected(holder) -> None:
    strategy = secure_strategy(holder)
    mods = {cid: PaillierConsensusMod(key_holder=holder) for cid in NODES.values()}
    messages = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), LocalGrid(mods)))
    replies = [transported(mods[cid](transported(messages[cid]), context(cid),
                                     client_app(cid, []))) for cid in range(4)]
    spec = strategy.spec(1, 4)

    def codec(max_summands):
        return SecureSumCodec(holder.public_key, spec.num_values, max_summands,
                              (0.0, float((1 << spec.value_bits) - 1)), spec.value_bits,
                              workers=1)

    def share(client_id, codec_):
        return codec_.encrypt(spec.encode(client_logits(client_id, 1, PER_ROUND),
                                          COUNTS[client_id], 100))

    other_layout = share(2, codec(2))   # carry room for 2 clients, not the round's 4
    replies[2].content[REPLY_KEY] = arrays_to_record(
        {ENCRYPTED_CONTRIBUTION_ARRAY: other_layout.to_array()})
    summed = CiphertextAggregator(holder.public_key).add(share(2, codec(4)),
                                                         share(3, codec(4))).result()
    replies[3].content[REPLY_KEY] = arrays_to_record(
        {ENCRYPTED_CONTRIBUTION_ARRAY: summed.to_array()})
    strategy.aggregate_train(1, replies)
    entry = strategy.history[0]
    assert entry["accepted"] == ["0", "1"]
    assert "layout" in entry["rejected"]["2"]
    assert "one client's vector" in entry["rejected"]["3"]


# ---------------------------------------------------------------- keys on the server


def test_the_server_wrapper_holds_no_private_key(holder) -> None:
    strategy = secure_strategy(holder)
    mods = {cid: PaillierConsensusMod(key_holder=holder) for cid in NODES.values()}
    seen: dict[int, list] = {cid: [] for cid in NODES.values()}
    run_round(strategy, 1, mods, seen)
    run_round(strategy, 2, mods, seen)
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


# ---------------------------------------------------------------- the client mod


def _train_message(holder, strategy=None, server_round: int = 1, mods=None) -> Message:
    strategy = strategy or secure_strategy(holder)
    return transported(list(strategy.configure_train(server_round, ArrayRecord(),
                                                     ConfigRecord(), LocalGrid(mods)))[0])


def test_mod_refuses_to_send_plaintext_when_the_server_asks_for_none(holder) -> None:
    msg = transported(Message(RecordDict({CONFIG_KEY: ConfigRecord({"server-round": 1})}),
                              dst_node_id=101, message_type=MessageType.TRAIN))
    calls: list = []
    reply = PaillierConsensusMod(key_holder=holder)(msg, context(0), client_app(0, calls))
    assert reply.has_error() and not calls
    assert reply.error.code == ErrorCode.MOD_FAILED_PRECONDITION
    assert "refusing to send plaintext" in reply.error.reason


def test_mod_passes_evaluate_messages_and_plaintext_runs_when_allowed(holder) -> None:
    evaluate = Message(RecordDict({CONFIG_KEY: ConfigRecord({})}), dst_node_id=101,
                       message_type=MessageType.EVALUATE)
    handled: list = []

    def evaluate_app(msg, ctx):
        handled.append(msg)
        return Message(RecordDict({METRICS_KEY: MetricRecord({"client_accuracy": 0.5})}),
                       reply_to=msg)

    mod = PaillierConsensusMod(key_holder=holder)
    assert not mod(evaluate, context(0), evaluate_app).has_error()
    assert handled
    plain = Message(RecordDict({CONFIG_KEY: ConfigRecord({"server-round": 1}),
                                PLAN_KEY: arrays_to_record({
                                    "proxy_indices": np.arange(5),
                                    "consensus_indices": np.zeros(0, np.int64),
                                    "consensus": np.zeros((0, CLASSES), np.float32)})}),
                    dst_node_id=101, message_type=MessageType.TRAIN)
    reply = PaillierConsensusMod(key_holder=holder, require_secure=False)(
        plain, context(0), client_app(0, []))
    assert "logits" in reply.content.array_records[REPLY_KEY]
    # A Flower App's baselines share the federation: only the listed phases go in clear.
    mod = PaillierConsensusMod(key_holder=holder, plaintext_phases=("local_only",))
    for phase, allowed in (("local_only", True), ("main", False)):
        msg = transported(plain)
        msg.content.config_records[CONFIG_KEY]["flhet-phase"] = phase
        reply = mod(msg, context(0), client_app(0, []))
        assert reply.has_error() != allowed
    assert "phase 'main'" in reply.error.reason


def test_mod_refuses_a_spec_for_another_key(holder, other_holder) -> None:
    calls: list = []
    reply = PaillierConsensusMod(key_holder=other_holder)(_train_message(holder), context(0),
                                                          client_app(0, calls))
    assert reply.has_error() and not calls
    assert holder.fingerprint.hex() in reply.error.reason


@pytest.mark.parametrize("decryption, array", [("every_client", ENCRYPTED_CONSENSUS_ARRAY),
                                               ("delegate", SEALED_CONSENSUS_ARRAY)])
def test_a_consensus_that_does_not_decrypt_is_reported_and_training_goes_on(
    holder, decryption, array
) -> None:
    strategy = secure_strategy(holder, decryption)
    mods = holder_mods(holder)
    seen: dict[int, list] = {cid: [] for cid in NODES.values()}
    run_round(strategy, 1, mods, seen)
    msg = _train_message(holder, strategy, 2, mods)  # round 2 plan, with the sum or its seal
    plan = record_to_arrays(msg.content.array_records[PLAN_KEY])
    corrupted = plan[array].copy()
    corrupted[-3] ^= 0x5A                            # flip bits near the end
    plan[array] = corrupted
    msg.content[PLAN_KEY] = arrays_to_record(plan)
    calls: list = []
    reply = mods[0](msg, context(0), client_app(0, calls))
    assert not reply.has_error()
    assert len(calls[0].consensus_indices) == 0      # trained without a consensus
    assert reply.content.metric_records[METRICS_KEY][DECRYPT_FAILED_METRIC] == 1.0
    _, metrics = strategy.aggregate_train(2, [transported(reply)])
    assert metrics["num-decrypt-failed"] == 1 and metrics["num-accepted"] == 1


def test_mod_errors_on_replies_outside_the_protocol(holder) -> None:
    def fedavg_like_app(msg, ctx):
        return Message(RecordDict({"arrays": arrays_to_record({"w": np.ones(3)})}), reply_to=msg)

    reply = PaillierConsensusMod(key_holder=holder)(_train_message(holder), context(0),
                                                    fedavg_like_app)
    assert reply.has_error() and "'logits'" in reply.error.reason


def test_mod_reads_the_key_file_named_in_the_node_config_inside_a_client_app(holder,
                                                                             tmp_path) -> None:
    path = save_key_holder(holder, tmp_path / "paillier_private.json")
    app = ClientApp(mods=[PaillierConsensusMod()])
    app.train()(client_app(0, []))
    reply = app(_train_message(holder), context(0, {"paillier-key-path": str(path)}))
    assert not reply.has_error()
    assert set(reply.content.array_records[REPLY_KEY]) == {ENCRYPTED_CONTRIBUTION_ARRAY}
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
    wrong_key = {**mods, 2: PaillierConsensusMod(key_holder=other_holder)}  # round 2's decryptor
    messages, _, _ = run_round(strategy, 2, mods, seen, grid=LocalGrid(wrong_key))
    plan_sent = record_to_arrays(messages[0].content.array_records[PLAN_KEY])
    assert ENCRYPTED_CONSENSUS_ARRAY in plan_sent and SEALED_CONSENSUS_ARRAY not in plan_sent
    assert strategy.history[1]["consensus_decryption"] == "every_client"
    consensus = [seen[cid][-1].consensus for cid in NODES.values()]
    assert consensus[0].shape == (PER_ROUND, CLASSES)
    assert all(np.array_equal(c, consensus[0]) for c in consensus)


def test_the_decryption_request_rides_along_with_the_evaluation(holder) -> None:
    strategy = secure_strategy(holder)
    mods = holder_mods(holder)
    seen: dict[int, list] = {cid: [] for cid in NODES.values()}
    run_round(strategy, 1, mods, seen)
    grid = LocalGrid(mods)
    evaluation = list(strategy.configure_evaluate(1, ArrayRecord(), ConfigRecord(), grid))
    requests = [m for m in evaluation if DECRYPT_REQUEST_KEY in m.content.array_records]
    assert len(evaluation) == len(NODES) + 1 and len(requests) == 1
    metrics = strategy.aggregate_evaluate(1, deliver(evaluation, mods))
    assert metrics["client_accuracy_mean"] == 0.5   # the answer did not reach the inner summary
    messages, _, _ = run_round(strategy, 2, mods, seen, grid=grid)
    assert not grid.sent                             # nothing more to ask before round 2
    plan_sent = record_to_arrays(messages[0].content.array_records[PLAN_KEY])
    assert SEALED_CONSENSUS_ARRAY in plan_sent
    assert strategy.history[1]["consensus_decryption"] == "delegated"
    expected = logit_consensus(np.stack([client_logits(cid, 1, PER_ROUND) for cid in range(4)]),
                               COUNTS.sum(axis=1).astype(float), ConsensusConfig(), COUNTS)
    assert np.abs(seen[0][-1].consensus - expected).mean() < 2e-3
    # After the last round nothing is decrypted for a round that will not come.
    strategy.server.num_rounds = 2
    last = list(strategy.configure_evaluate(2, ArrayRecord(), ConfigRecord(), grid))
    assert len(last) == len(NODES)
    assert not any(DECRYPT_REQUEST_KEY in m.content.array_records for m in last)
