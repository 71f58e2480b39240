"""Claims checked before aggregation: ids, example counts, label histograms.

The round driver both Flower faces share screens every training reply with a
:class:`ClaimCheck`; the lies a new user tried (1e9 examples, 1e9 in every class, another
client's id) must be rejected with a reason and must not move the aggregate.
"""

from __future__ import annotations

import numpy as np
import pytest

from flhet_strategies import wire
from flhet_strategies.aggregation.claims import ClaimCheck
from flhet_strategies.algorithms.consensus import ConsensusDistillation
from flhet_strategies.algorithms.prototypes import FedProtoServer
from flhet_strategies.faces.compat import CompatStrategy
from flhet_strategies.faces.driver import RoundDriver
from flhet_strategies.faces.message import MessageStrategy
from flhet_strategies.protocol import Reply

CLASSES, PROXY = 3, 40


def consensus_reply(cid: int, counts, rng, *, node: int | None = None,
                    num_examples: float | None = None) -> Reply:
    """A plaintext consensus reply: confident logits on the round's proxy rows."""
    counts = np.asarray(counts, dtype=np.int64)
    logits = rng.normal(size=(PROXY, CLASSES)).astype(np.float32)
    n = int(counts.sum()) if num_examples is None else num_examples
    return Reply(str(cid), {wire.LOGITS: logits, wire.CLASS_COUNTS: counts},
                 {wire.NUM_EXAMPLES: n}, node_id=str(100 + cid if node is None else node))


def drive(claims: ClaimCheck | None, replies: list[Reply]):
    algorithm = ConsensusDistillation(PROXY, CLASSES, proxy_per_round=PROXY)
    driver = RoundDriver(algorithm, num_rounds=1, claims=claims)
    driver.train(1, [r.node_id for r in replies])
    outcome, _ = driver.aggregate_train(1, replies, failures=0)
    return outcome, driver, algorithm


def honest(rng) -> list[Reply]:
    return [consensus_reply(0, [30, 10, 0], rng), consensus_reply(1, [0, 20, 20], rng),
            consensus_reply(2, [5, 5, 30], rng)]


def test_an_inflated_count_takes_the_consensus_without_checks_and_is_rejected_with_enrollment():
    rng = np.random.default_rng(0)
    replies = honest(rng)
    liar = consensus_reply(3, [10, 10, 10], rng)
    liar.metrics[wire.NUM_EXAMPLES] = 10 ** 9
    liar.arrays[wire.CLASS_COUNTS] = np.array([10 ** 9, 0, 0])  # consistent with the claim
    unchecked, _, _ = drive(None, replies + [liar])
    assert unchecked.weights["3"] > 0.9999  # the attack the checks exist for

    enrolled = {"0": 40, "1": 40, "2": 40, "3": 30}
    checked, _, _ = drive(ClaimCheck(enrolled=enrolled), replies + [liar])
    assert "3" not in checked.weights and set(checked.accepted) == {"0", "1", "2"}
    assert "exceeds the 30 examples client 3 enrolled with" in checked.rejected["3"]
    alone, _, _ = drive(ClaimCheck(enrolled=enrolled), replies)
    assert checked.weights == pytest.approx(alone.weights)


def test_a_histogram_of_1e9_in_every_class_disagrees_with_the_count_and_is_rejected():
    rng = np.random.default_rng(1)
    replies = honest(rng)
    liar = consensus_reply(3, [10, 10, 10], rng)
    liar.arrays[wire.CLASS_COUNTS] = np.full(CLASSES, 10 ** 9)
    outcome, _, algorithm = drive(None, replies + [liar])  # the default check
    assert outcome.rejected["3"] == "class-counts sum to 3000000000 but num-examples is 30"
    _, clean, _ = drive(None, honest(np.random.default_rng(1)))
    assert np.allclose(algorithm.consensus[1], clean.algorithm.consensus[1])


def test_a_client_reporting_another_clients_id_is_not_aggregated_twice():
    rng = np.random.default_rng(2)
    replies = honest(rng)
    impostor = consensus_reply(1, [0, 20, 20], rng, node=999)  # says it is client 1
    outcome, driver, _ = drive(None, replies + [impostor])
    assert outcome.accepted == ["0", "2"]
    assert set(outcome.rejected) == {"1 (node 101)", "1 (node 999)"}
    assert "client id 1 was sent by 2 nodes (101, 999)" in outcome.rejected["1 (node 999)"]
    entry = driver.history.entry(1)
    assert entry["accepted"] == ["0", "2"] and set(entry["weights"]) == {"0", "2"}
    assert entry["num_failures"] == 2


