"""Generic Paillier secure weighted sum (no Flower): real 2048-bit sums vs the plaintext rules.

:class:`SecureSumSpec` encodes any :class:`SumLayout`. Two layouts are checked against
their plaintext aggregates: DS-FL's consensus (``ConsensusDistillation.sum_layout``:
8-bit probabilities, integer votes ``n_i n_ic``, finished by ``ConsensusSumRule``) and
FedProto's prototypes (``FedProtoServer.sum_layout``: signed 16-bit values, class-count
weights, finished by ``PrototypeSumRule``).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flhet_strategies import wire
from flhet_strategies.aggregation.logit_consensus import (
    ConsensusConfig,
    class_vote_weights,
    logit_consensus,
    softmax,
)
from flhet_strategies.aggregation.weighted_sum import SumLayout, SumTerm, client_weights
from flhet_strategies.algorithms.consensus import (
    PROBABILITIES,
    ConsensusDistillation,
    ConsensusSumRule,
)
from flhet_strategies.algorithms.prototypes import FedProtoServer, PrototypeSumRule
from flhet_strategies.privacy.paillier import (
    CiphertextAggregator,
    EncryptedVector,
    KeyHolder,
    RandomnessPool,
    SecureSumCodec,
    SecureSumOverflowError,
    ShortExponentObfuscators,
)
from flhet_strategies.privacy.paillier.spec import SecureSumSpec
from flhet_strategies.privacy.paillier.sum_client import SumClient, finish_relayed
from flhet_strategies.protocol import Reply
from flhet_strategies.weighting.base import sample_count_weights, uniform_weights


@pytest.fixture(scope="module")
def holder() -> KeyHolder:
    return KeyHolder.generate()


@pytest.fixture(scope="module")
def pool(holder: KeyHolder):
    source = ShortExponentObfuscators(holder.public_key)
    with RandomnessPool(holder.public_key, workers=1, source=source, background="thread") as p:
        yield p


def consensus_layout(config: ConsensusConfig, num_samples: int, num_classes: int,
                     weighting: str = "sample_count") -> SumLayout:
    """The consensus's weighted sum of a round that asks for every one of ``num_samples``."""
    weight_fn = sample_count_weights if weighting == "sample_count" else uniform_weights
    return ConsensusDistillation(num_samples, num_classes, num_samples, config,
                                 weight_fn=weight_fn).sum_layout(1)


def consensus_share(layout: SumLayout, logits: np.ndarray, counts: np.ndarray,
                    num_examples: int) -> tuple[dict, dict]:
    """A client's values and weights, computed as its Paillier step does."""
    values = ConsensusSumRule.terms(layout, {wire.LOGITS: logits}, {})
    weights = {t.name: client_weights(layout, t, counts, num_examples) for t in layout.terms}
    return values, weights


def secure_round(holder, pool, spec, contributions):
    """Clients encrypt their shares; the server multiplies; a key holder decodes."""
    codec = SecureSumCodec(holder.public_key, spec.num_values, spec.max_summands,
                           (0.0, float((1 << spec.value_bits) - 1)), spec.value_bits,
                           randomness=pool)
    plaintext_bits = holder.public_key.n.bit_length() - 1
    assert codec.layout == spec.layout(plaintext_bits)
    shares = []
    for values, weights in contributions:
        encoded, clipped = spec.encode(values, weights)
        assert clipped == 0
        shares.append(codec.encrypt(encoded).to_array())
    encrypted_sum = CiphertextAggregator(holder.public_key).add(*shares).result().to_array()
    received = EncryptedVector.from_array(encrypted_sum, holder.public_key)
    spec.check_sum_layout(received.layout)
    return spec.decode(holder.decrypt_sum(received), received.num_summands)


def plaintext_mean(logits, counts, weights, config):
    """The plaintext rule's vote-weighted mean probabilities, before normalisation."""
    probs = softmax(logits, config.temperature)
    if config.class_vote_weighting:
        vote = class_vote_weights(counts, weights)
    else:
        vote = np.repeat((weights / weights.sum())[:, None], logits.shape[2], axis=1)
    return np.einsum("nc,nmc->mc", vote, probs)


