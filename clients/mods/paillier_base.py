"""Settings shared by flhet's Paillier client wrappers: key source, threads, plaintext policy.

:class:`PaillierClientSettings` is mixed into the Message-API mods
(:class:`~clients.mods.paillier_consensus.PaillierConsensusMod`,
:class:`~clients.mods.paillier_fedavg.PaillierFedAvgMod`) and the compat wrappers
(:class:`~clients.paillier_numpy_base.PaillierNumPyBase`), so that they validate
their options, find their private key and decide what may leave in clear the same way.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

from flwr.app import Context

from flhet_strategies.core.secure_sum import KeyHolder
from flhet_strategies.core.secure_sum.client_cache import check_worker_counts, resolve_key_holder

KEY_PATH_NODE_CONFIG = "paillier-key-path"
"""Node-config key naming the private key file, when the wrapper is not given ``key_path``."""


class PaillierClientSettings:
    """Key source and options of a Paillier client wrapper (a mixin).

    The mods inherit ``__init__``; the compat ``NumPyClient`` s
    (:class:`~clients.paillier_numpy_base.PaillierNumPyBase`) pass their keyword options
    on to it. The parameters are documented on each wrapper.

    Attributes
    ----------
    key_path : str or None
        The private key file, if given.
    key_holder : KeyHolder or None
        The key itself, if given.
    node_config_key : str
        Node-config (then run-config) key naming the key file otherwise.
    workers : int
        Threads computing Paillier randomness.
    decrypt_workers : int or None
        Threads decrypting a sum (None: every core).
    short_exponent : bool
        Damgard-Jurik-Nielsen short-exponent randomness.
    require_secure : bool
        Refuse to send plaintext when the server did not ask for a secure sum.
    plaintext_phases : frozenset of str
        Phases allowed in clear even when ``require_secure`` is set.
    """

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        key_path: str | Path | None = None,
        *,
        key_holder: KeyHolder | None = None,
        node_config_key: str = KEY_PATH_NODE_CONFIG,
        workers: int = 1,
        decrypt_workers: int | None = None,
        short_exponent: bool = True,
        require_secure: bool = True,
        plaintext_phases: Collection[str] = (),
    ) -> None:
        """Validate and store the settings.

        Raises
        ------
        ValueError
            If both ``key_path`` and ``key_holder`` are given, or a thread count is not a
            positive int.
        TypeError
            If ``key_holder`` is not a :class:`KeyHolder`, or ``plaintext_phases`` is a
            single str.
        """
        if key_path is not None and key_holder is not None:
            raise ValueError("give key_path or key_holder, not both")
        if key_holder is not None and not isinstance(key_holder, KeyHolder):
            raise TypeError(f"key_holder must be a KeyHolder, got {type(key_holder).__name__}")
        check_worker_counts(workers, decrypt_workers)
        if isinstance(plaintext_phases, str):
            raise TypeError("plaintext_phases must be a collection of phase names, not a str")
        self.key_path = None if key_path is None else str(key_path)
        self.key_holder = key_holder
        self.node_config_key = node_config_key
        self.workers = workers
        self.decrypt_workers = decrypt_workers
        self.short_exponent = bool(short_exponent)
        self.require_secure = bool(require_secure)
        self.plaintext_phases = frozenset(str(phase) for phase in plaintext_phases)

    def __repr__(self) -> str:
        source = self.key_path or ("<key holder>" if self.key_holder else
                                   f"node config {self.node_config_key!r}")
        return f"{type(self).__name__}(key={source}, workers={self.workers})"

    def allows_plaintext(self, phase: str) -> bool:
        """Whether a message of ``phase`` that asks for no secure sum may be answered in clear."""
        return not self.require_secure or phase in self.plaintext_phases

    def key_holder_for(self, context: Context | None) -> KeyHolder:
        """The private key, looking in ``context``'s node and run config if needed.

        Raises
        ------
        ValueError
            As :meth:`resolve_key_holder` (without a context, only the given key counts).
        """
        if context is None:
            return self.resolve_key_holder({}, {})
        return self.resolve_key_holder(context.node_config, context.run_config)

    def resolve_key_holder(self, node_config: Mapping, run_config: Mapping) -> KeyHolder:
        """The private key: ``key_holder``, else ``key_path``, else the file the config names.

        Parameters
        ----------
        node_config, run_config : Mapping
            A Flower context's node and run config, searched in that order for
            ``node_config_key``.

        Raises
        ------
        ValueError
            If no key is given and no config names a key file.
        """
        if self.key_holder is not None:
            return self.key_holder
        return resolve_key_holder(self.key_path, node_config, run_config,
                                  self.node_config_key, type(self).__name__)


__all__ = ["KEY_PATH_NODE_CONFIG", "PaillierClientSettings"]
