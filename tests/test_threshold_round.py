"""Threshold Paillier in the round: SecureConsensus with a t-of-n key, on real Flower Messages.

A real 2048-bit threshold key for 4 clients (t = 3) from ``deal_threshold_keys``; clients
sign their shares, ``t + 1`` decryptors return partial decryptions sealed for the cohort,
the next round's clients combine ``t`` of them. The harness (stand-in client apps that speak
flhet's wire format, Flower's protobuf round trip) is ``test_secure_consensus_strategy``'s.
"""

from __future__ import annotations

import json
import stat

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord

from clients.faces.wrappers import PaillierMod
from clients.privacy.paillier import PaillierStep
from clients.privacy.step import StepEnv
from flhet_strategies import wire
from flhet_strategies.aggregation.logit_consensus import ConsensusConfig, logit_consensus
from flhet_strategies.privacy.paillier import (
    EncryptedVector,
    KeyHolder,
    MalformedPayloadError,
    SecureSumError,
    deal_threshold_keys,
    load_threshold_cohort,
    load_threshold_holder,
)
from flhet_strategies.privacy.paillier.client_cache import clear_client_caches, resolve_key_holder
from flhet_strategies.privacy.paillier.secure_sum import SecureSum
from flhet_strategies.privacy.paillier.spec import SecureSumSpec
from flhet_strategies.privacy.paillier.threshold import PartialDecryption
from flhet_strategies.privacy.paillier.threshold_client import (
    ThresholdSumClient,
    partial_context,
    sum_digest,
)
from flhet_strategies.privacy.paillier.threshold_keys import ThresholdHolder
from flhet_strategies.protocol import Instruction, Reply
from flhet_strategies.strategies import FedConsensus, SecureConsensus
from key_audit import reachable
from test_secure_consensus_strategy import (  # noqa: F401 - task_identity is an autouse fixture
    CLASSES,
    CONTEXT_KEY,
    COUNTS,
    NODES,
    NUM_PROXY,
    PER_ROUND,
    LocalGrid,
    arrays_of,
    client_app,
    client_logits,
    config_of,
    context,
    deliver,
    requests_in,
    run_round,
    task_identity,
    transported,
)

T = 3


@pytest.fixture(autouse=True)
def fresh_run(files):
    """Each test is a new run under the module's key: forget which sums were decrypted
    (this process's memory and the share files' decryption logs)."""
    def forget():
        clear_client_caches()
        for log_file in files.public_path.parent.glob("*.decryptions.json"):
            log_file.unlink()

    forget()
    yield
    forget()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return deal_threshold_keys(tmp_path_factory.mktemp("threshold"), list(map(str, NODES.values())),
                               T)


@pytest.fixture(scope="module")
def cohort(files):
    return load_threshold_cohort(files.public_path)


@pytest.fixture(scope="module")
def holders(files) -> dict[int, ThresholdHolder]:
    return {cid: load_threshold_holder(files.share_paths[str(cid)]) for cid in NODES.values()}


def threshold_strategy(cohort, checkpoint=None, **options) -> SecureConsensus:
    fed = FedConsensus(num_proxy=NUM_PROXY, num_classes=CLASSES, proxy_per_round=PER_ROUND,
                       min_available_nodes=len(NODES), checkpoint=checkpoint)
    return SecureConsensus(fed, cohort, max_examples=1000, **options)


def threshold_mods(holders) -> dict[int, PaillierMod]:
    return {cid: PaillierMod(key_holder=h) for cid, h in holders.items()}


def plaintext_consensus(arrived) -> np.ndarray:
    return logit_consensus(np.stack([client_logits(cid, 1, PER_ROUND) for cid in arrived]),
                           COUNTS[arrived].sum(axis=1).astype(float), ConsensusConfig(),
                           COUNTS[arrived])


def evaluate_with(strategy, server_round, mods, answering=None):
    """Evaluation messages delivered (only to ``answering`` client ids, if given)."""
    messages = list(strategy.configure_evaluate(server_round, ArrayRecord(), ConfigRecord(),
                                                LocalGrid()))
    kept = [m for m in messages if answering is None or NODES[m.metadata.dst_node_id] in answering]
    return messages, strategy.aggregate_evaluate(server_round, deliver(kept, mods))


