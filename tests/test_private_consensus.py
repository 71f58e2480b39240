"""Client-level DP of the DS-FL consensus: mechanism, protocol, server accounting.

The private combine is :class:`DifferentialPrivacy` around the consensus server half
(``FedConsensus(privacy=PrivateConsensus(...)).algorithm``): it clips and noises the sum
(central) or sums the clients' noisy shares (distributed), the consensus' sum rule
finishes it (the confident-row filter, the simplex, ERA), and its budget accounts it.
"""

import math

import numpy as np
import pytest

from flhet_strategies import wire
from flhet_strategies.aggregation.logit_consensus import (
    ConsensusConfig,
    entropy_reduction,
    logit_consensus,
    softmax,
)
from flhet_strategies.algorithms.consensus import ConsensusDistillation, confident_rows
from flhet_strategies.privacy.dp.accounting import PrivacyLedger
from flhet_strategies.privacy.dp.budget import RoundBudget
from flhet_strategies.privacy.dp.clipping import clip_payload
from flhet_strategies.privacy.dp.gaussian import add_central_noise
from flhet_strategies.privacy.dp.mechanism import DifferentialPrivacy
from flhet_strategies.privacy.dp.postprocess import noisy_rows_to_probabilities
from flhet_strategies.privacy.dp.settings import PrivateConsensus
from flhet_strategies.protocol import Reply
from flhet_strategies.strategies import FedConsensus, consensus_algorithm
from flhet_strategies.weighting.base import uniform_weights

NO_VOTES = ConsensusConfig(class_vote_weighting=False)
NOISY_PROBABILITIES_ARRAY = wire.NOISY_PROBABILITIES
NUM_CLIENTS_KEY = wire.DP_NUM_CLIENTS


def _logits(num_clients=5, rows=30, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(rows, classes)) * 3 for _ in range(num_clients)]


def _private(privacy, rows, classes, config=NO_VOTES, budget=None):
    """The private consensus of ``rows`` proxy samples, all of them requested every round."""
    server = consensus_algorithm(rows, classes, rows, config, privacy=privacy,
                                 privacy_budget=budget)
    assert isinstance(server, DifferentialPrivacy)
    return server


def _combine(server, arrays, server_round, key=wire.LOGITS):
    """One round of the private combine on plain ``Reply`` s (clients ``0 .. n-1``)."""
    replies = [Reply(str(i), {key: np.asarray(a)}, {wire.NUM_EXAMPLES: 10})
               for i, a in enumerate(arrays)]
    outcome = server.aggregate(server_round, replies)
    indices, consensus = server.innermost.consensus
    return consensus, outcome, indices


def test_vanishing_noise_equals_the_plain_uniform_dsfl_consensus():
    logits = _logits()
    server = _private(PrivateConsensus(noise_multiplier=1e-9, seed=0, min_margin=None), 30, 4)
    consensus, outcome, indices = _combine(server, logits, 1)
    plain = logit_consensus(np.stack(logits), np.ones(5), NO_VOTES)
    assert outcome.released and outcome.privacy["noise_multiplier"] == pytest.approx(1e-9)
    np.testing.assert_array_equal(indices, np.arange(30))   # every row released
    assert outcome.privacy["released_rows"] == 30
    np.testing.assert_allclose(consensus, plain, atol=1e-5)


def test_central_noise_has_std_z_times_bound_on_the_sum():
    # Uniform two-class predictions (0.5, 0.5) and no ERA: the released row is
    # (0.5 + e1, 0.5 + e2) / (1 + e1 + e2), whose column difference is e1 - e2 to first
    # order, with std sqrt(2) z S / n; per-row clipping at 1 clips nothing, S = sqrt(m).
    rows, n, z = 400, 4, 0.002
    logits = [np.zeros((rows, 2)) for _ in range(n)]
    config = ConsensusConfig(class_vote_weighting=False, era_temperature=None)
    server = _private(PrivateConsensus(noise_multiplier=z, seed=3, min_margin=None), rows, 2,
                      config)
    consensus, _, _ = _combine(server, logits, 1)
    spread = np.std(consensus[:, 0].astype(np.float64) - consensus[:, 1])
    assert spread == pytest.approx(math.sqrt(2) * z * math.sqrt(rows) / n, rel=0.15)
    again, _, _ = _combine(server, logits, 1)
    other, _, _ = _combine(server, logits, 2)
    np.testing.assert_array_equal(consensus, again)  # seeded per round
    assert not np.array_equal(consensus, other)


