"""Client mod: logit consensus through a Paillier secure sum (Message API).

:class:`PaillierConsensusMod` is the client half of
:class:`~flhet_strategies.secure_consensus_strategy.SecureConsensus`. It wraps the train
handler of :func:`clients.client_app.distillation_client_app`:

1. On a ``TRAIN`` message it reads the round's :class:`.SecureConsensusSpec` from the
   train config (key ``"secure-consensus-spec"``), checks that the server asks for this
   client's key, and starts computing the Paillier randomness for its reply in a
   background thread (it runs while the client trains).
2. If the plan carries the encrypted consensus sum of the previous round (array
   ``"encrypted_consensus"``), it decrypts it with the private key, decodes the DS-FL
   consensus (:meth:`.SecureConsensusSpec.decode`) and puts the plaintext soft targets
   into the plan (``"consensus"``) before calling the app. If instead the plan carries a
   *sealed* consensus (``"sealed_consensus"``: one client decrypted it for the cohort,
   see below), it opens the seal (AES-GCM, microseconds). A consensus that does not
   decrypt or open (a foreign key, an overflow from a malformed share, an altered seal)
   is logged as an error; the client then trains without a consensus and reports metric
   ``"secure-decrypt-failed" = 1``.
3. On the app's reply it replaces ``"logits"`` and ``"class_counts"`` by the encrypted
   share (array ``"encrypted_contribution"``, ``uint8``); the label histogram is inside
   the encryption, never in clear. ``num-examples`` and the training metrics stay.

Delegated decryption: a message with ArrayRecord ``"secure-decrypt-request"`` asks this
client to decrypt the sum for the whole cohort. The mod answers it itself (the app is
not called): it decrypts, decodes and seals the consensus under a key derived from the
Paillier private key (:class:`.GroupSeal`), which the server relays but cannot open.
One decryption per round instead of one per client. The request travels as a ``TRAIN``
message because Flower applies mods only around a ClientApp's registered functions,
and every distillation client registers ``train``.

Distributed differential privacy
--------------------------------
When the inner strategy privatizes the consensus with
``PrivateConsensus(mode="distributed")``, the spec carries ``privacy`` and the noise
share must be in the reply *before* it is encrypted. The noise comes from
:class:`clients.mods.dp_predictions.DpPredictionsMod` with ``encoding="probabilities"``,
which must run **inside** this mod, i.e. after it in the mods list::

    mods=[PaillierConsensusMod(key_path), DpPredictionsMod(encoding="probabilities")]

(Flower applies the first mod outermost: the DP mod sees the app's reply first and
replaces ``"logits"`` by ``"noisy_probabilities"``; this mod then encrypts those,
:meth:`.ConsensusSumClient.encrypt_noisy`). A reply that still holds ``"logits"``, has
no noisy probabilities, or whose ``"dp"`` record was made for another noise multiplier
or cohort is refused with an error reply, so un-noised predictions never leave the
client. The decrypted consensus is post-processed as
:meth:`.PrivateConsensus.release` does (rows withheld by the ``min_margin`` filter are
dropped from the plan together with their ``consensus_indices``). Reply metric
``"secure-clipped-values"`` counts noisy values clipped to the spec's public bound.

Without a spec in the train config the mod answers with an error
(``MOD_FAILED_PRECONDITION``) instead of letting plaintext predictions leave the client;
``plaintext_phases`` names phases allowed in clear (a Flower App's baselines), and
``require_secure=False`` lets every such message through.

Keys
----
The private key comes from a key file written by a key dealer
(:func:`flhet_strategies.core.secure_sum.deal_keys`), never from the server: give the
mod ``key_path``, or set the node config ``paillier-key-path`` on each SuperNode
(``flower-supernode --node-config "paillier-key-path='/etc/flhet/paillier_private.json'"``).
Within a process the loaded key and the randomness pool are cached, so a Ray actor that
serves many simulated nodes loads the key once and keeps precomputing.

Randomness
----------
Obfuscators are Damgard-Jurik-Nielsen short-exponent ones by default
(:class:`.ShortExponentObfuscators`, several times cheaper than ``r**n``), computed by
``workers`` threads (1 by default: one per Ray actor / client).
"""