def seen_by_all():
    return {cid: [] for cid in NODES.values()}


# ---------------------------------------------------------------- the protocol end to end


def test_t_partials_sealed_for_the_cohort_give_every_client_the_plaintext_consensus(
        cohort, holders) -> None:
    strategy = threshold_strategy(cohort)
    assert strategy.algorithm.decryption == "threshold" and strategy.algorithm.decryptors == T + 1
    mods, seen = threshold_mods(holders), seen_by_all()
    _, replies, (record, metrics) = run_round(strategy, 1, mods, seen)
    for reply in replies:   # an encrypted share and its signature, nothing in clear
        arrays = arrays_of(reply)
        assert set(arrays) == {wire.ENCRYPTED_SHARE, wire.SHARE_SIGNATURE}
        assert arrays[wire.SHARE_SIGNATURE].shape == (64,)
    assert metrics["num-accepted"] == 4

    evaluation, summary = evaluate_with(strategy, 1, mods)
    assert summary["client_accuracy_mean"] == 0.5
    requests = requests_in(evaluation)
    assert len(requests) == T + 1
    carried = arrays_of(requests[0])   # every signed share, not the sum
    assert wire.ENCRYPTED_SUM not in carried
    assert sorted(k for k in carried if k.startswith(wire.SIGNED_SHARE_PREFIX)) == \
        [wire.SIGNED_SHARE_PREFIX + str(c) for c in range(4)]

    messages, _, _ = run_round(strategy, 2, mods, seen)
    plan = arrays_of(messages[0])
    sealed = [plan[k] for k in plan if k.startswith(wire.SEALED_PARTIAL_PREFIX)]
    assert len(sealed) == T + 1 and wire.SEALED_SUM not in plan
    assert plan["consensus"].shape == (0, CLASSES)          # no plaintext from the server
    assert strategy.history[1]["sum_decryption"] == "threshold"
    expected = plaintext_consensus([0, 1, 2, 3])
    received = [seen[cid][-1] for cid in NODES.values()]
    for got in received:
        np.testing.assert_array_equal(got.consensus_indices, strategy.core.proxy_indices(1))
        np.testing.assert_array_equal(got.consensus, received[0].consensus)
    assert np.abs(received[0].consensus - expected).mean() < 2e-3
    assert np.mean(received[0].consensus.argmax(1) == expected.argmax(1)) >= 0.95

    # What the server relays does not decrypt without a client: the sealed partials do
    # not even parse as partial decryptions, let alone verify.
    vector = EncryptedVector.from_array(plan[wire.ENCRYPTED_SUM], cohort.public_key)
    ciphertexts = [int(c) for c in vector.ciphertexts]
    for blob in sealed:
        with pytest.raises((MalformedPayloadError, SecureSumError)):
            cohort.key.combine(ciphertexts, [PartialDecryption.from_bytes(blob.tobytes(),
                                                                           cohort.key)] * T)


def test_n_minus_t_decryptors_may_drop_out_and_fewer_than_t_leave_the_round_without_a_sum(
        cohort, holders) -> None:
    strategy = threshold_strategy(cohort)
    mods, seen = threshold_mods(holders), seen_by_all()
    run_round(strategy, 1, mods, seen)
    evaluation, _ = evaluate_with(strategy, 1, mods, answering={0, 1, 2})   # node 3 gone
    assert len(requests_in(evaluation)) == T + 1
    run_round(strategy, 2, mods, seen)
    assert strategy.history[1]["sum_decryption"] == "threshold"
    assert np.abs(seen[0][-1].consensus - plaintext_consensus([0, 1, 2, 3])).mean() < 2e-3

    evaluation, _ = evaluate_with(strategy, 2, mods, answering={0, 1})       # t - 1 answer
    messages, _, _ = run_round(strategy, 3, mods, seen)
    plan = arrays_of(messages[0])
    assert not any(k.startswith(wire.SEALED_PARTIAL_PREFIX) for k in plan)
    assert wire.ENCRYPTED_SUM not in plan
    assert strategy.history[2]["sum_decryption"] == "none"
    assert all(len(seen[cid][-1].consensus_indices) == 0 for cid in NODES.values())


