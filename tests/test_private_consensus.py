"""Client-level DP of the DS-FL consensus: mechanism, protocol, server accounting."""

import math

import numpy as np
import pytest

from flhet_strategies.consensus_server import ClientResult, ConsensusServer
from flhet_strategies.aggregation.logit_consensus import ConsensusConfig, logit_consensus
from flhet_strategies.core.distillation import ConsensusDistillation
from flhet_strategies.privacy.dp.settings import (
    NOISY_PROBABILITIES_ARRAY,
    NUM_CLIENTS_KEY,
    PrivateConsensus,
)
from flhet_strategies.aggregation.payload import ClientPayload
from flhet_strategies.privacy.dp.accounting import PrivacyLedger
from flhet_strategies.privacy.dp.budget import RoundBudget

NO_VOTES = ConsensusConfig(class_vote_weighting=False)


def _logits(num_clients=5, rows=30, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(rows, classes)) * 3 for _ in range(num_clients)]


def test_vanishing_noise_equals_the_plain_uniform_dsfl_consensus():
    logits = _logits()
    private = PrivateConsensus(noise_multiplier=1e-9, seed=0, min_margin=None)
    consensus, realized, keep = private.combine(logits, NO_VOTES, server_round=1)
    plain = logit_consensus(np.stack(logits), np.ones(5), NO_VOTES)
    assert keep.all() and realized == pytest.approx(1e-9)
    np.testing.assert_allclose(consensus, plain, atol=1e-5)


def test_central_noise_has_std_z_times_bound_on_the_sum():
    # Uniform two-class predictions (0.5, 0.5) and no ERA: the released row is
    # (0.5 + e1, 0.5 + e2) / (1 + e1 + e2), whose column difference is e1 - e2 to first
    # order, with std sqrt(2) z S / n; per-row clipping at 1 clips nothing, S = sqrt(m).
    rows, n, z = 400, 4, 0.002
    logits = [np.zeros((rows, 2)) for _ in range(n)]
    config = ConsensusConfig(class_vote_weighting=False, era_temperature=None)
    private = PrivateConsensus(noise_multiplier=z, seed=3, min_margin=None)
    consensus, _, _ = private.combine(logits, config, server_round=1)
    spread = np.std(consensus[:, 0].astype(np.float64) - consensus[:, 1])
    assert spread == pytest.approx(math.sqrt(2) * z * math.sqrt(rows) / n, rel=0.15)
    again, _, _ = private.combine(logits, config, server_round=1)
    other, _, _ = private.combine(logits, config, server_round=2)
    np.testing.assert_array_equal(consensus, again)  # seeded per round
    assert not np.array_equal(consensus, other)


def test_per_row_bound_grows_with_the_square_root_of_the_rows():
    private = PrivateConsensus(noise_multiplier=1.0, clip_norm=0.5, clip_mode="per-row")
    assert private.norm_bound(100) == pytest.approx(5.0)


def test_confident_rows_keep_clear_winners_and_drop_ties():
    private = PrivateConsensus(noise_multiplier=1.0, min_margin=2.0, min_rows=0)
    mean = np.array([[0.9, 0.1], [0.52, 0.48], [0.1, 0.9]])
    keep = private.confident_rows(mean, entry_std=0.1)  # threshold 2*sqrt(2)*0.1 = 0.283
    assert keep.tolist() == [True, False, True]
    assert not private.confident_rows(mean, entry_std=1.0).any()


def test_too_few_confident_rows_release_nothing():
    mean = np.array([[0.9, 0.1]] * 3 + [[0.5, 0.5]] * 17)
    assert PrivateConsensus(1.0, min_rows=4).confident_rows(mean, 0.1).sum() == 0
    assert PrivateConsensus(1.0, min_rows=3).confident_rows(mean, 0.1).sum() == 3
    # Capped at the round's rows: a 2-row round may still release both.
    assert PrivateConsensus(1.0, min_rows=10).confident_rows(mean[:2], 0.1).sum() == 2


def test_distributed_mode_sums_shares_and_reports_dropouts():
    rng = np.random.default_rng(1)
    shares = [rng.dirichlet(np.ones(3), size=20) for _ in range(3)]
    private = PrivateConsensus(noise_multiplier=2.0, mode="distributed", min_margin=None)
    consensus, realized, keep = private.combine(shares, NO_VOTES, 1, num_expected=4)
    assert realized == pytest.approx(2.0 * math.sqrt(3 / 4))
    assert consensus.shape == (20, 3) and keep.all()
    np.testing.assert_allclose(consensus.sum(axis=1), 1.0, atol=1e-5)
    assert private.client_config(4)[NUM_CLIENTS_KEY] == 4