from __future__ import annotations

import time
from logging import ERROR, INFO

import numpy as np
from flwr.app import (
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.logger import log

from flhet_strategies.consensus_server import PHASE_KEY
from flhet_strategies.core.dp.private_consensus import NOISY_PROBABILITIES_ARRAY
from flhet_strategies.core.secure_consensus import (
    CLIPPED_METRIC,
    DECRYPT_FAILED_METRIC,
    DECRYPT_REPLY_KEY,
    DECRYPT_REQUEST_KEY,
    ENCRYPTED_CONSENSUS_ARRAY,
    ENCRYPTED_CONTRIBUTION_ARRAY,
    SEALED_CONSENSUS_ARRAY,
    SPEC_CONFIG_KEY,
    SecureConsensusSpec,
)
from flhet_strategies.core.secure_consensus_client import ConsensusSumClient
from flhet_strategies.core.secure_sum import SecureSumError
from flhet_strategies.core.secure_sum.client_cache import clear_client_caches
from flhet_strategies.message_api import CONFIG_KEY, METRICS_KEY, PLAN_KEY, REPLY_KEY
from flhet_strategies.records import arrays_to_record, record_to_arrays

from .dp_predictions import DP_RECORD_KEY
from .error_reply import error_reply as _error_reply
from .paillier_base import KEY_PATH_NODE_CONFIG, PaillierClientSettings


class PaillierConsensusMod(PaillierClientSettings):
    """Decrypt the consensus the server relays, and encrypt this client's share.

    Parameters
    ----------
    key_path : str or Path, optional
        The private key file (from a key dealer). If omitted, the node config entry
        ``node_config_key`` names it (a SuperNode's own ``--node-config``), else the run
        config entry of the same name (one shared path, e.g. in a ``flwr run``
        simulation on one machine).
    key_holder : KeyHolder, optional
        The key itself instead of a file (tests, or an app that loads the key itself).
    node_config_key : str (default: "paillier-key-path")
        Node-config key of the key file path.
    workers : int (default: 1)
        Threads computing Paillier randomness. One per client suits simulation, where
        every Ray actor already has its CPU; raise it on a multi-core client machine.
    decrypt_workers : int, optional
        Threads decrypting a sum (default: every core this process may use). Decrypting
        for the cohort happens while the other clients wait, so idle cores are free.
    short_exponent : bool (default: True)
        Damgard-Jurik-Nielsen short-exponent randomness (see
        :mod:`flhet_strategies.core.secure_sum.short_exponent`); False uses ``r**n``.
    require_secure : bool (default: True)
        Refuse (error reply) train messages that do not ask for a secure sum, so that
        plaintext predictions never leave the client by mistake.
    plaintext_phases : Collection[str] (default: ())
        Phases (train config ``"flhet-phase"``) allowed to run without encryption even
        when ``require_secure`` is set, e.g. ``("local_only", "plaintext")`` for the
        baselines a Flower App runs in the same federation.

    Examples
    --------
    ::

        files = deal_keys("keys/")    # once, by the key dealer
        app = distillation_client_app(factory, mods=[PaillierConsensusMod(files.private_path)])
    """

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        """Decrypt the plan's consensus, run the app, encrypt the reply's predictions.

        Parameters
        ----------
        msg : Message
            The message from the ServerApp.
        context : Context
            The node's context.
        call_next : ClientAppCallable
            The next mod or the ClientApp.

        Returns
        -------
        Message
            The reply with the encrypted share, the app's own error reply, or an error
            reply (``MOD_FAILED_PRECONDITION``) saying what is wrong.
        """
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, context)
        if DECRYPT_REQUEST_KEY in msg.content.array_records:
            return self._answer_decrypt_request(msg, context)
        config = msg.content.config_records.get(CONFIG_KEY, ConfigRecord())
        if SPEC_CONFIG_KEY not in config:
            phase = str(config.get(PHASE_KEY, "main"))
            if self.allows_plaintext(phase):
                return call_next(msg, context)
            return _error_reply(
                msg, "PaillierConsensusMod: the server did not ask for a secure sum (no "
                f"'{SPEC_CONFIG_KEY}' in the train config); refusing to send plaintext "
                f"predictions (phase {phase!r}). Wrap the server strategy in "
                "SecureConsensus, or list the phase in the mod's plaintext_phases.")
        try:
            spec = SecureConsensusSpec.from_json(str(config[SPEC_CONFIG_KEY]))
            sums = self.sum_client(context)
            sums.prepare(spec)  # randomness computes while the consensus decrypts and the app trains
        except (ValueError, TypeError, OSError, SecureSumError) as error:
            return _error_reply(msg, f"PaillierConsensusMod: {error}")
        failure = self._decrypt_plan(msg, sums, spec)
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        try:
            return self._encrypt_reply(reply, spec, sums, failure)
        except (ValueError, SecureSumError) as error:
            return _error_reply(msg, f"PaillierConsensusMod: {error}")

    def sum_client(self, context: Context) -> ConsensusSumClient:
        """This node's :class:`.ConsensusSumClient` (key from ``key_path``/``key_holder``/config;
        key and randomness pool are cached per process)."""
        return ConsensusSumClient(self.key_holder_for(context), workers=self.workers,
                                  decrypt_workers=self.decrypt_workers,
                                  short_exponent=self.short_exponent)

    # ------------------------------------------------------------------ the two halves

    def _answer_decrypt_request(self, msg: Message, context: Context) -> Message:
        """Decrypt the sum for the whole cohort and seal it under the group key."""
        config = msg.content.config_records.get(CONFIG_KEY, ConfigRecord())
        start = time.perf_counter()
        try:
            if SPEC_CONFIG_KEY not in config:
                raise ValueError(f"the decryption request has no '{SPEC_CONFIG_KEY}'")
            spec = SecureConsensusSpec.from_json(str(config[SPEC_CONFIG_KEY]))
            sums = self.sum_client(context)
            sums.check(spec)
            arrays = record_to_arrays(msg.content.array_records[DECRYPT_REQUEST_KEY])
            if ENCRYPTED_CONSENSUS_ARRAY not in arrays or "consensus_indices" not in arrays:
                raise ValueError("the decryption request lacks the encrypted sum or its indices")
            indices = np.asarray(arrays["consensus_indices"], dtype=np.int64)
            sealed, num_summands = sums.decrypt_and_seal(spec, arrays[ENCRYPTED_CONSENSUS_ARRAY],
                                                         indices)
        except (ValueError, TypeError, OSError, SecureSumError) as error:
            return _error_reply(msg, f"PaillierConsensusMod: cannot decrypt for the cohort: "
                                f"{error}")
        seconds = time.perf_counter() - start
        log(INFO, "PaillierConsensusMod: decrypted and sealed the consensus of %s clients for "
            "the cohort in %.2f s", num_summands, seconds)
        return Message(RecordDict({
            DECRYPT_REPLY_KEY: arrays_to_record({SEALED_CONSENSUS_ARRAY: sealed}),
            METRICS_KEY: MetricRecord({"num-summands": num_summands, "decrypt-seconds": seconds}),
        }), reply_to=msg)

    @staticmethod
    def _decrypt_plan(msg: Message, sums: ConsensusSumClient,
                      spec: SecureConsensusSpec) -> str | None:
        record = msg.content.array_records.get(PLAN_KEY)
        if record is None or not {ENCRYPTED_CONSENSUS_ARRAY, SEALED_CONSENSUS_ARRAY} & set(record):
            return None
        arrays = record_to_arrays(record)
        encrypted = arrays.pop(ENCRYPTED_CONSENSUS_ARRAY, None)
        sealed = arrays.pop(SEALED_CONSENSUS_ARRAY, None)
        indices = np.asarray(arrays.get("consensus_indices", np.zeros(0, np.int64)),
                             dtype=np.int64)
        start = time.perf_counter()
        failure = None
        try:
            arrays["consensus_indices"], arrays["consensus"], how = sums.relayed_consensus(
                spec, encrypted, sealed, indices)
            log(INFO, "PaillierConsensusMod: %s in %.2f s", how, time.perf_counter() - start)
        except (ValueError, SecureSumError) as error:
            failure = str(error)
            log(ERROR, "PaillierConsensusMod: the encrypted consensus does not decrypt (%s); "
                "training without a consensus this round", failure)
            arrays["consensus_indices"] = np.zeros(0, dtype=np.int64)
            arrays["consensus"] = np.zeros((0, spec.num_classes), dtype=np.float32)
        msg.content[PLAN_KEY] = arrays_to_record(arrays)
        return failure

    @staticmethod
    def _encrypt_reply(reply: Message, spec: SecureConsensusSpec, sums: ConsensusSumClient,
                       failure: str | None) -> Message:
        records = reply.content.array_records
        expected = NOISY_PROBABILITIES_ARRAY if spec.privacy is not None else "logits"
        if REPLY_KEY not in records or expected not in records[REPLY_KEY]:
            hint = (" (distributed DP: put DpPredictionsMod(encoding='probabilities') after "
                    "PaillierConsensusMod in the mods list)" if spec.privacy is not None else
                    " (flhet distillation protocol)")
            found = sorted(records[REPLY_KEY]) if REPLY_KEY in records else sorted(records)
            raise ValueError(
                f"expected array '{expected}' in the reply's ArrayRecord '{REPLY_KEY}'"
                f"{hint}; found {found}")
        arrays = record_to_arrays(records[REPLY_KEY])
        metrics = dict(reply.content.metric_records.get(METRICS_KEY, MetricRecord()))
        if spec.privacy is not None:
            share = sums.encrypt_noisy(spec, _noisy_predictions(reply, arrays, spec))
            arrays.pop("class_counts", None)
            metrics[CLIPPED_METRIC] = float(share.num_clipped)
        else:
            logits = arrays.pop("logits")
            counts = arrays.pop("class_counts", None)
            share = sums.encrypt(spec, logits, counts, metrics.get("num-examples", 0))
        arrays[ENCRYPTED_CONTRIBUTION_ARRAY] = share.payload
        reply.content[REPLY_KEY] = arrays_to_record(arrays)
        if failure is not None:
            metrics[DECRYPT_FAILED_METRIC] = 1.0
        if failure is not None or spec.privacy is not None:
            reply.content[METRICS_KEY] = MetricRecord(metrics)
        log(INFO, "PaillierConsensusMod: encrypted %s values into %s ciphertexts in %.2f s",
            spec.num_values, share.num_ciphertexts, share.seconds)
        return reply