def test_unknown_ids_caps_and_malformed_histograms_each_say_what_was_wrong():
    rng = np.random.default_rng(3)
    stranger = consensus_reply(7, [1, 1, 1], rng)
    big = consensus_reply(0, [300, 0, 0], rng)
    odd = consensus_reply(2, [5, 5, 30], rng)
    odd.arrays[wire.CLASS_COUNTS] = np.array([5.5, 4.5, 30.0])
    check = ClaimCheck(max_examples=100, enrolled={"0": 1000, "1": 40, "2": 40})
    outcome, _, _ = drive(check, [stranger, big, odd, consensus_reply(1, [0, 20, 20], rng)])
    assert outcome.accepted == ["1"]
    assert outcome.rejected["7"] == "client id 7 did not enroll (3 clients did)"
    assert outcome.rejected["0"] == "num-examples 300 exceeds the cap of 100"
    assert outcome.rejected["2"] == "class-counts must be non-negative integers"


def test_a_bad_count_is_left_to_the_algorithm_and_a_missing_array_is_named():
    rng = np.random.default_rng(4)
    negative = consensus_reply(0, [30, 10, 0], rng, num_examples=-5)
    empty = consensus_reply(1, [0, 20, 20], rng)
    del empty.arrays[wire.LOGITS]
    outcome, _, _ = drive(None, [negative, empty, consensus_reply(2, [5, 5, 30], rng)])
    assert outcome.rejected["0"] == "num_examples must be positive, got -5"
    assert outcome.rejected["1"] == "the reply has no 'logits' array; found ['class_counts']"


def test_bound_ids_keep_their_node_across_rounds_and_the_binding_survives_a_checkpoint():
    check = ClaimCheck(bind_nodes=True)
    first = Reply("4", {}, {wire.NUM_EXAMPLES: 10}, node_id="40")
    assert check.screen(1, [first]) == ([first], {})
    restored = ClaimCheck(bind_nodes=True)
    restored.load_state_dict(check.state_dict())
    later = Reply("4", {}, {wire.NUM_EXAMPLES: 10}, node_id="41")
    assert restored.screen(2, [later]) == ([], {"4": "client id 4 belongs to node 40, not "
                                                   "node 41"})
    assert ClaimCheck().screen(2, [later]) == ([later], {})  # unbound by default


def test_prototype_replies_are_screened_the_same_way():
    rng = np.random.default_rng(5)
    server = FedProtoServer(CLASSES, 4)
    driver = RoundDriver(server, num_rounds=1, claims=ClaimCheck(enrolled={"0": 20, "1": 20}))
    driver.train(1, ["a", "b"])
    protos = rng.normal(size=(CLASSES, 4)).astype(np.float32)
    good = Reply("0", {wire.PROTOTYPES: protos, wire.CLASS_COUNTS: np.array([10, 10, 0])},
                 {wire.NUM_EXAMPLES: 20}, node_id="a")
    liar = Reply("1", {wire.PROTOTYPES: -protos, wire.CLASS_COUNTS: np.array([0, 0, 10 ** 6])},
                 {wire.NUM_EXAMPLES: 10 ** 6}, node_id="b")
    outcome, _ = driver.aggregate_train(1, [good, liar], failures=0)
    assert outcome.accepted == ["0"] and "enrolled with" in outcome.rejected["1"]
    assert np.allclose(server.prototypes[0][:2], protos[:2])
    assert not server.prototypes[1][2]  # the liar's class got no prototype


@pytest.mark.parametrize("face", [MessageStrategy, CompatStrategy])
def test_both_faces_take_a_claim_check_and_keep_it_when_rebuilt(face):
    check = ClaimCheck(max_examples=5)
    strategy = face(FedProtoServer(CLASSES, 4), claims=check)
    assert strategy.driver.claims is check
    assert face(FedProtoServer(CLASSES, 4), **strategy.face_settings()).driver.claims is check
    assert isinstance(face(FedProtoServer(CLASSES, 4)).driver.claims, ClaimCheck)
    with pytest.raises(TypeError, match="claims must be a ClaimCheck"):
        face(FedProtoServer(CLASSES, 4), claims={"max_examples": 5})


@pytest.mark.parametrize("kwargs, message", [
    ({"max_examples": 0}, "max_examples must be a positive integer"),
    ({"max_examples": 2.5}, "max_examples must be a positive integer"),
    ({"enrolled": {"0": 0}}, "enrolled count of client 0 must be a positive integer"),
    ({"enrolled": {"0": True}}, "enrolled count of client 0 must be a positive integer"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClaimCheck(**kwargs)


def test_flhet_sim_enrolls_every_client_with_its_partition_size():
    from simulations.config import load_config
    from simulations.experiment import build_split, build_strategy

    cfg = load_config("simulations/configs/fmnist_hetero.toml")
    split = build_split(cfg)
    claims = build_strategy(cfg).driver.claims
    assert claims.enrolled == {str(i): len(c.train) for i, c in enumerate(split.clients)}
    assert len(claims.enrolled) == cfg.data.num_clients
