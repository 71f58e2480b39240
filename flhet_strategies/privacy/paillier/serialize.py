"""Compact byte serialization of encrypted vectors into ``uint8`` numpy arrays.

A payload is a fixed header (key fingerprint, layout, summand count) followed by the
ciphertexts as big-endian integers; everything is checked on reading. Wire format:
docs/paillier_packing.md.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import gmpy2
import numpy as np
from phe import PaillierPublicKey

from .errors import KeyMismatchError, MalformedPayloadError, SecureSumOverflowError
from .keys import FINGERPRINT_BYTES, key_fingerprint
from .layout import SecureSumLayout

MAGIC = b"FHSS"
VERSION = 1
HEADER = struct.Struct(f">4sB{FINGERPRINT_BYTES}sHHIIIIBBHdd")


def ciphertext_bytes(public_key: PaillierPublicKey) -> int:
    """Bytes of one serialized ciphertext under ``public_key`` (a number below ``n**2``)."""
    return 2 * ((public_key.n.bit_length() + 7) // 8)


@dataclass(frozen=True)
class Payload:
    """The parts of a deserialized payload, checked against a public key."""

    layout: SecureSumLayout
    num_summands: int
    ciphertexts: tuple


def payload_to_array(
    public_key: PaillierPublicKey,
    layout: SecureSumLayout,
    num_summands: int,
    ciphertexts: tuple,
) -> np.ndarray:
    """Serialize ciphertexts with their header into a 1-D ``uint8`` array."""
    width = ciphertext_bytes(public_key)
    header = HEADER.pack(
        MAGIC,
        VERSION,
        key_fingerprint(public_key),
        width,
        layout.plaintext_bits,
        len(ciphertexts),
        layout.num_values,
        num_summands,
        layout.max_summands,
        layout.value_bits,
        layout.slot_bits,
        layout.slots_per_ciphertext,
        layout.value_min,
        layout.value_max,
    )
    body = b"".join(int(c).to_bytes(width, "big") for c in ciphertexts)
    return np.frombuffer(header + body, dtype=np.uint8).copy()


def payload_from_array(array: np.ndarray, public_key: PaillierPublicKey) -> Payload:
    """Deserialize and check a payload written by :func:`payload_to_array`.

    Parameters
    ----------
    array : np.ndarray
        1-D ``uint8`` array (or ``bytes``).
    public_key : phe.PaillierPublicKey
        The key the payload must have been encrypted under.

    Returns
    -------
    Payload
        Layout, summand count and ciphertexts (as ``gmpy2.mpz``).

    Raises
    ------
    KeyMismatchError
        If the payload names another key.
    MalformedPayloadError
        If the payload is not a well-formed payload for this key.
    """
    raw = _as_bytes(array)
    if len(raw) < HEADER.size:
        raise MalformedPayloadError(
            f"payload has {len(raw)} bytes, fewer than the {HEADER.size}-byte header"
        )
    (
        magic,
        version,
        fingerprint,
        width,
        plaintext_bits,
        count,
        num_values,
        num_summands,
        max_summands,
        value_bits,
        slot_bits,
        slots_per_ciphertext,
        value_min,
        value_max,
    ) = HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise MalformedPayloadError("payload does not start with the secure-sum magic bytes")
    if version != VERSION:
        raise MalformedPayloadError(
            f"payload format version {version} is not supported (expected {VERSION})"
        )
    expected_fingerprint = key_fingerprint(public_key)
    if fingerprint != expected_fingerprint:
        raise KeyMismatchError(
            f"payload was encrypted under key {fingerprint.hex()}, expected key "
            f"{expected_fingerprint.hex()}"
        )
    if width != ciphertext_bytes(public_key):
        raise MalformedPayloadError(
            f"payload declares {width}-byte ciphertexts, the key needs "
            f"{ciphertext_bytes(public_key)}"
        )
    if not (math.isfinite(value_min) and math.isfinite(value_max)):
        raise MalformedPayloadError("payload declares a non-finite value range")
    try:
        layout = SecureSumLayout(
            num_values=num_values,
            max_summands=max_summands,
            value_min=value_min,
            value_max=value_max,
            value_bits=value_bits,
            plaintext_bits=plaintext_bits,
        )
    except (TypeError, ValueError) as error:
        raise MalformedPayloadError(f"payload declares an invalid layout: {error}") from error
    if plaintext_bits != public_key.n.bit_length() - 1:
        raise MalformedPayloadError(
            f"payload declares {plaintext_bits} plaintext bits, the key has "
            f"{public_key.n.bit_length() - 1}"
        )
    if (slot_bits, slots_per_ciphertext, count) != (
        layout.slot_bits,
        layout.slots_per_ciphertext,
        layout.num_ciphertexts,
    ):
        raise MalformedPayloadError(
            "payload bit layout is inconsistent: header says slot_bits="
            f"{slot_bits}, slots_per_ciphertext={slots_per_ciphertext}, "
            f"num_ciphertexts={count}; its parameters imply {layout.slot_bits}, "
            f"{layout.slots_per_ciphertext}, {layout.num_ciphertexts}"
        )
    if num_summands < 1:
        raise MalformedPayloadError("payload declares a sum of zero vectors")
    if num_summands > max_summands:
        raise SecureSumOverflowError(
            f"payload is a sum of {num_summands} vectors, more than its slots hold "
            f"({max_summands})"
        )
    expected_size = HEADER.size + count * width
    if len(raw) != expected_size:
        raise MalformedPayloadError(
            f"payload has {len(raw)} bytes, header implies {expected_size}"
        )
    ciphertexts = tuple(
        gmpy2.mpz(int.from_bytes(raw[offset : offset + width], "big"))
        for offset in range(HEADER.size, expected_size, width)
    )
    check_ciphertexts(public_key, ciphertexts)
    return Payload(layout=layout, num_summands=num_summands, ciphertexts=ciphertexts)


def check_ciphertexts(public_key: PaillierPublicKey, ciphertexts: tuple) -> None:
    """Raise :class:`.MalformedPayloadError` unless every ciphertext is a unit mod ``n**2``."""
    n = gmpy2.mpz(public_key.n)
    nsquare = n * n
    for index, c in enumerate(ciphertexts):
        if not 0 < c < nsquare:
            raise MalformedPayloadError(f"ciphertext {index} lies outside [1, n**2)")
        if gmpy2.gcd(c, n) != 1:
            raise MalformedPayloadError(
                f"ciphertext {index} shares a factor with n: not a valid ciphertext"
            )


def _as_bytes(array: np.ndarray | bytes) -> bytes:
    if isinstance(array, (bytes, bytearray, memoryview)):
        return bytes(array)
    if not isinstance(array, np.ndarray):
        raise MalformedPayloadError(
            f"payload must be a uint8 numpy array or bytes, got {type(array).__name__}"
        )
    if array.dtype != np.uint8 or array.ndim != 1:
        raise MalformedPayloadError(
            f"payload must be a 1-D uint8 array, got dtype {array.dtype} and shape "
            f"{array.shape}"
        )
    return array.tobytes()
