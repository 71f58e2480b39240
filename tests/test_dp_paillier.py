"""Distributed DP inside the Paillier secure sum: noisy spec, client steps, server, simulation.

Clients add their noise share (:class:`DpNoiseStep` / ``DpNoiseMod``) before encrypting
(:class:`PaillierStep` / ``PaillierMod``); the server (:class:`SecureSum` around
:class:`DifferentialPrivacy` in distributed mode) multiplies ciphertexts and accounts
epsilon with the realized noise multiplier; clients decrypt the noisy sum and finish it
as the distributed-DP server does without encryption. Real 2048-bit keys throughout.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from flwr.client import NumPyClient

from clients.faces.wrappers import DpNoiseMod, DpNoiseNumPyClient, PaillierMod
from clients.privacy.dp import DpNoiseStep
from clients.privacy.paillier import PaillierStep
from clients.privacy.step import StepEnv
from flhet_strategies import wire
from flhet_strategies.aggregation.logit_consensus import ConsensusConfig, logit_consensus
from flhet_strategies.aggregation.weighted_sum import SumLayout
from flhet_strategies.algorithms.consensus import (
    PROBABILITIES,
    ConsensusSumRule,
    RoundPlan,
    confident_rows,
)
from flhet_strategies.faces.records import instruction_from_compat, reply_to_compat
from flhet_strategies.privacy.dp.noise_share import (
    NoiseShareSettings,
    noise_share,
    noisy_name,
    sums_from_noisy,
)
from flhet_strategies.privacy.dp.settings import PrivateConsensus
from flhet_strategies.privacy.paillier import (
    CiphertextAggregator,
    KeyHolder,
    SecureSumOverflowError,
)
from flhet_strategies.privacy.paillier.key_files import KeyFiles
from flhet_strategies.privacy.paillier.secure_sum import SecureSum
from flhet_strategies.privacy.paillier.spec import SecureSumSpec
from flhet_strategies.privacy.paillier.sum_client import SumClient, finish_relayed
from flhet_strategies.protocol import Instruction, Reply
from flhet_strategies.strategies import (
    FedConsensus,
    FedConsensusCompat,
    SecureConsensus,
    SecureConsensusCompat,
    consensus_algorithm,
)
from key_audit import assert_holds_no_private_key

ROWS, CLASSES, COHORT, NUM_PROXY = 40, 10, 4, 200
NOISY = noisy_name(PROBABILITIES)
NODES = [str(i) for i in range(COHORT)]
Z_SMALL = 0.02


def _config(**top):
    """A 4-client digits experiment (as in test_privacy_simulation), with ``top`` sections."""
    from simulations.config import from_dict

    raw = {
        "name": "dp-paillier-it", "seed": 0, "num_rounds": 2, "api": "message",
        "data": {"dataset": "digits", "num_clients": 4,
                 "partitioner": {"name": "dirichlet", "alpha": 0.5, "min_partition_size": 40},
                 "proxy_size": 300, "proxy_validation_size": 100},
        "strategy": {"proxy_per_round": ROWS, "class_vote_weighting": False},
        "recipe": {"warmup_epochs": 1, "local_epochs": 1, "final_private_epochs": 1},
        "clients": [{"architecture": "cnn_small", "count": 2, "lr": 0.05},
                    {"architecture": "mlp", "count": 2, "lr": 0.05}],
    }
    raw.update(top)
    return from_dict(raw)


@pytest.fixture(scope="module")
def holder() -> KeyHolder:
    return KeyHolder.generate()


@pytest.fixture(scope="module")
def client(holder: KeyHolder) -> SumClient:
    return SumClient(holder, decrypt_workers=1)


def private(z=1.0, era=0.1, min_margin=None, min_rows=0, mode="distributed"):
    """The distributed-DP consensus server half (uniform weights, no class votes)."""
    privacy = PrivateConsensus(z, mode=mode, min_margin=min_margin, min_rows=min_rows, seed=3)
    return consensus_algorithm(NUM_PROXY, CLASSES, ROWS, ConsensusConfig("dsfl", 1.0, era, False),
                               privacy=privacy, population=COHORT)


def dp_secure(holder, **options) -> SecureSum:
    return SecureSum(private(**options), holder.public_key)


def noisy_shares(secure: SecureSum, seed: int, arrived: int = COHORT) -> list[dict]:
    """What DpNoiseStep sends: clipped probabilities plus a noise share, by array name."""
    settings = secure.dp.settings
    share = NoiseShareSettings(settings.noise_multiplier, settings.clip_norm, COHORT,
                               settings.clip_mode)
    base = secure.innermost.sum_layout(1)
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(arrived, ROWS, CLASSES)) * 3
    return [noise_share(base, ConsensusSumRule.terms(base, {"logits": l}, {}), None, share,
                        rng).arrays for l in logits]


def secure_sum(client: SumClient, spec: SecureSumSpec, shares: list[dict]) -> np.ndarray:
    payloads = [client.encrypt(spec, s, {NOISY: np.ones(1)}).payload for s in shares]
    return CiphertextAggregator(client.holder.public_key).add(*payloads).result().to_array()


def proxy_context(start: int = 0) -> dict[str, np.ndarray]:
    return {wire.CONSENSUS_INDICES: np.arange(start, start + ROWS, dtype=np.int64)}


# ---------------------------------------------------------------------- the noisy spec

@pytest.mark.parametrize("arrived", [COHORT, 3])
def test_decrypted_noisy_mean_matches_the_plaintext_sum_to_the_quantization_bound(
        holder, client, arrived):
    secure = dp_secure(holder, z=0.05, era=None)
    spec = secure.spec(1, COHORT)
    term = spec.sum_layout.term(NOISY)
    shares = noisy_shares(secure, seed=arrived, arrived=arrived)
    sums = client.decrypt(spec, secure_sum(client, spec, shares))
    assert sums.count == arrived
    np.testing.assert_array_equal(sums.denominators[NOISY], [arrived])

    exact_mean = np.mean([s[NOISY].astype(np.float64) for s in shares], axis=0)
    bound = term.high
    assert term.low == -bound
    assert bound == pytest.approx(1.0 + 8.0 * 0.05 * np.sqrt(ROWS) / np.sqrt(COHORT))
    assert spec.noise == pytest.approx({"noise_multiplier": 0.05,
                                        "norm_bound": np.sqrt(ROWS), "num_clients": COHORT})
    assert np.abs(sums.mean(term) - exact_mean).max() <= bound / 255 + 1e-12
    assert np.all(spec.error_bound(term, sums.count, sums.denominators[NOISY])
                  == pytest.approx(bound / 255))
    # The finish is the plain distributed-DP server's (here every row is released): the
    # same noisy shares, summed in the clear by DifferentialPrivacy, give the same rows.
    plain = private(z=0.05, era=None)
    finished = finish_relayed(spec, sums, secure.innermost.sum_context(1))
    assert plain.round_allowed(1, COHORT)
    outcome = plain.aggregate(1, [Reply(str(i), dict(s), {wire.NUM_EXAMPLES: 10})
                                  for i, s in enumerate(shares)])
    # Fewer shares than the cohort carry less noise: the realized multiplier.
    assert outcome.privacy["noise_multiplier"] == pytest.approx(0.05 * np.sqrt(arrived / COHORT))
    indices, expected = plain.innermost.consensus
    np.testing.assert_array_equal(finished[wire.CONSENSUS_INDICES],
                                  plain.innermost.proxy_indices(1))
    np.testing.assert_array_equal(indices, plain.innermost.proxy_indices(1))
    assert np.abs(finished[wire.CONSENSUS] - expected).max() < 0.05
    assert (finished[wire.CONSENSUS].argmax(1) == expected.argmax(1)).mean() >= 0.9


def test_withheld_rows_are_dropped_with_their_indices_also_through_the_seal(holder, client):
    secure = dp_secure(holder, z=1.0, min_margin=1.0, min_rows=1)
    spec = secure.spec(1, COHORT)
    arrived = 3
    sums = client.decrypt(spec, secure_sum(client, spec, noisy_shares(secure, 7, arrived)))
    assert sums.count == arrived
    context = proxy_context(100)
    finished = finish_relayed(spec, sums, context)
    kept = finished[wire.CONSENSUS_INDICES]
    assert 0 < len(kept) < ROWS      # z = 1 on 40 rows: many rows are not confident
    assert finished[wire.CONSENSUS].shape == (len(kept), CLASSES)
    assert np.allclose(finished[wire.CONSENSUS].sum(axis=1), 1.0, atol=1e-5)
    # Exactly the rows confident beyond the noise the three shares really carry.
    base = SumLayout.from_dict(spec.sum_layout.params["base"])
    noisy = sums_from_noisy(base, sums.numerators, arrived)
    sum_std = 1.0 * math.sqrt(arrived / COHORT) * np.sqrt(ROWS)    # realized z times S
    keep = confident_rows(noisy.mean(base.term(PROBABILITIES)), sum_std / arrived, 1.0, 1)
    np.testing.assert_array_equal(kept, context[wire.CONSENSUS_INDICES][keep])
    # The delegated path seals the finished arrays; the opened seal gives the same rows.
    opened = client.open_seal(spec, client.seal(spec, finished, context), context)
    assert set(opened) == set(finished)
    for name, value in finished.items():
        np.testing.assert_array_equal(opened[name], value)


def test_values_beyond_the_public_bound_are_clipped_and_counted(holder, client):
    spec = dp_secure(holder).spec(1, COHORT)
    bound = spec.sum_layout.term(NOISY).high
    noisy = np.zeros((ROWS, CLASSES))
    noisy[0, 0], noisy[1, 1] = 10 * bound, -10 * bound
    values, num_clipped = spec.encode({NOISY: noisy}, {NOISY: np.ones(1)})
    assert num_clipped == 2
    assert values[0] == 255 and values[CLASSES + 1] == 0
    assert values.shape == (ROWS * CLASSES + 1,) and values[-1] == 1   # one weight: a summand
    share = client.encrypt(spec, {NOISY: noisy}, {NOISY: np.ones(1)})
    assert share.num_clipped == 2
    sums = client.decrypt(spec, share.payload)
    mean = sums.mean(spec.sum_layout.term(NOISY))
    assert mean[0, 0] == pytest.approx(bound)
    assert mean[1, 1] == pytest.approx(-bound)


def test_sums_no_honest_shares_give_raise_overflow(holder, client):
    spec = dp_secure(holder).spec(1, COHORT)
    good = np.concatenate([np.full(ROWS * CLASSES, 2 * 255.0), [2.0]])
    spec.decode(good, 2)                         # top level from both summands: fine
    too_big = good.copy()
    too_big[5] = 2 * 255 + 1
    with pytest.raises(SecureSumOverflowError, match="top level"):
        spec.decode(too_big, 2)
    bad_votes = good.copy()
    bad_votes[-1] = 3
    with pytest.raises(SecureSumOverflowError, match="weight totals"):
        spec.decode(bad_votes, 2)
    # More shares than the clients split the noise for: the finish refuses the sum.
    five = spec.decode(np.concatenate([np.zeros(ROWS * CLASSES), [5.0]]), 5)
    with pytest.raises(ValueError, match="split the noise for 4"):
        finish_relayed(spec, five, proxy_context())
    # More shares than the layout's carry room: the aggregator refuses the fifth.
    payload = client.encrypt(spec, {NOISY: np.zeros((ROWS, CLASSES))},
                             {NOISY: np.ones(1)}).payload
    aggregator = CiphertextAggregator(holder.public_key).add(*[payload] * COHORT)
    with pytest.raises(SecureSumOverflowError):
        aggregator.add(payload)


def test_spec_with_noise_round_trips_and_refuses_what_it_cannot_do(holder):
    secure = dp_secure(holder, min_margin=2.0, min_rows=10)
    spec = secure.spec(1, COHORT)
    again = SecureSumSpec.from_json(spec.to_json())
    assert again == spec and again.noise == spec.noise
    assert again.noise["num_clients"] == COHORT and again.noise["noise_multiplier"] == 1.0
    # What the clients need to know of the noise, nothing more (the server's seed stays).
    assert set(again.noise) == {"noise_multiplier", "norm_bound", "num_clients"}
    assert "seed" not in spec.to_json()
    base = SumLayout.from_dict(again.sum_layout.params["base"])
    assert base == secure.innermost.sum_layout(1) and base.weighting == "uniform"
    assert base.params["min_rows"] == 10 and base.params["min_margin"] == 2.0
    assert spec.sum_layout.weighting == "uniform" and [t.name for t in spec.sum_layout.terms] \
        == [NOISY]
    assert spec.value_bits == 8 and spec.vote_bits == 1
    assert SecureSum(consensus_algorithm(NUM_PROXY, CLASSES, ROWS), holder.public_key,
                     max_examples=10).spec(1, COHORT).noise is None
    with pytest.raises(ValueError, match="central differential privacy needs the server"):
        SecureSum(private(mode="central"), holder.public_key)
    with pytest.raises(ValueError, match="class_vote_weighting = False"):
        consensus_algorithm(NUM_PROXY, CLASSES, ROWS, ConsensusConfig("dsfl", 1.0, 0.1, True),
                            privacy=PrivateConsensus(1.0, mode="distributed"))
    with pytest.raises(ValueError, match="uniform"):    # sample counts are private data
        from flhet_strategies.algorithms.consensus import ConsensusDistillation
        from flhet_strategies.privacy.dp.mechanism import DifferentialPrivacy

        DifferentialPrivacy(ConsensusDistillation(NUM_PROXY, CLASSES, ROWS,
                                                  ConsensusConfig("dsfl", 1.0, 0.1, False)),
                            PrivateConsensus(1.0, mode="distributed"))


def test_the_paillier_step_encrypts_only_entirely_noised_replies(holder):
    secure = dp_secure(holder)
    spec = secure.spec(1, COHORT)
    step = PaillierStep(key_holder=holder)
    memo = {"spec": spec}
    noisy = noisy_shares(secure, 1, 1)[0]
    metrics = {wire.NUM_EXAMPLES: 10, wire.DP_NOISE_MULTIPLIER: 1.0,
               wire.DP_NUM_CLIENTS: COHORT}
    logits = np.zeros((ROWS, CLASSES), np.float32)
    with pytest.raises(ValueError, match="distributed DP"):     # logits are refused
        step.after(Instruction(), memo, Reply("0", {"logits": logits}, metrics), StepEnv(),
                   "train")
    with pytest.raises(ValueError, match="not entirely noised"):
        step.after(Instruction(), memo, Reply("0", {**noisy, "class_counts": np.ones(CLASSES)},
                                              metrics), StepEnv(), "train")
    with pytest.raises(ValueError, match="does not match the spec"):
        step.after(Instruction(), memo, Reply("0", noisy, {**metrics, wire.DP_NUM_CLIENTS: 3}),
                   StepEnv(), "train")
    reply = step.after(Instruction(), memo, Reply("0", noisy, metrics), StepEnv(), "train")
    assert set(reply.arrays) == {wire.ENCRYPTED_SHARE}
    assert reply.metrics[wire.CLIPPED_METRIC] == 0.0


# ---------------------------------------------------------------------- server and steps

def test_one_round_through_both_client_steps_and_the_server(holder):
    """The instruction goes through PaillierStep then DpNoiseStep, the reply back through
    DpNoiseStep then PaillierStep (what ``mods=[PaillierMod, DpNoiseMod]`` does)."""
    secure = dp_secure(holder, z=Z_SMALL, min_margin=0.0)
    assert secure.round_allowed(1, COHORT)
    instructions = secure.instructions(1, NODES)
    config = instructions["0"].config
    assert config[wire.DP_NUM_CLIENTS] == COHORT and config[wire.DP_NOISE_MULTIPLIER] == Z_SMALL
    assert SumLayout.from_dict(json.loads(config[wire.DP_LAYOUT])) \
        == secure.innermost.sum_layout(1)
    assert SecureSumSpec.from_json(config[wire.SECURE_SPEC]) == secure.spec(1, COHORT)
    paillier, dp = PaillierStep(key_holder=holder), DpNoiseStep(rng=np.random.default_rng(1))
    env = StepEnv()
    rng = np.random.default_rng(0)
    replies, sent = [], []
    for node, instruction in instructions.items():
        outer, outer_memo = paillier.before(instruction, env, "train")
        inner, inner_memo = dp.before(outer, env, "train")
        plan_logits = rng.normal(size=(ROWS, CLASSES)).astype(np.float32) * 3
        sent.append(plan_logits)
        reply = Reply(node, {"logits": plan_logits, "class_counts": np.ones(CLASSES)},
                      {wire.NUM_EXAMPLES: 10, "kd_loss": 0.0}, node)
        reply = paillier.after(instruction, outer_memo,
                               dp.after(outer, inner_memo, reply, env, "train"), env, "train")
        assert set(reply.arrays) == {wire.ENCRYPTED_SHARE}     # no logits, counts or noise
        assert reply.metrics[wire.CLIPPED_METRIC] == 0.0
        replies.append(reply)
    outcome = secure.aggregate(1, replies[:3])                # one client drops out
    assert outcome.accepted == ["0", "1", "2"] and outcome.released
    assert outcome.privacy["noise_multiplier"] == pytest.approx(Z_SMALL * math.sqrt(3 / COHORT))
    assert outcome.privacy["epsilon"] > 0 and outcome.privacy["delta"] == 1e-5
    assert secure.dp.budget.history[-1]["epsilon"] == outcome.privacy["epsilon"]
    assert secure.innermost.consensus[1].size == 0            # never formed in plaintext
    assert_holds_no_private_key(secure, holder)
    # The next round's clients decrypt the noisy sum and finish it identically.
    round_two = secure.instructions(2, NODES)
    finished = []
    for node, instruction in round_two.items():
        edited, memo = paillier.before(instruction, env, "train")
        assert "failure" not in memo
        finished.append(edited.arrays)
    for arrays in finished:
        np.testing.assert_array_equal(arrays[wire.CONSENSUS_INDICES],
                                      finished[0][wire.CONSENSUS_INDICES])
        np.testing.assert_array_equal(arrays[wire.CONSENSUS], finished[0][wire.CONSENSUS])
    assert set(finished[0][wire.CONSENSUS_INDICES]) <= set(secure.innermost.proxy_indices(1))
    assert len(finished[0][wire.CONSENSUS_INDICES]) > 0
    np.testing.assert_allclose(finished[0][wire.CONSENSUS].sum(axis=1), 1.0, atol=1e-5)
    # Little noise here: the released rows mostly agree with the plaintext consensus of
    # the three clients that arrived.
    plaintext = logit_consensus(np.stack(sent[:3]), np.ones(3),
                                ConsensusConfig("dsfl", 1.0, 0.1, False))
    rows = np.isin(secure.innermost.proxy_indices(1), finished[0][wire.CONSENSUS_INDICES])
    assert np.mean(finished[0][wire.CONSENSUS].argmax(1) == plaintext[rows].argmax(1)) >= 0.8


class EchoClient(NumPyClient):
    """A compat consensus client with fixed logits per round (records the plans it got)."""

    def __init__(self, client_id: int) -> None:
        self.client_id, self.seen = client_id, []

    def fit(self, parameters, config):
        instruction = instruction_from_compat(parameters, config)
        plan = RoundPlan.from_arrays(instruction.server_round, instruction.arrays)
        self.seen.append(plan)
        rng = np.random.default_rng([self.client_id, plan.server_round])
        logits = (rng.normal(size=(len(plan.proxy_indices), CLASSES)) * 3).astype(np.float32)
        arrays, metrics = reply_to_compat(Reply("", {"logits": logits}, {"kd_loss": 0.0}))
        return arrays, 50, {**metrics, "client-id": self.client_id}

    def evaluate(self, parameters, config):
        if not config.get(wire.EVALUATE, True):
            return 0.0, 0, {"client-id": self.client_id}
        return 0.5, 10, {"client_accuracy": 0.5, "client-id": self.client_id}


def _inner(mode="distributed", z=1.0, compat=False, **privacy):
    options = dict(num_proxy=NUM_PROXY, num_classes=CLASSES, proxy_per_round=ROWS,
                   consensus=ConsensusConfig("dsfl", 1.0, 0.1, False),
                   privacy=PrivateConsensus(z, mode=mode, **privacy))
    if compat:
        return FedConsensusCompat(num_rounds=2, min_available_clients=COHORT, **options)
    return FedConsensus(min_available_nodes=COHORT, **options)


def test_the_wrapper_announces_distributed_dp_and_refuses_central_dp(holder):
    for strategy in (SecureConsensus(_inner(), holder.public_key, max_examples=500),
                     # The compat face noises on the clients too (DpNoiseNumPyClient).
                     SecureConsensusCompat(_inner(compat=True), holder.public_key,
                                           max_examples=500)):
        spec = strategy.algorithm.spec(1, COHORT)
        assert spec.noise == pytest.approx({"noise_multiplier": 1.0, "num_clients": COHORT,
                                            "norm_bound": np.sqrt(ROWS)})
        base = SumLayout.from_dict(spec.sum_layout.params["base"])
        assert base.weighting == "uniform" and base.algorithm == "consensus"
        assert strategy.budget is not None
    with pytest.raises(ValueError, match="central differential privacy needs the server"):
        SecureConsensus(_inner("central"), holder.public_key, max_examples=500)
    with pytest.raises(ValueError, match="central differential privacy needs the server"):
        SecureConsensusCompat(_inner("central", compat=True), holder.public_key,
                              max_examples=500)


def test_compat_rounds_with_distributed_dp_inside_the_secure_sum(holder):
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.server import Server
    from inprocess_proxy import InProcessProxy

    from clients.faces.wrappers import SecureSumNumPyClient

    strategy = SecureConsensusCompat(_inner(z=0.05, compat=True, min_margin=0.0),
                                     holder.public_key, max_examples=500)
    echoes = [EchoClient(cid) for cid in range(COHORT)]
    manager = SimpleClientManager()
    for cid, echo in enumerate(echoes):
        noised = DpNoiseNumPyClient(echo, rng=np.random.default_rng(cid))
        manager.register(InProcessProxy(str(cid), SecureSumNumPyClient(noised,
                                                                       key_holder=holder)))
    Server(client_manager=manager, strategy=strategy).fit(2, timeout=None)
    history = strategy.history
    assert [h["sum_decryption"] for h in history] == [None, "delegated"]
    for entry, spent in zip(history, strategy.budget.history):
        assert entry["accepted"] == ["0", "1", "2", "3"] and entry["num_failures"] == 0
        assert entry["noise_multiplier"] == pytest.approx(0.05)      # no dropouts
        assert entry["epsilon"] == spent["epsilon"]
    assert history[1]["epsilon"] > history[0]["epsilon"]
    assert strategy.core.consensus[1].size == 0      # never formed in plaintext
    received = [echo.seen[1] for echo in echoes]
    for plan in received:
        np.testing.assert_array_equal(plan.consensus_indices, received[0].consensus_indices)
        np.testing.assert_array_equal(plan.consensus, received[0].consensus)
    assert set(received[0].consensus_indices) <= set(strategy.core.proxy_indices(1))
    assert len(received[0].consensus_indices) > 0


def test_the_simulation_config_allows_distributed_dp_with_paillier_only(tmp_path):
    from simulations.config import ConfigError
    from simulations.experiment import client_mods

    cfg = _config(dp={"enabled": True, "mode": "distributed", "noise_multiplier": 1.0},
                  paillier={"enabled": True})
    files = KeyFiles(tmp_path / "private.json", tmp_path / "public.bin", "00")
    mods = client_mods(cfg, files)
    # The Paillier mod is outermost: the DP mod noises the reply before it is encrypted.
    assert [type(m) for m in mods] == [PaillierMod, DpNoiseMod]
    assert mods[1].step.encoding == "probabilities"
    with pytest.raises(ConfigError, match="central DP needs the server"):
        _config(dp={"enabled": True, "noise_multiplier": 1.0}, paillier={"enabled": True})


# ---------------------------------------------------------------------- simulation

@pytest.mark.integration
def test_distributed_dp_inside_the_paillier_sum_in_the_simulation_engine(tmp_path):
    import torch

    from flhet_strategies.privacy.dp.accounting import PrivacyLedger
    from flhet_strategies.privacy.paillier import deal_keys
    from simulations.experiment import build_strategy
    from simulations.runner import simulate_strategy

    torch.set_num_threads(1)
    cfg = _config(num_rounds=2, dp={"enabled": True, "mode": "distributed",
                                    "noise_multiplier": 1.0, "min_margin": 0.0},
                  paillier={"enabled": True})
    files = deal_keys(tmp_path / "keys", 2048)
    seen: list[tuple[int, set, dict]] = []

    def factory():
        strategy = build_strategy(cfg, key_files=files)
        aggregate_train = strategy.aggregate_train

        def spy(server_round, replies):   # what reached the server, reply by reply
            replies = list(replies)
            for reply in replies:
                assert not reply.has_error(), reply.error.reason
                names = {n for record in reply.content.array_records.values() for n in record}
                metrics = {k: v for record in reply.content.metric_records.values()
                           for k, v in record.items()}
                seen.append((server_round, names, metrics))
            return aggregate_train(server_round, replies)

        strategy.aggregate_train = spy
        return strategy

    strategy = simulate_strategy(cfg, strategy_factory=factory, key_files=files)
    assert isinstance(strategy, SecureConsensus)
    history = strategy.history
    assert [h["round"] for h in history] == [1, 2]
    ledger = PrivacyLedger(4, 1e-5, "full", non_negative_payloads=True)
    budget = strategy.budget.history
    for entry, rounds, spent in zip(history, (1, 2), budget):
        assert entry["accepted"] == ["0", "1", "2", "3"] and entry["num_failures"] == 0
        assert entry["noise_multiplier"] == pytest.approx(1.0)       # no dropouts
        assert entry["epsilon"] == spent["epsilon"]
        assert entry["epsilon"] == pytest.approx(ledger.projected_epsilon(1.0, rounds=rounds))
        assert entry["delta"] == 1e-5
    # Only ciphertexts reached the server: no logits, counts or noisy probabilities.
    assert len(seen) == 8
    for _, names, metrics in seen:
        assert names == {wire.ENCRYPTED_SHARE}
        assert wire.NOISY_PROBABILITIES not in names and "logits" not in names
        assert metrics["secure-clipped-values"] == 0.0
    # In round 2 the clients distilled on the consensus they decrypted (delegated).
    assert all(m["kd_loss"] > 0 and m.get("secure-decrypt-failed", 0) == 0
               for r, _, m in seen if r == 2)
    assert [h["sum_decryption"] for h in history] == [None, "delegated"]
    assert strategy.core.consensus[1].size == 0    # never formed in plaintext
    final = history[-1]
    # Sane: far above chance (0.1 on digits). Measured: 0.49-0.52 client and 0.25 global
    # accuracy here; the same setup without DP and encryption gives 0.50 and 0.25, and
    # distributed DP without encryption 0.51 and 0.24 (two short rounds, Dirichlet 0.5).
    assert 0.4 <= final["client_accuracy_mean"] <= 1.0
    assert 0.18 <= final["global_accuracy_mean"] <= 1.0
