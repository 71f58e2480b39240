"""FedAvg through a Paillier secure sum, Message API: a wrapper around Flower's FedAvg.

:class:`SecureFedAvg` composes around ``flwr.serverapp.strategy.FedAvg`` the way
Flower's ``DifferentialPrivacyServerSideFixedClipping(FedAvg(...))`` does. Its clients
run :class:`clients.mods.paillier_fedavg.PaillierFedAvgMod`. Each round:

1. ``configure_train``: FedAvg samples the nodes and builds its messages around the
   arrays the server holds: the (public) initial model in round 1, afterwards the
   *encrypted* weighted sum of the previous round (ArrayRecord with the single array
   ``"secure-fedavg-sum"``). The wrapper adds the round's
   :class:`~flhet_strategies.core.secure_sum.model_updates.SecureModelSpec` to the
   train config (``"secure-fedavg-spec"``): model structure, clip bound, bits, weighting
   and the key fingerprint.
2. The clients' mod decrypts the sum into the global model (weighted sum / total
   weight), the ClientApp trains on it, and the mod replaces the reply's arrays by one
   encrypted share (``"secure-fedavg-share"``): the client's trained weights, clipped to
   ``[-clip_bound, clip_bound]``, quantized to ``bits``, multiplied by its integer
   weight (``num-examples``, or 1), with the weight appended.
3. ``aggregate_train``: every share must be under the announced key and layout; shares
   that are missing, malformed, under another key, pre-summed, or that come with
   plaintext arrays are rejected with a log line. The others are multiplied together
   (:class:`~flhet_strategies.core.secure_sum.CiphertextAggregator`, public key only).
   Clients that dropped out are simply not in the sum, whose header counts how many
   are. The metrics are FedAvg's (``train_metrics_aggr_fn``).

Who decrypts
------------
The clients do, when they receive the sum in the next round's (or the evaluation's)
messages, like ``decryption="every_client"`` of
:class:`~flhet_strategies.secure_consensus_strategy.SecureConsensus`. The server never
holds a private key and never holds the plaintext global model after round 1: the
``arrays`` of :meth:`start`'s result are the *encrypted* final model, which a key holder
turns into plaintext with :func:`clients.mods.paillier_fedavg.decrypt_model_record`. A
centralized ``evaluate_fn`` therefore receives the encrypted sum (the initial model at
round 0); evaluate on the clients instead.

Why weights, not updates: the decrypted sum is then the global model itself, so any key
holder decrypts it without history, including a client that was not sampled in the
previous round. A sum of updates would need the previous global model, which an
unsampled client lacks and the server cannot hold in plaintext. The price is that
``clip_bound`` bounds the weights (a few units for most models) rather than the
updates; see the quantization bound in
:mod:`flhet_strategies.core.secure_sum.model_updates`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result, Strategy

from .core.secure_sum.model_updates import (
    ARRAYS_KEY_CONFIG,
    ENCRYPTED_SHARE_ARRAY,
    ENCRYPTED_SUM_ARRAY,
    SPEC_CONFIG_KEY,
    WEIGHT_KEY_CONFIG,
    SecureModelSpec,
)
from .message_api import split_failed_replies
from .records import record_nbytes, record_to_arrays
from .secure_fedavg_base import SecureFedAvgRounds


class SecureFedAvg(SecureFedAvgRounds, Strategy):
    """FedAvg where the server only multiplies Paillier ciphertexts.

    Parameters
    ----------
    strategy : flwr.serverapp.strategy.FedAvg
        The inner strategy: sampling, messages, metric aggregation. Its aggregation must
        be FedAvg's weighted mean (FedAvg or FedProx; server-side optimizers such as
        FedAdam need the plaintext model and are refused).
    public_key : phe.PaillierPublicKey
        The key dealer's public key (at least 2048 bits). A private key or a
        ``KeyHolder`` is refused.
    clip_bound : float
        ``B``: clients clip every weight to ``[-B, B]`` (and report how many they clipped,
        metric ``"secure-clipped-values"``).
    bits : int (default: 16)
        Quantization bits per value: the decoded mean is within ``B / (2**bits - 1)``
        of FedAvg of the clipped models (plus float rounding).
    weighting : str (default: "sample_count")
        ``"sample_count"``: clients weight by their ``weighted_by_key`` metric (FedAvg's
        ``num-examples``), inside the encryption; ``"uniform"``: plain mean.
    max_examples : int, optional
        Public bound on any client's weight; required with ``"sample_count"``. Weights
        are exact when it is below ``2**vote_bits``.
    vote_bits : int (default: 16)
        Most bits of an integer weight.

    Examples
    --------
    ::

        public_key = load_public_key("keys/paillier_public.bin")
        strategy = SecureFedAvg(FedAvg(fraction_train=1.0), public_key,
                                clip_bound=4.0, bits=16, max_examples=10_000)
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()))
        # result.arrays is encrypted; a key holder: decrypt_model_record(result.arrays, ...)
    """

    inner_type = FedAvg
    aggregate_method = "aggregate_train"
    api = "flwr.serverapp.strategy"
    other_api = "flwr.server.strategy"
    other_face = "SecureFedAvgCompat"

    @property
    def encrypted_model(self) -> np.ndarray | None:
        """The latest encrypted sum (``uint8``), or None before the first aggregation."""
        return self._encrypted

    def summary(self) -> None:
        """Log the secure-sum settings, then the inner strategy's."""
        self._log_settings("\t├──> Paillier secure FedAvg")
        self.strategy.summary()

    # pylint: disable=too-many-arguments,too-many-positional-arguments
    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Run ``num_rounds`` rounds (see ``flwr.serverapp.strategy.Strategy.start``).

        ``initial_arrays`` (public) fixes the model's names, shapes and dtypes. The
        result's ``arrays`` hold the final *encrypted* model; ``evaluate_fn`` receives
        the encrypted sum after round 0.

        Raises
        ------
        ValueError
            If ``initial_arrays`` is empty or not floating.
        """
        arrays = record_to_arrays(initial_arrays)
        if not arrays:
            raise ValueError("initial_arrays is empty: the secure sum needs the model structure")
        self.server.set_structure(arrays)
        return super().start(grid, initial_arrays, num_rounds, timeout, train_config,
                             evaluate_config, evaluate_fn)

    # ------------------------------------------------------------------ training

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """FedAvg's messages around the held arrays, plus the round's spec."""
        if not self.server.has_structure:
            self.server.set_structure(record_to_arrays(arrays))
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        if not messages:
            return messages
        initial = None if ENCRYPTED_SUM_ARRAY in arrays else record_to_arrays(arrays)
        spec = self._open_round(server_round, len(messages), record_nbytes(arrays), initial)
        self._attach_spec(messages, spec)
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check every encrypted share and multiply the valid ones into the encrypted sum.

        Returns
        -------
        tuple[ArrayRecord | None, MetricRecord | None]
            The encrypted sum (array ``"secure-fedavg-sum"``) and FedAvg's aggregated
            metrics; ``(None, ...)`` when no share was accepted (the held arrays stay).
        """
        start = time.perf_counter()
        replies = list(replies)
        spec = self._round_spec(server_round, len(replies))
        key = self.strategy.arrayrecord_key
        weight_key = self.strategy.weighted_by_key
        successful, failures = split_failed_replies(server_round, replies)
        bytes_up = 0
        shares: list[tuple[str, object]] = []
        contents: dict[str, object] = {}
        rejected: dict[str, str] = {}
        for msg in successful:
            node = str(msg.metadata.src_node_id)
            records = msg.content.array_records
            bytes_up += int(sum(record_nbytes(r) for r in records.values()))
            reason = _share_problem(msg, key, weight_key)
            if reason is not None:
                rejected[node] = reason
                continue
            shares.append((node, records[key][ENCRYPTED_SHARE_ARRAY].numpy()))
            contents[node] = msg.content
        shares.sort(key=lambda share: int(share[0]))
        outcome = self._sum_shares(server_round, spec, shares, rejected, "node")
        metrics = None
        if outcome.accepted:
            try:
                metrics = self.strategy.train_metrics_aggr_fn(
                    [contents[node] for node in outcome.accepted], weight_key)
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as error:
                log(WARNING, "round %s: metrics not aggregated: %s", server_round, error)
        encrypted_sum = self._close_round(server_round, spec, outcome, rejected,
                                          bytes_up=bytes_up, num_failures=failures,
                                          started=start)
        if encrypted_sum is None:
            return None, metrics
        self._encrypted = encrypted_sum
        log(INFO, "round %s: encrypted model sum of %s clients (%.1f KiB)", server_round,
            len(outcome.accepted), outcome.encrypted_sum.nbytes / 1024)
        return ArrayRecord({ENCRYPTED_SUM_ARRAY: Array(outcome.encrypted_sum)}), metrics

    # ------------------------------------------------------------------ evaluation

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """FedAvg's evaluation messages (around the encrypted sum), plus the spec."""
        messages = list(self.strategy.configure_evaluate(server_round, arrays, config, grid))
        if messages:
            self._attach_spec(messages, self.server.spec(len(messages)))
            self.server.record(server_round,
                               bytes_down_evaluate=record_nbytes(arrays) * len(messages))
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """FedAvg's evaluation metrics (the clients evaluated the decrypted model)."""
        return self.strategy.aggregate_evaluate(server_round, replies)

    # ------------------------------------------------------------------ helpers

    def _attach_spec(self, messages: list[Message], spec: SecureModelSpec) -> None:
        spec_json = spec.to_json()
        for msg in messages:
            config = msg.content.config_records[self.strategy.configrecord_key]
            config[SPEC_CONFIG_KEY] = spec_json
            config[ARRAYS_KEY_CONFIG] = self.strategy.arrayrecord_key
            config[WEIGHT_KEY_CONFIG] = self.strategy.weighted_by_key


def _share_problem(msg: Message, key: str, weight_key: str) -> str | None:
    """Why a reply's share cannot be summed, or None."""
    records = msg.content.array_records
    if key not in records:
        return f"the reply has no ArrayRecord '{key}'; found {sorted(records)}"
    names = set(records[key].keys())
    if names != {ENCRYPTED_SHARE_ARRAY} or len(records) != 1:
        return ("the reply carries plaintext arrays (discarded, never aggregated) or more "
                f"than the share: {sorted(names)} in {sorted(records)}; the client does not "
                "run PaillierFedAvgMod")
    metric_records = list(msg.content.metric_records.values())
    if len(metric_records) != 1 or weight_key not in metric_records[0]:
        return f"the reply needs one MetricRecord holding '{weight_key}'"
    return None


__all__ = ["SecureFedAvg"]