def era_tolerance(mean, bound, era_temperature):
    """Bound on the final consensus error from a per-entry bound on the mean.

    Row normalisation turns an error ``e`` per entry into at most
    ``(e + r C e) / (S - C e)`` (row sum ``S``); ERA at temperature ``T`` changes each
    log-probability by at most ``2 d / T`` for an input change ``d``.
    """
    classes = mean.shape[1]
    rows = mean.sum(axis=1)
    e = bound.max()
    if np.any(rows <= classes * e):
        return np.inf  # the bound says nothing about such rows
    normalised = float(((e + classes * e) / (rows - classes * e)).max())
    if era_temperature is None:
        return normalised
    return float(np.expm1(min(2 * normalised / era_temperature, 50.0)))


def client_data(seed, num_clients, num_samples, num_classes, max_count):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(num_clients, num_samples, num_classes)) * 3
    counts = rng.integers(0, max_count + 1, size=(num_clients, num_classes))
    counts[:, 0] = np.maximum(counts[:, 0], 1)  # nobody is empty
    counts[0, : num_classes // 2] = 0           # client 0 misses half the classes
    counts[-1, :] = np.maximum(counts[-1], 1)   # every class is held by the last client
    return logits, counts, counts.sum(axis=1)


# ---------------------------------------------------------------- the consensus layout


@given(
    seed=st.integers(0, 10_000),
    num_clients=st.integers(3, 5),
    weighting=st.sampled_from(["sample_count", "uniform"]),
    class_votes=st.booleans(),
    vote_bits=st.sampled_from([8, 16]),
)
@settings(max_examples=12, deadline=None)
def test_secure_consensus_equals_plaintext_consensus_to_the_quantization_bound(
    holder, pool, seed, num_clients, weighting, class_votes, vote_bits
) -> None:
    num_samples, num_classes = 30, 10
    logits, counts, num_examples = client_data(seed, num_clients, num_samples, num_classes, 400)
    arrived = [i for i in range(num_clients) if i != 1]  # client 1 drops out
    config = ConsensusConfig(mode="dsfl", era_temperature=0.1, class_vote_weighting=class_votes)
    layout = consensus_layout(config, num_samples, num_classes, weighting)
    term = layout.term(PROBABILITIES)
    spec = SecureSumSpec.for_layout(layout, num_clients, max_examples=int(num_examples.max()),
                                    vote_bits=vote_bits, key_fingerprint=holder.fingerprint.hex())
    sums = secure_round(holder, pool, spec, [
        consensus_share(layout, logits[i], counts[i], int(num_examples[i])) for i in arrived])

    weights = (num_examples[arrived] if weighting == "sample_count"
               else np.ones(len(arrived))).astype(np.float64)
    mean = plaintext_mean(logits[arrived], counts[arrived], weights, config)
    assert sums.count == len(arrived)
    error_bound = spec.error_bound(term, sums.count, sums.denominators[term.name])
    assert np.all(np.abs(sums.mean(term) - mean) <= error_bound[None, :] + 1e-12)
    if spec.vote_unit == 1:  # exact votes: only the probability rounding is left
        assert np.allclose(error_bound, 1 / 510)
    expected = logit_consensus(logits[arrived], weights, config, counts[arrived])
    indices = np.arange(num_samples, dtype=np.int64)
    finished = ConsensusSumRule.finish(layout, sums, {wire.CONSENSUS_INDICES: indices})
    np.testing.assert_array_equal(finished[wire.CONSENSUS_INDICES], indices)
    consensus = finished[wire.CONSENSUS]
    tolerance = era_tolerance(mean, error_bound, config.era_temperature)
    assert np.max(np.abs(consensus - expected)) <= tolerance
    assert consensus.dtype == np.float32
    np.testing.assert_allclose(consensus.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("era_temperature, typical", [(None, 1e-3), (0.1, 2e-3)])
def test_the_flhet_default_rule_agrees_closely_in_practice(holder, pool, era_temperature,
                                                           typical) -> None:
    """Sample-count weights with class votes (flhet's default), 16-bit rounded votes."""
    logits, counts, num_examples = client_data(3, 4, 100, 10, 300)
    config = ConsensusConfig(era_temperature=era_temperature)
    layout = consensus_layout(config, 100, 10)
    assert layout.weighting == "sample_count_class_counts"
    term = layout.term(PROBABILITIES)
    spec = SecureSumSpec.for_layout(layout, 4, max_examples=4096, key_fingerprint="x")
    assert spec.vote_unit > 1
    sums = secure_round(holder, pool, spec, [
        consensus_share(layout, logits[i], counts[i], int(num_examples[i])) for i in range(4)])
    expected = logit_consensus(logits, num_examples.astype(float), config, counts)
    mean = plaintext_mean(logits, counts, num_examples.astype(float), config)
    error_bound = spec.error_bound(term, sums.count, sums.denominators[term.name])
    assert np.all(np.abs(sums.mean(term) - mean) <= error_bound[None, :])
    consensus = ConsensusSumRule.finish(
        layout, sums, {wire.CONSENSUS_INDICES: np.arange(100)})[wire.CONSENSUS]
    # Typical errors are far below the worst case: check both.
    assert np.max(np.abs(consensus - expected)) <= era_tolerance(mean, error_bound,
                                                                 era_temperature)
    assert np.mean(np.abs(consensus - expected)) < typical
    assert np.mean(consensus.argmax(1) == expected.argmax(1)) >= 0.98


def test_fast_path_uses_8_bit_values_and_few_ciphertexts(holder) -> None:
    layout = consensus_layout(ConsensusConfig(class_vote_weighting=False), 2000, 10, "uniform")
    assert layout.weighting == "uniform"
    spec = SecureSumSpec.for_layout(layout, 10, max_examples=60_000)
    plaintext = spec.layout(holder.public_key.n.bit_length() - 1)
    assert (spec.value_bits, plaintext.slot_bits, plaintext.num_ciphertexts) == (8, 12, 118)
    per_class = SecureSumSpec.for_layout(consensus_layout(ConsensusConfig(), 2000, 10), 10,
                                         max_examples=3000)
    assert per_class.vote_bits == 16 and per_class.vote_unit == 138
    assert per_class.layout(2047).num_ciphertexts == 275


def test_a_class_nobody_holds_gets_probability_zero(holder, pool) -> None:
    logits, counts, _ = client_data(5, 3, 20, 10, 100)
    counts[:, 7] = 0
    layout = consensus_layout(ConsensusConfig(era_temperature=None), 20, 10, "uniform")
    assert layout.weighting == "class_counts"
    spec = SecureSumSpec.for_layout(layout, 3, max_examples=4000)
    sums = secure_round(holder, pool, spec, [
        consensus_share(layout, logits[i], counts[i], int(counts[i].sum())) for i in range(3)])
    assert sums.denominators[PROBABILITIES][7] == 0
    consensus = ConsensusSumRule.finish(
        layout, sums, {wire.CONSENSUS_INDICES: np.arange(20)})[wire.CONSENSUS]
    assert np.all(consensus[:, 7] == 0)
    np.testing.assert_allclose(consensus.sum(axis=1), 1.0, rtol=1e-5)


def test_votes_are_exact_when_the_bound_fits_and_never_vanish_when_rounded() -> None:
    config = ConsensusConfig()
    layout = consensus_layout(config, 5, 3, "uniform")          # votes n_ic
    term = layout.term(PROBABILITIES)
    exact = SecureSumSpec.for_layout(layout, 2, max_examples=1000)
    assert exact.vote_unit == 1
    np.testing.assert_array_equal(
        exact.votes(client_weights(layout, term, np.array([0, 7, 993]), 1000)), [0, 7, 993])
    layout = consensus_layout(config, 5, 3, "sample_count")     # votes n_i n_ic
    term = layout.term(PROBABILITIES)
    rounded = SecureSumSpec.for_layout(layout, 2, max_examples=1000, vote_bits=8)
    assert rounded.vote_unit == -(-1000**2 // 255)
    votes = rounded.votes(client_weights(layout, term, np.array([0, 1, 999]), 1000))
    assert votes[0] == 0 and votes[1] == 1   # a tiny vote rounds up to 1, not to 0
    assert votes[2] == round(999 * 1000 / rounded.vote_unit)


def test_a_vote_above_the_public_bound_is_refused() -> None:
    layout = consensus_layout(ConsensusConfig(), 5, 3, "uniform")
    spec = SecureSumSpec.for_layout(layout, 2, max_examples=100)
    weights = client_weights(layout, layout.term(PROBABILITIES), np.array([0, 200, 1]), 201)
    with pytest.raises(ValueError, match="raise max_examples"):
        spec.votes(weights)
    with pytest.raises(ValueError, match="raise max_examples"):
        spec.encode({PROBABILITIES: np.full((5, 3), 1 / 3)}, {PROBABILITIES: weights})


def test_invalid_inputs_are_rejected_with_clear_messages() -> None:
    layout = consensus_layout(ConsensusConfig(), 4, 3, "uniform")
    term = layout.term(PROBABILITIES)
    spec = SecureSumSpec.for_layout(layout, 2, max_examples=100)
    counts = np.array([1, 2, 3])
    weights = {PROBABILITIES: client_weights(layout, term, counts, 6)}
    with pytest.raises(ValueError, match="shape"):
        spec.encode({PROBABILITIES: np.zeros((5, 3))}, weights)
    with pytest.raises(ValueError, match="NaN"):
        spec.encode({PROBABILITIES: np.full((4, 3), np.nan)}, weights)
    with pytest.raises(ValueError, match="floating"):
        spec.encode({PROBABILITIES: np.zeros((4, 3), dtype=np.int64)}, weights)
    # The client computes its values from its logits with the same checks.
    for bad in (np.zeros((5, 3)), np.full((4, 3), np.nan), np.zeros((4, 3), dtype=np.int64)):
        with pytest.raises(ValueError, match="logits must be finite floats of shape"):
            ConsensusSumRule.terms(layout, {wire.LOGITS: bad}, {})
    with pytest.raises(ValueError, match="no 'logits'"):
        ConsensusSumRule.terms(layout, {}, {})
    with pytest.raises(ValueError, match="non-negative integers"):
        spec.votes(np.array([1.5, 0, 0]))
    with pytest.raises(ValueError, match="non-negative integers"):
        spec.votes(np.array([-1, 0, 0]))
    counted = consensus_layout(ConsensusConfig(), 4, 3, "sample_count")
    with pytest.raises(ValueError, match="positive integer"):
        client_weights(counted, counted.term(PROBABILITIES), counts, 0)
    with pytest.raises(ValueError, match="class counts"):
        client_weights(counted, counted.term(PROBABILITIES), counts[:2], 6)
    with pytest.raises(ValueError, match="DS-FL"):
        consensus_layout(ConsensusConfig(mode="fedmd"), 4, 3, "uniform")
    with pytest.raises(ValueError, match="weight_fn"):
        ConsensusDistillation(4, 3, 4, weight_fn=lambda p, r, i: np.ones(len(p))).sum_layout(1)
    with pytest.raises(ValueError, match="weighting"):
        SumLayout("consensus", (term,), "shapley")
    with pytest.raises(ValueError, match="max_examples"):
        SecureSumSpec.for_layout(layout, 2)


def test_decode_refuses_sums_that_no_honest_shares_give() -> None:
    layout = consensus_layout(ConsensusConfig(), 2, 3, "uniform")
    term = layout.term(PROBABILITIES)
    spec = SecureSumSpec.for_layout(layout, 2, max_examples=100)
    good = np.concatenate([np.full(6, 255.0 * 2), [2.0, 2.0, 2.0]])
    decoded = spec.decode(good, 2)
    assert decoded.denominators[PROBABILITIES].tolist() == [2, 2, 2]
    np.testing.assert_allclose(decoded.mean(term), 1.0)
    with pytest.raises(SecureSumOverflowError, match="exceeds the top level"):
        spec.decode(np.concatenate([np.full(6, 255.0 * 3), [2.0, 2.0, 2.0]]), 2)
    with pytest.raises(SecureSumOverflowError, match="weight totals"):
        spec.decode(np.concatenate([np.full(6, 0.0), [2.0, 2.0, 2.0 * spec.max_vote_level + 1]]),
                    2)
    with pytest.raises(ValueError, match="integers"):
        spec.decode(good + 0.5, 2)
    with pytest.raises(ValueError, match="shape"):
        spec.decode(good[:-1], 2)
    # Uniform weights are public: the weight totals must be the number of summands.
    uniform = SecureSumSpec.for_layout(
        consensus_layout(ConsensusConfig(class_vote_weighting=False), 2, 3, "uniform"), 2)
    uniform.decode(good, 2)
    with pytest.raises(SecureSumOverflowError, match="weight totals"):
        uniform.decode(np.concatenate([np.full(6, 255.0), [1.0, 2.0, 2.0]]), 2)


def test_spec_round_trips_through_json_and_checks_the_sum_layout() -> None:
    layout = consensus_layout(ConsensusConfig(era_temperature=None), 40, 10)
    spec = SecureSumSpec.for_layout(layout, 7, max_examples=500, key_fingerprint="ab")
    again = SecureSumSpec.from_json(spec.to_json())
    assert again == spec and again.sum_layout == layout
    with pytest.raises(ValueError, match="invalid secure sum spec"):
        SecureSumSpec.from_json('{"num_samples": 3}')
    spec.check_sum_layout(spec.layout(2047))
    spec.check_sum_layout(spec.with_max_summands(3).layout(2047))   # a cohort of another size
    other = SecureSumSpec.for_layout(consensus_layout(ConsensusConfig(era_temperature=None),
                                                      41, 10), 7, max_examples=500)
    with pytest.raises(ValueError, match="spec expects"):
        spec.check_sum_layout(other.layout(2047))


# ---------------------------------------------------------------- the prototype layout


def prototype_data(seed, num_clients, num_classes, dim, bound):
    rng = np.random.default_rng(seed)
    protos = (rng.uniform(-1, 1, size=(num_clients, num_classes, dim)) * bound).astype(np.float32)
    protos[0, 0, :2] = [3 * bound, -3 * bound]      # beyond the public range: clipped
    counts = rng.integers(0, 300, size=(num_clients, num_classes))
    counts[:, 1] = np.maximum(counts[:, 1], 1)
    counts[0, 2:4] = 0                              # client 0 lacks two classes
    counts[:, -1] = 0                               # nobody holds the last class
    protos[counts == 0] = 0.0                       # the client half sends zero rows there
    return protos, counts


@pytest.mark.parametrize("max_examples, vote_bits", [(500, 16), (10**6, 8)])
def test_secure_prototypes_equal_the_count_weighted_means_to_the_quantization_bound(
    holder, max_examples, vote_bits
) -> None:
    num_clients, num_classes, dim = 4, 6, 5
    server = FedProtoServer(num_classes, dim)
    layout = server.sum_layout(1)
    term = layout.term(wire.PROTOTYPES)
    assert layout.weighting == "class_counts" and term.low == -8.0 and term.high == 8.0
    spec = SecureSumSpec.for_layout(layout, num_clients, bits=layout.params["bits"],
                                    max_examples=max_examples, vote_bits=vote_bits,
                                    key_fingerprint=holder.fingerprint.hex())
    assert spec.bits == 16 and (spec.vote_unit > 1) == (max_examples == 10**6)
    protos, counts = prototype_data(1, num_clients, num_classes, dim, term.high)
    client = SumClient(holder, decrypt_workers=1)
    shares = []
    for i in range(num_clients):
        values = PrototypeSumRule.terms(layout, {wire.PROTOTYPES: protos[i]}, {})
        weights = {term.name: client_weights(layout, term, counts[i], None)}
        share = client.encrypt(spec, values, weights)
        assert share.num_clipped == (2 if i == 0 else 0)
        shares.append(share.payload)
    encrypted = CiphertextAggregator(holder.public_key).add(*shares).result().to_array()
    sums = client.decrypt(spec, encrypted)
    assert sums.count == num_clients

    clipped = np.clip(protos.astype(np.float64), term.low, term.high)
    held = counts.sum(axis=0) > 0
    w = counts.astype(np.float64)
    expected = np.einsum("ic,icd->cd", w, clipped)[held] / w.sum(axis=0)[held, None]
    mean = sums.mean(term)
    bound = spec.error_bound(term, sums.count, sums.denominators[term.name])
    assert np.all(np.abs(mean[held] - expected) <= bound[held, None] + 1e-12)
    assert np.all(np.isnan(mean[~held]))
    if spec.vote_unit == 1:   # exact class counts: half a 16-bit step of [-8, 8]
        np.testing.assert_array_equal(sums.denominators[term.name], counts.sum(axis=0))
        assert np.allclose(bound, 16 / (2 * 65535))
    else:
        assert np.all(bound > spec.term_step(term))   # the weight-rounding term is counted

    finished = finish_relayed(spec, sums, {})
    assert set(finished) == {wire.GLOBAL_PROTOTYPES, wire.PROTOTYPE_MASK}
    np.testing.assert_array_equal(finished[wire.PROTOTYPE_MASK], held.astype(np.uint8))
    assert finished[wire.GLOBAL_PROTOTYPES].dtype == np.float32
    assert np.all(finished[wire.GLOBAL_PROTOTYPES][~held] == 0)
    # The plaintext server on the same (clipped) prototypes: the same global prototypes.
    replies = [Reply(str(i), {wire.PROTOTYPES: clipped[i].astype(np.float32),
                              wire.CLASS_COUNTS: counts[i]},
                     {wire.NUM_EXAMPLES: int(counts[i].sum())}) for i in range(num_clients)]
    assert server.aggregate(1, replies).released
    plain, mask = server.prototypes
    np.testing.assert_array_equal(mask, held)
    float32 = 8.0 * np.finfo(np.float32).eps        # the float32 rounding of both results
    assert np.all(np.abs(finished[wire.GLOBAL_PROTOTYPES][held] - plain[held])
                  <= bound[held, None] + float32)


def test_a_signed_term_quantizes_within_its_range() -> None:
    term = SumTerm("x", (2, 3), weight_axis=0, low=-2.0, high=6.0)
    layout = SumLayout("fedproto", (term,), "class_counts")
    spec = SecureSumSpec.for_layout(layout, 3, bits=4, max_examples=10)
    values = np.array([[-2.0, 6.0, 2.1], [-9.0, 9.0, 2.0]])
    encoded, clipped = spec.encode({"x": values}, {"x": np.array([3, 0])})
    assert clipped == 2                  # -9 and 9, even with weight 0
    # Levels round((x - lo) * 15 / 8): 0, 15 and round(7.6875) = 8, times the weight 3;
    # the unheld row contributes nothing; then the weights.
    assert encoded.tolist() == [0.0, 45.0, 24.0, 0.0, 0.0, 0.0, 3.0, 0.0]
    decoded = spec.decode(encoded, 1)
    mean = decoded.mean(term)
    np.testing.assert_allclose(mean[0], [-2.0, 6.0, -2.0 + spec.term_step(term) * 8])
    assert np.all(np.isnan(mean[1]))     # weight 0: no mean
    assert np.all(np.abs(mean[0] - values[0]) <= spec.error_bound(term, 1, [3, 0])[0])
