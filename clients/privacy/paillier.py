"""Client step of a Paillier secure sum, for any weighted-sum algorithm (Flower-free).

:class:`PaillierStep` is the client half of
:class:`flhet_strategies.privacy.paillier.secure_sum.SecureSum`: it decrypts the sum
the server relays (or opens the seal one client made of it), finishes it with the
algorithm's rule into the plain instruction the client half expects, and encrypts the
reply's contribution. Run it with ``clients.mods.PaillierMod`` (Message API) or
``clients.SecureSumNumPyClient`` (compat). Keys come from a key dealer's file.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from logging import ERROR, INFO
from pathlib import Path

import numpy as np
from flwr.common.logger import log

from flhet_strategies import wire
from flhet_strategies.aggregation.weighted_sum import client_weights
from flhet_strategies.algorithms import sum_rule
from flhet_strategies.privacy.paillier import KeyHolder, SecureSumError
from flhet_strategies.privacy.paillier.client_cache import check_worker_counts, resolve_key_holder
from flhet_strategies.privacy.paillier.spec import SecureSumSpec
from flhet_strategies.privacy.paillier.sum_client import SumClient, finish_relayed
from flhet_strategies.privacy.paillier.threshold_client import ThresholdSumClient
from flhet_strategies.privacy.paillier.threshold_keys import ThresholdHolder
from flhet_strategies.protocol import Instruction, Reply

from .step import ClientStep, StepEnv, StepRefusal

_RELAYED = (wire.ENCRYPTED_SUM, wire.SEALED_SUM)
_RELAYED_PREFIXES = (wire.SUM_CONTEXT_PREFIX, wire.SEALED_PARTIAL_PREFIX,
                     wire.SIGNED_SHARE_PREFIX, wire.SHARE_SIGNATURE_PREFIX)


class PaillierSettings:
    """Where a client's private key comes from, its threads, and what may go in clear.

    Parameters
    ----------
    key_path : str or Path, optional
        The private key file (from a key dealer), or this client's threshold share file,
        or a folder of share files (the node's own is picked by its ``partition-id``).
        If omitted, the node config entry ``node_config_key`` names it (a SuperNode's own
        ``--node-config``), else the run config entry of the same name.
    key_holder : KeyHolder or ThresholdHolder, optional
        The key itself instead of a file.
    node_config_key : str (default: "paillier-key-path")
        Config key of the key file path.
    workers : int (default: 1)
        Threads computing Paillier randomness in the background (one per simulated
        client; raise it on a multi-core client machine).
    decrypt_workers : int, optional
        Threads decrypting a sum (default: every core this process may use).
    short_exponent : bool (default: True)
        Damgard-Jurik-Nielsen short-exponent randomness; False uses ``r**n``.
    require_secure : bool (default: True)
        Refuse train messages that do not ask for a secure sum, so that plaintext
        contributions never leave the client by mistake.
    plaintext_phases : Collection[str] (default: ())
        Phases (``flhet-phase``) allowed in clear anyway, e.g. ``("local_only",)``.

    Raises
    ------
    ValueError
        If both ``key_path`` and ``key_holder`` are given or a thread count is bad.
    TypeError
        If ``key_holder`` is not a :class:`KeyHolder` or ``plaintext_phases`` is a str.
    """

    # pylint: disable=too-many-arguments
    def __init__(self, key_path: str | Path | None = None, *,
                 key_holder: KeyHolder | None = None,
                 node_config_key: str = wire.KEY_PATH_NODE_CONFIG, workers: int = 1,
                 decrypt_workers: int | None = None, short_exponent: bool = True,
                 require_secure: bool = True, plaintext_phases: Collection[str] = ()) -> None:
        if key_path is not None and key_holder is not None:
            raise ValueError("give key_path or key_holder, not both")
        if key_holder is not None and not isinstance(key_holder, (KeyHolder, ThresholdHolder)):
            raise TypeError(f"key_holder must be a KeyHolder or ThresholdHolder, got "
                            f"{type(key_holder).__name__}")
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
        """Whether a message of ``phase`` that asks for no secure sum may go in clear."""
        return not self.require_secure or phase in self.plaintext_phases

    def holder(self, env: StepEnv) -> KeyHolder | ThresholdHolder:
        """The private key: ``key_holder``, else ``key_path``, else the file a config names.

        Raises
        ------
        ValueError
            If no key is given and no config names a key file.
        """
        if self.key_holder is not None:
            return self.key_holder
        return resolve_key_holder(self.key_path, env.node_config, env.run_config,
                                  self.node_config_key, type(self).__name__)

    def sum_client(self, env: StepEnv) -> SumClient:
        """This node's :class:`SumClient` (a :class:`ThresholdSumClient` for a key share;
        key and randomness pool cached per process)."""
        holder = self.holder(env)
        kind = ThresholdSumClient if isinstance(holder, ThresholdHolder) else SumClient
        return kind(holder, workers=self.workers, decrypt_workers=self.decrypt_workers,
                    short_exponent=self.short_exponent)


def _prefixed(instruction: Instruction, prefix: str) -> dict[str, np.ndarray]:
    return {name[len(prefix):]: value for name, value in instruction.arrays.items()
            if name.startswith(prefix)}


def _without_relayed(instruction: Instruction) -> Instruction:
    arrays = {name: value for name, value in instruction.arrays.items()
              if name not in _RELAYED and not name.startswith(_RELAYED_PREFIXES)}
    return Instruction(arrays, dict(instruction.config))


class PaillierStep(PaillierSettings, ClientStep):
    """Decrypt the relayed sum into the plain instruction; encrypt this client's share.

    Parameters are those of :class:`PaillierSettings`.
    """

    def before(self, instruction: Instruction, env: StepEnv,
               kind: str) -> tuple[Instruction, dict]:
        """Train: decrypt or open the relayed sum (a failure is logged, the client trains
        without it). Evaluate: keep a decryption request for :meth:`after`."""
        config = instruction.config
        if kind == "evaluate":
            if not config.get(wire.DECRYPT_REQUEST, False):
                return instruction, {}
            return _without_relayed(instruction), {"request": True}
        if wire.SECURE_SPEC not in config:
            if self.allows_plaintext(instruction.phase):
                return instruction, {}
            raise StepRefusal(
                f"the server did not ask for a secure sum (no '{wire.SECURE_SPEC}' in the "
                f"config); refusing to send a plaintext contribution (phase "
                f"{instruction.phase!r}). Wrap the server half in SecureSum, or list the "
                "phase in plaintext_phases.")
        spec = SecureSumSpec.from_json(str(config[wire.SECURE_SPEC]))
        client = self.sum_client(env)
        client.prepare(spec)   # randomness computes while the sum decrypts and the app trains
        edited = _without_relayed(instruction)
        memo: dict = {"spec": spec}
        if not set(_RELAYED) & set(instruction.arrays):
            return edited, memo
        start = time.perf_counter()
        try:
            finished, how = self._relayed(instruction, client)
        except (ValueError, KeyError, SecureSumError) as error:
            memo["failure"] = str(error)
            log(ERROR, "PaillierStep: the relayed sum does not decrypt (%s); training without "
                "it this round", error)
            return edited, memo
        edited.arrays.update(finished)
        log(INFO, "PaillierStep: %s in %.2f s", how, time.perf_counter() - start)
        return edited, memo

    def after(self, instruction: Instruction, memo: dict, reply: Reply, env: StepEnv,
              kind: str) -> Reply:
        """Train: replace the contribution by its encrypted share. Evaluate: add the seal
        of the decrypted sum when asked."""
        if kind == "evaluate":
            if memo.get("request"):
                self._answer_request(instruction, reply, env)
            return reply
        spec = memo.get("spec")
        if spec is None:
            return reply
        values, weights = self._contribution(spec, reply)
        client = self.sum_client(env)
        share = client.encrypt(spec, values, weights)
        arrays = {wire.ENCRYPTED_SHARE: share.payload}
        if isinstance(client, ThresholdSumClient):
            arrays[wire.SHARE_SIGNATURE] = client.sign(instruction.server_round, reply.client_id,
                                                       share.payload)
        metrics = {**reply.metrics, wire.CLIPPED_METRIC: float(share.num_clipped)}
        if "failure" in memo:
            metrics[wire.DECRYPT_FAILED_METRIC] = 1.0
        log(INFO, "PaillierStep: encrypted %s values into %s ciphertexts in %.2f s",
            spec.num_values, share.num_ciphertexts, share.seconds)
        return Reply(reply.client_id, arrays, metrics, reply.node_id)

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _relayed(instruction: Instruction, client: SumClient) -> tuple[dict, str]:
        """The finished aggregate the instruction relays (sealed or encrypted)."""
        if wire.RELAYED_SPEC not in instruction.config:
            raise ValueError(f"a relayed sum arrived without '{wire.RELAYED_SPEC}'")
        spec = SecureSumSpec.from_json(str(instruction.config[wire.RELAYED_SPEC]))
        context = _prefixed(instruction, wire.SUM_CONTEXT_PREFIX)
        if wire.SEALED_SUM in instruction.arrays:
            return (client.open_seal(spec, instruction.arrays[wire.SEALED_SUM], context),
                    "opened the sealed sum")
        if isinstance(client, ThresholdSumClient):
            partials = _prefixed(instruction, wire.SEALED_PARTIAL_PREFIX)
            sums = client.combine(spec, instruction.arrays[wire.ENCRYPTED_SUM],
                                  [partials[k] for k in sorted(partials, key=int)])
            return (finish_relayed(spec, sums, context),
                    f"combined {client.holder.cohort.threshold} partial decryptions of the "
                    f"sum of {sums.count} clients")
        sums = client.decrypt(spec, instruction.arrays[wire.ENCRYPTED_SUM])
        return finish_relayed(spec, sums, context), f"decrypted the sum of {sums.count} clients"

    def _answer_request(self, instruction: Instruction, reply: Reply, env: StepEnv) -> None:
        start = time.perf_counter()
        try:
            client = self.sum_client(env)
            spec = SecureSumSpec.from_json(str(instruction.config[wire.RELAYED_SPEC]))
            if isinstance(client, ThresholdSumClient):
                self._answer_threshold(instruction, reply, client, spec, start)
                return
            if wire.ENCRYPTED_SUM not in instruction.arrays:
                raise ValueError("the decryption request holds no encrypted sum")
            context = _prefixed(instruction, wire.SUM_CONTEXT_PREFIX)
            sums = client.decrypt(spec, instruction.arrays[wire.ENCRYPTED_SUM])
            reply.arrays[wire.SEALED_REPLY] = client.seal(
                spec, finish_relayed(spec, sums, context), context)
        except (ValueError, KeyError, TypeError, OSError, SecureSumError) as error:
            log(ERROR, "PaillierStep: cannot decrypt the sum for the cohort: %s", error)
            reply.metrics[wire.DECRYPT_ERROR_METRIC] = 1.0
            return
        log(INFO, "PaillierStep: decrypted and sealed the sum of %s clients for the cohort in "
            "%.2f s", sums.count, time.perf_counter() - start)

    @staticmethod
    def _answer_threshold(instruction: Instruction, reply: Reply, client: ThresholdSumClient,
                          spec: SecureSumSpec, start: float) -> None:
        shares = _prefixed(instruction, wire.SIGNED_SHARE_PREFIX)
        signatures = _prefixed(instruction, wire.SHARE_SIGNATURE_PREFIX)
        signed = {cid: (share, signatures.get(cid)) for cid, share in shares.items()}
        sealed, count = client.partial_for_cohort(spec, instruction.server_round, signed)
        reply.arrays[wire.SEALED_PARTIAL] = sealed
        log(INFO, "PaillierStep: partially decrypted the sum of %s signed shares for the "
            "cohort in %.2f s", count, time.perf_counter() - start)

    @staticmethod
    def _contribution(spec: SecureSumSpec, reply: Reply) -> tuple[dict, dict]:
        """The reply's term values and weights under the spec (noisy ones under DP)."""
        layout = spec.sum_layout
        if spec.noise is None:
            values = sum_rule(layout.algorithm).terms(layout, reply.arrays, reply.metrics)
            counts = reply.arrays.get(wire.CLASS_COUNTS)
            weights = {t.name: client_weights(layout, t, counts, reply.num_examples)
                       for t in layout.terms}
            return values, weights
        names = [t.name for t in layout.terms]
        missing = [n for n in names if n not in reply.arrays]
        if missing:
            raise ValueError(f"the sum asks for distributed DP: the reply must hold the noisy "
                             f"{missing} of a DP noise step inside this one (put the DP mod "
                             "after the Paillier mod in the mods list); found "
                             f"{sorted(reply.arrays)}")
        plain = set(reply.arrays) - set(names)
        if plain:
            raise ValueError(f"the reply holds {sorted(plain)} next to the noisy values; "
                             "refusing to encrypt a reply that is not entirely noised")
        z = float(reply.metrics.get(wire.DP_NOISE_MULTIPLIER, 0.0))
        n = int(reply.metrics.get(wire.DP_NUM_CLIENTS, 0))
        if n != int(spec.noise["num_clients"]) or \
                not np.isclose(z, float(spec.noise["noise_multiplier"])):
            raise ValueError(f"the noise share (z={z}, n={n}) does not match the spec "
                             f"(z={spec.noise['noise_multiplier']}, "
                             f"n={spec.noise['num_clients']})")
        return ({n_: np.asarray(reply.arrays[n_]) for n_ in names},
                {t.name: np.ones(t.weight_size) for t in layout.terms})


__all__ = ["PaillierSettings", "PaillierStep"]
