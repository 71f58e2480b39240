"""A threshold key share's side of a secure sum: sign shares, decrypt for the cohort, combine.

Flower-free. A decryptor checks every share's signature, that the sum holds at least the
dealer's minimum of distinct clients and that it is the product of those shares, then
returns its partial decryption sealed under the cohort key; every client combines ``t``
verified partials and decodes with the same range checks as a single-key sum. See
docs/threshold_paillier.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np

from ...aggregation.weighted_sum import WeightedSums
from .aggregate import CiphertextAggregator, one_client_share
from .client_cache import claim_decryption
from .encrypted_vector import EncryptedVector
from .errors import MalformedPayloadError, SecureSumError
from .spec import SecureSumSpec
from .sum_client import SumClient
from .threshold import PartialDecryption
from .threshold_keys import ThresholdHolder

def sum_digest(vector: EncryptedVector) -> bytes:
    """SHA-256 of an encrypted sum's canonical bytes (binds a sealed partial to it)."""
    return hashlib.sha256(vector.to_array().tobytes()).digest()


def partial_context(fingerprint: bytes, digest: bytes) -> bytes:
    """Associated data of a sealed partial decryption."""
    return b"flhet-threshold-partial|" + fingerprint + digest


class ThresholdSumClient(SumClient):
    """:class:`.SumClient` for a :class:`.ThresholdHolder`: never decrypts alone.

    Parameters
    ----------
    holder : ThresholdHolder
        This client's key share, signing key and the cohort's seal key.
    workers, decrypt_workers, short_exponent
        As :class:`.ShareClient` (``decrypt_workers`` threads run a partial decryption).
    """

    holder: ThresholdHolder

    def decrypt(self, *args, **kwargs) -> WeightedSums:
        """Refused: a key share decrypts only together with ``t - 1`` others (as are
        :meth:`seal` and :meth:`open_seal`: no group key derives from a key share)."""
        raise SecureSumError("a threshold key share cannot decrypt or seal a sum alone; the "
                             "server must use decryption='threshold'")

    seal = open_seal = decrypt

    def sign(self, server_round: int, client_id: str, payload: np.ndarray) -> np.ndarray:
        """The signature of this client's encrypted share for ``server_round``.

        Raises
        ------
        ValueError
            If the reply's client id is not the one this key share was dealt to.
        """
        if str(client_id) != self.holder.client_id:
            raise ValueError(f"this node holds the key share of client "
                             f"{self.holder.client_id!r} but replies as client {client_id!r}")
        return self.holder.sign_share(server_round, payload)

    def partial_for_cohort(self, spec: SecureSumSpec, server_round: int,
                           signed: Mapping[str, tuple[np.ndarray, np.ndarray]]
                           ) -> tuple[np.ndarray, int]:
        """Check the signed shares, multiply them, partially decrypt, seal for the cohort.

        Parameters
        ----------
        spec : SecureSumSpec
            The spec the shares were made under.
        server_round : int
            The round the shares were signed for.
        signed : Mapping[str, tuple[np.ndarray, np.ndarray]]
            Client id -> (its encrypted share, its signature).

        Returns
        -------
        tuple[np.ndarray, int]
            The sealed partial decryption (``uint8``) and the number of shares in the sum.

        Raises
        ------
        SecureSumError
            If a signature fails, the sum holds fewer distinct clients than the dealer's
            minimum, or this process already decrypted another sum for the round.
        """
        self.check(spec)
        cohort = self.holder.cohort
        for client_id, (payload, signature) in signed.items():
            cohort.verify_share(server_round, client_id, payload, signature)
        if len(signed) < cohort.min_summands:
            raise SecureSumError(f"asked to decrypt a sum of {len(signed)} signed shares; the "
                                 f"key dealer's minimum is {cohort.min_summands}")
        layout = spec.layout(self.holder.public_key.n.bit_length() - 1)
        aggregator = CiphertextAggregator(self.holder.public_key)
        for payload, _ in signed.values():
            aggregator.add(one_client_share(payload, self.holder.public_key, layout))
        product = aggregator.result()
        digest = sum_digest(product)
        if not claim_decryption(self.holder, server_round, digest):
            raise SecureSumError(f"this client already decrypted another sum for round "
                                 f"{server_round}; two sums of one round would reveal their "
                                 "difference")
        partial = self.holder.partial_decrypt([int(c) for c in product.ciphertexts],
                                              workers=self.decrypt_workers)
        sealed = self.holder.seal(partial.to_bytes(cohort.key),
                                  partial_context(self.holder.fingerprint, digest))
        return sealed, product.num_summands

    def combine(self, spec: SecureSumSpec, payload: np.ndarray | bytes,
                sealed_partials: Sequence[np.ndarray]) -> WeightedSums:
        """Open the sealed partials of a relayed sum, combine ``t`` valid ones, decode.

        Raises
        ------
        SecureSumError
            If fewer than ``t`` partials open and verify (the message names the invalid
            holders), or the sum does not decode (slot overflow, forged carries).
        """
        self.check(spec)
        vector = EncryptedVector.from_array(payload, self.holder.public_key)
        spec.check_sum_layout(vector.layout)
        context = partial_context(self.holder.fingerprint, sum_digest(vector))
        key = self.holder.cohort.key
        partials, unopened = [], 0
        for sealed in sealed_partials:
            try:
                partials.append(PartialDecryption.from_bytes(self.holder.unseal(sealed, context),
                                                             key))
            except MalformedPayloadError:
                unopened += 1
        try:
            plaintexts = key.combine([int(c) for c in vector.ciphertexts], partials)
        except SecureSumError as error:
            extra = f"; {unopened} sealed partial(s) did not open" if unopened else ""
            raise type(error)(f"{error}{extra}") from error
        sums = vector.layout.decode(plaintexts, vector.num_summands)
        return spec.decode(sums, vector.num_summands)


__all__ = ["ThresholdSumClient", "partial_context", "sum_digest"]
