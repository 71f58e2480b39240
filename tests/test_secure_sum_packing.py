"""Fixed-point quantization and BatchCrypt-style packing (plaintext side, no encryption)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flhet_strategies.privacy.paillier import (
    FixedPointEncoder,
    MalformedPayloadError,
    SecureSumLayout,
    SecureSumOverflowError,
    SlotPacking,
)

PLAINTEXT_BITS = 2047  # a 2048-bit Paillier modulus


# ---------------------------------------------------------------- fixed point


def test_encoder_maps_range_ends_to_extreme_levels_and_clips_outside() -> None:
    encoder = FixedPointEncoder(-2.0, 3.0, bits=8)
    levels = encoder.encode(np.array([-2.0, 3.0, -50.0, 50.0, 0.5]))
    assert levels.dtype == np.uint64
    assert levels.tolist()[:4] == [0, 255, 0, 255]
    assert levels[4] == round(2.5 / encoder.step)


@given(
    values=hnp.arrays(
        np.float64, st.integers(1, 50), elements=st.floats(-1e3, 1e3, allow_nan=False)
    ),
    bits=st.integers(1, 32),
)
@settings(max_examples=60, deadline=None)
def test_encoder_round_trip_is_within_half_a_step(values: np.ndarray, bits: int) -> None:
    encoder = FixedPointEncoder(-10.0, 10.0, bits=bits)
    levels = encoder.encode(values)
    assert int(levels.max()) <= (1 << bits) - 1
    decoded = encoder.decode_sum(levels, num_summands=1)
    clipped = np.clip(values, -10.0, 10.0)
    assert np.all(np.abs(decoded - clipped) <= encoder.max_sum_error(1) + 1e-9)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_encoder_rejects_nan_and_infinity(bad: float) -> None:
    with pytest.raises(ValueError, match="NaN or infinite"):
        FixedPointEncoder(0.0, 1.0, 8).encode(np.array([0.5, bad]))


@pytest.mark.parametrize(
    ("low", "high", "bits", "error"),
    [(1.0, 1.0, 8, ValueError), (2.0, 1.0, 8, ValueError), (0.0, np.inf, 8, ValueError),
     (0.0, 1.0, 0, ValueError), (0.0, 1.0, 33, ValueError), (0.0, 1.0, 8.0, TypeError)],
)
def test_encoder_rejects_bad_configuration(low, high, bits, error) -> None:
    with pytest.raises(error):
        FixedPointEncoder(low, high, bits)


def test_encoder_rejects_non_numeric_values() -> None:
    with pytest.raises(ValueError, match="numeric"):
        FixedPointEncoder(0.0, 1.0, 8).encode(np.array(["a", "b"]))


# ---------------------------------------------------------------- packing


def test_slot_layout_for_8_bit_values_and_10_clients() -> None:
    packing = SlotPacking(value_bits=8, max_summands=10, plaintext_bits=PLAINTEXT_BITS)
    # 10 * 255 = 2550 needs 12 bits: 8 value bits + 4 padding bits.
    assert packing.slot_bits == 12
    assert packing.slots_per_plaintext == 170
    assert packing.num_plaintexts(170) == 1
    assert packing.num_plaintexts(171) == 2
    assert all(p < 1 << PLAINTEXT_BITS for p in packing.pack(np.full(340, 255)))


@given(
    data=st.data(),
    value_bits=st.integers(1, 24),
    max_summands=st.integers(1, 1000),
    num_values=st.integers(1, 400),
)
@settings(max_examples=60, deadline=None)
def test_sum_of_packed_plaintexts_unpacks_to_elementwise_sum(
    data: st.DataObject, value_bits: int, max_summands: int, num_values: int
) -> None:
    packing = SlotPacking(value_bits, max_summands, PLAINTEXT_BITS)
    num_summands = data.draw(st.integers(1, min(max_summands, 8)))
    top = (1 << value_bits) - 1
    level = st.one_of(st.just(0), st.just(top), st.integers(0, top))
    vectors = data.draw(hnp.arrays(np.uint64, (num_summands, num_values), elements=level))
    packed = [packing.pack(vector) for vector in vectors]
    summed = [sum(column) for column in zip(*packed)]  # what Paillier addition computes
    unpacked = packing.unpack(summed, num_values, num_summands)
    assert np.array_equal(unpacked, vectors.sum(axis=0, dtype=np.uint64))


def test_full_carry_room_is_exact_at_max_summands() -> None:
    packing = SlotPacking(8, 10, PLAINTEXT_BITS)
    packed = packing.pack(np.full(200, 255))
    total = [p * 10 for p in packed]
    assert np.all(packing.unpack(total, 200, 10) == 2550)


def test_one_summand_too_many_raises_instead_of_a_wrong_sum() -> None:
    packing = SlotPacking(8, 10, PLAINTEXT_BITS)
    packed = packing.pack(np.full(200, 255))
    total = [p * 11 for p in packed]  # carries spill into the neighbouring slots
    with pytest.raises(SecureSumOverflowError, match="at most 10 summands"):
        packing.unpack(total, 200, 11)
    with pytest.raises(SecureSumOverflowError, match="decrypted slot"):
        packing.unpack(total, 200, 10)  # a lying count is caught by the slot bound


def test_out_of_range_summand_is_caught_by_the_slot_bound() -> None:
    packing = SlotPacking(8, 10, PLAINTEXT_BITS)
    honest = packing.pack(np.zeros(5))
    malicious = packing.slot_bits * (packing.slots_per_plaintext - 1)
    forged = [honest[0] + (300 << malicious)]  # 300 > 255 in the first slot
    with pytest.raises(SecureSumOverflowError):
        packing.unpack(forged, 5, 1)


def test_bits_above_the_slots_or_in_unused_slots_are_rejected() -> None:
    packing = SlotPacking(8, 10, PLAINTEXT_BITS)
    packed = packing.pack(np.ones(5))
    with pytest.raises(MalformedPayloadError, match="above the packed slots"):
        packing.unpack([packed[0] | (1 << (PLAINTEXT_BITS - 1))], 5, 1)
    with pytest.raises(MalformedPayloadError, match="unused slots"):
        packing.unpack([packed[0] | 1], 5, 1)  # the last slot is past value 5
    with pytest.raises(MalformedPayloadError, match="plaintexts"):
        packing.unpack(packed + packed, 5, 1)


def test_pack_rejects_levels_outside_the_value_range() -> None:
    packing = SlotPacking(8, 10, PLAINTEXT_BITS)
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        packing.pack(np.array([256]))
    with pytest.raises(ValueError, match="1-D"):
        packing.pack(np.zeros((2, 2)))


def test_slots_wider_than_63_bits_are_refused() -> None:
    with pytest.raises(ValueError, match="Lower bits or max_summands"):
        SlotPacking(32, 2**32, PLAINTEXT_BITS)


# ---------------------------------------------------------------- layout


@given(
    data=st.data(),
    num_values=st.integers(1, 400),
    bits=st.sampled_from([4, 8, 12, 16]),
)
@settings(max_examples=40, deadline=None)
def test_layout_sum_is_within_the_quantization_bound_for_signed_values(
    data: st.DataObject, num_values: int, bits: int
) -> None:
    layout = SecureSumLayout(num_values, 6, -5.0, 5.0, bits, PLAINTEXT_BITS)
    num_summands = data.draw(st.integers(1, 6))
    element = st.one_of(st.sampled_from([-5.0, 5.0, -7.5, 9.0, 0.0]), st.floats(-6.0, 6.0))
    vectors = [
        data.draw(hnp.arrays(np.float64, num_values, elements=element))
        for _ in range(num_summands)
    ]
    summed = [sum(column) for column in zip(*(layout.encode(v) for v in vectors))]
    decoded = layout.decode(summed, num_summands)
    expected = np.sum([np.clip(v, -5.0, 5.0) for v in vectors], axis=0)
    assert np.all(np.abs(decoded - expected) <= layout.max_sum_error(num_summands) + 1e-9)


def test_layout_rejects_a_vector_of_the_wrong_shape() -> None:
    layout = SecureSumLayout(10, 3, 0.0, 1.0, 8, PLAINTEXT_BITS)
    with pytest.raises(ValueError, match="1-D vector of 10 values"):
        layout.encode(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="1-D vector of 10 values"):
        layout.encode(np.zeros(9))
