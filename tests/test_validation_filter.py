"""The validation filter: prediction payloads scored on the server's labeled proxy rows."""

from __future__ import annotations

import numpy as np
import pytest

from flhet_strategies import wire
from flhet_strategies.aggregation.robust import RobustAggregation
from flhet_strategies.aggregation.validation_filter import ValidationFilter
from flhet_strategies.algorithms.consensus import ConsensusDistillation
from flhet_strategies.algorithms.prototypes import FedProtoServer
from flhet_strategies.protocol import Reply

CLASSES, PROXY = 4, 80
VALIDATION = np.arange(0, PROXY, 2)  # every other proxy row is labeled on the server


def confident(labels, rng, strength=6.0):
    logits = rng.normal(scale=0.3, size=(len(labels), CLASSES))
    logits[np.arange(len(labels)), labels] += strength
    return logits.astype(np.float32)


def federation():
    """Non-IID: clients 0-3 hold class 0-3 each (100 examples) and 5 of every other class;
    client 4 and 5 are attackers that claim class 1 and 2 heavily and predict y + 1."""
    rng = np.random.default_rng(3)
    truth = rng.integers(0, CLASSES, size=PROXY)
    replies = []
    for cid in range(6):
        counts = np.full(CLASSES, 5)
        counts[cid % CLASSES if cid < 4 else cid - 3] = 100 if cid < 4 else 400
        labels = truth if cid < 4 else (truth + 1) % CLASSES
        replies.append(Reply(str(cid), {wire.LOGITS: confident(labels, rng),
                                        wire.CLASS_COUNTS: counts},
                             {wire.NUM_EXAMPLES: int(counts.sum())}))
    return truth, replies


def core():
    return ConsensusDistillation(PROXY, CLASSES, proxy_per_round=PROXY,
                                 always_include=VALIDATION)


def accuracy(algorithm, replies, truth):
    outcome = algorithm.aggregate(1, replies)
    return outcome, float(np.mean(algorithm.innermost.consensus[1].argmax(1) == truth))


def test_class_heavy_attackers_beat_the_median_but_not_the_filter():
    truth, replies = federation()
    _, honest = accuracy(RobustAggregation(core()), replies[:4], truth)
    _, median = accuracy(RobustAggregation(core()), replies, truth)
    # the attackers hold most of class 1's and 2's votes: the weighted median follows them
    assert honest == 1.0 and median < 0.8
    flt = ValidationFilter(core(), VALIDATION, truth[VALIDATION], min_accuracy=0.5)
    outcome = flt.aggregate(1, replies)
    indices, targets = flt.innermost.consensus
    assert np.mean(targets.argmax(1) == truth[indices]) == 1.0
    assert sorted(outcome.rejected) == ["4", "5"] and sorted(outcome.accepted) == list("0123")
    assert "accuracy 0.000 on the labeled proxy rows" in outcome.rejected["4"]
    scores = outcome.history["validation_scores"]
    assert all(scores[c] == 1.0 for c in "0123") and scores["4"] == scores["5"] == 0.0
    # the honest clients' consensus, without the slice's rows (never released as targets)
    alone = core()
    alone.aggregate(1, replies[:4])
    held_out = np.isin(alone.consensus[0], VALIDATION)
    assert held_out.sum() == len(VALIDATION)
    np.testing.assert_array_equal(flt.innermost.consensus[0], alone.consensus[0][~held_out])
    np.testing.assert_array_equal(flt.innermost.consensus[1], alone.consensus[1][~held_out])
    assert not np.isin(flt.result_arrays()[wire.CONSENSUS_INDICES], VALIDATION).any()


def test_a_client_is_scored_on_the_classes_it_votes_for_only():
    truth, replies = federation()
    flt = ValidationFilter(core(), VALIDATION, truth[VALIDATION], min_accuracy=0.5)
    # right on class 0 only, wrong elsewhere; votes for class 0 only: kept, score 1.0
    labels = np.where(truth == 0, 0, (truth + 1) % CLASSES)
    narrow = Reply("9", {wire.LOGITS: confident(labels, np.random.default_rng(4)),
                         wire.CLASS_COUNTS: np.array([50, 0, 0, 0])}, {wire.NUM_EXAMPLES: 50})
    assert flt.score(1, narrow) == 1.0
    # without a histogram every class counts: the same predictions fail
    narrow.arrays.pop(wire.CLASS_COUNTS)
    assert flt.score(1, narrow) < 0.5
    # too few labeled rows of its classes: not scored, left to the algorithm
    few = ValidationFilter(core(), VALIDATION, truth[VALIDATION], min_rows=len(VALIDATION) + 1)
    assert few.score(1, replies[4]) is None
    # a malformed payload is not scored here; the algorithm rejects it with its reason
    bad = Reply("8", {wire.LOGITS: np.zeros((3, CLASSES), np.float32)}, {wire.NUM_EXAMPLES: 5})
    assert flt.score(1, bad) is None
    assert "8" in flt.aggregate(1, replies[:4] + [bad]).rejected


def test_an_honest_client_is_not_judged_on_classes_where_it_has_little_say():
    """Non-IID: a client right on its main class, wrong on its minor ones (5 examples
    each, where others hold 100) keeps a high score: its influence there is small."""
    truth, replies = federation()
    labels = np.where(truth == 0, 0, (truth + 1) % CLASSES)
    weak = Reply("0", {wire.LOGITS: confident(labels, np.random.default_rng(5)),
                       wire.CLASS_COUNTS: np.array([100, 5, 5, 5])}, {wire.NUM_EXAMPLES: 115})
    flt = ValidationFilter(core(), VALIDATION, truth[VALIDATION], min_accuracy=0.5)
    outcome = flt.aggregate(1, [weak] + replies[1:4])
    score = outcome.history["validation_scores"]["0"]
    assert score > 0.8 and "0" in outcome.accepted
    # plain accuracy over every class it votes for would have failed it
    assert np.mean(labels[VALIDATION] == truth[VALIDATION]) < 0.5


def test_the_filter_refuses_bad_settings():
    truth = np.zeros(len(VALIDATION), dtype=np.int64)
    with pytest.raises(TypeError, match="shares no proxy predictions"):
        ValidationFilter(FedProtoServer(3, 4), VALIDATION, truth)
    with pytest.raises(ValueError, match="one label per index"):
        ValidationFilter(core(), VALIDATION, truth[:-1])
    with pytest.raises(ValueError, match="min_accuracy"):
        ValidationFilter(core(), VALIDATION, truth, min_accuracy=1.5)
    missing = ValidationFilter(ConsensusDistillation(PROXY, CLASSES, proxy_per_round=20),
                               VALIDATION, truth)
    with pytest.raises(ValueError, match="always_include"):
        missing.score(1, Reply("0", {wire.LOGITS: np.zeros((20, CLASSES), np.float32)}, {}))
