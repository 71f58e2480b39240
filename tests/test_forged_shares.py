"""What the range checks after decryption catch when a key-holding client forges its share.

A client that holds the Paillier key (today every client does) can encrypt any
plaintext instead of its packed share. The sum is decrypted and unpacked with bounds
checks (``SlotPacking.unpack``, ``SecureSumSpec.decode``): a forgery that drives a total
outside what ``k`` honest shares can give raises; one that stays inside moves the sum by
at most that range and is not detectable. README "Threat model" states the same.
Real 2048-bit keys.
"""

from __future__ import annotations

import numpy as np
import pytest

from flhet_strategies.aggregation.weighted_sum import SumLayout, SumTerm
from flhet_strategies.privacy.paillier import (
    MIN_KEY_BITS,
    CiphertextAggregator,
    EncryptedVector,
    KeyHolder,
    MalformedPayloadError,
    SecureSumCodec,
    SecureSumOverflowError,
)
from flhet_strategies.privacy.paillier.spec import SecureSumSpec

NUM_VALUES, SUMMANDS = 40, 4


@pytest.fixture(scope="module")
def holder() -> KeyHolder:
    return KeyHolder.generate(MIN_KEY_BITS)


@pytest.fixture(scope="module")
def codec(holder):
    with SecureSumCodec(holder.public_key, NUM_VALUES, SUMMANDS, workers=1) as c:
        yield c


def _levels(codec, vector) -> np.ndarray:
    return codec.layout.encoder.encode(np.asarray(vector, dtype=np.float64))


def _forged(codec, plaintexts: list[int]) -> EncryptedVector:
    """A share that encrypts ``plaintexts`` as they are (what a key holder can send)."""
    key = codec.public_key
    ciphertexts = tuple(key.raw_encrypt(p % key.n) for p in plaintexts)
    return EncryptedVector(key, codec.layout, ciphertexts, num_summands=1)


def _unit(codec, index: int) -> int:
    """The packed plaintext with level 1 in the slot of value ``index`` (its first ciphertext)."""
    levels = np.zeros(NUM_VALUES, dtype=np.uint64)
    levels[index] = 1
    return codec.layout.packing.pack(levels)[0]


def _sum(holder, codec, honest: list[np.ndarray], forged: EncryptedVector) -> np.ndarray:
    shares = [codec.encrypt(v) for v in honest] + [forged]
    total = CiphertextAggregator(codec.public_key).add(*shares).result()
    return holder.decrypt_sum(total, len(shares), expected_layout=codec.layout)


def test_a_slot_beyond_what_honest_shares_can_give_raises(holder, codec) -> None:
    honest = [np.full(NUM_VALUES, 0.5)] * (SUMMANDS - 1)
    plain = codec.layout.encode(np.zeros(NUM_VALUES))
    top = codec.layout.packing.max_value
    # slot 3 of the forged share carries more than all k summands could hold together
    plain[0] += (SUMMANDS * top + 1 - 3 * int(_levels(codec, honest[0])[3])) * _unit(codec, 3)
    with pytest.raises(SecureSumOverflowError, match="decrypted slot holds"):
        _sum(holder, codec, honest, _forged(codec, plain))


def test_a_negative_share_that_borrows_across_slots_raises(holder, codec) -> None:
    """n - x decrypts as -x: it borrows from the slot above once a slot runs below 0."""
    honest = [np.zeros(NUM_VALUES)] * (SUMMANDS - 1)
    plain = codec.layout.encode(np.zeros(NUM_VALUES))
    plain[0] -= _unit(codec, 5)  # slot 5 holds 0 in every honest share: it must borrow
    with pytest.raises((SecureSumOverflowError, MalformedPayloadError)):
        _sum(holder, codec, honest, _forged(codec, plain))


def test_a_bit_above_the_slots_raises(holder, codec) -> None:
    honest = [np.full(NUM_VALUES, 0.25)] * (SUMMANDS - 1)
    plain = codec.layout.encode(np.full(NUM_VALUES, 0.25))
    plain[0] += 1 << codec.layout.packing.slots_per_plaintext * codec.layout.slot_bits
    with pytest.raises(MalformedPayloadError, match="bits set above the packed slots"):
        _sum(holder, codec, honest, _forged(codec, plain))


def test_an_overreach_inside_the_honest_range_is_not_detectable(holder, codec) -> None:
    """The limit: one share may hold up to k*L in a slot if the total stays <= k*L; the
    decoded sum then moves by that much and no check can tell."""
    honest = [np.zeros(NUM_VALUES)] * (SUMMANDS - 1)
    plain = codec.layout.encode(np.zeros(NUM_VALUES))
    top = codec.layout.packing.max_value
    plain[0] += SUMMANDS * top * _unit(codec, 2)  # k*L in one share: the others sent 0
    sums = _sum(holder, codec, honest, _forged(codec, plain))
    step = codec.layout.encoder.step
    assert sums[2] == pytest.approx(SUMMANDS * top * step)  # value 2 reads k * 1.0
    assert np.all(sums[np.arange(NUM_VALUES) != 2] == 0)


def test_weighted_levels_without_weight_raise_at_decode() -> None:
    """A share that claims levels but no weight: the level total exceeds L times the
    weight total, which honest shares (levels <= L per unit of weight) never give."""
    layout = SumLayout("test", (SumTerm("probs", (3, 2)),), weighting="sample_count")
    spec = SecureSumSpec.for_layout(layout, max_summands=2, max_examples=10)
    honest, _ = spec.encode({"probs": np.full((3, 2), 0.5)}, {"probs": np.array([4])})
    forged = np.zeros_like(honest)
    forged[:6] = spec.levels * 10  # full levels, weight 0
    with pytest.raises(SecureSumOverflowError, match="exceeds the top level times its weight"):
        spec.decode(honest + forged, num_summands=2)
    # the same forgery with a weight that covers it decodes: an in-range lie
    forged[6] = 10
    spec.decode(honest + forged, num_summands=2)
