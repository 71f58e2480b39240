"""A key holder's common steps in an integer secure sum: key check, randomness, decrypt, encrypt.

:class:`ShareClient` is the base of :class:`.model_client.ModelSumClient` (secure FedAvg)
and :class:`.sum_client.SumClient` (secure weighted sums, e.g. the consensus). Both take
a spec with ``key_fingerprint``, ``codec(public_key, randomness)``
(:class:`.integers.IntegerSumSpec`), ``check_sum_layout`` and ``decode``; what they encode
and decode differs, the Paillier plumbing does not. No Flower import.
"""

from __future__ import annotations

import threading

import numpy as np

from .client_cache import (
    check_key_fingerprint,
    check_worker_counts,
    shared_randomness_pool,
    top_up,
)
from .codec import SecureSumCodec
from .encrypt import available_cores
from .encrypted_vector import EncryptedVector
from .keys import KeyHolder
from .threshold_keys import ThresholdHolder

_POOL_LOCK = threading.Lock()
"""The shared randomness pools are not thread-safe; clients served by threads of one
process (e.g. Flower's compat ``Server`` with in-process clients) take turns."""


class ShareClient:
    """Key, randomness pool and Paillier steps shared by the secure-sum clients.

    Parameters
    ----------
    holder : KeyHolder or ThresholdHolder
        The Paillier private key, or a threshold key share (from a key dealer's file),
        never the server's.
    workers : int (default: 1)
        Threads computing Paillier randomness in the background (the pool is shared
        per process and key, see :mod:`.client_cache`).
    decrypt_workers : int, optional
        Threads decrypting a sum (default: every core this process may use).
    short_exponent : bool (default: True)
        Damgard-Jurik-Nielsen short-exponent randomness; False uses ``r**n``.

    Raises
    ------
    TypeError
        If ``holder`` is neither a :class:`KeyHolder` nor a :class:`.ThresholdHolder`.
    ValueError
        If a thread count is not a positive int.
    """

    def __init__(self, holder: KeyHolder | ThresholdHolder, *, workers: int = 1,
                 decrypt_workers: int | None = None, short_exponent: bool = True) -> None:
        if not isinstance(holder, (KeyHolder, ThresholdHolder)):
            raise TypeError(f"holder must be a KeyHolder or ThresholdHolder, got "
                            f"{type(holder).__name__}")
        check_worker_counts(workers, decrypt_workers)
        self.holder = holder
        self.decrypt_workers = decrypt_workers or available_cores()
        self.pool = shared_randomness_pool(holder, short_exponent, workers)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key={self.holder.fingerprint.hex()}, pool={self.pool!r})"

    def check(self, spec) -> None:
        """Raise ``ValueError`` unless the spec asks for this client's key."""
        check_key_fingerprint(spec.key_fingerprint, self.holder)

    def codec(self, spec) -> SecureSumCodec:
        """The codec of a share under ``spec`` (drawing randomness from the shared pool)."""
        return spec.codec(self.holder.public_key, self.pool)

    def prepare(self, spec) -> None:
        """Check the key and start computing the randomness of one share in the background."""
        self.check(spec)
        with _POOL_LOCK:
            top_up(self.pool, self.codec(spec).num_ciphertexts)

    def _decrypt_sum(self, spec, payload: np.ndarray | bytes,
                     *layout_args) -> tuple[np.ndarray, int]:
        """Check the key and the sum's layout (``spec.check_sum_layout(layout,
        *layout_args)``), decrypt; return the integer sums and the number of summands."""
        sums, vector = self._decrypt_vector(spec, payload, *layout_args)
        return sums, vector.num_summands

    def _decrypt_vector(self, spec, payload: np.ndarray | bytes,
                        *layout_args) -> tuple[np.ndarray, EncryptedVector]:
        """:meth:`_decrypt_sum`, returning the encrypted vector (its layout) instead of
        the number of summands."""
        self.check(spec)
        vector = EncryptedVector.from_array(payload, self.holder.public_key)
        spec.check_sum_layout(vector.layout, *layout_args)
        return self.holder.decrypt_sum(vector, workers=self.decrypt_workers), vector

    def _encrypt_values(self, codec: SecureSumCodec, values: np.ndarray) -> np.ndarray:
        """Encrypt an encoded share (``uint8`` payload) and refill the pool for the next one."""
        with _POOL_LOCK:
            payload = codec.encrypt(values).to_array()
            top_up(self.pool, codec.num_ciphertexts)   # for the next share this process makes
        return payload


__all__ = ["ShareClient"]
