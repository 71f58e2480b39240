"""GroupSeal: one key holder seals, the others open; nobody without the private key can.

A seal carries a finished aggregate (named arrays) bound to the key, the sum's public
spec and its context arrays (:func:`seal_context`), so it opens for that sum only.
"""

from __future__ import annotations

import numpy as np
import pytest

from flhet_strategies import wire
from flhet_strategies.algorithms.consensus import ConsensusDistillation, RoundPlan
from flhet_strategies.privacy.paillier import (
    GroupSeal,
    KeyHolder,
    MalformedPayloadError,
    load_key_holder,
    save_key_holder,
)
from flhet_strategies.privacy.paillier.spec import SecureSumSpec
from flhet_strategies.privacy.paillier.sum_client import SumClient, seal_context

ROWS, CLASSES = 40, 10


@pytest.fixture(scope="module")
def holder() -> KeyHolder:
    return KeyHolder.generate()


def consensus_spec(holder: KeyHolder, rows: int = ROWS, cohort: int = 4) -> SecureSumSpec:
    layout = ConsensusDistillation(rows, CLASSES, rows).sum_layout(1)
    return SecureSumSpec.for_layout(layout, cohort, max_examples=1000,
                                    key_fingerprint=holder.fingerprint.hex())


def context(start: int = 0, rows: int = ROWS) -> dict[str, np.ndarray]:
    return {wire.CONSENSUS_INDICES: np.arange(start, start + rows, dtype=np.int64)}


def test_another_holder_of_the_same_key_opens_the_seal(holder, tmp_path) -> None:
    same_key = load_key_holder(save_key_holder(holder, tmp_path / "k.json"))  # another client
    consensus = np.random.default_rng(0).dirichlet(np.ones(CLASSES), size=ROWS).astype(np.float32)
    spec = consensus_spec(holder)
    aad = seal_context(spec, context())
    sealed = GroupSeal(holder).seal(consensus.tobytes(), aad)
    assert sealed.dtype == np.uint8 and sealed.ndim == 1
    assert consensus.tobytes() not in sealed.tobytes()
    opened = np.frombuffer(GroupSeal(same_key).unseal(sealed, aad), np.float32)
    np.testing.assert_array_equal(opened.reshape(ROWS, CLASSES), consensus)
    # Fresh nonces: sealing the same bytes twice gives different payloads.
    assert not np.array_equal(sealed, GroupSeal(holder).seal(consensus.tobytes(), aad))

    # The same through the clients' SumClient: a finished aggregate, by name.
    finished = {wire.CONSENSUS_INDICES: context()[wire.CONSENSUS_INDICES],
                wire.CONSENSUS: consensus}
    seal = SumClient(holder).seal(spec, finished, context())
    assert seal.dtype == np.uint8 and seal.ndim == 1
    assert consensus.tobytes() not in seal.tobytes()
    arrays = SumClient(same_key).open_seal(spec, seal, context())
    assert set(arrays) == set(finished)
    for name, value in finished.items():
        assert arrays[name].dtype == value.dtype and arrays[name].shape == value.shape
        np.testing.assert_array_equal(arrays[name], value)


def test_seal_does_not_open_under_another_key_context_or_after_tampering(holder) -> None:
    other = KeyHolder.generate()
    spec = consensus_spec(holder)
    aad = seal_context(spec, context(0, 5))
    sealed = GroupSeal(holder).seal(b"\x00" * 40, aad)
    with pytest.raises(MalformedPayloadError, match="does not authenticate"):
        GroupSeal(other).unseal(sealed, aad)
    with pytest.raises(MalformedPayloadError, match="does not authenticate"):
        GroupSeal(holder).unseal(sealed, seal_context(spec, context(1, 5)))
    tampered = sealed.copy()
    tampered[20] ^= 1
    with pytest.raises(MalformedPayloadError, match="does not authenticate"):
        GroupSeal(holder).unseal(tampered, aad)
    with pytest.raises(MalformedPayloadError, match="truncated"):
        GroupSeal(holder).unseal(sealed[:10], aad)

    # SumClient's seals are bound to the spec and the context arrays too.
    client = SumClient(holder)
    finished = {wire.CONSENSUS: np.full((ROWS, CLASSES), 0.1, np.float32)}
    seal = client.seal(spec, finished, context())
    with pytest.raises(MalformedPayloadError, match="does not authenticate"):
        client.open_seal(spec, seal, context(1))                     # other proxy indices
    with pytest.raises(MalformedPayloadError, match="does not authenticate"):
        client.open_seal(spec.with_max_summands(5), seal, context())  # another sum's spec
    with pytest.raises(MalformedPayloadError, match="does not authenticate"):
        client.open_seal(spec, seal, {**context(),                    # an extra context array
                                      "other": np.zeros(1, np.int64)})
    as_int32 = {wire.CONSENSUS_INDICES: context()[wire.CONSENSUS_INDICES].astype(np.int32)}
    with pytest.raises(MalformedPayloadError, match="does not authenticate"):
        client.open_seal(spec, seal, as_int32)                        # same values, other dtype
    tampered = seal.copy()
    tampered[-1] ^= 1
    with pytest.raises(MalformedPayloadError, match="does not authenticate"):
        client.open_seal(spec, tampered, context())
    other_spec = consensus_spec(other)
    with pytest.raises(ValueError, match="server asks for key"):     # a spec for another key
        client.open_seal(other_spec, seal, context())
    with pytest.raises(MalformedPayloadError, match="does not authenticate"):
        SumClient(other).open_seal(other_spec, seal, context())


def test_group_seal_needs_the_private_key_holder(holder) -> None:
    with pytest.raises(TypeError, match="KeyHolder"):
        GroupSeal(holder.public_key)
    with pytest.raises(TypeError, match="KeyHolder"):
        SumClient(holder.public_key)


def test_an_opened_consensus_must_match_its_indices(holder) -> None:
    """The seal carries named arrays; the consensus client half checks their shapes
    (what ``consensus_from_bytes`` checked on the raw bytes before)."""
    spec = consensus_spec(holder, rows=3, cohort=2)
    client = SumClient(holder)
    good = np.full((3, 4), 0.25, dtype=np.float32)
    indices = np.arange(3, dtype=np.int64)
    ctx = {wire.CONSENSUS_INDICES: indices}
    opened = client.open_seal(spec, client.seal(
        spec, {wire.CONSENSUS_INDICES: indices, wire.CONSENSUS: good}, ctx), ctx)
    plan = RoundPlan.from_arrays(2, {wire.PROXY_INDICES: np.arange(5), **opened})
    np.testing.assert_array_equal(plan.consensus, good)
    np.testing.assert_array_equal(plan.consensus_indices, indices)
    bad = client.open_seal(spec, client.seal(
        spec, {wire.CONSENSUS_INDICES: np.arange(4), wire.CONSENSUS: good}, ctx), ctx)
    with pytest.raises(ValueError, match="does not match"):
        RoundPlan.from_arrays(2, {wire.PROXY_INDICES: np.arange(5), **bad})
    with pytest.raises(ValueError, match="missing"):
        RoundPlan.from_arrays(2, {wire.PROXY_INDICES: np.arange(5),
                                  wire.CONSENSUS: good})