def test_a_client_combining_t_minus_one_partials_learns_nothing_and_a_forged_one_is_skipped(
        cohort, holders) -> None:
    strategy = threshold_strategy(cohort)
    mods, seen = threshold_mods(holders), seen_by_all()
    run_round(strategy, 1, mods, seen)
    evaluate_with(strategy, 1, mods)
    messages, _, _ = run_round(strategy, 2, mods, seen)
    plan = arrays_of(messages[0])
    spec = SecureSumSpec.from_json(config_of(messages[0])[wire.RELAYED_SPEC])
    sealed = [plan[f"{wire.SEALED_PARTIAL_PREFIX}{j}"] for j in range(T + 1)]
    client = ThresholdSumClient(holders[0])
    exact = client.combine(spec, plan[wire.ENCRYPTED_SUM], sealed)
    with pytest.raises(SecureSumError, match=f"{T - 1} valid partial decryptions, {T} needed"):
        client.combine(spec, plan[wire.ENCRYPTED_SUM], sealed[:T - 1])
    # A decryptor that lies: a partial of another ciphertext, properly sealed for the cohort.
    vector = EncryptedVector.from_array(plan[wire.ENCRYPTED_SUM], cohort.public_key)
    ciphertexts = [int(c) for c in vector.ciphertexts]
    other = [c * c % cohort.key.nsquare for c in ciphertexts]
    liar = holders[3]
    lie = liar.partial_decrypt(other)
    context_bytes = client_context(liar, vector)
    forged = liar.seal(lie.to_bytes(cohort.key), context_bytes)
    mixed = [forged, *sealed[:T]]
    again = client.combine(spec, plan[wire.ENCRYPTED_SUM], mixed)
    np.testing.assert_array_equal(again.numerators["probabilities"],
                                  exact.numerators["probabilities"])
    with pytest.raises(SecureSumError, match=rf"invalid proofs from holders \[{liar.index}\]"):
        client.combine(spec, plan[wire.ENCRYPTED_SUM], [forged, *sealed[:T - 1]])


def client_context(holder, vector) -> bytes:
    return partial_context(holder.fingerprint, sum_digest(vector))


# ---------------------------------------------------------------- a lying server or client


def test_unsigned_forged_and_off_roster_shares_are_rejected_and_the_round_goes_on(
        cohort, holders) -> None:
    strategy = threshold_strategy(cohort)
    mods, seen = threshold_mods(holders), seen_by_all()
    messages = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), LocalGrid()))
    replies = [mods[cid](transported(messages[cid]), context(cid), client_app(cid, seen[cid]))
               for cid in range(4)]
    parsed = [Reply(str(cid), arrays_of(r), {"num-examples": int(COUNTS[cid].sum())})
              for cid, r in enumerate(replies)]
    unsigned = Reply("0", {wire.ENCRYPTED_SHARE: parsed[0].arrays[wire.ENCRYPTED_SHARE]},
                     parsed[0].metrics)
    stolen = Reply("1", parsed[2].arrays, parsed[1].metrics)           # 2's signed share as 1
    stranger = Reply("7", parsed[3].arrays, parsed[3].metrics)
    outcome = strategy.algorithm.aggregate(1, [unsigned, stolen, stranger, parsed[3]])
    assert outcome.accepted == ["3"]
    assert "sent no share signature" in outcome.rejected["0"]
    assert "does not carry its signature" in outcome.rejected["1"]
    assert "not on the key dealer's roster" in outcome.rejected["7"]


