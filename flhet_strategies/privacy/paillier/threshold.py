"""Dealer-based threshold Paillier: any t of n key shares decrypt, fewer learn nothing.

Shoup (EUROCRYPT'00) as adapted to Paillier by Damgård–Jurik (PKC'01, s = 1) and
Fouque–Poupard–Stern (FC'00): the dealer Shamir-shares the decryption exponent over
``Z_{N m}``; a holder's partial decryption of a vector comes with one batched proof of
equality of discrete logs, so a forged partial is detected. ``docs/threshold_paillier.md``.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import gmpy2
from phe import PaillierPublicKey

from .errors import InsecureKeyError, MalformedPayloadError, SecureSumError
from .keys import MIN_KEY_BITS

CHALLENGE_BITS = 256
"""Bits of a proof's Fiat–Shamir challenge (SHA-256)."""
BATCH_BITS = 128
"""Bits of the random coefficients that batch a vector's proofs into one."""


class PartialDecryptionError(SecureSumError):
    """Too few valid partial decryptions, or one that fails its proof."""


@dataclass(frozen=True)
class ThresholdPublicKey:
    """The public side of a threshold key: encryption key and verification keys.

    Parameters
    ----------
    n : int
        The modulus ``N = p q`` (``p = 2p' + 1``, ``q = 2q' + 1`` safe primes).
    threshold : int
        ``t``: partial decryptions needed.
    num_shares : int
        ``n`` holders; ``delta = n!``.
    v : int
        Verification base, a random square mod ``N^2``.
    verification_keys : tuple[int, ...]
        ``v_i = v^(delta s_i) mod N^2`` for holders ``1..n``.
    """

    n: int
    threshold: int
    num_shares: int
    v: int
    verification_keys: tuple[int, ...]

    def __post_init__(self) -> None:
        if not 1 <= self.threshold <= self.num_shares:
            raise ValueError(f"threshold must be in [1, {self.num_shares}], got {self.threshold}")
        if len(self.verification_keys) != self.num_shares:
            raise ValueError(f"{len(self.verification_keys)} verification keys for "
                             f"{self.num_shares} shares")

    @property
    def public_key(self) -> PaillierPublicKey:
        """The Paillier encryption key (``g = N + 1``), as every encoder uses it."""
        return PaillierPublicKey(self.n)

    @property
    def nsquare(self) -> int:
        """``N^2``."""
        return self.n * self.n

    @property
    def delta(self) -> int:
        """``n!``: clears the Lagrange denominators."""
        return math.factorial(self.num_shares)

    def verify(self, ciphertexts: Sequence[int], partial: "PartialDecryption") -> bool:
        """Whether ``partial`` is holder ``partial.index``'s decryption of ``ciphertexts``."""
        if not 1 <= partial.index <= self.num_shares or len(partial.values) != len(ciphertexts):
            return False
        n2 = self.nsquare
        if any(not 0 < int(x) < n2 for x in partial.values) or not 0 <= partial.response:
            return False
        base, image = _batch(self, ciphertexts, partial)
        vi = self.verification_keys[partial.index - 1]
        e, z = partial.challenge, partial.response
        try:
            a = gmpy2.powmod(base, z, n2) * gmpy2.powmod(image, -e, n2) % n2
            b = gmpy2.powmod(self.v, z, n2) * gmpy2.powmod(vi, -e, n2) % n2
        except ZeroDivisionError:  # a value sharing a factor with N: not a unit, forged
            return False
        return _challenge(self, partial.index, base, image, int(a), int(b)) == e

    def combine(self, ciphertexts: Sequence[int],
                partials: Sequence["PartialDecryption"]) -> list[int]:
        """The plaintexts of ``ciphertexts`` from partial decryptions of ``t`` holders.

        Every partial is verified; the first ``t`` valid ones from distinct holders are
        combined (more may be given: dropouts and forgers are tolerated while ``t``
        honest holders answer).

        Raises
        ------
        PartialDecryptionError
            With fewer than ``t`` valid partials (the message names the invalid holders).
        """
        chosen, invalid = {}, []
        for partial in partials:
            if partial.index in chosen:
                continue
            if self.verify(ciphertexts, partial):
                chosen[partial.index] = partial
            else:
                invalid.append(partial.index)
            if len(chosen) == self.threshold:
                break
        if len(chosen) < self.threshold:
            bad = f"; invalid proofs from holders {sorted(set(invalid))}" if invalid else ""
            raise PartialDecryptionError(f"{len(chosen)} valid partial decryptions, "
                                         f"{self.threshold} needed{bad}")
        n, n2, delta = self.n, self.nsquare, self.delta
        indices = sorted(chosen)
        exponents = {i: 2 * _lagrange(delta, i, indices) for i in indices}
        scale = gmpy2.invert(4 * delta * delta, n)
        plaintexts = []
        for k in range(len(ciphertexts)):
            acc = gmpy2.mpz(1)
            for i in indices:
                acc = acc * gmpy2.powmod(chosen[i].values[k], exponents[i], n2) % n2
            plaintexts.append(int((acc - 1) // n * scale % n))
        return plaintexts


@dataclass(frozen=True)
class PartialDecryption:
    """Holder ``index``'s partial decryption of a ciphertext vector, with its proof.

    Parameters
    ----------
    index : int
        The holder, ``1..n``.
    values : tuple[int, ...]
        ``c_k^(2 delta s_i) mod N^2`` for each ciphertext ``c_k``.
    challenge, response : int
        The batched proof that ``log_{c^4}(c_i^2) = log_v(v_i)`` for every ``k``.
    """

    index: int
    values: tuple[int, ...]
    challenge: int
    response: int

    def to_bytes(self, public: ThresholdPublicKey) -> bytes:
        """Fixed-width big-endian encoding (index, challenge, response, values)."""
        width = _width(public.nsquare)
        zwidth = _response_width(public)
        return b"".join([self.index.to_bytes(4, "big"),
                         self.challenge.to_bytes(CHALLENGE_BITS // 8, "big"),
                         self.response.to_bytes(zwidth, "big"),
                         *(int(x).to_bytes(width, "big") for x in self.values)])

    @classmethod
    def from_bytes(cls, data: bytes, public: ThresholdPublicKey) -> "PartialDecryption":
        """Inverse of :meth:`to_bytes` (``MalformedPayloadError`` if the length is off)."""
        width, zwidth = _width(public.nsquare), _response_width(public)
        head = 4 + CHALLENGE_BITS // 8 + zwidth
        data = bytes(data)
        if len(data) < head or (len(data) - head) % width:
            raise MalformedPayloadError(f"a partial decryption of {len(data)} bytes does not "
                                        f"fit {head} + k x {width}")
        index = int.from_bytes(data[:4], "big")
        challenge = int.from_bytes(data[4:4 + CHALLENGE_BITS // 8], "big")
        response = int.from_bytes(data[4 + CHALLENGE_BITS // 8:head], "big")
        values = tuple(int.from_bytes(data[j:j + width], "big")
                       for j in range(head, len(data), width))
        return cls(index, values, challenge, response)


class KeyShare:
    """One holder's share of a threshold key: partially decrypts, never alone.

    Parameters
    ----------
    index : int
        The holder, ``1..n``.
    secret : int
        ``s_i = f(i) mod N m``.
    public : ThresholdPublicKey
        The key it belongs to.
    """

    def __init__(self, index: int, secret: int, public: ThresholdPublicKey) -> None:
        if not 1 <= index <= public.num_shares:
            raise ValueError(f"index must be in [1, {public.num_shares}], got {index}")
        self.index, self._secret, self.public = int(index), gmpy2.mpz(secret), public

    def __repr__(self) -> str:
        return (f"KeyShare(index={self.index}, t={self.public.threshold}, "
                f"n={self.public.num_shares}, bits={self.public.n.bit_length()})")

    def partial_decrypt(self, ciphertexts: Sequence[int], workers: int = 1) -> PartialDecryption:
        """This holder's partial decryption of ``ciphertexts``, with its proof.

        ``workers`` threads share the exponentiations (gmpy2 releases the GIL in them).
        """
        pub = self.public
        n2 = pub.nsquare
        cts = [gmpy2.mpz(c) for c in ciphertexts]
        if any(not 0 < c < n2 for c in cts):
            raise MalformedPayloadError("a ciphertext is outside (0, N^2)")
        exponent = 2 * pub.delta * self._secret
        values = tuple(_powmod_all(cts, exponent, n2, workers))
        partial = PartialDecryption(self.index, values, 0, 0)
        base, image = _batch(pub, cts, partial)
        r = gmpy2.mpz(secrets.randbits(_response_width(pub) * 8 - 8))
        a, b = gmpy2.powmod(base, r, n2), gmpy2.powmod(pub.v, r, n2)
        e = _challenge(pub, self.index, base, image, int(a), int(b))
        return PartialDecryption(self.index, values, e, int(r + e * pub.delta * self._secret))


def deal_threshold_key(num_shares: int, threshold: int, n_length: int = MIN_KEY_BITS, *,
                       allow_short_keys: bool = False
                       ) -> tuple[ThresholdPublicKey, list[KeyShare]]:
    """The dealer's step: a fresh key, split into ``num_shares`` shares, ``threshold`` needed.

    The dealer forgets the factorization afterwards; give share ``i`` to holder ``i``
    only and the public key to everyone.

    Parameters
    ----------
    num_shares : int
        ``n`` holders.
    threshold : int
        ``t`` (``1 <= t <= n``); e.g. ``n // 2 + 1``.
    n_length : int (default: 2048)
        Bits of ``N`` (two safe primes of half the length: about a minute at 2048).
    allow_short_keys : bool (default: False)
        Allow ``n_length`` below 2048, for tests only.

    Raises
    ------
    InsecureKeyError
        If ``n_length`` is below 2048 bits and ``allow_short_keys`` is not set.
    """
    if not 1 <= threshold <= num_shares:
        raise ValueError(f"threshold must be in [1, {num_shares}], got {threshold}")
    if n_length < MIN_KEY_BITS and not allow_short_keys:
        raise InsecureKeyError(f"refusing to deal a {n_length}-bit threshold Paillier key; at "
                               f"least {MIN_KEY_BITS} bits are required")
    if n_length < 64:
        raise ValueError(f"n_length must be at least 64 bits, got {n_length}")
    p = _safe_prime(n_length // 2)
    q = _safe_prime(n_length - n_length // 2)
    while q == p or (p * q).bit_length() != n_length:
        q = _safe_prime(n_length - n_length // 2)
    n, m = p * q, ((p - 1) // 2) * ((q - 1) // 2)
    nm, n2 = n * m, n * n
    d = m * gmpy2.invert(m, n) % nm                     # d = 0 mod m, d = 1 mod N
    coefficients = [d] + [gmpy2.mpz(secrets.randbelow(int(nm))) for _ in range(threshold - 1)]
    shares = [_poly(coefficients, i, nm) for i in range(1, num_shares + 1)]
    v = gmpy2.powmod(_unit(n2), 2, n2)
    delta = math.factorial(num_shares)
    public = ThresholdPublicKey(int(n), int(threshold), int(num_shares), int(v),
                                tuple(int(gmpy2.powmod(v, delta * s, n2)) for s in shares))
    return public, [KeyShare(i + 1, int(s), public) for i, s in enumerate(shares)]


def _powmod_all(bases: list, exponent, modulus, workers: int) -> list[int]:
    """``[b^exponent mod modulus]``, in ``workers`` threads when there are several."""
    if workers <= 1 or len(bases) < 2:
        return [int(gmpy2.powmod(b, exponent, modulus)) for b in bases]

    def chunk(part: list) -> list[int]:
        gmpy2.get_context().allow_release_gil = True   # this worker thread's context
        return [int(gmpy2.powmod(b, exponent, modulus)) for b in part]

    size = -(-len(bases) // workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = pool.map(chunk, [bases[i:i + size] for i in range(0, len(bases), size)])
    return [value for part in parts for value in part]


def _poly(coefficients: list, x: int, modulus) -> gmpy2.mpz:
    acc = gmpy2.mpz(0)
    for a in reversed(coefficients):
        acc = (acc * x + a) % modulus
    return acc


def _lagrange(delta: int, i: int, indices: Sequence[int]) -> int:
    """``delta * prod_{j != i} j / (j - i)``: an integer since ``delta = n!``."""
    num, den = delta, 1
    for j in indices:
        if j != i:
            num *= j
            den *= j - i
    if num % den:
        raise ArithmeticError("Lagrange coefficient is not an integer")  # cannot happen
    return num // den


def _batch(pub: ThresholdPublicKey, ciphertexts: Sequence[int],
           partial: PartialDecryption) -> tuple[gmpy2.mpz, gmpy2.mpz]:
    """``(prod c_k^(4 rho_k), prod c_ik^(2 rho_k))`` with hash-derived ``rho_k``."""
    n2 = pub.nsquare
    seed = hashlib.sha256(b"flhet-tp-batch" + _encode(pub.n, partial.index, *ciphertexts,
                                                       *partial.values)).digest()
    rhos = [int.from_bytes(hashlib.sha256(seed + k.to_bytes(8, "big")).digest()
                           [:BATCH_BITS // 8], "big") for k in range(len(ciphertexts))]
    base = _multi_powmod([gmpy2.mpz(c) for c in ciphertexts], [4 * r for r in rhos], n2)
    image = _multi_powmod([gmpy2.mpz(c) for c in partial.values], [2 * r for r in rhos], n2)
    return base, image


def _multi_powmod(bases: Sequence, exponents: Sequence[int], modulus) -> gmpy2.mpz:
    """``prod b_k^(e_k) mod modulus`` by Pippenger's bucket method (about 4.5x faster than
    one powmod per base for 275 bases and 130-bit exponents)."""
    bits = max((int(e).bit_length() for e in exponents), default=0)
    width = 6
    mask = (1 << width) - 1
    acc = gmpy2.mpz(1)
    for window in reversed(range(-(-bits // width))):
        for _ in range(width):
            acc = acc * acc % modulus
        buckets: list = [None] * (mask + 1)
        shift = window * width
        for b, e in zip(bases, exponents):
            digit = (int(e) >> shift) & mask
            if digit:
                buckets[digit] = b if buckets[digit] is None else buckets[digit] * b % modulus
        running = total = None
        for digit in range(mask, 0, -1):   # total = prod_d bucket_d^d
            if buckets[digit] is not None:
                running = buckets[digit] if running is None else running * buckets[digit] % modulus
            if running is not None:
                total = running if total is None else total * running % modulus
        if total is not None:
            acc = acc * total % modulus
    return acc


def _challenge(pub: ThresholdPublicKey, index: int, base, image, a: int, b: int) -> int:
    vi = pub.verification_keys[index - 1]
    digest = hashlib.sha256(b"flhet-tp-proof" + _encode(pub.n, pub.v, vi, index, int(base),
                                                        int(image), a, b)).digest()
    return int.from_bytes(digest, "big")


def _encode(*values: int) -> bytes:
    """Length-prefixed big-endian integers (an unambiguous hash input)."""
    out = []
    for v in map(int, values):
        width = _width(v)
        out.append(width.to_bytes(4, "big") + v.to_bytes(width, "big"))
    return b"".join(out)


def _width(value: int) -> int:
    return max(1, (int(value).bit_length() + 7) // 8)


def _response_width(pub: ThresholdPublicKey) -> int:
    """Bytes of a response ``z = r + e delta s_i``: ``r`` hides ``e delta s_i`` statistically."""
    bits = 2 * pub.n.bit_length() + pub.delta.bit_length() + 2 * CHALLENGE_BITS + 8
    return (bits + 7) // 8 + 1


def _safe_prime(bits: int) -> gmpy2.mpz:
    """A random safe prime ``p = 2p' + 1`` of exactly ``bits`` bits."""
    state = gmpy2.random_state(secrets.randbits(128))
    while True:
        half = gmpy2.mpz_urandomb(state, bits - 1) | (gmpy2.mpz(3) << (bits - 3)) | 1
        half = gmpy2.next_prime(half)
        p = 2 * half + 1
        if p.bit_length() == bits and gmpy2.is_prime(p, 40) and gmpy2.is_prime(half, 40):
            return p


def _unit(modulus: int) -> gmpy2.mpz:
    while True:
        r = gmpy2.mpz(secrets.randbelow(int(modulus) - 2) + 2)
        if gmpy2.gcd(r, modulus) == 1:
            return r


__all__ = ["KeyShare", "PartialDecryption", "PartialDecryptionError", "ThresholdPublicKey",
           "deal_threshold_key", "CHALLENGE_BITS", "BATCH_BITS"]
