"""Compat-API client side of a secure logit consensus: a ``NumPyClient`` wrapper.

:class:`SecureConsensusNumPyClient` is the client half of
:class:`~flhet_strategies.secure_consensus_compat.SecureConsensusCompat`, as
:class:`clients.mods.paillier_consensus.PaillierConsensusMod` is of the Message-API
:class:`~flhet_strategies.secure_consensus_strategy.SecureConsensus`. It wraps a
:class:`clients.numpy_client.DistillationNumPyClient` (or any ``NumPyClient`` that speaks
flhet's compat plan: ``fit`` takes ``[proxy_indices, consensus_indices, consensus]`` and
returns ``[logits, class_counts]``):

- ``fit``: reads the round's spec from the config, checks that the server asks for this
  client's key and starts computing Paillier randomness in the background; decrypts
  the relayed sum (or opens the consensus another client sealed for the cohort) into
  the plan's ``consensus``; calls the wrapped client; and returns one ``uint8`` ndarray,
  the encrypted share of its predictions and votes. A consensus that does not decrypt
  is logged; the client then trains without one and reports
  ``"secure-decrypt-failed" = 1``.
- ``evaluate``: when asked (``"secure-decrypt-request"`` in the config), decrypts the
  sum for the cohort and returns the seal as ``bytes`` in the metric
  ``"sealed_consensus"``; then evaluates as the wrapped client does.

The Paillier steps are those of :class:`~flhet_strategies.core.secure_consensus_client.ConsensusSumClient`
(shared spec, codec, seal and per-process key/randomness caches). Without a spec in the
fit config the wrapper raises instead of letting plaintext predictions leave the client
(``require_secure``; ``plaintext_phases`` lists phases allowed in clear).
"""

from __future__ import annotations

import time
from logging import ERROR, INFO

import numpy as np
from flwr.common.logger import log

from flhet_strategies.core.distillation import PLAN_ARRAY_KEYS
from flhet_strategies.core.secure_consensus import (
    DECRYPT_FAILED_METRIC,
    DECRYPT_REQUEST_KEY,
    ENCRYPTED_CONSENSUS_ARRAY,
    SEALED_CONSENSUS_ARRAY,
    SPEC_CONFIG_KEY,
    SecureConsensusSpec,
)
from flhet_strategies.core.secure_consensus_client import ConsensusSumClient
from flhet_strategies.core.secure_sum import SecureSumError
from flhet_strategies.secure_consensus_compat import DECRYPT_ERROR_METRIC, SECURE_PLAN_ARRAY_KEYS

from .paillier_numpy_base import PaillierNumPyBase