def _noisy_predictions(reply: Message, arrays: dict, spec: SecureConsensusSpec) -> np.ndarray:
    """The reply's noisy probabilities, after checking they carry the spec's noise share."""
    if "logits" in arrays:
        raise ValueError("the reply holds plaintext 'logits' next to the noisy probabilities; "
                         "refusing to encrypt a reply that is not entirely noised")
    record = reply.content.config_records.get(DP_RECORD_KEY)
    if record is None:
        raise ValueError(f"the reply has no '{DP_RECORD_KEY}' record of DpPredictionsMod")
    z = float(record.get("noise-multiplier", 0.0))
    n = int(record.get("num-clients", 0))
    if record.get("encoding") != "probabilities" or n != spec.max_summands or \
            not np.isclose(z, spec.privacy.noise_multiplier):
        raise ValueError(
            f"the noise share (encoding {record.get('encoding')!r}, z={z}, n={n}) does not "
            f"match the spec (probabilities, z={spec.privacy.noise_multiplier}, "
            f"n={spec.max_summands})")
    return np.asarray(arrays.pop(NOISY_PROBABILITIES_ARRAY))


def clear_caches() -> None:
    """Forget cached keys and stop the randomness threads of this process."""
    clear_client_caches()


__all__ = ["KEY_PATH_NODE_CONFIG", "PaillierConsensusMod", "clear_caches"]
