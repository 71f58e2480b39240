"""Per-process caches of a secure-sum client: its private key and its randomness pool.

Loading the key once per process and keeping one pool per key topped up between
messages keeps the Paillier cost off the critical path; every secure-sum client step
shares them. See docs/paillier_packing.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from .encrypt import RandomnessPool
from .errors import MalformedPayloadError
from .key_files import _write_atomically, load_key_holder
from .keys import KeyHolder
from .short_exponent import ShortExponentObfuscators
from .threshold_keys import SHARE_FILE, SHARE_FORMAT, ThresholdHolder, load_threshold_holder

_KEY_HOLDERS: dict[str, tuple[float, KeyHolder | ThresholdHolder]] = {}
_POOLS: dict[tuple[bytes, bool, int], RandomnessPool] = {}
_DECRYPTED: dict[tuple[bytes, int, int], bytes] = {}
"""(key, share index, round) -> digest of the one sum this process partially decrypted."""


def cached_key_holder(path: str | Path) -> KeyHolder | ThresholdHolder:
    """The key in a key file, loaded once per process (reloaded if it changed).

    Parameters
    ----------
    path : str or Path
        A key dealer's private key file (:func:`.deal_keys`) or one client's share file
        (:func:`.deal_threshold_keys`).

    Raises
    ------
    FileNotFoundError, MalformedPayloadError, InsecureKeyError
        As :func:`.load_key_holder`.
    """
    resolved = str(Path(str(path)).resolve())
    mtime = Path(resolved).stat().st_mtime if Path(resolved).exists() else -1.0
    cached = _KEY_HOLDERS.get(resolved)
    if cached is None or cached[0] != mtime:
        cached = (mtime, _load_key(resolved))
        _KEY_HOLDERS[resolved] = cached
    return cached[1]


def _load_key(path: str) -> KeyHolder | ThresholdHolder:
    try:
        with open(path, "rb") as handle:
            head = handle.read(256)
    except OSError:
        head = b""
    if SHARE_FORMAT.encode() in head:
        return load_threshold_holder(path)
    return load_key_holder(path)


def resolve_key_holder(key_path: str | Path | None, node_config: Mapping,
                       run_config: Mapping, config_key: str,
                       owner: str) -> KeyHolder | ThresholdHolder:
    """The key of ``key_path``, else of the file the node (or run) config names.

    A folder of threshold share files (:func:`.deal_threshold_keys`) resolves to this
    node's own file through the node config's ``partition-id`` (the simulation's);
    on a SuperNode, name the node's own share file instead.

    Parameters
    ----------
    key_path : str or Path, optional
        An explicit key file (or a folder of share files).
    node_config, run_config : Mapping
        A Flower context's node config (a SuperNode's own ``--node-config``) and run
        config, searched in that order for ``config_key``.
    config_key : str
        The config entry naming the key file, e.g. ``"paillier-key-path"``.
    owner : str
        Name of the caller, for the error message.

    Raises
    ------
    ValueError
        If no key file is named anywhere, or a folder is named without a partition id.
    """
    path = key_path or node_config.get(config_key) or run_config.get(config_key)
    if not path:
        raise ValueError(
            f"no Paillier private key: give {owner} a key_path or set the node config (or "
            f"run config) '{config_key}'")
    if Path(str(path)).is_dir():
        if "partition-id" not in node_config:
            raise ValueError(f"{owner}: {path} is a folder of threshold key shares, but the node "
                             "config has no partition-id to pick this node's share; name the "
                             "node's own share file instead")
        path = Path(str(path)) / SHARE_FILE.format(client_id=node_config["partition-id"])
    return cached_key_holder(path)


def shared_randomness_pool(holder: KeyHolder | ThresholdHolder, short_exponent: bool, workers: int) -> RandomnessPool:
    """This process's randomness pool for ``holder``'s key (made on first use).

    Parameters
    ----------
    holder : KeyHolder
        Whose public key the obfuscators are for.
    short_exponent : bool
        Damgard-Jurik-Nielsen short-exponent obfuscators (True) or ``r**n`` (False).
    workers : int
        Background threads computing obfuscators.
    """
    key = (holder.fingerprint, bool(short_exponent), int(workers))
    pool = _POOLS.get(key)
    if pool is None:
        source = ShortExponentObfuscators(holder.public_key) if short_exponent else None
        pool = RandomnessPool(holder.public_key, workers=workers, source=source,
                              background="thread")
        _POOLS[key] = pool
    return pool


def top_up(pool: RandomnessPool, needed: int) -> None:
    """Start computing obfuscators in the background unless enough are ready or on the way."""
    if pool.pending == 0 and pool.available < needed:
        pool.fill(needed - pool.available, block=False)


def check_key_fingerprint(expected_hex: str, holder: KeyHolder) -> None:
    """Raise ``ValueError`` unless ``holder`` holds the key the server asks for.

    Parameters
    ----------
    expected_hex : str
        Hex fingerprint the server announced (empty if it announced none).
    holder : KeyHolder
        This client's key.
    """
    if expected_hex != holder.fingerprint.hex():
        raise ValueError(
            f"the server asks for key {expected_hex or '<none>'}, this client holds "
            f"key {holder.fingerprint.hex()}")


def check_worker_counts(workers: object, decrypt_workers: object = None) -> None:
    """Raise ``ValueError`` unless the thread counts of a secure-sum client are valid.

    Parameters
    ----------
    workers : int
        Threads computing Paillier randomness: a positive int.
    decrypt_workers : int, optional
        Threads decrypting a sum: a positive int, or None (every core).
    """
    for name, value in (("workers", workers), ("decrypt_workers", decrypt_workers)):
        if value is None and name == "decrypt_workers":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def claim_decryption(holder: ThresholdHolder, server_round: int, digest: bytes) -> bool:
    """Record that ``holder`` partially decrypts the sum ``digest`` of ``server_round``;
    False if it already decrypted another sum of that round with that share.

    The record is kept in this process and, for a share loaded from a file, in
    ``<share file>.decryptions.json`` beside it: in the simulation any actor may serve a
    node's message, and on a SuperNode every message is a fresh process, so only the
    file holds the rule across messages.
    """
    key = (holder.fingerprint, holder.index, int(server_round))
    if _DECRYPTED.setdefault(key, digest) != digest:
        return False
    if holder.path is None:
        return True
    log_path = Path(str(holder.path) + ".decryptions.json")
    try:
        record = json.loads(log_path.read_text()) if log_path.is_file() else {}
    except ValueError as error:
        raise MalformedPayloadError(f"{log_path} is not a decryption log: {error}") from error
    entry = f"{holder.fingerprint.hex()}:{int(server_round)}"
    if record.setdefault(entry, digest.hex()) != digest.hex():
        return False
    _write_atomically(log_path, json.dumps(record).encode(), 0o600)
    return True


def clear_client_caches() -> None:
    """Forget cached keys and decryptions; stop the randomness threads of this process."""
    for pool in _POOLS.values():
        pool.close()
    _POOLS.clear()
    _KEY_HOLDERS.clear()
    _DECRYPTED.clear()


__all__ = [
    "cached_key_holder",
    "claim_decryption",
    "check_key_fingerprint",
    "check_worker_counts",
    "clear_client_caches",
    "resolve_key_holder",
    "shared_randomness_pool",
    "top_up",
]