def test_central_release_reproduces_the_seeded_draws_and_the_margin_filter():
    """Same seed, same noise: the release is clip + one N(0, (z S)^2) draw of the
    ``(seed, round)`` generator on the sum, divided by n, filtered at ``min_margin``
    noise stds of the mean (``z S / n``), clamped onto the simplex and sharpened."""
    n, rows, classes, z, r, seed, server_round = 5, 30, 4, 0.1, 0.5, 7, 3
    privacy = PrivateConsensus(z, clip_norm=r, seed=seed, min_margin=2.0, min_rows=5)
    logits = _logits(n, rows, classes, seed=4)
    server = _private(privacy, rows, classes)
    consensus, outcome, indices = _combine(server, logits, server_round)

    bound = r * math.sqrt(rows)
    clipped = [clip_payload(softmax(p, NO_VOTES.temperature), r, "per-row") for p in logits]
    rng = np.random.default_rng([seed, server_round])
    mean = add_central_noise(np.sum(clipped, axis=0), z, bound, rng) / n
    keep = confident_rows(mean, z * bound / n, 2.0, 5)
    assert 5 <= keep.sum() < rows          # the filter acts, and lets enough rows through
    expected = entropy_reduction(noisy_rows_to_probabilities(mean[keep]),
                                 NO_VOTES.era_temperature)
    np.testing.assert_array_equal(indices, np.arange(rows)[keep])
    np.testing.assert_allclose(consensus, expected.astype(np.float32), rtol=0, atol=1e-6)
    assert outcome.privacy["released_rows"] == int(keep.sum())
    assert outcome.privacy["noise_multiplier"] == z


def test_per_row_bound_grows_with_the_square_root_of_the_rows():
    private = PrivateConsensus(noise_multiplier=1.0, clip_norm=0.5, clip_mode="per-row")
    assert private.norm_bound(100) == pytest.approx(5.0)


def test_confident_rows_keep_clear_winners_and_drop_ties():
    mean = np.array([[0.9, 0.1], [0.52, 0.48], [0.1, 0.9]])
    keep = confident_rows(mean, 0.1, 2.0, 0)  # threshold 2*sqrt(2)*0.1 = 0.283
    assert keep.tolist() == [True, False, True]
    assert not confident_rows(mean, 1.0, 2.0, 0).any()
    assert confident_rows(mean, 1.0, None, 0).all()   # min_margin None releases every row


def test_too_few_confident_rows_release_nothing():
    mean = np.array([[0.9, 0.1]] * 3 + [[0.5, 0.5]] * 17)
    assert confident_rows(mean, 0.1, 2.0, 4).sum() == 0
    assert confident_rows(mean, 0.1, 2.0, 3).sum() == 3
    # Capped at the round's rows: a 2-row round may still release both.
    assert confident_rows(mean[:2], 0.1, 2.0, 10).sum() == 2


def test_a_round_with_too_few_confident_rows_releases_an_empty_consensus():
    # Noise far above any probability: no row passes, nothing is distilled on.
    server = _private(PrivateConsensus(50.0, seed=0, min_margin=2.0, min_rows=1), 30, 4)
    consensus, outcome, indices = _combine(server, _logits(), 1)
    assert outcome.privacy["released_rows"] == 0
    assert consensus.shape == (0, 4) and indices.size == 0
    assert outcome.privacy["epsilon"] > 0     # the release is still accounted


def test_distributed_mode_sums_shares_and_reports_dropouts():
    rng = np.random.default_rng(1)
    shares = [rng.dirichlet(np.ones(3), size=20) for _ in range(3)]
    private = PrivateConsensus(noise_multiplier=2.0, mode="distributed", min_margin=None)
    server = _private(private, 20, 3, budget=RoundBudget(4, non_negative_payloads=True))
    assert server.round_allowed(1, 4)
    nodes = [str(i) for i in range(4)]
    assert all(ins.config[NUM_CLIENTS_KEY] == 4 for ins in server.instructions(1, nodes).values())
    consensus, outcome, indices = _combine(server, shares, 1, NOISY_PROBABILITIES_ARRAY)
    assert outcome.privacy["noise_multiplier"] == pytest.approx(2.0 * math.sqrt(3 / 4))
    assert consensus.shape == (20, 3) and len(indices) == 20
    np.testing.assert_allclose(consensus, logit_consensus(
        np.log(np.stack(shares)), np.ones(3), NO_VOTES), atol=1e-5)   # the mean of the shares
    np.testing.assert_allclose(consensus.sum(axis=1), 1.0, atol=1e-5)
    assert private.client_config(4)[NUM_CLIENTS_KEY] == 4


