"""A threshold Paillier cohort: the dealer's files, the public roster, one client's share.

:func:`deal_threshold_keys` writes the public file (the threshold key, the roster of
client ids with their Ed25519 verification keys, the cohort's minimum sum size) for the
server and every client, and one share file per client (its key share, its signing key
and the cohort's sealing key), then forgets them. See docs/threshold_paillier.md.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from phe import PaillierPublicKey

from .errors import MalformedPayloadError, SecureSumError
from .key_files import _write_atomically
from .keys import MIN_KEY_BITS, key_fingerprint, validate_public_key
from .sealing import SymmetricSeal
from .threshold import KeyShare, PartialDecryption, ThresholdPublicKey, deal_threshold_key

PUBLIC_FORMAT = "flhet-paillier-threshold-public"
SHARE_FORMAT = "flhet-paillier-key-share"
VERSION = 1
PUBLIC_FILE = "paillier_threshold_public.json"
SHARE_FILE = "paillier_share_{client_id}.json"
SIGNATURE_BYTES = 64


class ShareSignatureError(SecureSumError):
    """A share's signature is missing, forged, or from a client off the roster."""


@dataclass(frozen=True)
class ThresholdCohort:
    """The public side of a threshold cohort: key, roster and the dealer's sum policy.

    Parameters
    ----------
    key : ThresholdPublicKey
        The threshold Paillier key (``t`` of ``n`` decrypt).
    roster : Mapping[str, tuple[int, bytes]]
        Client id -> (its key-share index ``1..n``, its raw Ed25519 verification key).
    min_summands : int
        Fewest distinct signed shares an honest decryptor decrypts the sum of.
    """

    key: ThresholdPublicKey
    roster: Mapping[str, tuple[int, bytes]]
    min_summands: int

    def __post_init__(self) -> None:
        validate_public_key(self.public_key)
        indices = sorted(index for index, _ in self.roster.values())
        if indices != list(range(1, self.key.num_shares + 1)):
            raise MalformedPayloadError(f"the roster's share indices {indices} are not "
                                        f"1..{self.key.num_shares}")
        if not 1 <= self.min_summands <= self.key.num_shares:
            raise MalformedPayloadError(f"min_summands must be in [1, {self.key.num_shares}], "
                                        f"got {self.min_summands}")

    @property
    def public_key(self) -> PaillierPublicKey:
        """The Paillier encryption key every share is made under."""
        return self.key.public_key

    @property
    def fingerprint(self) -> bytes:
        """The key's fingerprint (:func:`.key_fingerprint`)."""
        return key_fingerprint(self.public_key)

    @property
    def threshold(self) -> int:
        """``t``: partial decryptions needed."""
        return self.key.threshold

    def share_message(self, server_round: int, client_id: str, payload: np.ndarray) -> bytes:
        """What a client signs: the key, the round, its id and its share's digest."""
        client = str(client_id).encode()
        return (b"flhet-threshold-share|" + self.fingerprint + int(server_round).to_bytes(8, "big")
                + len(client).to_bytes(2, "big") + client
                + hashlib.sha256(np.ascontiguousarray(payload).tobytes()).digest())

    def verify_share(self, server_round: int, client_id: str, payload: np.ndarray,
                     signature: np.ndarray | bytes | None) -> None:
        """Check that ``client_id`` (on the roster) signed ``payload`` for ``server_round``.

        Raises
        ------
        ShareSignatureError
            Naming what is wrong.
        """
        entry = self.roster.get(str(client_id))
        if entry is None:
            raise ShareSignatureError(f"client {client_id!r} is not on the key dealer's roster")
        if signature is None:
            raise ShareSignatureError(f"client {client_id!r} sent no share signature")
        raw = signature.tobytes() if isinstance(signature, np.ndarray) else bytes(signature)
        if len(raw) != SIGNATURE_BYTES:
            raise ShareSignatureError(f"a share signature has {SIGNATURE_BYTES} bytes, client "
                                      f"{client_id!r} sent {len(raw)}")
        try:
            Ed25519PublicKey.from_public_bytes(entry[1]).verify(
                raw, self.share_message(server_round, client_id, payload))
        except InvalidSignature as error:
            raise ShareSignatureError(f"the share of client {client_id!r} does not carry its "
                                      f"signature for round {server_round}") from error

    def to_document(self) -> dict:
        """The JSON document of the public file."""
        return {"format": PUBLIC_FORMAT, "version": VERSION,
                "fingerprint": self.fingerprint.hex(), "n": format(self.key.n, "x"),
                "threshold": self.key.threshold, "num_shares": self.key.num_shares,
                "v": format(self.key.v, "x"),
                "verification_keys": [format(k, "x") for k in self.key.verification_keys],
                "min_summands": self.min_summands,
                "roster": {cid: {"index": index, "verify_key": key.hex()}
                           for cid, (index, key) in sorted(self.roster.items())}}

    @classmethod
    def from_document(cls, document: Mapping, where: str = "document") -> "ThresholdCohort":
        """Inverse of :meth:`to_document` (``MalformedPayloadError`` on a bad one)."""
        try:
            if document.get("format") != PUBLIC_FORMAT or document.get("version") != VERSION:
                raise ValueError(f"format {document.get('format')!r} version "
                                 f"{document.get('version')!r}")
            key = ThresholdPublicKey(
                int(document["n"], 16), int(document["threshold"]), int(document["num_shares"]),
                int(document["v"], 16),
                tuple(int(k, 16) for k in document["verification_keys"]))
            roster = {str(cid): (int(e["index"]), bytes.fromhex(e["verify_key"]))
                      for cid, e in document["roster"].items()}
            cohort = cls(key, roster, int(document["min_summands"]))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise MalformedPayloadError(f"{where} is not a flhet threshold public file: "
                                        f"{error}") from error
        if document.get("fingerprint") != cohort.fingerprint.hex():
            raise MalformedPayloadError(f"{where}: the stored fingerprint does not match the key")
        return cohort


