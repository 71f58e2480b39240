"""A key holder's side of a secure weighted sum: encrypt a share, decrypt or seal a sum.

Flower-free. :class:`SumClient` encodes and decodes with a :class:`.SecureSumSpec`; the
key, randomness pool and Paillier steps are :class:`.ShareClient`'s (shared per process).
:func:`finish_relayed` turns a decrypted sum into the algorithm's aggregate, as the
server would have done in the clear.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ...aggregation.weighted_sum import SumLayout, WeightedSums
from ...algorithms import sum_rule
from ..dp.gaussian import realized_noise_multiplier
from ..dp.noise_share import sums_from_noisy
from .sealing import GroupSeal
from .share_client import ShareClient
from .spec import SecureSumSpec


@dataclass(frozen=True)
class EncryptedShare:
    """A client's encrypted share and what it cost.

    Parameters
    ----------
    payload : np.ndarray
        1-D ``uint8``: the serialized encrypted vector.
    num_ciphertexts : int
        Ciphertexts in the payload.
    num_clipped : int
        Values that lay outside their public range and were clipped.
    seconds : float
        Wall time of encoding and encrypting.
    """

    payload: np.ndarray
    num_ciphertexts: int
    num_clipped: int
    seconds: float


def seal_context(spec: SecureSumSpec, context: Mapping[str, np.ndarray]) -> bytes:
    """Associated data binding a sealed aggregate to its key, spec and context arrays."""
    digest = hashlib.sha256(spec.to_json().encode())
    for name in sorted(context):
        array = np.ascontiguousarray(context[name])
        digest.update(name.encode() + str(array.dtype).encode() + str(array.shape).encode())
        digest.update(array.tobytes())
    return f"flhet-sum|{spec.key_fingerprint}|{digest.hexdigest()}".encode()


def finish_relayed(spec: SecureSumSpec, sums: WeightedSums,
                   context: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The aggregate a decrypted sum stands for (the algorithm's own finishing rule).

    Under distributed DP (``spec.noise``) the summed noisy values are turned back into
    the base layout's sums and finished with the noise the sum really carries.
    """
    if spec.noise is None:
        layout = spec.sum_layout
        return sum_rule(layout.algorithm).finish(layout, sums, context, None)
    base = SumLayout.from_dict(spec.sum_layout.params["base"])
    noisy = sums_from_noisy(base, sums.numerators, sums.count)
    realized = realized_noise_multiplier(float(spec.noise["noise_multiplier"]),
                                         int(spec.noise["num_clients"]), sums.count)
    return sum_rule(base.algorithm).finish(base, noisy, context,
                                           realized * float(spec.noise["norm_bound"]))


def _to_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    return buffer.getvalue()


def _from_bytes(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


class SumClient(ShareClient):
    """Encrypts this client's share and decrypts (or opens) the sums the server relays.

    Parameters
    ----------
    holder, workers, decrypt_workers, short_exponent
        The key and thread settings of :class:`.ShareClient`.
    """

    def encrypt(self, spec: SecureSumSpec, values: Mapping[str, np.ndarray],
                weights: Mapping[str, np.ndarray]) -> EncryptedShare:
        """Encode (:meth:`.SecureSumSpec.encode`) and encrypt a share.

        Raises
        ------
        ValueError
            If the spec names another key or the values do not fit it.
        """
        start = time.perf_counter()
        self.check(spec)
        encoded, clipped = spec.encode(values, weights)
        codec = self.codec(spec)
        payload = self._encrypt_values(codec, encoded)
        return EncryptedShare(payload, codec.num_ciphertexts, clipped,
                              time.perf_counter() - start)

    def decrypt(self, spec: SecureSumSpec, payload: np.ndarray | bytes) -> WeightedSums:
        """Decrypt and decode a relayed sum made under ``spec``.

        Raises
        ------
        ValueError, SecureSumError
            If the spec names another key, the sum has another layout, is under another
            key, is malformed, or does not decode.
        """
        sums, num_summands = self._decrypt_sum(spec, payload)
        return spec.decode(sums, num_summands)

    def seal(self, spec: SecureSumSpec, arrays: Mapping[str, np.ndarray],
             context: Mapping[str, np.ndarray]) -> np.ndarray:
        """Seal a finished aggregate for the cohort (AES-GCM under a key derived from the
        Paillier private key, bound to the key, the spec and the context arrays)."""
        return GroupSeal(self.holder).seal(_to_bytes(arrays), seal_context(spec, context))

    def open_seal(self, spec: SecureSumSpec, sealed: np.ndarray | bytes,
                  context: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Open an aggregate another client sealed for the cohort.

        Raises
        ------
        ValueError, SecureSumError
            If the seal was altered, made under another key or for another sum.
        """
        self.check(spec)
        return _from_bytes(GroupSeal(self.holder).unseal(sealed, seal_context(spec, context)))


__all__ = ["EncryptedShare", "SumClient", "finish_relayed", "seal_context"]