class SecureConsensusNumPyClient(PaillierNumPyBase):
    """Wrap a distillation ``NumPyClient`` so that its predictions leave it only encrypted.

    Parameters
    ----------
    client : NumPyClient
        The wrapped client, e.g. a :class:`~clients.numpy_client.DistillationNumPyClient`.
    key_path : str or Path, optional
        The private key file (from a key dealer). If omitted, the node config (then the
        run config) entry ``node_config_key`` of ``context`` names it.
    key_holder : KeyHolder, optional
        The key itself instead of a file.
    context : flwr.app.Context, optional
        The node's context, to find the key file in its config.
    node_config_key : str (default: "paillier-key-path")
        Config key of the key file path.
    workers : int (default: 1)
        Threads computing Paillier randomness while the wrapped client trains.
    decrypt_workers : int, optional
        Threads decrypting a sum (default: every core this process may use).
    short_exponent : bool (default: True)
        Damgard-Jurik-Nielsen short-exponent randomness; False uses ``r**n``.
    require_secure : bool (default: True)
        Raise in ``fit`` when the server did not ask for a secure sum.
    plaintext_phases : Collection[str] (default: ())
        Phases (fit config ``"flhet-phase"``) allowed in clear anyway.

    Examples
    --------
    >>> def client_fn(context):                                         # doctest: +SKIP
    ...     inner = DistillationNumPyClient(make_client(context), client_id=0, context=context)
    ...     return SecureConsensusNumPyClient(inner, context=context).to_client()
    """

    sum_client_type = ConsensusSumClient
    plaintext_what = "predictions"
    server_wrapper = "SecureConsensusCompat"

    # ------------------------------------------------------------------ fit

    def fit(self, parameters, config):
        """Decrypt the consensus, train the wrapped client, return its encrypted share.

        Returns
        -------
        tuple
            ``([share], num_examples, metrics)``: one ``uint8`` ndarray, the wrapped
            client's ``num_examples`` and metrics (plus ``"secure-decrypt-failed"`` when
            the consensus did not decrypt).

        Raises
        ------
        ValueError
            If the server did not ask for a secure sum (and the phase is not allowed in
            clear), asks for another key, the plan has the wrong arrays, or the wrapped
            client's reply does not fit the spec.
        """
        if SPEC_CONFIG_KEY not in config:
            self.check_plaintext_allowed(config, SPEC_CONFIG_KEY)
            return self.client.fit(parameters, config)
        spec = SecureConsensusSpec.from_json(str(config[SPEC_CONFIG_KEY]))
        if len(parameters) != len(SECURE_PLAN_ARRAY_KEYS):
            raise ValueError(f"expected the {len(SECURE_PLAN_ARRAY_KEYS)} arrays "
                             f"{SECURE_PLAN_ARRAY_KEYS} of a secure plan, got {len(parameters)}")
        sums = self.sum_client()
        sums.prepare(spec)            # randomness computes while the consensus decrypts
        plan, failure = self._plan(spec, dict(zip(SECURE_PLAN_ARRAY_KEYS, parameters)))
        reply, num_examples, metrics = self.client.fit([plan[k] for k in PLAN_ARRAY_KEYS],
                                                       config)
        if len(reply) not in (1, 2):
            raise ValueError("the wrapped client must return [logits, class_counts], got "
                             f"{len(reply)} arrays")
        share = sums.encrypt(spec, reply[0], reply[1] if len(reply) == 2 else None,
                             num_examples)
        log(INFO, "SecureConsensusNumPyClient: encrypted %s values into %s ciphertexts in "
            "%.2f s", spec.num_values, share.num_ciphertexts, share.seconds)
        metrics = dict(metrics)
        if failure is not None:
            metrics[DECRYPT_FAILED_METRIC] = 1.0
        return [share.payload], num_examples, metrics

    def _plan(self, spec: SecureConsensusSpec, arrays: dict[str, np.ndarray]
              ) -> tuple[dict[str, np.ndarray], str | None]:
        """The plain plan, with the relayed consensus decrypted (or opened) into it."""
        plan = {key: arrays[key] for key in PLAN_ARRAY_KEYS}
        encrypted = np.asarray(arrays[ENCRYPTED_CONSENSUS_ARRAY])
        sealed = np.asarray(arrays[SEALED_CONSENSUS_ARRAY])
        if encrypted.size == 0 and sealed.size == 0:
            return plan, None
        indices = np.asarray(plan["consensus_indices"], dtype=np.int64)
        start = time.perf_counter()
        try:
            sums = self.sum_client()
            plan["consensus_indices"], plan["consensus"], how = sums.relayed_consensus(
                spec, encrypted, sealed if sealed.size else None, indices)
        except (ValueError, SecureSumError) as error:
            log(ERROR, "SecureConsensusNumPyClient: the encrypted consensus does not decrypt "
                "(%s); training without a consensus this round", error)
            plan["consensus_indices"] = np.zeros(0, dtype=np.int64)
            plan["consensus"] = np.zeros((0, spec.num_classes), dtype=np.float32)
            return plan, str(error)
        log(INFO, "SecureConsensusNumPyClient: %s in %.2f s", how, time.perf_counter() - start)
        return plan, None

    # ------------------------------------------------------------------ evaluate

    def evaluate(self, parameters, config):
        """Evaluate as the wrapped client; first decrypt and seal the sum if asked to.

        When the config holds ``"secure-decrypt-request"``, ``parameters`` are
        ``[encrypted_sum, consensus_indices]``; the metrics then also hold
        ``"sealed_consensus"`` (``bytes``), or ``"secure-decrypt-error"`` (the reason).
        """
        if not config.get(DECRYPT_REQUEST_KEY, False):
            return self.client.evaluate(parameters, config)
        answer = self._decrypt_for_cohort(parameters, config)
        loss, num_examples, metrics = self.client.evaluate([], config)
        return loss, num_examples, {**metrics, **answer}

    def _decrypt_for_cohort(self, parameters, config) -> dict:
        start = time.perf_counter()
        try:
            if SPEC_CONFIG_KEY not in config:
                raise ValueError(f"the decryption request has no '{SPEC_CONFIG_KEY}'")
            if len(parameters) != 2:
                raise ValueError("the decryption request must hold [encrypted_sum, "
                                 f"consensus_indices], got {len(parameters)} arrays")
            spec = SecureConsensusSpec.from_json(str(config[SPEC_CONFIG_KEY]))
            indices = np.asarray(parameters[1], dtype=np.int64)
            sealed, num_summands = self.sum_client().decrypt_and_seal(spec, parameters[0], indices)
        except (ValueError, TypeError, OSError, SecureSumError) as error:
            log(ERROR, "SecureConsensusNumPyClient: cannot decrypt the sum for the cohort: %s",
                error)
            return {DECRYPT_ERROR_METRIC: f"cannot decrypt for the cohort: {error}"}
        log(INFO, "SecureConsensusNumPyClient: decrypted and sealed the consensus of %s "
            "clients for the cohort in %.2f s", num_summands, time.perf_counter() - start)
        return {SEALED_CONSENSUS_ARRAY: sealed.tobytes()}


__all__ = ["SecureConsensusNumPyClient"]