def test_distributed_mode_refuses_plain_logits():
    """A client that runs no noise step sends its logits in clear: never aggregated."""
    private = PrivateConsensus(noise_multiplier=2.0, mode="distributed", min_margin=None)
    server = _private(private, 20, 3)
    _, outcome, _ = _combine(server, _logits(3, 20, 3), 1)
    assert not outcome.released and not outcome.accepted
    assert all("noise step" in reason for reason in outcome.rejected.values())
    assert server.budget.history == []      # nothing released, nothing accounted


@pytest.mark.parametrize("config, match", [
    (ConsensusConfig(mode="fedmd", class_vote_weighting=False), "DS-FL"),
    (ConsensusConfig(), "class_vote_weighting"),
])
def test_unsupported_consensus_rules_are_refused(config, match):
    with pytest.raises(ValueError, match=match):
        consensus_algorithm(100, 4, 10, config, privacy=PrivateConsensus(1.0))
    with pytest.raises(ValueError, match=match):
        FedConsensus(100, 4, 10, config, privacy=PrivateConsensus(1.0))
    # The wrapper itself refuses them too (FedMD has no sum; votes are private weights).
    core = ConsensusDistillation(100, 4, 10, config, weight_fn=uniform_weights)
    with pytest.raises(ValueError, match="DS-FL" if config.mode == "fedmd" else "weights"):
        DifferentialPrivacy(core, PrivateConsensus(1.0))


@pytest.mark.parametrize("kwargs", [dict(noise_multiplier=0.0), dict(noise_multiplier=1.0, mode="x"),
                                    dict(noise_multiplier=1.0, clip_norm=-1.0),
                                    dict(noise_multiplier=1.0, min_margin=-1.0),
                                    dict(noise_multiplier=1.0, clip_mode="rows"),
                                    dict(noise_multiplier=1.0, min_rows=-1)])
def test_bad_parameters_raise(kwargs):
    with pytest.raises(ValueError):
        PrivateConsensus(**kwargs)


def _replies(server, server_round, n=4, seed=0):
    m = len(server.innermost.proxy_indices(server_round))
    rng = np.random.default_rng(seed)
    return [Reply(str(i), {wire.LOGITS: rng.normal(size=(m, 4)).astype(np.float32) * 4},
                  {wire.NUM_EXAMPLES: 10 * (i + 1)}) for i in range(n)]


def test_protocol_weights_equally_and_never_calls_weight_fn():
    calls = []

    def exploding_weights(*_):
        calls.append(1)
        raise AssertionError("weight_fn must not be called under DP")

    # A data-dependent weight_fn is refused up front (it would change the sensitivity) ...
    with pytest.raises(ValueError, match="weight_fn"):
        consensus_algorithm(200, 4, 50, NO_VOTES, weight_fn=exploding_weights, seed=0,
                            privacy=PrivateConsensus(0.01, seed=0))
    core = ConsensusDistillation(200, 4, 50, NO_VOTES, weight_fn=exploding_weights, seed=0)
    with pytest.raises(ValueError, match="weight_fn"):
        DifferentialPrivacy(core, PrivateConsensus(0.01, seed=0))
    # ... and the default sample-count weights become equal weights.
    protocol = FedConsensus(200, 4, 50, NO_VOTES, seed=0,
                            privacy=PrivateConsensus(0.01, seed=0)).algorithm
    assert protocol.innermost.weight_fn is uniform_weights

    def plain_aggregation(*_):
        raise AssertionError("the plain (weight_fn) aggregation must not run under DP")

    protocol.innermost.aggregate = plain_aggregation
    outcome = protocol.aggregate(1, _replies(protocol, 1))   # num-examples 10, 20, 30, 40
    assert set(outcome.weights.values()) == {0.25} and not calls
    assert outcome.privacy["noise_multiplier"] == pytest.approx(0.01)
    indices, consensus = protocol.innermost.consensus
    assert len(indices) > 0
    assert set(indices) <= set(protocol.innermost.proxy_indices(1))
    assert len(indices) == len(consensus)