@pytest.mark.parametrize("config, match", [
    (ConsensusConfig(mode="fedmd", class_vote_weighting=False), "DS-FL"),
    (ConsensusConfig(), "class_vote_weighting"),
])
def test_unsupported_consensus_rules_are_refused(config, match):
    with pytest.raises(ValueError, match=match):
        ConsensusDistillation(100, 4, 10, config, privacy=PrivateConsensus(1.0))


@pytest.mark.parametrize("kwargs", [dict(noise_multiplier=0.0), dict(noise_multiplier=1.0, mode="x"),
                                    dict(noise_multiplier=1.0, clip_norm=-1.0),
                                    dict(noise_multiplier=1.0, min_margin=-1.0)])
def test_bad_parameters_raise(kwargs):
    with pytest.raises(ValueError):
        PrivateConsensus(**kwargs)


def _payloads(protocol, server_round, n=4, seed=0):
    m = len(protocol.proxy_indices(server_round))
    rng = np.random.default_rng(seed)
    return [ClientPayload(str(i), rng.normal(size=(m, 4)).astype(np.float32) * 4, 10 * (i + 1))
            for i in range(n)]


def test_protocol_weights_equally_and_never_calls_weight_fn():
    def exploding_weights(*_):
        raise AssertionError("weight_fn must not be called under DP")

    protocol = ConsensusDistillation(200, 4, 50, NO_VOTES, exploding_weights, seed=0,
                                     privacy=PrivateConsensus(0.01, seed=0))
    outcome = protocol.aggregate(1, _payloads(protocol, 1))
    assert set(outcome.weights.values()) == {0.25}
    assert outcome.noise_multiplier == pytest.approx(0.01)
    indices, consensus = protocol.consensus
    assert set(indices) <= set(protocol.proxy_indices(1)) and len(indices) == len(consensus)


def _server(max_epsilon=None, z=1.0):
    protocol = ConsensusDistillation(200, 4, 50, NO_VOTES, seed=0,
                                     privacy=PrivateConsensus(z, seed=0))
    budget = RoundBudget(4, 1e-5, max_epsilon, non_negative_payloads=True)
    return ConsensusServer(protocol, budget=budget)


def _results(server, server_round):
    return [ClientResult(p.client_id, {"logits": p.logits}, {"num-examples": 10})
            for p in _payloads(server.protocol, server_round)]


def test_server_records_epsilon_like_the_ledger_every_round():
    server = _server()
    ledger = PrivacyLedger(4, 1e-5, "full", non_negative_payloads=True)
    for rnd in (1, 2, 3):
        assert server.round_allowed(rnd, 4)
        server.train_instructions(rnd)
        _, metrics = server.aggregate_train(rnd, _results(server, rnd), 0)
        expected = ledger.record_round(rnd, 1.0).epsilon
        entry = server.history.rounds[-1]
        assert entry["epsilon"] == pytest.approx(expected) == pytest.approx(metrics["epsilon"])
        assert entry["delta"] == 1e-5
    assert server.history.rounds[0]["epsilon"] < server.history.rounds[-1]["epsilon"]


def test_budget_caps_the_rounds_and_refuses_the_next():
    ledger = PrivacyLedger(4, 1e-5, "full", non_negative_payloads=True)
    two_rounds = ledger.projected_epsilon(1.0, rounds=2)
    server = _server(max_epsilon=two_rounds * 1.001)
    assert server.cap_rounds(5) == 2 and server.num_rounds == 2
    assert server.round_allowed(2, 4)
    assert not server.round_allowed(3, 4)
    assert server.aggregate_train(3, _results(server, 3), 0) == (None, {})
    assert not server.should_evaluate(3)
    assert server.should_evaluate(2)  # the last round that fits is the final round


def test_distributed_server_reads_noisy_probabilities_and_tells_the_cohort_size():
    protocol = ConsensusDistillation(
        200, 4, 50, NO_VOTES, seed=0,
        privacy=PrivateConsensus(1.0, mode="distributed", min_margin=None))
    server = ConsensusServer(protocol, budget=RoundBudget(5, non_negative_payloads=True))
    server.round_allowed(1, 5)
    _, config = server.train_instructions(1)
    assert config[NUM_CLIENTS_KEY] == 5
    rng = np.random.default_rng(0)
    results = [ClientResult(str(i), {NOISY_PROBABILITIES_ARRAY: rng.dirichlet(np.ones(4), 50)},
                            {"num-examples": 10}) for i in range(4)]
    consensus, _ = server.aggregate_train(1, results, failures=1)
    assert consensus is not None
    # 4 of 5 shares arrived: the release carries z * sqrt(4/5).
    assert server.history.rounds[-1]["noise_multiplier"] == pytest.approx(math.sqrt(0.8))


def test_budget_without_privacy_is_an_error():
    protocol = ConsensusDistillation(200, 4, 50, NO_VOTES)
    with pytest.raises(ValueError, match="privacy"):
        ConsensusServer(protocol, budget=RoundBudget(4, non_negative_payloads=True))
