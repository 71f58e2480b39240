"""Secure DS-FL consensus (core, no Flower): real 2048-bit Paillier sums vs the plaintext rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flhet_strategies.aggregation.logit_consensus import (
    ConsensusConfig,
    class_vote_weights,
    logit_consensus,
    softmax,
)
from flhet_strategies.core.secure_consensus import SecureConsensusSpec
from flhet_strategies.privacy.paillier import (
    CiphertextAggregator,
    EncryptedVector,
    KeyHolder,
    RandomnessPool,
    SecureSumCodec,
    ShortExponentObfuscators,
)


@pytest.fixture(scope="module")
def holder() -> KeyHolder:
    return KeyHolder.generate()


@pytest.fixture(scope="module")
def pool(holder: KeyHolder):
    source = ShortExponentObfuscators(holder.public_key)
    with RandomnessPool(holder.public_key, workers=1, source=source, background="thread") as p:
        yield p


def secure_round(holder, pool, spec, logits, counts, num_examples, arrived):
    """Clients in ``arrived`` encrypt their shares; the server multiplies; a client decodes."""
    codec = SecureSumCodec(holder.public_key, spec.num_values, spec.max_summands,
                           (0.0, float((1 << spec.value_bits) - 1)), spec.value_bits,
                           randomness=pool)
    plaintext_bits = holder.public_key.n.bit_length() - 1
    assert codec.layout == spec.layout(plaintext_bits)
    shares = [codec.encrypt(spec.encode(logits[i], counts[i], int(num_examples[i]))).to_array()
              for i in arrived]
    encrypted_sum = CiphertextAggregator(holder.public_key).add(*shares).result().to_array()
    received = EncryptedVector.from_array(encrypted_sum, holder.public_key)
    spec.check_sum_layout(received.layout, spec.num_samples)
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
    spec = SecureConsensusSpec.for_consensus(
        config, num_samples, num_classes, num_clients, weighting=weighting,
        max_examples=int(num_examples.max()), vote_bits=vote_bits,
        key_fingerprint=holder.fingerprint.hex())
    result = secure_round(holder, pool, spec, logits, counts, num_examples, arrived)

    weights = (num_examples[arrived] if weighting == "sample_count"
               else np.ones(len(arrived))).astype(np.float64)
    mean = plaintext_mean(logits[arrived], counts[arrived], weights, config)
    assert result.num_summands == len(arrived)
    assert np.all(np.abs(result.mean_probabilities - mean) <= result.error_bound[None, :] + 1e-12)
    if spec.vote_unit == 1:  # exact votes: only the probability rounding is left
        assert np.allclose(result.error_bound, 1 / 510)
    expected = logit_consensus(logits[arrived], weights, config, counts[arrived])
    tolerance = era_tolerance(mean, result.error_bound, config.era_temperature)
    assert np.max(np.abs(result.consensus - expected)) <= tolerance
    assert result.consensus.dtype == np.float32
    np.testing.assert_allclose(result.consensus.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("era_temperature, typical", [(None, 1e-3), (0.1, 2e-3)])
def test_the_flhet_default_rule_agrees_closely_in_practice(holder, pool, era_temperature,
                                                           typical) -> None:
    """Sample-count weights with class votes (flhet's default), 16-bit rounded votes."""
    logits, counts, num_examples = client_data(3, 4, 100, 10, 300)
    config = ConsensusConfig(era_temperature=era_temperature)
    spec = SecureConsensusSpec.for_consensus(config, 100, 10, 4, weighting="sample_count",
                                             max_examples=4096, key_fingerprint="x")
    assert spec.vote_unit > 1
    result = secure_round(holder, pool, spec, logits, counts, num_examples, [0, 1, 2, 3])
    expected = logit_consensus(logits, num_examples.astype(float), config, counts)
    mean = plaintext_mean(logits, counts, num_examples.astype(float), config)
    assert np.all(np.abs(result.mean_probabilities - mean) <= result.error_bound[None, :])
    # Typical errors are far below the worst case: check both.
    assert np.max(np.abs(result.consensus - expected)) <= era_tolerance(
        mean, result.error_bound, era_temperature)
    assert np.mean(np.abs(result.consensus - expected)) < typical
    assert np.mean(result.consensus.argmax(1) == expected.argmax(1)) >= 0.98


def test_fast_path_uses_8_bit_values_and_few_ciphertexts(holder) -> None:
    config = ConsensusConfig(class_vote_weighting=False)
    spec = SecureConsensusSpec.for_consensus(config, 2000, 10, 10, weighting="uniform",
                                             max_examples=60_000)
    layout = spec.layout(holder.public_key.n.bit_length() - 1)
    assert (spec.value_bits, layout.slot_bits, layout.num_ciphertexts) == (8, 12, 118)
    per_class = SecureConsensusSpec.for_consensus(ConsensusConfig(), 2000, 10, 10,
                                                  weighting="sample_count", max_examples=3000)
    assert per_class.vote_bits == 16 and per_class.vote_unit == 138
    assert per_class.layout(2047).num_ciphertexts == 275


def test_a_class_nobody_holds_gets_probability_zero(holder, pool) -> None:
    logits, counts, num_examples = client_data(5, 3, 20, 10, 100)
    counts[:, 7] = 0
    spec = SecureConsensusSpec.for_consensus(ConsensusConfig(era_temperature=None), 20, 10, 3,
                                             weighting="uniform", max_examples=4000)
    result = secure_round(holder, pool, spec, logits, counts, counts.sum(1), [0, 1, 2])
    assert result.vote_totals[7] == 0
    assert np.all(result.consensus[:, 7] == 0)
    np.testing.assert_allclose(result.consensus.sum(axis=1), 1.0, rtol=1e-5)


def test_votes_are_exact_when_the_bound_fits_and_never_vanish_when_rounded() -> None:
    config = ConsensusConfig()
    exact = SecureConsensusSpec.for_consensus(config, 5, 3, 2, weighting="uniform",
                                              max_examples=1000)
    assert exact.vote_unit == 1
    np.testing.assert_array_equal(exact.votes(np.array([0, 7, 993]), 1000), [0, 7, 993])
    rounded = SecureConsensusSpec.for_consensus(config, 5, 3, 2, weighting="sample_count",
                                                max_examples=1000, vote_bits=8)
    assert rounded.vote_unit == -(-1000**2 // 255)
    votes = rounded.votes(np.array([0, 1, 999]), 1000)
    assert votes[0] == 0 and votes[1] == 1   # a tiny vote rounds up to 1, not to 0
    assert votes[2] == round(999 * 1000 / rounded.vote_unit)


def test_a_vote_above_the_public_bound_is_refused() -> None:
    spec = SecureConsensusSpec.for_consensus(ConsensusConfig(), 5, 3, 2, weighting="uniform",
                                             max_examples=100)
    with pytest.raises(ValueError, match="raise max_examples"):
        spec.votes(np.array([0, 200, 1]), 201)


def test_invalid_inputs_are_rejected_with_clear_messages() -> None:
    spec = SecureConsensusSpec.for_consensus(ConsensusConfig(), 4, 3, 2, weighting="uniform",
                                             max_examples=100)
    counts = np.array([1, 2, 3])
    with pytest.raises(ValueError, match="shape"):
        spec.encode(np.zeros((5, 3)), counts, 6)
    with pytest.raises(ValueError, match="NaN"):
        spec.encode(np.full((4, 3), np.nan), counts, 6)
    with pytest.raises(ValueError, match="floating"):
        spec.encode(np.zeros((4, 3), dtype=np.int64), counts, 6)
    with pytest.raises(ValueError, match="non-negative integers"):
        spec.votes(np.array([1.5, 0, 0]), 6)
    with pytest.raises(ValueError, match="positive integer"):
        spec.votes(counts, 0)
    with pytest.raises(ValueError, match="DS-FL"):
        SecureConsensusSpec.for_consensus(ConsensusConfig(mode="fedmd"), 4, 3, 2,
                                          weighting="uniform", max_examples=10)
    with pytest.raises(ValueError, match="weighting"):
        SecureConsensusSpec.for_consensus(ConsensusConfig(), 4, 3, 2, weighting="shapley",
                                          max_examples=10)


def test_decode_refuses_sums_that_no_honest_shares_give() -> None:
    spec = SecureConsensusSpec.for_consensus(ConsensusConfig(), 2, 3, 2, weighting="uniform",
                                             max_examples=100)
    good = np.concatenate([np.full(6, 255.0 * 2), [2.0, 2.0, 2.0]])
    assert spec.decode(good, 2).vote_totals.tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="exceeds probability 1"):
        spec.decode(np.concatenate([np.full(6, 255.0 * 3), [2.0, 2.0, 2.0]]), 2)
    with pytest.raises(ValueError, match="integers"):
        spec.decode(good + 0.5, 2)
    with pytest.raises(ValueError, match="values"):
        spec.decode(good[:-1], 2)


def test_spec_round_trips_through_json_and_checks_the_sum_layout() -> None:
    spec = SecureConsensusSpec.for_consensus(ConsensusConfig(era_temperature=None), 40, 10, 7,
                                             weighting="sample_count", max_examples=500,
                                             key_fingerprint="ab")
    assert SecureConsensusSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="invalid secure consensus spec"):
        SecureConsensusSpec.from_json('{"num_samples": 3}')
    spec.check_sum_layout(spec.layout(2047), 40)
    with pytest.raises(ValueError, match="41 proxy samples"):
        spec.check_sum_layout(spec.layout(2047), 41)
