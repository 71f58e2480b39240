"""Paillier secure sums of packed fixed-point vectors (no Flower import).

Clients quantize, pack (BatchCrypt) and encrypt vectors with precomputed randomness; the
server only multiplies ciphertexts and never holds the private key; the key holders
decrypt the sum. See docs/paillier_packing.md.
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
from .threshold_keys import (
    ThresholdCohort,
    ThresholdHolder,
    ThresholdKeyFiles,
    deal_threshold_keys,
    load_threshold_cohort,
    load_threshold_holder,
)

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
    "ThresholdCohort",
    "ThresholdHolder",
    "ThresholdKeyFiles",
    "compute_obfuscators",
    "deal_keys",
    "deal_threshold_keys",
    "encrypt_plaintexts",
    "key_fingerprint",
    "load_key_holder",
    "load_public_key",
    "load_threshold_cohort",
    "load_threshold_holder",
    "public_key_from_bytes",
    "public_key_to_bytes",
    "save_key_holder",
    "validate_public_key",
]
