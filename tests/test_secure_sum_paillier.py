"""Paillier secure sums with real 2048-bit keys (one key pair per module, made once)."""

from __future__ import annotations

import numpy as np
import phe
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flhet_strategies.privacy.paillier import (
    MIN_KEY_BITS,
    CiphertextAggregator,
    EncryptedVector,
    InsecureKeyError,
    KeyHolder,
    KeyMismatchError,
    MalformedPayloadError,
    RandomnessPool,
    SecureSumCodec,
    SecureSumOverflowError,
    encrypt_plaintexts,
    public_key_from_bytes,
    public_key_to_bytes,
)
from flhet_strategies.privacy.paillier.serialize import HEADER
import key_audit

FOREIGN_KEY_ERRORS = (KeyMismatchError, MalformedPayloadError, SecureSumOverflowError)


@pytest.fixture(scope="module")
def holder() -> KeyHolder:
    return KeyHolder.generate(MIN_KEY_BITS)


@pytest.fixture(scope="module")
def other_holder() -> KeyHolder:
    return KeyHolder.generate(MIN_KEY_BITS)


@pytest.fixture(scope="module")
def short_key() -> tuple[phe.PaillierPublicKey, phe.PaillierPrivateKey]:
    return phe.generate_paillier_keypair(n_length=1024)


def make_codec(holder: KeyHolder, num_values: int = 300, max_summands: int = 5, **kw):
    return SecureSumCodec(holder.public_key, num_values, max_summands, workers=1, **kw)


# ---------------------------------------------------------------- correctness


@given(
    data=st.data(),
    num_values=st.integers(1, 250),
    config=st.sampled_from([((0.0, 1.0), 8), ((-3.0, 3.0), 16), ((-1.0, 0.5), 5)]),
)
@settings(max_examples=20, deadline=None)
def test_encrypted_sum_equals_plaintext_sum_to_the_quantization_bound(
    holder: KeyHolder, data: st.DataObject, num_values: int, config
) -> None:
    value_range, bits = config
    low, high = value_range
    codec = make_codec(holder, num_values, max_summands=4, value_range=value_range, bits=bits)
    num_clients = data.draw(st.integers(1, 4))
    extremes = st.sampled_from([low, high, low - 10.0, high + 10.0, 0.0])
    element = st.one_of(extremes, st.floats(low - 1.0, high + 1.0))
    vectors = [
        data.draw(hnp.arrays(np.float64, num_values, elements=element))
        for _ in range(num_clients)
    ]
    arrays = [codec.encrypt(vector).to_array() for vector in vectors]
    encrypted_sum = CiphertextAggregator(holder.public_key).add(*arrays).result()
    decrypted = holder.decrypt_sum(encrypted_sum, num_clients, expected_layout=codec.layout)

    # Exactly the sum the plaintext pipeline (quantize, pack, add, unpack) gives ...
    layout = codec.layout
    plain = [sum(column) for column in zip(*(layout.encode(v) for v in vectors))]
    assert np.array_equal(decrypted, layout.decode(plain, num_clients))
    # ... and within the quantization bound of the real sum of the clipped vectors.
    expected = np.sum([np.clip(v, low, high) for v in vectors], axis=0)
    assert np.all(np.abs(decrypted - expected) <= codec.max_sum_error(num_clients) + 1e-9)


