"""Paillier secure sums of packed fixed-point vectors (no Flower import).

Clients quantize a vector (8-bit probabilities are the fast path), pack many values into
each Paillier plaintext with zero padding that absorbs the carries of up to
``max_summands`` additions (BatchCrypt), and encrypt with precomputed randomness on all
cores. The server only multiplies ciphertexts and never holds the private key; the key
holder (or the clients, who share the key) decrypt the sum.

Typical use::

    holder = KeyHolder.generate()                       # on a client / key holder
    codec = SecureSumCodec(holder.public_key, num_values=1000, max_summands=10)
    array = codec.encrypt(vector).to_array()            # client -> server (uint8)

    aggregator = CiphertextAggregator(public_key)       # server: public key only
    reply = aggregator.add(*arrays_that_arrived).result().to_array()

    total = holder.decrypt_sum(EncryptedVector.from_array(reply, holder.public_key))

Modules: :mod:`.fixed_point` (quantization), :mod:`.packing` (slots and overflow
checks), :mod:`.layout`, :mod:`.keys`, :mod:`.key_files` (a key dealer's files),
:mod:`.encrypt` (randomness pool), :mod:`.short_exponent` (DJN obfuscators),
:mod:`.sealing` (one holder decrypts, seals for the others),
:mod:`.codec`, :mod:`.aggregate`, :mod:`.serialize`, :mod:`.errors`.
"""

from .aggregate import CiphertextAggregator
from .codec import SecureSumCodec
from .encrypt import (
    RandomnessPool,
    StandardObfuscators,
    compute_obfuscators,
    encrypt_plaintexts,
)
from .encrypted_vector import EncryptedVector
from .errors import (
    InsecureKeyError,
    KeyMismatchError,
    MalformedPayloadError,
    SecureSumError,
    SecureSumOverflowError,
)
from .fixed_point import FixedPointEncoder
from .key_files import KeyFiles, deal_keys, load_key_holder, load_public_key, save_key_holder
from .keys import (
    MIN_KEY_BITS,
    KeyHolder,
    key_fingerprint,
    public_key_from_bytes,
    public_key_to_bytes,
    validate_public_key,
)
from .layout import SecureSumLayout
from .packing import SlotPacking
from .sealing import GroupSeal
from .short_exponent import ShortExponentObfuscators

__all__ = [
    "MIN_KEY_BITS",
    "CiphertextAggregator",
    "EncryptedVector",
    "FixedPointEncoder",
    "GroupSeal",
    "InsecureKeyError",
    "KeyFiles",
    "KeyHolder",
    "KeyMismatchError",
    "MalformedPayloadError",
    "RandomnessPool",
    "SecureSumCodec",
    "SecureSumError",
    "SecureSumLayout",
    "SecureSumOverflowError",
    "ShortExponentObfuscators",
    "SlotPacking",
    "StandardObfuscators",
    "compute_obfuscators",
    "deal_keys",
    "encrypt_plaintexts",
    "key_fingerprint",
    "load_key_holder",
    "load_public_key",
    "public_key_from_bytes",
    "public_key_to_bytes",
    "save_key_holder",
    "validate_public_key",
]