class ThresholdHolder:
    """One client's part of a threshold cohort: signs its shares, partially decrypts sums.

    It cannot decrypt alone. Load it with :func:`load_threshold_holder`; never give it
    to the server.

    Parameters
    ----------
    cohort : ThresholdCohort
        The public side.
    client_id : str
        This client's id on the roster.
    share : KeyShare
        Its key share.
    signing_key : bytes
        Its raw Ed25519 private key (32 bytes).
    seal_key : bytes
        The cohort's AES-256-GCM key (32 bytes): partial decryptions travel sealed under
        it, so the server relaying them cannot combine them.
    path : Path, optional
        The share file it was loaded from (its decryption log is kept beside it).
    """

    def __init__(self, cohort: ThresholdCohort, client_id: str, share: KeyShare,
                 signing_key: bytes, seal_key: bytes, path: Path | None = None) -> None:
        entry = cohort.roster.get(str(client_id))
        if entry is None or entry[0] != share.index:
            raise MalformedPayloadError(f"client {client_id!r} does not hold share "
                                        f"{share.index} on the roster")
        self._signing = Ed25519PrivateKey.from_private_bytes(bytes(signing_key))
        public = self._signing.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        if public != entry[1]:
            raise MalformedPayloadError(f"client {client_id!r}: the signing key does not match "
                                        "its verification key on the roster")
        self.cohort, self.client_id, self._share = cohort, str(client_id), share
        self.path = None if path is None else Path(path)
        self._seal = SymmetricSeal(seal_key)

    def __repr__(self) -> str:
        return (f"ThresholdHolder(client={self.client_id!r}, share={self._share.index}, "
                f"t={self.cohort.threshold}, n={self.cohort.key.num_shares})")

    @property
    def public_key(self) -> PaillierPublicKey:
        """The Paillier encryption key."""
        return self.cohort.public_key

    @property
    def fingerprint(self) -> bytes:
        """The key's fingerprint."""
        return self.cohort.fingerprint

    @property
    def index(self) -> int:
        """This client's share index."""
        return self._share.index

    def sign_share(self, server_round: int, payload: np.ndarray) -> np.ndarray:
        """This client's signature (64 ``uint8``) of its share for ``server_round``."""
        message = self.cohort.share_message(server_round, self.client_id, payload)
        return np.frombuffer(self._signing.sign(message), dtype=np.uint8).copy()

    def partial_decrypt(self, ciphertexts: Sequence[int], workers: int = 1) -> PartialDecryption:
        """This client's partial decryption (with its proof) of ``ciphertexts``."""
        return self._share.partial_decrypt(ciphertexts, workers=workers)

    def seal(self, data: bytes, associated_data: bytes) -> np.ndarray:
        """Seal ``data`` for the cohort (:class:`.SymmetricSeal` under the dealt key)."""
        return self._seal.seal(data, associated_data)

    def unseal(self, sealed: np.ndarray | bytes, associated_data: bytes) -> bytes:
        """Open :meth:`seal`'s bytes (``MalformedPayloadError`` if altered or foreign)."""
        return self._seal.unseal(sealed, associated_data)


