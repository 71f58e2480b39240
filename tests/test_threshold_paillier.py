"""Dealer-based threshold Paillier: t partial decryptions reveal a sum, t − 1 do not.

Keys of 512 bits (``allow_short_keys``) keep the tests fast; the scheme is the same at
2048 bits (``benchmarks/threshold_paillier_benchmark.py``).
"""

from __future__ import annotations

import itertools
import math

import gmpy2
import pytest

from flhet_strategies.privacy.paillier.errors import InsecureKeyError, MalformedPayloadError
from flhet_strategies.privacy.paillier.threshold import (
    PartialDecryption,
    PartialDecryptionError,
    deal_threshold_key,
)

N_SHARES, T = 5, 3


@pytest.fixture(scope="module")
def key():
    return deal_threshold_key(N_SHARES, T, 512, allow_short_keys=True)


def encrypted_sum(public, values):
    """The homomorphic sum of the clients' encryptions of ``values`` (one ciphertext each)."""
    pk = public.public_key
    total = pk.encrypt(0)
    for v in values:
        total = total + pk.encrypt(v)
    return int(total.ciphertext(be_secure=True))


def test_any_t_holders_decrypt_the_sum_so_up_to_n_minus_t_may_drop_out(key):
    public, shares = key
    ciphertexts = [encrypted_sum(public, [7, 11, 13]), encrypted_sum(public, [2 ** 200, 1])]
    partials = [s.partial_decrypt(ciphertexts) for s in shares]
    for subset in itertools.combinations(partials, T):
        assert public.combine(ciphertexts, subset) == [31, 2 ** 200 + 1]
    assert public.combine(ciphertexts, partials) == [31, 2 ** 200 + 1]  # extras ignored


def test_t_minus_one_partials_are_refused_and_their_combination_is_not_the_sum(key):
    public, shares = key
    ciphertext = encrypted_sum(public, [5, 6])
    partials = [s.partial_decrypt([ciphertext]) for s in shares[:T - 1]]
    with pytest.raises(PartialDecryptionError, match=f"{T - 1} valid partial decryptions, "
                                                      f"{T} needed"):
        public.combine([ciphertext], partials)
    # Interpolating through only t - 1 points (the best a coalition can do without a t-th
    # holder) gives a value unrelated to the plaintext, for every coalition.
    n, n2, delta = public.n, public.nsquare, public.delta
    for coalition in itertools.combinations(shares, T - 1):
        indices = [s.index for s in coalition]
        acc = 1
        for s in coalition:
            lam = delta
            for j in indices:
                if j != s.index:
                    lam = lam * j // (j - s.index)
            acc = acc * gmpy2.powmod(s.partial_decrypt([ciphertext]).values[0], 2 * lam, n2) % n2
        guess = (acc - 1) // n * gmpy2.invert(4 * delta * delta, n) % n if (acc - 1) % n == 0 \
            else None
        assert guess != 11


def test_a_forged_partial_is_detected_and_honest_holders_still_decrypt(key):
    public, shares = key
    ciphertexts = [encrypted_sum(public, [40, 2])]
    honest = [s.partial_decrypt(ciphertexts) for s in shares]
    good = honest[0]
    shifted = PartialDecryption(good.index, (good.values[0] * (1 + public.n) % public.nsquare,),
                                good.challenge, good.response)   # decrypts to 42 + offset
    replayed = PartialDecryption(good.index, honest[1].values, good.challenge, good.response)
    other_ct = shares[0].partial_decrypt([encrypted_sum(public, [1])])
    for forged in (shifted, replayed, PartialDecryption(1, other_ct.values, other_ct.challenge,
                                                        other_ct.response)):
        assert not public.verify(ciphertexts, forged)
    with pytest.raises(PartialDecryptionError, match=r"invalid proofs from holders \[1\]"):
        public.combine(ciphertexts, [shifted, honest[1], honest[2]][:T])
    assert public.combine(ciphertexts, [shifted, *honest[1:]]) == [42]


def test_a_partial_survives_its_byte_encoding_and_a_truncated_one_is_refused(key):
    public, shares = key
    ciphertexts = [encrypted_sum(public, [3]), encrypted_sum(public, [4])]
    partial = shares[2].partial_decrypt(ciphertexts)
    data = partial.to_bytes(public)
    assert PartialDecryption.from_bytes(data, public) == partial
    with pytest.raises(MalformedPayloadError, match="does not fit"):
        PartialDecryption.from_bytes(data[:-3], public)


def test_the_dealt_key_has_the_scheme_structure(key):
    public, shares = key
    assert public.n.bit_length() == 512 and public.delta == math.factorial(N_SHARES)
    assert len({s.index for s in shares}) == N_SHARES and "KeyShare(index=1" in repr(shares[0])
    assert "secret" not in repr(shares[0])


def test_short_keys_and_bad_thresholds_are_refused():
    with pytest.raises(InsecureKeyError, match="refusing to deal a 512-bit"):
        deal_threshold_key(3, 2, 512)
    with pytest.raises(ValueError, match=r"threshold must be in \[1, 3\]"):
        deal_threshold_key(3, 4, 512, allow_short_keys=True)
    with pytest.raises(ValueError, match=r"threshold must be in \[1, 3\]"):
        deal_threshold_key(3, 0, 512, allow_short_keys=True)


def test_the_batched_product_equals_one_powmod_per_base(key):
    from flhet_strategies.privacy.paillier.threshold import _multi_powmod

    public, _ = key
    n2 = public.nsquare
    rng = __import__("random").Random(0)
    bases = [gmpy2.mpz(rng.randrange(2, n2)) for _ in range(40)]
    exponents = [rng.getrandbits(130) for _ in range(39)] + [0]
    expected = gmpy2.mpz(1)
    for b, e in zip(bases, exponents):
        expected = expected * gmpy2.powmod(b, e, n2) % n2
    assert _multi_powmod(bases, exponents, n2) == expected
    assert _multi_powmod([], [], n2) == 1