def test_a_decryptor_refuses_sums_that_could_isolate_a_share(cohort, holders) -> None:
    strategy = threshold_strategy(cohort)
    mods, seen = threshold_mods(holders), seen_by_all()
    run_round(strategy, 1, mods, seen)
    signed = strategy.algorithm._signed
    spec = strategy.algorithm._sum_spec
    client = ThresholdSumClient(holders[1])
    few = {cid: signed[cid] for cid in ("0", "1")}          # below the dealer's minimum (t)
    with pytest.raises(SecureSumError, match="sum of 2 signed shares; the key dealer's "
                                             f"minimum is {T}"):
        client.partial_for_cohort(spec, 1, few)
    swapped = dict(signed)
    swapped["0"] = (signed["2"][0], signed["0"][1])         # a share under another's name
    with pytest.raises(SecureSumError, match="does not carry its signature for round 1"):
        client.partial_for_cohort(spec, 1, swapped)
    with pytest.raises(SecureSumError, match="does not carry its signature for round 2"):
        client.partial_for_cohort(spec, 2, signed)          # replayed into another round
    three = {cid: signed[cid] for cid in ("0", "1", "2")}
    client.partial_for_cohort(spec, 1, three)
    with pytest.raises(SecureSumError, match="already decrypted another sum for round 1"):
        client.partial_for_cohort(spec, 1, signed)          # difference of two sums = share 3
    # Through the mod, a refusal is an error metric and no partial.
    request = Instruction({**{wire.SIGNED_SHARE_PREFIX + c: s for c, (s, _) in few.items()},
                           **{wire.SHARE_SIGNATURE_PREFIX + c: g for c, (_, g) in few.items()}},
                          {wire.DECRYPT_REQUEST: True, wire.RELAYED_SPEC: spec.to_json(),
                           wire.SERVER_ROUND: 1})
    step, env = PaillierStep(key_holder=holders[2]), StepEnv()
    _, memo = step.before(request, env, "evaluate")
    answer = step.after(request, memo, Reply("2", {}, {"client_accuracy": 0.5}), env,
                        "evaluate")
    assert wire.SEALED_PARTIAL not in answer.arrays
    assert answer.metrics[wire.DECRYPT_ERROR_METRIC] == 1.0


def test_a_node_refuses_to_sign_as_another_client(cohort, holders) -> None:
    with pytest.raises(ValueError, match="holds the key share of client '0' but replies as "
                                         "client '1'"):
        ThresholdSumClient(holders[0]).sign(1, "1", np.zeros(3, np.uint8))


def test_a_key_share_cannot_decrypt_or_seal_alone(cohort, holders) -> None:
    client = ThresholdSumClient(holders[0])
    for method in (client.decrypt, client.seal, client.open_seal):
        with pytest.raises(SecureSumError, match="cannot decrypt or seal a sum alone"):
            method(None, None)


def test_the_server_holds_no_key_share_signing_key_or_seal_key(cohort, holders, files) -> None:
    strategy = threshold_strategy(cohort)
    mods, seen = threshold_mods(holders), seen_by_all()
    run_round(strategy, 1, mods, seen)
    evaluate_with(strategy, 1, mods)
    run_round(strategy, 2, mods, seen)
    objects = reachable(strategy)
    assert not any(isinstance(o, (ThresholdHolder, KeyHolder)) for o in objects)
    secrets = set()
    for cid in NODES.values():
        document = json.loads(files.share_paths[str(cid)].read_text())
        secrets |= {int(document["secret"], 16), bytes.fromhex(document["signing_key"]),
                    bytes.fromhex(document["seal_key"])}
    values = [v for o in objects if hasattr(o, "__dict__") for v in vars(o).values()]
    values += [o for o in objects if isinstance(o, (list, tuple))]
    assert not secrets & {v for v in values if isinstance(v, (int, bytes))}


# ---------------------------------------------------------------- keys and configuration


def test_the_dealer_writes_private_share_files_and_a_public_roster(files, cohort) -> None:
    for path in files.share_paths.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    public = json.loads(files.public_path.read_text())
    assert "secret" not in json.dumps(public) and "seal_key" not in public
    assert sorted(cohort.roster) == ["0", "1", "2", "3"]
    assert cohort.threshold == T and cohort.min_summands == T
    assert files.fingerprint == cohort.fingerprint.hex()


def test_a_folder_of_shares_resolves_to_the_nodes_own_file_by_partition_id(files) -> None:
    folder = files.public_path.parent
    holder = resolve_key_holder(folder, {"partition-id": 2}, {}, "paillier-key-path", "test")
    assert isinstance(holder, ThresholdHolder) and holder.client_id == "2"
    with pytest.raises(ValueError, match="no partition-id to pick this node's share"):
        resolve_key_holder(folder, {}, {}, "paillier-key-path", "test")


