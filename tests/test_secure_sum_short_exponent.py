"""Short-exponent (DJN) obfuscators, threaded randomness pools and decryption, key dealer files."""

from __future__ import annotations

import os
import pickle
import stat

import gmpy2
import numpy as np
import pytest

from flhet_strategies.privacy.paillier import (
    CiphertextAggregator,
    KeyHolder,
    MalformedPayloadError,
    RandomnessPool,
    SecureSumCodec,
    ShortExponentObfuscators,
    deal_keys,
    load_key_holder,
    load_public_key,
    save_key_holder,
)
from flhet_strategies.privacy.paillier.short_exponent import _TABLES


@pytest.fixture(scope="module")
def holder() -> KeyHolder:
    return KeyHolder.generate()


def test_short_exponent_obfuscators_are_n_th_residues_that_phe_decrypts(holder) -> None:
    source = ShortExponentObfuscators(holder.public_key)
    obfuscators = source.compute(5)
    assert len({int(x) for x in obfuscators}) == 5
    n = holder.public_key.n
    for index, obfuscator in enumerate(obfuscators):
        assert holder._private_key.raw_decrypt(int(obfuscator)) == 0   # encrypts 0
        ciphertext = ((n * (index + 41) + 1) * obfuscator) % (n * n)
        assert holder._private_key.raw_decrypt(int(ciphertext)) == index + 41


def test_fixed_base_table_computes_h_to_the_x(holder, monkeypatch) -> None:
    source = ShortExponentObfuscators(holder.public_key, exponent_bits=256, window=4)
    exponents = iter([(1 << 255) | 12345, (1 << 255) | (1 << 200) | 7])
    monkeypatch.setattr("secrets.randbits", lambda bits: next(exponents))
    got = source.compute(2)
    nsquare = gmpy2.mpz(holder.public_key.n) ** 2
    assert got[0] == gmpy2.powmod(source.base, (1 << 255) | 12345, nsquare)
    assert got[1] == gmpy2.powmod(source.base, (1 << 255) | (1 << 200) | 7, nsquare)


def test_each_source_draws_its_own_base_and_pickles_without_its_table(holder) -> None:
    a = ShortExponentObfuscators(holder.public_key)
    b = ShortExponentObfuscators(holder.public_key)
    assert a.base != b.base
    a.compute(1)
    assert _TABLES  # built once per process
    copy = pickle.loads(pickle.dumps(a))
    assert len(pickle.dumps(a)) < 4000 and copy.base == a.base  # a table is megabytes
    assert holder._private_key.raw_decrypt(int(copy.compute(1)[0])) == 0


def test_bad_short_exponent_settings_are_refused(holder) -> None:
    with pytest.raises(ValueError, match="exponent_bits"):
        ShortExponentObfuscators(holder.public_key, exponent_bits=128)
    with pytest.raises(ValueError, match="window"):
        ShortExponentObfuscators(holder.public_key, window=12)
    with pytest.raises(TypeError, match="private key"):
        ShortExponentObfuscators(holder)
    other = KeyHolder.generate()
    with pytest.raises(ValueError, match="another public key"):
        RandomnessPool(holder.public_key, source=ShortExponentObfuscators(other.public_key))
    with pytest.raises(ValueError, match="background"):
        RandomnessPool(holder.public_key, background="fiber")


@pytest.mark.parametrize("workers", [1, 2])
def test_threaded_pool_with_short_exponents_gives_correct_sums(holder, workers) -> None:
    source = ShortExponentObfuscators(holder.public_key)
    with RandomnessPool(holder.public_key, workers=workers, source=source,
                        background="thread") as pool:
        pool.fill(4, block=False)   # e.g. while the client trains
        codec = SecureSumCodec(holder.public_key, 300, 3, randomness=pool)
        vectors = [np.full(300, 0.25), np.linspace(0, 1, 300), np.ones(300)]
        encrypted = [codec.encrypt(v) for v in vectors]
        assert pool.pending == 0
    total = holder.decrypt_sum(CiphertextAggregator(holder.public_key).add(*encrypted).result())
    assert np.all(np.abs(total - np.sum(vectors, axis=0)) <= codec.max_sum_error(3))


# ---------------------------------------------------------------- key dealer files


def test_dealt_keys_round_trip_and_the_private_file_is_owner_only(tmp_path) -> None:
    files = deal_keys(tmp_path / "keys")
    assert stat.S_IMODE(os.stat(files.private_path).st_mode) == 0o600
    holder = load_key_holder(files.private_path)
    public_key = load_public_key(files.public_path)
    assert holder.public_key == public_key
    assert holder.fingerprint.hex() == files.fingerprint
    assert not list((tmp_path / "keys").glob("*.tmp"))
    # The public key file holds no private material.
    assert format(holder._private_key.p, "x").encode() not in files.public_path.read_bytes()


def test_saved_key_holder_decrypts_what_the_original_encrypted(tmp_path, holder) -> None:
    path = save_key_holder(holder, tmp_path / "k.json")
    codec = SecureSumCodec(holder.public_key, 5, 1, workers=1)
    encrypted = codec.encrypt(np.linspace(0, 1, 5))
    assert np.allclose(load_key_holder(path).decrypt_sum(encrypted), np.linspace(0, 1, 5),
                       atol=1 / 510)


def test_missing_or_tampered_key_files_give_clear_errors(tmp_path, holder) -> None:
    with pytest.raises(FileNotFoundError, match="deal_keys"):
        load_key_holder(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="public key file"):
        load_public_key(tmp_path / "nope.bin")
    path = save_key_holder(holder, tmp_path / "k.json")
    text = path.read_text()
    path.write_text(text.replace('"p": "', '"p": "1'))
    with pytest.raises(MalformedPayloadError, match="p \\* q"):
        load_key_holder(path)
    path.write_text("{not json")
    with pytest.raises(MalformedPayloadError, match="not a flhet Paillier private key"):
        load_key_holder(path)
    (tmp_path / "pub.bin").write_bytes(b"garbage")
    with pytest.raises(MalformedPayloadError):
        load_public_key(tmp_path / "pub.bin")


def test_threaded_decryption_equals_sequential_decryption(holder) -> None:
    codec = SecureSumCodec(holder.public_key, 2000, 4, workers=1)
    encrypted = codec.encrypt(np.random.default_rng(2).random(2000))
    assert len(encrypted.ciphertexts) > 3
    sequential = holder.decrypt_plaintexts(encrypted)
    assert holder.decrypt_plaintexts(encrypted, workers=3) == sequential
    np.testing.assert_array_equal(holder.decrypt_sum(encrypted, workers=2),
                                  holder.decrypt_sum(encrypted))
    with pytest.raises(ValueError, match="workers"):
        holder.decrypt_plaintexts(encrypted, workers=0)
