"""Damgard-Jurik-Nielsen short-exponent obfuscators with a fixed-base table.

DJN (Int. J. Inf. Sec. 2010, section 4.2) replaces the obfuscator ``r**n`` by ``h**x``
with a fixed n-th residue ``h`` and a short random ``x``, computed from a fixed-base
windowed table. See docs/paillier_packing.md (also for the security assumption).
"""

from __future__ import annotations

import secrets

import gmpy2
from phe import PaillierPublicKey

from .keys import MIN_KEY_BITS, validate_public_key

DEFAULT_EXPONENT_BITS = 448
"""Short-exponent length for 2048-bit keys (twice the 112-bit security level, rounded up)."""

DEFAULT_WINDOW = 8
"""Digit width of the fixed-base table: 56 rows of 256 entries (about 7 MB for 2048 bits,
built once per process)."""

_TABLES: dict[tuple[int, int, int, int], list] = {}
"""Per-process cache of fixed-base tables, so worker processes build each table once."""


class ShortExponentObfuscators:
    """Source of DJN obfuscators ``h**x mod n**2`` for a :class:`.RandomnessPool`.

    Parameters
    ----------
    public_key : phe.PaillierPublicKey
        The key (at least 2048 bits) the obfuscators are for.
    exponent_bits : int (default: 448)
        Bits of the random exponent ``x``; at least 224 (twice the 112-bit security
        level of a 2048-bit key).
    window : int (default: 8)
        Digit width of the fixed-base table (2 to 10); larger trades memory for speed.
    base : int, optional
        For tests only: a fixed n-th residue ``h``. By default a fresh ``h = y**n`` is
        drawn with :mod:`secrets` for every source.

    Notes
    -----
    Picklable: the table is not pickled but rebuilt (once per process) where it is
    used, so the source can be handed to worker processes.

    Examples
    --------
    >>> source = ShortExponentObfuscators(key_holder.public_key)        # doctest: +SKIP
    >>> pool = RandomnessPool(key_holder.public_key, workers=1, source=source)  # doctest: +SKIP
    """

    def __init__(
        self,
        public_key: PaillierPublicKey,
        exponent_bits: int = DEFAULT_EXPONENT_BITS,
        window: int = DEFAULT_WINDOW,
        base: int | None = None,
    ) -> None:
        self.public_key = validate_public_key(public_key)
        if isinstance(exponent_bits, bool) or not isinstance(exponent_bits, int):
            raise TypeError(f"exponent_bits must be an int, got {type(exponent_bits).__name__}")
        if exponent_bits < 2 * 112 or exponent_bits > public_key.n.bit_length():
            raise ValueError(
                f"exponent_bits must lie in [224, {public_key.n.bit_length()}] for a "
                f"{MIN_KEY_BITS}-bit or longer key, got {exponent_bits}"
            )
        if isinstance(window, bool) or not isinstance(window, int) or not 2 <= window <= 10:
            raise ValueError(f"window must be an int in [2, 10], got {window!r}")
        n = gmpy2.mpz(public_key.n)
        nsquare = n * n
        if base is None:
            y = _random_unit(int(n))
            base = int(gmpy2.powmod(y, n, nsquare))
        elif not 0 < base < nsquare or gmpy2.gcd(base, n) != 1:
            raise ValueError("base must be a unit modulo n**2")
        self.exponent_bits = exponent_bits
        self.window = window
        self.base = int(base)

    def __repr__(self) -> str:
        return (
            f"ShortExponentObfuscators(exponent_bits={self.exponent_bits}, "
            f"window={self.window})"
        )

    def compute(self, count: int) -> list:
        """Compute ``count`` fresh obfuscators ``h**x mod n**2``, each with its own ``x``.

        Parameters
        ----------
        count : int
            How many to compute.

        Returns
        -------
        list of gmpy2.mpz
            The obfuscators.
        """
        # Release the GIL inside gmpy2 so a background thread overlaps with training.
        gmpy2.get_context().allow_release_gil = True
        table = self._table()
        nsquare = gmpy2.mpz(self.public_key.n) ** 2
        mask = (1 << self.window) - 1
        window = self.window
        results = []
        for _ in range(count):
            x = secrets.randbits(self.exponent_bits) | (1 << (self.exponent_bits - 1))
            acc = None
            position = 0
            while x:
                digit = x & mask
                if digit:
                    entry = table[position][digit]
                    acc = entry if acc is None else (acc * entry) % nsquare
                x >>= window
                position += 1
            results.append(acc)
        return results

    def _table(self) -> list:
        key = (self.public_key.n, self.base, self.exponent_bits, self.window)
        table = _TABLES.get(key)
        if table is None:
            table = _build_table(self.public_key.n, self.base, self.exponent_bits, self.window)
            _TABLES.clear()  # keep one table per process: they are megabytes each
            _TABLES[key] = table
        return table


def _build_table(n: int, base: int, exponent_bits: int, window: int) -> list:
    """Rows ``k`` of ``[h**(d * 2**(window*k)) for d in 0 .. 2**window - 1]``."""
    nsquare = gmpy2.mpz(n) ** 2
    power = gmpy2.mpz(base)
    rows = []
    for _ in range(-(-exponent_bits // window)):
        row = [gmpy2.mpz(1), power]
        for _ in range(2, 1 << window):
            row.append((row[-1] * power) % nsquare)
        rows.append(row)
        power = (row[-1] * power) % nsquare
    return rows


def _random_unit(n: int) -> int:
    while True:
        y = secrets.randbelow(n - 1) + 1
        if gmpy2.gcd(y, n) == 1:
            return y
