"""GroupSeal: one key holder seals, the others open; nobody without the private key can."""

from __future__ import annotations

import numpy as np
import pytest

from flhet_strategies.core.secure_consensus import consensus_context, consensus_from_bytes
from flhet_strategies.privacy.paillier import (
    GroupSeal,
    KeyHolder,
    MalformedPayloadError,
    load_key_holder,
    save_key_holder,
)


@pytest.fixture(scope="module")
def holder() -> KeyHolder:
    return KeyHolder.generate()


def test_another_holder_of_the_same_key_opens_the_seal(holder, tmp_path) -> None:
    same_key = load_key_holder(save_key_holder(holder, tmp_path / "k.json"))  # another client
    consensus = np.random.default_rng(0).dirichlet(np.ones(10), size=40).astype(np.float32)
    context = consensus_context(holder.fingerprint.hex(), np.arange(40), 10)
    sealed = GroupSeal(holder).seal(consensus.tobytes(), context)
    assert sealed.dtype == np.uint8 and sealed.ndim == 1
    assert consensus.tobytes() not in sealed.tobytes()
    opened = consensus_from_bytes(GroupSeal(same_key).unseal(sealed, context), 40, 10)
    np.testing.assert_array_equal(opened, consensus)
    # Fresh nonces: sealing the same bytes twice gives different payloads.
    assert not np.array_equal(sealed, GroupSeal(holder).seal(consensus.tobytes(), context))


def test_seal_does_not_open_under_another_key_context_or_after_tampering(holder) -> None:
    other = KeyHolder.generate()
    context = consensus_context(holder.fingerprint.hex(), np.arange(5), 2)
    sealed = GroupSeal(holder).seal(b"\x00" * 40, context)
    with pytest.raises(MalformedPayloadError, match="does not authenticate"):
        GroupSeal(other).unseal(sealed, context)
    with pytest.raises(MalformedPayloadError, match="does not authenticate"):
        GroupSeal(holder).unseal(sealed, consensus_context(holder.fingerprint.hex(),
                                                           np.arange(1, 6), 2))
    tampered = sealed.copy()
    tampered[20] ^= 1
    with pytest.raises(MalformedPayloadError, match="does not authenticate"):
        GroupSeal(holder).unseal(tampered, context)
    with pytest.raises(MalformedPayloadError, match="truncated"):
        GroupSeal(holder).unseal(sealed[:10], context)


def test_group_seal_needs_the_private_key_holder(holder) -> None:
    with pytest.raises(TypeError, match="KeyHolder"):
        GroupSeal(holder.public_key)


def test_consensus_bytes_must_be_distributions_of_the_expected_shape() -> None:
    good = np.full((3, 4), 0.25, dtype=np.float32)
    np.testing.assert_array_equal(consensus_from_bytes(good.tobytes(), 3, 4), good)
    with pytest.raises(ValueError, match="expected"):
        consensus_from_bytes(good.tobytes(), 4, 4)
    with pytest.raises(ValueError, match="probability distributions"):
        consensus_from_bytes((good * 2).tobytes(), 3, 4)