def test_8_bit_probability_fast_path_round_trip(holder: KeyHolder) -> None:
    rng = np.random.default_rng(0)
    num_clients, num_values = 10, 1000
    probabilities = rng.dirichlet(np.ones(10), size=(num_clients, num_values // 10))
    vectors = probabilities.reshape(num_clients, num_values)
    codec = SecureSumCodec(holder.public_key, num_values, num_clients, workers=1)
    assert codec.layout.slot_bits == 12 and codec.num_ciphertexts == 6
    aggregator = CiphertextAggregator(holder.public_key)
    for vector in vectors:
        aggregator.add(codec.encrypt(vector))
    decrypted = holder.decrypt_sum(aggregator.result())
    assert np.max(np.abs(decrypted - vectors.sum(axis=0))) <= codec.max_sum_error(num_clients)
    # Rows of a sum of probability vectors sum to the number of clients.
    assert np.allclose(decrypted.reshape(-1, 10).sum(axis=1), num_clients, atol=0.1)


def test_payload_is_smaller_than_float32_for_8_bit_values(holder: KeyHolder) -> None:
    codec = make_codec(holder, num_values=1700, max_summands=10)
    encrypted = codec.encrypt(np.full(1700, 0.5))
    array = encrypted.to_array()
    assert array.dtype == np.uint8 and array.ndim == 1
    assert array.nbytes == encrypted.nbytes == HEADER.size + 10 * 512
    assert array.nbytes / 1700 < 4  # float32 bytes per value


def test_dropouts_are_not_in_the_sum(holder: KeyHolder) -> None:
    rng = np.random.default_rng(1)
    codec = make_codec(holder, num_values=50, max_summands=5, value_range=(-2.0, 2.0), bits=12)
    vectors = rng.uniform(-2.0, 2.0, size=(5, 50))
    arrays = [codec.encrypt(vector).to_array() for vector in vectors]
    arrived = [0, 2, 3]  # clients 1 and 4 dropped out
    aggregator = CiphertextAggregator(holder.public_key)
    encrypted_sum = aggregator.add(*[arrays[i] for i in arrived]).result()
    assert encrypted_sum.num_summands == 3
    decrypted = holder.decrypt_sum(encrypted_sum, 3)
    assert np.all(np.abs(decrypted - vectors[arrived].sum(axis=0)) <= codec.max_sum_error(3))


def test_sum_survives_serialization_between_server_and_clients(holder: KeyHolder) -> None:
    codec = make_codec(holder, num_values=20, max_summands=3)
    vectors = [np.linspace(0, 1, 20), np.linspace(1, 0, 20)]
    reply = CiphertextAggregator(holder.public_key).add(
        *[codec.encrypt(v).to_array() for v in vectors]
    ).result().to_array()
    received = EncryptedVector.from_array(reply, holder.public_key)
    assert received.num_summands == 2
    assert np.allclose(holder.decrypt_sum(received), 1.0, atol=codec.max_sum_error(2))


# ---------------------------------------------------------------- overflow


def test_adding_more_than_max_summands_raises_and_keeps_the_sum(holder: KeyHolder) -> None:
    codec = make_codec(holder, num_values=10, max_summands=2)
    payloads = [codec.encrypt(np.ones(10)) for _ in range(3)]
    aggregator = CiphertextAggregator(holder.public_key).add(payloads[0], payloads[1])
    with pytest.raises(SecureSumOverflowError, match="only absorb the carries of 2"):
        aggregator.add(payloads[2])
    assert aggregator.num_summands == 2
    assert np.allclose(holder.decrypt_sum(aggregator.result()), 2.0)


def test_out_of_range_plaintext_from_a_rogue_client_raises_on_decrypt(holder: KeyHolder) -> None:
    codec = make_codec(holder, num_values=10, max_summands=3)
    honest = codec.encrypt(np.ones(10))
    # A client that skips quantization puts 768 > 255 into the first slot; the sum
    # 255 + 768 still fits the 10-bit slot, so only the slot bound can catch it.
    layout = codec.layout
    assert layout.slot_bits == 10
    first_slot = layout.slot_bits * (layout.slots_per_ciphertext - 1)
    plaintext = layout.encode(np.zeros(10))[0] + (768 << first_slot)
    rogue_ciphertexts = encrypt_plaintexts(holder.public_key, [plaintext], codec.randomness.take(1))
    rogue = EncryptedVector(holder.public_key, codec.layout, rogue_ciphertexts)
    encrypted_sum = CiphertextAggregator(holder.public_key).add(honest, rogue).result()
    with pytest.raises(SecureSumOverflowError, match="decrypted slot"):
        holder.decrypt_sum(encrypted_sum)


def test_wrong_summand_count_is_refused(holder: KeyHolder) -> None:
    codec = make_codec(holder, num_values=10, max_summands=3)
    encrypted = codec.encrypt(np.ones(10))
    with pytest.raises(MalformedPayloadError, match="holds 1 vectors"):
        holder.decrypt_sum(encrypted, 2)


# ---------------------------------------------------------------- keys


def test_no_server_side_object_holds_a_private_key(holder: KeyHolder) -> None:
    codec = make_codec(holder, num_values=10, max_summands=3)
    aggregator = CiphertextAggregator(holder.public_key)
    aggregator.add(codec.encrypt(np.ones(10)).to_array(), codec.encrypt(np.zeros(10)))
    reachable = key_audit.reachable(aggregator) + key_audit.reachable(aggregator.result())
    assert any(isinstance(obj, phe.PaillierPublicKey) for obj in reachable)
    assert not any(isinstance(obj, (phe.PaillierPrivateKey, KeyHolder)) for obj in reachable)
    for obj in reachable:
        names = set(getattr(obj, "__dict__", {}))
        assert not names & {"p", "q", "psquare", "qsquare", "hp", "hq", "_private_key"}, obj


def test_aggregator_refuses_a_private_key(holder: KeyHolder) -> None:
    with pytest.raises(TypeError, match="never hold the private key"):
        CiphertextAggregator(holder)
    with pytest.raises(TypeError, match="never hold the private key"):
        CiphertextAggregator(holder._private_key)


def test_keys_shorter_than_2048_bits_are_refused(short_key) -> None:
    public_key, private_key = short_key
    with pytest.raises(InsecureKeyError, match="at least 2048"):
        KeyHolder(private_key)
    with pytest.raises(InsecureKeyError, match="at least 2048"):
        KeyHolder.generate(1024)
    with pytest.raises(InsecureKeyError, match="at least 2048"):
        SecureSumCodec(public_key, 10, 3)
    with pytest.raises(InsecureKeyError, match="at least 2048"):
        CiphertextAggregator(public_key)
    n_bytes = public_key.n.to_bytes(128, "big")
    with pytest.raises(InsecureKeyError, match="at least 2048"):
        public_key_from_bytes(b"FHPK" + (128).to_bytes(2, "big") + n_bytes)


def test_public_key_bytes_round_trip(holder: KeyHolder) -> None:
    data = public_key_to_bytes(holder.public_key)
    assert public_key_from_bytes(data) == holder.public_key
    assert public_key_from_bytes(np.frombuffer(data, dtype=np.uint8)) == holder.public_key
    with pytest.raises(MalformedPayloadError):
        public_key_from_bytes(data[:-1])


def test_key_holder_repr_does_not_reveal_the_private_key(holder: KeyHolder) -> None:
    text = repr(holder)
    assert str(holder._private_key.p) not in text and "fingerprint" in text


# ---------------------------------------------------------------- foreign and malformed payloads


def test_payload_under_another_key_is_refused(holder: KeyHolder, other_holder: KeyHolder) -> None:
    foreign = make_codec(other_holder, num_values=10, max_summands=3).encrypt(np.ones(10))
    with pytest.raises(KeyMismatchError, match="encrypted under key"):
        CiphertextAggregator(holder.public_key).add(foreign.to_array())
    with pytest.raises(KeyMismatchError, match="encrypted under key"):
        CiphertextAggregator(holder.public_key).add(foreign)
    with pytest.raises(KeyMismatchError, match="this key holder holds key"):
        holder.decrypt_sum(foreign)


def test_foreign_ciphertext_with_a_forged_header_does_not_decode(
    holder: KeyHolder, other_holder: KeyHolder
) -> None:
    own = make_codec(holder, num_values=300, max_summands=3).encrypt(np.ones(300)).to_array()
    foreign = make_codec(other_holder, num_values=300, max_summands=3).encrypt(np.ones(300))
    forged = own.copy()
    forged[HEADER.size :] = foreign.to_array()[HEADER.size :]  # foreign ciphertexts, own header
    with pytest.raises(FOREIGN_KEY_ERRORS):
        holder.decrypt_sum(EncryptedVector.from_array(forged, holder.public_key))


def test_corrupted_ciphertext_does_not_decode(holder: KeyHolder) -> None:
    array = make_codec(holder, num_values=300, max_summands=3).encrypt(np.ones(300)).to_array()
    array[HEADER.size + 100] ^= 0x01
    with pytest.raises((MalformedPayloadError, SecureSumOverflowError)):
        holder.decrypt_sum(EncryptedVector.from_array(array, holder.public_key))


def _with_first_ciphertext(array: np.ndarray, value: int) -> np.ndarray:
    patched = array.copy()
    patched[HEADER.size : HEADER.size + 512] = np.frombuffer(value.to_bytes(512, "big"), np.uint8)
    return patched


def test_malformed_payloads_raise_clear_errors(holder: KeyHolder) -> None:
    array = make_codec(holder, num_values=10, max_summands=3).encrypt(np.ones(10)).to_array()
    n = holder.public_key.n
    cases = {
        "fewer than": array[:20],
        "bytes, header implies": array[:-1],
        "magic": np.concatenate([np.frombuffer(b"XXXX", np.uint8), array[4:]]),
        "outside \\[1, n\\*\\*2\\)": _with_first_ciphertext(array, 0),
        "shares a factor": _with_first_ciphertext(array, n),
        "1-D uint8": array.astype(np.int16),
    }
    for message, payload in cases.items():
        with pytest.raises(MalformedPayloadError, match=message):
            CiphertextAggregator(holder.public_key).add(payload)
    inconsistent = array.copy()
    slot_bits_offset = HEADER.size - 8 - 8 - 2 - 1
    inconsistent[slot_bits_offset] += 1
    with pytest.raises(MalformedPayloadError, match="bit layout is inconsistent"):
        EncryptedVector.from_array(inconsistent, holder.public_key)
    with pytest.raises(TypeError, match="EncryptedVector or uint8"):
        CiphertextAggregator(holder.public_key).add([1, 2, 3])


def test_payloads_with_different_layouts_are_not_mixed(holder: KeyHolder) -> None:
    a = make_codec(holder, num_values=10, max_summands=3).encrypt(np.ones(10))
    b = make_codec(holder, num_values=10, max_summands=3, bits=6).encrypt(np.ones(10))
    with pytest.raises(MalformedPayloadError, match="same num_values"):
        CiphertextAggregator(holder.public_key).add(a, b)
    with pytest.raises(MalformedPayloadError, match="same num_values"):
        holder.decrypt_sum(b, expected_layout=a.layout)


# ---------------------------------------------------------------- randomness and phe compatibility


def test_obfuscators_are_handed_out_once(holder: KeyHolder) -> None:
    pool = RandomnessPool(holder.public_key, workers=1)
    pool.fill(4)
    first, second = pool.take(2), pool.take(2)
    assert pool.available == 0
    assert len({int(x) for x in first + second}) == 4
    codec = make_codec(holder, num_values=10, max_summands=2, randomness=pool)
    a, b = codec.encrypt(np.ones(10)), codec.encrypt(np.ones(10))
    assert a.ciphertexts != b.ciphertexts  # same vector, fresh randomness


def test_background_fill_in_two_worker_processes(holder: KeyHolder) -> None:
    with RandomnessPool(holder.public_key, workers=2) as pool:
        pool.fill(6, block=False)
        codec = make_codec(holder, num_values=300, max_summands=3, randomness=pool)
        vectors = [np.full(300, 0.25), np.linspace(0, 1, 300), np.ones(300)]
        encrypted = [codec.encrypt(v) for v in vectors]
        encrypted_sum = CiphertextAggregator(holder.public_key).add(*encrypted).result()
        decrypted = holder.decrypt_sum(encrypted_sum)
    assert np.all(np.abs(decrypted - np.sum(vectors, axis=0)) <= codec.max_sum_error(3))


def test_randomness_pool_for_another_key_is_refused(holder, other_holder) -> None:
    with pytest.raises(ValueError, match="another public key"):
        make_codec(holder, randomness=RandomnessPool(other_holder.public_key, workers=1))


def test_ciphertexts_are_interchangeable_with_phe(holder: KeyHolder) -> None:
    codec = make_codec(holder, num_values=10, max_summands=3)
    encrypted = codec.encrypt(np.linspace(0, 1, 10))
    plaintext = codec.layout.encode(np.linspace(0, 1, 10))[0]
    # phe decrypts our ciphertext ...
    assert holder._private_key.raw_decrypt(int(encrypted.ciphertexts[0])) == plaintext
    # ... and our decoder accepts phe's ciphertext of the same packed plaintext.
    from_phe = EncryptedVector(
        holder.public_key, codec.layout, (holder.public_key.raw_encrypt(plaintext),)
    )
    assert np.allclose(holder.decrypt_sum(from_phe), np.linspace(0, 1, 10), atol=1 / 510)