def test_tampered_and_foreign_key_files_are_refused(files, tmp_path) -> None:
    document = json.loads(files.share_paths["1"].read_text())
    document["client_id"] = "2"                              # claims another's roster slot
    bad = tmp_path / "share.json"
    bad.write_text(json.dumps(document))
    with pytest.raises(MalformedPayloadError, match="does not hold share 2 on the roster"):
        load_threshold_holder(bad)
    public = json.loads(files.public_path.read_text())
    public["num_shares"] = 5                                 # a holder the dealer never dealt
    bad.write_text(json.dumps(public))
    with pytest.raises(MalformedPayloadError, match="4 verification keys for 5 shares"):
        load_threshold_cohort(bad)
    with pytest.raises(FileNotFoundError, match="deal_threshold_keys"):
        load_threshold_cohort(tmp_path / "missing.json")


def test_threshold_mode_and_threshold_keys_go_together(cohort) -> None:
    algorithm = FedConsensus(num_proxy=NUM_PROXY, num_classes=CLASSES,
                             proxy_per_round=PER_ROUND).algorithm
    with pytest.raises(ValueError, match="decryption='threshold' goes with a threshold key"):
        SecureSum(algorithm, cohort, max_examples=1000, decryption="delegate")
    with pytest.raises(ValueError, match="decryption='threshold' goes with a threshold key"):
        SecureSum(algorithm, KeyHolder.generate().public_key, max_examples=1000,
                  decryption="threshold")
    with pytest.raises(ValueError, match="decryptors is a positive int"):
        SecureSum(algorithm, cohort, max_examples=1000, decryptors=0)
    secure = SecureSum(algorithm, cohort, max_examples=1000, decryptors=2)
    assert "threshold 3 of 4, 2 decryptors a round" in secure.describe()[0]


def test_the_one_sum_a_round_rule_survives_a_fresh_process(cohort, files) -> None:
    """A SuperNode runs every message in a fresh process: the rule lives in a file."""
    strategy = threshold_strategy(cohort)
    mods, seen = threshold_mods({c: load_threshold_holder(files.share_paths[str(c)])
                                 for c in NODES.values()}), seen_by_all()
    run_round(strategy, 1, mods, seen)
    signed, spec = strategy.algorithm._signed, strategy.algorithm._sum_spec
    ThresholdSumClient(load_threshold_holder(files.share_paths["1"])).partial_for_cohort(
        spec, 1, signed)
    log_path = files.share_paths["1"].with_name("paillier_share_1.json.decryptions.json")
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600
    clear_client_caches()                                   # a new process: memory is gone
    fresh = ThresholdSumClient(load_threshold_holder(files.share_paths["1"]))
    fresh.partial_for_cohort(spec, 1, signed)               # the same sum again: fine
    three = {cid: signed[cid] for cid in ("0", "1", "2")}
    with pytest.raises(SecureSumError, match="already decrypted another sum for round 1"):
        fresh.partial_for_cohort(spec, 1, three)


def test_secure_fedavg_refuses_a_threshold_key_share_with_a_clear_error(holders) -> None:
    from flhet_strategies.privacy.paillier.model_client import ModelSumClient

    with pytest.raises(TypeError, match="threshold keys are for the flhet weighted sums"):
        ModelSumClient(holders[0])


def test_a_checkpointed_threshold_server_resumes_with_its_signed_shares_and_partials(
        cohort, holders, tmp_path) -> None:
    """The server's state (roster, signed shares, sealed partials) survives a checkpoint."""
    strategy = threshold_strategy(cohort, checkpoint=tmp_path / "server.pkl")
    mods, seen = threshold_mods(holders), seen_by_all()
    run_round(strategy, 1, mods, seen)
    evaluate_with(strategy, 1, mods)                    # round 1 ends: checkpoint written
    resumed = threshold_strategy(cohort, checkpoint=tmp_path / "server.pkl")
    assert resumed.resume() and resumed.driver.offset == 1
    run_round(resumed, 1, mods, seen)                   # Flower's round 1 of the rest: round 2
    assert [e["round"] for e in resumed.history] == [1, 2]
    assert resumed.history[1]["sum_decryption"] == "threshold"
    assert np.abs(seen[0][-1].consensus - plaintext_consensus([0, 1, 2, 3])).mean() < 2e-3
