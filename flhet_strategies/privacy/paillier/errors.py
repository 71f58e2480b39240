"""Exceptions raised by the Paillier secure-sum code.

Each names one thing that went wrong so a caller (or a Flower wrapper) can decide what
to do: drop one client's payload (:class:`KeyMismatchError`,
:class:`MalformedPayloadError`), stop the round (:class:`SecureSumOverflowError`), or
fix the configuration (:class:`InsecureKeyError`).
"""

from __future__ import annotations


class SecureSumError(ValueError):
    """Base class of every secure-sum error (catch it to drop a bad payload)."""


class InsecureKeyError(SecureSumError):
    """A Paillier key is shorter than the enforced minimum (2048 bits)."""


class KeyMismatchError(SecureSumError):
    """A payload was encrypted under a different public key than the one in use."""


class MalformedPayloadError(SecureSumError):
    """A serialized payload or a ciphertext is truncated, corrupted or inconsistent."""


class SecureSumOverflowError(SecureSumError, OverflowError):
    """A sum would exceed (or has exceeded) the carry room of the packed slots.

    Raised instead of returning a silently wrong sum: when more ciphertexts are added
    than the layout's ``max_summands``, or when a decrypted slot holds more than
    ``num_summands`` quantized maxima (a summand was out of range or the count is wrong).
    It is both a :class:`SecureSumError` and an ``OverflowError``.
    """
