"""Key files of a Paillier key dealer: the private key for clients, the public key for the server.

:func:`deal_keys` writes ``paillier_private.json`` (mode ``0600``, for the clients) and
``paillier_public.bin`` (for the ServerApp) and keeps no copy. See
docs/paillier_packing.md.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from phe import PaillierPrivateKey, PaillierPublicKey

from .errors import MalformedPayloadError
from .keys import (
    MIN_KEY_BITS,
    KeyHolder,
    public_key_from_bytes,
    public_key_to_bytes,
)

PRIVATE_KEY_FORMAT = "flhet-paillier-private-key"
PRIVATE_KEY_VERSION = 1
PRIVATE_KEY_FILE = "paillier_private.json"
PUBLIC_KEY_FILE = "paillier_public.bin"


@dataclass(frozen=True)
class KeyFiles:
    """Where a key dealer wrote a key pair.

    Parameters
    ----------
    private_path : Path
        The private key file, for the clients only (for a threshold key, the folder of
        the clients' share files: each client gets its own).
    public_path : Path
        The public key file, for the server (and the clients).
    fingerprint : str
        Hex fingerprint of the public key (see :func:`.key_fingerprint`).
    """

    private_path: Path
    public_path: Path
    fingerprint: str


def deal_keys(directory: str | Path, n_length: int = MIN_KEY_BITS) -> KeyFiles:
    """Generate a key pair and write its private and public key files.

    Parameters
    ----------
    directory : str or Path
        Folder for the two files (created if missing). Existing key files there are
        replaced.
    n_length : int (default: 2048)
        Modulus bits (at least 2048).

    Returns
    -------
    KeyFiles
        The two paths and the key's fingerprint.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    holder = KeyHolder.generate(n_length)
    private_path = save_key_holder(holder, folder / PRIVATE_KEY_FILE)
    public_path = folder / PUBLIC_KEY_FILE
    _write_atomically(public_path, public_key_to_bytes(holder.public_key), mode=0o644)
    return KeyFiles(private_path, public_path, holder.fingerprint.hex())


def save_key_holder(holder: KeyHolder, path: str | Path) -> Path:
    """Write a key holder's private key to ``path`` (JSON, mode ``0600``).

    Parameters
    ----------
    holder : KeyHolder
        The key holder.
    path : str or Path
        Destination file.

    Returns
    -------
    Path
        The file written.
    """
    if not isinstance(holder, KeyHolder):
        raise TypeError(f"expected a KeyHolder, got {type(holder).__name__}")
    private_key = holder._private_key  # noqa: SLF001 - same package, the one place it is written
    document = {
        "format": PRIVATE_KEY_FORMAT,
        "version": PRIVATE_KEY_VERSION,
        "fingerprint": holder.fingerprint.hex(),
        "n": format(private_key.public_key.n, "x"),
        "p": format(private_key.p, "x"),
        "q": format(private_key.q, "x"),
    }
    path = Path(path)
    _write_atomically(path, json.dumps(document).encode(), mode=0o600)
    return path


def load_key_holder(path: str | Path) -> KeyHolder:
    """Read a private key file written by :func:`save_key_holder` or :func:`deal_keys`.

    Parameters
    ----------
    path : str or Path
        The private key file.

    Returns
    -------
    KeyHolder
        The key holder.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    MalformedPayloadError
        If it is not a flhet private key file, or its numbers are inconsistent.
    InsecureKeyError
        If the key is shorter than 2048 bits.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Paillier private key file not found: {path} (write one with deal_keys)"
        )
    try:
        document = json.loads(path.read_text())
        if document.get("format") != PRIVATE_KEY_FORMAT:
            raise ValueError(f"format is {document.get('format')!r}")
        if document.get("version") != PRIVATE_KEY_VERSION:
            raise ValueError(f"version {document.get('version')!r} is not supported")
        n, p, q = (int(document[name], 16) for name in ("n", "p", "q"))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise MalformedPayloadError(
            f"{path} is not a flhet Paillier private key file: {error}"
        ) from error
    if p * q != n or min(p, q) < 3:
        raise MalformedPayloadError(f"{path}: p * q does not equal n")
    holder = KeyHolder(PaillierPrivateKey(PaillierPublicKey(n), p, q))
    if document.get("fingerprint") != holder.fingerprint.hex():
        raise MalformedPayloadError(f"{path}: the stored fingerprint does not match the key")
    return holder


def load_public_key(path: str | Path) -> PaillierPublicKey:
    """Read a public key file written by :func:`deal_keys`.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    MalformedPayloadError
        If it is not a serialized public key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Paillier public key file not found: {path} (write one with deal_keys)"
        )
    return public_key_from_bytes(path.read_bytes())


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
