"""Robust aggregation: weighted coordinate-wise median and trimmed mean, around any sum."""

from __future__ import annotations

import numpy as np
import pytest

from flhet_strategies import wire
from flhet_strategies.aggregation.robust import RobustAggregation, robust_sums
from flhet_strategies.aggregation.weighted_sum import SumLayout, SumTerm, weighted_sums
from flhet_strategies.algorithms.consensus import ConsensusDistillation
from flhet_strategies.algorithms.prototypes import FedProtoServer, FedTGPServer
from flhet_strategies.protocol import Reply

SCALAR = SumLayout("x", (SumTerm("v", (1,), low=-1e9, high=1e9),))
PER_CLASS = SumLayout("x", (SumTerm("v", (2, 2), weight_axis=1, low=-1e9, high=1e9),),
                      "class_counts")


def scalar(values, weights):
    return [({"v": np.array([v])}, {"v": np.array([w])}) for v, w in zip(values, weights)]


def estimate(layout, contributions, **kwargs):
    sums = robust_sums(layout, contributions, **kwargs)
    return sums.mean(layout.terms[0])


@pytest.mark.parametrize("values, weights, expected", [
    ([1, 2, 10], [1, 1, 1], 2.0),
    ([1, 2, 10], [1, 1, 5], 10.0),          # 10 holds more than half the weight
    ([3, 1, 2, 4], [1, 1, 1, 1], 2.0),      # the lower median
    ([5, -7], [0, 2], -7.0),                # a zero weight never decides
])
def test_the_weighted_median_matches_hand_computed_values(values, weights, expected):
    assert estimate(SCALAR, scalar(values, weights)) == pytest.approx([expected])


def test_the_trimmed_mean_drops_the_tails_and_trims_partial_weights():
    assert estimate(SCALAR, scalar([0, 1, 2, 3, 100], [1] * 5), rule="trimmed_mean",
                    trim=0.2) == pytest.approx([2.0])
    # total weight 4, trim 0.25: keep the weight in [1, 3]. Value 1 spans [0, 2] (keeps 1
    # unit), value 5 spans [2, 3] (keeps 1), value 9 spans [3, 4] (keeps 0).
    got = estimate(SCALAR, scalar([1, 5, 9], [2, 1, 1]), rule="trimmed_mean", trim=0.25)
    assert got == pytest.approx([(1 * 1 + 1 * 5) / 2])


def test_no_trimming_is_the_weighted_mean_and_per_class_weights_are_respected():
    rng = np.random.default_rng(0)
    contributions = [({"v": rng.normal(size=(2, 2))}, {"v": rng.uniform(0, 3, size=2)})
                     for _ in range(6)]
    robust = robust_sums(PER_CLASS, contributions, rule="trimmed_mean", trim=0.0)
    plain = weighted_sums(PER_CLASS, contributions)
    assert np.allclose(robust.numerators["v"], plain.numerators["v"])
    assert np.allclose(robust.denominators["v"], plain.denominators["v"])
    # class 1 is held by one client only: its median there is that client's value
    lone = [({"v": np.full((2, 2), float(i))}, {"v": np.array([1.0, 1.0 if i == 4 else 0.0])})
            for i in range(6)]
    median = estimate(PER_CLASS, lone)
    assert np.allclose(median[:, 1], 4.0) and np.allclose(median[:, 0], 2.0)


def confident(labels, classes, rng, strength=6.0):
    logits = rng.normal(scale=0.3, size=(len(labels), classes))
    logits[np.arange(len(labels)), labels] += strength
    return logits.astype(np.float32)


def test_a_minority_of_confidently_wrong_clients_moves_the_mean_but_not_the_median():
    rng = np.random.default_rng(1)
    classes, proxy = 4, 60
    truth = rng.integers(0, classes, size=proxy)
    wrong = (truth + 1) % classes                       # labels permuted
    counts = np.array([25, 25, 25, 25])

    def replies(attackers):
        # honest clients lean to the truth (p ~ 0.6), attackers are sure of a wrong class
        return [Reply(str(cid), {wire.LOGITS: confident(wrong, classes, rng, 6.0)
                                 if cid < attackers else confident(truth, classes, rng, 1.5),
                                 wire.CLASS_COUNTS: counts}, {wire.NUM_EXAMPLES: 100})
                for cid in range(10)]

    def consensus(algorithm, attackers):
        algorithm.aggregate(1, replies(attackers))
        core = getattr(algorithm, "innermost", algorithm)
        return core.consensus[1].argmax(1)

    def core():
        return ConsensusDistillation(proxy, classes, proxy_per_round=proxy)

    assert np.mean(consensus(core(), 0) == truth) == 1.0
    assert np.mean(consensus(core(), 4) == truth) < 0.1          # 4 of 10 flip the mean
    assert np.mean(consensus(RobustAggregation(core()), 4) == truth) == 1.0
    trimmed = RobustAggregation(core(), "trimmed_mean", 0.4)
    assert np.mean(consensus(trimmed, 4) == truth) == 1.0
    assert np.mean(consensus(RobustAggregation(core()), 6) == truth) < 0.1  # a majority wins


def test_prototypes_robustly_aggregated_ignore_far_away_attackers():
    rng = np.random.default_rng(2)
    honest = rng.normal(size=(3, 4)).astype(np.float32)
    wrapped = RobustAggregation(FedProtoServer(3, 4))
    replies = [Reply(str(c), {wire.PROTOTYPES: honest + 0.01 * c,
                              wire.CLASS_COUNTS: np.array([10, 10, 10])},
                     {wire.NUM_EXAMPLES: 30}) for c in range(5)]
    replies += [Reply(str(c), {wire.PROTOTYPES: np.full((3, 4), 7.5, np.float32),
                               wire.CLASS_COUNTS: np.array([10, 10, 10])},
                      {wire.NUM_EXAMPLES: 30}) for c in (5, 6)]
    replies.append(Reply("7", {wire.PROTOTYPES: np.full((3, 4), np.nan, np.float32),
                               wire.CLASS_COUNTS: np.array([1, 1, 1])}, {wire.NUM_EXAMPLES: 3}))
    outcome = wrapped.aggregate(1, replies)
    assert "NaN" in outcome.rejected["7"] and len(outcome.accepted) == 7
    prototypes, mask = wrapped.innermost.prototypes
    assert mask.all() and np.abs(prototypes - (honest + 0.02)).max() < 0.011
    assert outcome.history == {"robust_rule": "median"}
    assert sum(outcome.weights.values()) == pytest.approx(1.0)


def test_robust_rules_refuse_what_is_not_a_weighted_sum_and_bad_settings():
    with pytest.raises(TypeError, match="does not aggregate by a weighted sum"):
        RobustAggregation(FedTGPServer(3, 4, server_epochs=1))
    with pytest.raises(ValueError, match="rule must be one of"):
        RobustAggregation(FedProtoServer(3, 4), rule="krum")
    with pytest.raises(ValueError, match=r"trim must be in \[0, 0.5\)"):
        RobustAggregation(FedProtoServer(3, 4), rule="trimmed_mean", trim=0.5)