def _strategy(max_epsilon=None, z=1.0):
    budget = RoundBudget(4, 1e-5, max_epsilon, non_negative_payloads=True)
    return FedConsensus(200, 4, 50, NO_VOTES, seed=0, min_available_nodes=4,
                        privacy=PrivateConsensus(z, seed=0), privacy_budget=budget)


NODES = ["0", "1", "2", "3"]


def test_server_records_epsilon_like_the_ledger_every_round():
    strategy = _strategy()
    driver = strategy.driver
    ledger = PrivacyLedger(4, 1e-5, "full", non_negative_payloads=True)
    for rnd in (1, 2, 3):
        assert driver.train(rnd, NODES)
        _, metrics = driver.aggregate_train(rnd, _replies(strategy.algorithm, rnd), 0)
        expected = ledger.record_round(rnd, 1.0).epsilon
        entry = strategy.history[-1]
        assert entry["round"] == rnd
        assert entry["epsilon"] == pytest.approx(expected) == pytest.approx(metrics["epsilon"])
        assert entry["delta"] == 1e-5 == metrics["delta"]
        assert strategy.privacy_history[-1]["epsilon"] == entry["epsilon"] == strategy.epsilon
    assert strategy.history[0]["epsilon"] < strategy.history[-1]["epsilon"]
    assert strategy.budget is strategy.algorithm.budget and strategy.stopped_at is None


def test_budget_caps_the_rounds_and_refuses_the_next():
    ledger = PrivacyLedger(4, 1e-5, "full", non_negative_payloads=True)
    two_rounds = ledger.projected_epsilon(1.0, rounds=2)
    strategy = _strategy(max_epsilon=two_rounds * 1.001)
    driver = strategy.driver
    assert driver.plan(5) == 2 and driver.num_rounds == 2
    assert strategy.stopped_at == 3
    assert strategy.algorithm.round_allowed(2, 4)
    assert not strategy.algorithm.round_allowed(3, 4)
    assert driver.train(3, NODES) == {} and driver.is_refused(3)
    assert driver.aggregate_train(3, _replies(strategy.algorithm, 3), 0) == (None, {})
    assert not driver.should_evaluate(3)
    assert driver.should_evaluate(2)  # the last round that fits is the final round


def test_distributed_server_reads_noisy_probabilities_and_tells_the_cohort_size():
    strategy = FedConsensus(200, 4, 50, NO_VOTES, seed=0, min_available_nodes=5,
                            privacy=PrivateConsensus(1.0, mode="distributed", min_margin=None),
                            privacy_budget=RoundBudget(5, non_negative_payloads=True))
    driver = strategy.driver
    instructions = driver.train(1, [str(i) for i in range(5)])
    assert all(ins.config[NUM_CLIENTS_KEY] == 5 for ins in instructions.values())
    assert all(wire.DP_LAYOUT in ins.config for ins in instructions.values())
    rng = np.random.default_rng(0)
    replies = [Reply(str(i), {NOISY_PROBABILITIES_ARRAY: rng.dirichlet(np.ones(4), 50)},
                     {wire.NUM_EXAMPLES: 10}) for i in range(4)]
    outcome, _ = driver.aggregate_train(1, replies, failures=1)
    assert outcome is not None and outcome.released and len(outcome.accepted) == 4
    # 4 of 5 shares arrived: the release carries z * sqrt(4/5).
    assert strategy.history[-1]["noise_multiplier"] == pytest.approx(math.sqrt(0.8))


def test_budget_without_privacy_is_an_error():
    with pytest.raises(ValueError, match="privacy"):
        consensus_algorithm(200, 4, 50, NO_VOTES,
                            privacy_budget=RoundBudget(4, non_negative_payloads=True))
    with pytest.raises(ValueError, match="privacy"):
        FedConsensus(200, 4, 50, NO_VOTES,
                     privacy_budget=RoundBudget(4, non_negative_payloads=True))
    # The consensus releases probabilities: a budget for signed payloads is refused too.
    with pytest.raises(ValueError, match="non_negative_payloads"):
        FedConsensus(200, 4, 50, NO_VOTES, privacy=PrivateConsensus(1.0),
                     privacy_budget=RoundBudget(4))
