"""Paillier encryption of packed plaintexts with precomputed randomness on all cores.

:class:`RandomnessPool` computes obfuscators ahead of time (in worker processes or
threads, optionally while a client trains) and hands each out once, so encrypting is two
multiplications per ciphertext. See docs/paillier_packing.md.
"""

from __future__ import annotations

import multiprocessing
import os
import secrets
from collections import deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Protocol

import gmpy2
from phe import PaillierPublicKey

from .keys import validate_public_key

_CHUNKS_PER_WORKER = 4


def available_cores() -> int:
    """Number of CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def compute_obfuscators(n: int, count: int) -> list:
    """Compute ``count`` fresh obfuscators ``r**n mod n**2`` for uniform random ``r``.

    Parameters
    ----------
    n : int
        The Paillier modulus.
    count : int
        How many to compute.

    Returns
    -------
    list of gmpy2.mpz
        The obfuscators, each from its own ``r`` drawn with :mod:`secrets`.
    """
    n_mpz = gmpy2.mpz(n)
    nsquare = n_mpz * n_mpz
    n_int = int(n)
    return [
        gmpy2.powmod(secrets.randbelow(n_int - 1) + 1, n_mpz, nsquare) for _ in range(count)
    ]


class ObfuscatorSource(Protocol):
    """What a :class:`RandomnessPool` draws obfuscators from (picklable for worker processes)."""

    public_key: PaillierPublicKey

    def compute(self, count: int) -> list:
        """Compute ``count`` fresh obfuscators for ``public_key``."""


class StandardObfuscators:
    """Obfuscators ``r**n mod n**2`` with uniform random ``r`` (textbook Paillier).

    Parameters
    ----------
    public_key : phe.PaillierPublicKey
        The key the obfuscators are for.
    """

    def __init__(self, public_key: PaillierPublicKey) -> None:
        self.public_key = validate_public_key(public_key)

    def __repr__(self) -> str:
        return "StandardObfuscators()"

    def compute(self, count: int) -> list:
        """Compute ``count`` obfuscators (see :func:`compute_obfuscators`)."""
        return compute_obfuscators(self.public_key.n, count)


def encrypt_plaintexts(
    public_key: PaillierPublicKey, plaintexts: list[int], obfuscators: list
) -> tuple:
    """Encrypt plaintext integers with one fresh obfuscator each.

    Parameters
    ----------
    public_key : phe.PaillierPublicKey
        The key to encrypt under.
    plaintexts : list of int
        Integers in ``[0, n)``.
    obfuscators : list of gmpy2.mpz
        As many unused obfuscators from :func:`compute_obfuscators` for this key.

    Returns
    -------
    tuple of gmpy2.mpz
        The ciphertexts.
    """
    if len(obfuscators) != len(plaintexts):
        raise ValueError(
            f"need one obfuscator per plaintext: {len(plaintexts)} plaintexts, "
            f"{len(obfuscators)} obfuscators"
        )
    n = gmpy2.mpz(public_key.n)
    nsquare = n * n
    ciphertexts = []
    for plaintext, obfuscator in zip(plaintexts, obfuscators):
        if not 0 <= plaintext < n:
            raise ValueError("a plaintext lies outside [0, n)")
        ciphertexts.append(((n * plaintext + 1) * obfuscator) % nsquare)
    return tuple(ciphertexts)


class RandomnessPool:
    """Precomputed Paillier obfuscators ``r**n mod n**2``, handed out once each.

    Parameters
    ----------
    public_key : phe.PaillierPublicKey
        The key (at least 2048 bits) the obfuscators are for.
    workers : int, optional
        Worker processes for computing obfuscators; ``None`` (default) uses every core
        this process may run on, 1 computes in this process.
    mp_context : str
        ``multiprocessing`` start method for the workers. ``"spawn"`` (default) is safe
        in processes that run threads (torch, Ray).
    source : ObfuscatorSource, optional
        Where obfuscators come from: :class:`StandardObfuscators` (default, ``r**n``)
        or :class:`.ShortExponentObfuscators` (DJN ``h**x``, several times faster).
    background : str (default: "process")
        What runs non-blocking fills and multi-worker computations: ``"process"``
        (worker processes) or ``"thread"`` (threads of this process; gmpy2 releases the
        GIL, and nothing is spawned, which suits a Ray actor or a Flower client mod).

    Notes
    -----
    Not thread-safe: use one pool per thread. Worker processes start on first use and
    stop with :meth:`close` (or at exit of a ``with`` block).

    Examples
    --------
    >>> pool = RandomnessPool(key_holder.public_key, workers=2)  # doctest: +SKIP
    >>> pool.fill(200, block=False)   # compute while the client trains  # doctest: +SKIP
    >>> obfuscators = pool.take(118)  # doctest: +SKIP
    """

    def __init__(
        self,
        public_key: PaillierPublicKey,
        workers: int | None = None,
        mp_context: str = "spawn",
        *,
        source: ObfuscatorSource | None = None,
        background: str = "process",
    ) -> None:
        self.public_key = validate_public_key(public_key)
        if workers is None:
            workers = available_cores()
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int or None, got {workers!r}")
        if source is None:
            source = StandardObfuscators(self.public_key)
        elif source.public_key != self.public_key:
            raise ValueError("the obfuscator source was made for another public key")
        if background not in ("process", "thread"):
            raise ValueError(f'background must be "process" or "thread", got {background!r}')
        self.workers = workers
        self.mp_context = mp_context
        self.source = source
        self.background = background
        self._ready: deque = deque()
        self._pending: deque[Future] = deque()
        self._executor: Executor | None = None

    def __repr__(self) -> str:
        return (
            f"RandomnessPool(workers={self.workers}, source={self.source!r}, "
            f"available={self.available}, pending={self.pending})"
        )

    def __enter__(self) -> "RandomnessPool":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def available(self) -> int:
        """Obfuscators computed and not yet handed out."""
        self._collect(wait=False)
        return len(self._ready)

    @property
    def pending(self) -> int:
        """Background computations (chunks) still running."""
        return sum(1 for future in self._pending if not future.done())

    def fill(self, count: int, block: bool = True) -> None:
        """Compute ``count`` more obfuscators.

        Parameters
        ----------
        count : int
            How many to add.
        block : bool
            If False, start the work in the worker processes and return at once; the
            results join the pool as they finish (:meth:`take` waits for them).
        """
        if count < 0:
            raise ValueError(f"count must be non-negative, got {count}")
        if count == 0:
            return
        if block:
            self._ready.extend(self._compute(count))
            return
        executor = self._get_executor()
        for chunk in self._chunks(count):
            self._pending.append(executor.submit(self.source.compute, chunk))

    def take(self, count: int) -> list:
        """Hand out ``count`` unused obfuscators, computing any that are missing.

        Waits for background work first; what is still missing is computed now (in the
        worker processes when ``workers > 1``).
        """
        if count < 0:
            raise ValueError(f"count must be non-negative, got {count}")
        self._collect(wait=False)
        while len(self._ready) < count and self._pending:
            self._ready.extend(self._pending.popleft().result())
        missing = count - len(self._ready)
        if missing > 0:
            self._ready.extend(self._compute(missing))
        return [self._ready.popleft() for _ in range(count)]

    def close(self) -> None:
        """Stop the worker processes (pending background work is cancelled)."""
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def _collect(self, wait: bool) -> None:
        while self._pending and (wait or self._pending[0].done()):
            self._ready.extend(self._pending.popleft().result())

    def _compute(self, count: int) -> list:
        if self.workers == 1 or count == 1:
            return self.source.compute(count)
        executor = self._get_executor()
        results: list = []
        for part in executor.map(self.source.compute, self._chunks(count)):
            results.extend(part)
        return results

    def _chunks(self, count: int) -> list[int]:
        pieces = min(count, self.workers * _CHUNKS_PER_WORKER)
        base, extra = divmod(count, pieces)
        return [base + (1 if i < extra else 0) for i in range(pieces)]

    def _get_executor(self) -> Executor:
        if self._executor is None:
            if self.background == "thread":
                self._executor = ThreadPoolExecutor(
                    max_workers=self.workers, thread_name_prefix="paillier-randomness"
                )
            else:
                self._executor = ProcessPoolExecutor(
                    max_workers=self.workers,
                    mp_context=multiprocessing.get_context(self.mp_context),
                )
        return self._executor