@dataclass(frozen=True)
class ThresholdKeyFiles:
    """Where :func:`deal_threshold_keys` wrote a cohort's files.

    Parameters
    ----------
    public_path : Path
        The public file, for the server and every client.
    share_paths : dict[str, Path]
        Client id -> its share file (give each client its own only).
    fingerprint : str
        Hex fingerprint of the Paillier key.
    """

    public_path: Path
    share_paths: dict[str, Path]
    fingerprint: str


def deal_threshold_keys(directory: str | Path, client_ids: Sequence[str | int],
                        threshold: int | None = None, *, min_summands: int | None = None,
                        n_length: int = MIN_KEY_BITS) -> ThresholdKeyFiles:
    """The key dealer: a fresh ``t``-of-``n`` key for ``client_ids``, written to files.

    Parameters
    ----------
    directory : str or Path
        Folder for the files (created if missing; existing ones are replaced).
    client_ids : Sequence[str or int]
        The cohort, as the clients report their ids (``n`` = its length, at least 2).
    threshold : int, optional
        ``t`` (default ``n // 2 + 1``).
    min_summands : int, optional
        Fewest distinct signed shares a decryptor accepts in a sum (default ``t``).
    n_length : int (default: 2048)
        Modulus bits (at least 2048).

    Returns
    -------
    ThresholdKeyFiles
    """
    ids = [str(c) for c in client_ids]
    if len(ids) < 2 or len(set(ids)) != len(ids):
        raise ValueError(f"a threshold cohort needs at least 2 distinct client ids, got {ids}")
    if any("," in c or "/" in c for c in ids):
        raise ValueError("client ids must not contain ',' or '/'")
    t = len(ids) // 2 + 1 if threshold is None else int(threshold)
    key, shares = deal_threshold_key(len(ids), t, n_length)
    signing = [Ed25519PrivateKey.generate() for _ in ids]
    roster = {cid: (share.index, sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
              for cid, share, sk in zip(ids, shares, signing)}
    cohort = ThresholdCohort(key, roster, t if min_summands is None else int(min_summands))
    seal_key = secrets.token_bytes(32)
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    public_doc = cohort.to_document()
    public_path = folder / PUBLIC_FILE
    _write_atomically(public_path, json.dumps(public_doc).encode(), 0o644)
    paths = {}
    for cid, share, sk in zip(ids, shares, signing):
        raw = sk.private_bytes_raw()
        document = {"format": SHARE_FORMAT, "version": VERSION, "client_id": cid,
                    "index": share.index, "secret": format(share._secret, "x"),  # noqa: SLF001
                    "signing_key": raw.hex(), "seal_key": seal_key.hex(), "public": public_doc}
        paths[cid] = folder / SHARE_FILE.format(client_id=cid)
        _write_atomically(paths[cid], json.dumps(document).encode(), 0o600)
    return ThresholdKeyFiles(public_path, paths, cohort.fingerprint.hex())


def load_threshold_cohort(path: str | Path) -> ThresholdCohort:
    """Read the public file of :func:`deal_threshold_keys` (the server's key).

    Raises
    ------
    FileNotFoundError, MalformedPayloadError, InsecureKeyError
    """
    return ThresholdCohort.from_document(_read(path, "threshold public"), str(path))


def load_threshold_holder(path: str | Path) -> ThresholdHolder:
    """Read one client's share file of :func:`deal_threshold_keys`.

    Raises
    ------
    FileNotFoundError, MalformedPayloadError, InsecureKeyError
    """
    document = _read(path, "key share")
    try:
        if document.get("format") != SHARE_FORMAT or document.get("version") != VERSION:
            raise ValueError(f"format {document.get('format')!r}")
        cohort = ThresholdCohort.from_document(document["public"], str(path))
        share = KeyShare(int(document["index"]), int(document["secret"], 16), cohort.key)
        return ThresholdHolder(cohort, str(document["client_id"]), share,
                               bytes.fromhex(document["signing_key"]),
                               bytes.fromhex(document["seal_key"]), Path(path).resolve())
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        if isinstance(error, SecureSumError):
            raise
        raise MalformedPayloadError(f"{path} is not a flhet key share file: {error}") from error


def _read(path: str | Path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Paillier {what} file not found: {path} "
                                "(write one with deal_threshold_keys)")
    try:
        document = json.loads(path.read_text())
    except ValueError as error:
        raise MalformedPayloadError(f"{path} is not JSON: {error}") from error
    if not isinstance(document, dict):
        raise MalformedPayloadError(f"{path} is not a flhet {what} file")
    return document


__all__ = ["PUBLIC_FILE", "SHARE_FILE", "ShareSignatureError", "ThresholdCohort",
           "ThresholdHolder", "ThresholdKeyFiles", "deal_threshold_keys",
           "load_threshold_cohort", "load_threshold_holder"]
