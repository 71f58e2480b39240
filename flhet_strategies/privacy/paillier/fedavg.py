"""FedAvg through a Paillier secure sum: wrappers around Flower's own FedAvg (both APIs).

:class:`SecureFedAvg` (Message API) and :class:`SecureFedAvgCompat` (compat) wrap
Flower's FedAvg so that the server only multiplies ciphertexts of the clients' weights
(:class:`~.model_updates.SecureModelSpec`); the clients run
:class:`clients.fedavg.paillier.PaillierFedAvgMod` / ``PaillierNumPyClient`` and decrypt
the relayed sum themselves. See docs/privacy_fedavg.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.logger import log
from flwr.server import strategy as compat
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result, Strategy
from phe import PaillierPublicKey

from ... import wire
from ...faces.message import split_failed_replies
from ...faces.records import record_nbytes, record_to_arrays
from .model_server import ModelSumServer, RoundOutcome
from .model_updates import SecureModelSpec


class SecureFedAvgRounds:
    """Server state and round bookkeeping of a secure FedAvg (a mixin).

    The faces inherit ``__init__`` (parameters documented on each face) and set the
    class attributes below; every round they call :meth:`_open_round` when configuring,
    and :meth:`_round_spec`, :meth:`_sum_shares` and :meth:`_close_round` when
    aggregating.

    Class attributes: ``inner_type`` (the FedAvg class of the face's API),
    ``aggregate_method`` (its aggregation method, which the inner strategy must not
    override), ``api`` (the module path of the face's strategies), ``other_api`` and
    ``other_face`` (the other face, named when a strategy of the wrong API is given).

    Attributes
    ----------
    strategy : object
        The inner FedAvg (of the face's API).
    server : ModelSumServer
        The public-key-only secure-sum server.
    """

    inner_type: type = object
    aggregate_method = ""
    api = ""
    other_api = ""
    other_face = ""

    # pylint: disable=too-many-arguments
    def __init__(
        self,
        strategy: object,
        public_key: PaillierPublicKey,
        *,
        clip_bound: float,
        bits: int = 16,
        weighting: str = "sample_count",
        max_examples: int | None = None,
        vote_bits: int = 16,
    ) -> None:
        super().__init__()
        face = type(self).__name__
        if not isinstance(strategy, self.inner_type):
            raise TypeError(
                f"{face} wraps a {self.api}.FedAvg, got {type(strategy).__name__}; for "
                f"{self.other_api}.FedAvg use {self.other_face}")
        if getattr(type(strategy), self.aggregate_method) is not getattr(
                self.inner_type, self.aggregate_method):
            raise TypeError(
                f"{type(strategy).__name__} overrides FedAvg's aggregation; a secure sum "
                "computes FedAvg's weighted mean only")
        self.strategy = strategy
        self.server = ModelSumServer(public_key, clip_bound=clip_bound, bits=bits,
                                     weighting=weighting, max_examples=max_examples,
                                     vote_bits=vote_bits)
        self._specs: dict[int, SecureModelSpec] = {}
        self._encrypted: object | None = None   # the held encrypted model, in the face's type

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.strategy!r}, key={self.server.fingerprint})"

    @property
    def public_key(self) -> PaillierPublicKey:
        """The public key shares are encrypted under."""
        return self.server.public_key

    @property
    def history(self) -> list[dict]:
        """Per round: ``bytes_down`` / ``bytes_down_evaluate`` / ``bytes_up``, ``accepted`` and
        ``rejected`` client ids, ``num_failures``, ``num_ciphertexts``, ``seconds_aggregate``."""
        return self.server.history

    def spec(self, max_summands: int = 1) -> SecureModelSpec:
        """The spec of a round of ``max_summands`` clients (once the initial model is known)."""
        return self.server.spec(max_summands)

    def _log_settings(self, title: str) -> None:
        """Log ``title`` and the secure-sum settings (key, clip bound, bits, weighting)."""
        settings = self.server.settings
        log(INFO, "%s: key %s, clip bound %s, %s-bit values, %s weights", title,
            self.server.fingerprint, settings["clip_bound"], settings["bits"],
            settings["weighting"])

    def _open_round(self, server_round: int, cohort: int, bytes_each: int,
                    initial_model: Mapping[str, np.ndarray] | Sequence[np.ndarray] | None
                    ) -> SecureModelSpec:
        """The spec of a train round of ``cohort`` clients, checked and remembered.

        ``initial_model`` is the plaintext model the round sends (round 1), checked
        against the spec, or None when the round sends the encrypted sum.
        """
        spec = self.server.spec(cohort)
        if initial_model is not None:
            spec.check_arrays(initial_model)   # the public initial model
        self._specs[server_round] = spec
        self.server.record(server_round, bytes_down=bytes_each * cohort, cohort=cohort)
        return spec

    def _round_spec(self, server_round: int, num_replies: int) -> SecureModelSpec:
        """The spec :meth:`_open_round` sent for ``server_round`` (rebuilt if unknown)."""
        return self._specs.pop(server_round, None) or self.server.spec(max(1, num_replies))

    def _sum_shares(self, server_round: int, spec: SecureModelSpec,
                    shares: list[tuple[str, object]], rejected: dict[str, str],
                    who: str) -> RoundOutcome:
        """Multiply the valid shares; log every rejection (``rejected`` gains the core's).

        ``shares`` must be in a fixed order (sorted by client id) so that the sum does
        not depend on the order replies arrived in; ``who`` names a client in the log
        (``"node"`` or ``"client"``).
        """
        outcome = self.server.aggregate(spec, shares)
        rejected.update(outcome.rejected)
        for client_id, reason in sorted(rejected.items()):
            log(WARNING, "round %s: share of %s %s rejected: %s", server_round, who, client_id,
                reason)
        return outcome

    # pylint: disable=too-many-arguments
    def _close_round(self, server_round: int, spec: SecureModelSpec, outcome: RoundOutcome,
                     rejected: dict[str, str], *, bytes_up: int, num_failures: int,
                     started: float) -> np.ndarray | None:
        """Record the round in the history; the encrypted sum, or None (logged) if empty."""
        self.server.record(
            server_round, bytes_up=bytes_up, accepted=outcome.accepted, rejected=rejected,
            num_failures=num_failures,
            num_ciphertexts=spec.layout(self.public_key.n.bit_length() - 1).num_ciphertexts,
            seconds_aggregate=time.perf_counter() - started)
        if outcome.encrypted_sum is None:
            log(WARNING, "round %s: no share accepted; the global model stays", server_round)
        return outcome.encrypted_sum


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
        initial = None if wire.FEDAVG_SUM in arrays else record_to_arrays(arrays)
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
            shares.append((node, records[key][wire.FEDAVG_SHARE].numpy()))
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
        return ArrayRecord({wire.FEDAVG_SUM: Array(outcome.encrypted_sum)}), metrics

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
            config[wire.FEDAVG_SPEC] = spec_json
            config[wire.FEDAVG_ARRAYS_KEY] = self.strategy.arrayrecord_key
            config[wire.FEDAVG_WEIGHT_KEY] = self.strategy.weighted_by_key


def _share_problem(msg: Message, key: str, weight_key: str) -> str | None:
    """Why a reply's share cannot be summed, or None."""
    records = msg.content.array_records
    if key not in records:
        return f"the reply has no ArrayRecord '{key}'; found {sorted(records)}"
    names = set(records[key].keys())
    if names != {wire.FEDAVG_SHARE} or len(records) != 1:
        return ("the reply carries plaintext arrays (discarded, never aggregated) or more "
                f"than the share: {sorted(names)} in {sorted(records)}; the client does not "
                "run PaillierFedAvgMod")
    metric_records = list(msg.content.metric_records.values())
    if len(metric_records) != 1 or weight_key not in metric_records[0]:
        return f"the reply needs one MetricRecord holding '{weight_key}'"
    return None


__all__ = ["SecureFedAvg", "SecureFedAvgCompat", "SecureFedAvgRounds"]

class SecureFedAvgCompat(SecureFedAvgRounds, compat.Strategy):
    """Compat-API FedAvg where the server only multiplies Paillier ciphertexts.

    Parameters
    ----------
    strategy : flwr.server.strategy.FedAvg
        The inner strategy: sampling, configs, metric aggregation; it must have
        ``initial_parameters``. Its aggregation must be FedAvg's weighted mean
        (FedAvg, FedProx); server-side optimizers are refused.
    public_key : phe.PaillierPublicKey
        The key dealer's public key (at least 2048 bits); a private key is refused.
    clip_bound : float
        ``B``: clients clip every weight to ``[-B, B]``.
    bits : int (default: 16)
        Quantization bits per value.
    weighting : str (default: "sample_count")
        ``"sample_count"`` (``FitRes.num_examples``, inside the encryption) or ``"uniform"``.
    max_examples : int, optional
        Public bound on any client's ``num_examples``; required with ``"sample_count"``.
    vote_bits : int (default: 16)
        Most bits of an integer weight.
    """

    inner_type = compat.FedAvg
    aggregate_method = "aggregate_fit"
    api = "flwr.server.strategy"
    other_api = "flwr.serverapp.strategy"
    other_face = "SecureFedAvg"

    @property
    def encrypted_model(self) -> np.ndarray | None:
        """The latest encrypted sum (``uint8``), or None before the first aggregation."""
        if self._encrypted is None:
            return None
        return parameters_to_ndarrays(self._encrypted)[0]

    # ------------------------------------------------------------------ setup

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """The inner strategy's (public) initial parameters, which fix the model structure.

        Raises
        ------
        ValueError
            If the inner strategy has none (a client's parameters would leave it in
            clear).
        """
        parameters = self.strategy.initialize_parameters(client_manager)
        if parameters is None:
            raise ValueError(
                "SecureFedAvgCompat needs FedAvg(initial_parameters=...): the model "
                "structure comes from the public initial model")
        self.server.set_structure(parameters_to_ndarrays(parameters))
        self._log_settings("Paillier secure FedAvg (compat)")
        return parameters

    def _is_encrypted(self, parameters: Parameters) -> bool:
        return self._encrypted is not None and (
            parameters is self._encrypted or parameters.tensors == self._encrypted.tensors)

    def _with_spec(self, parameters: Parameters, config: dict, spec: SecureModelSpec) -> dict:
        return {**config, wire.FEDAVG_SPEC: spec.to_json(),
                wire.FEDAVG_ENCRYPTED_FLAG: self._is_encrypted(parameters)}

    # ------------------------------------------------------------------ training

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        """The inner strategy's instructions, each with the round's spec in its config."""
        instructions = self.strategy.configure_fit(server_round, parameters, client_manager)
        if not instructions:
            return instructions
        initial = None if self._is_encrypted(parameters) else parameters_to_ndarrays(parameters)
        spec = self._open_round(server_round, len(instructions),
                                sum(len(tensor) for tensor in parameters.tensors), initial)
        return [(proxy, FitIns(ins.parameters, self._with_spec(ins.parameters, ins.config, spec)))
                for proxy, ins in instructions]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Check every encrypted share and multiply the valid ones into the encrypted sum."""
        start = time.perf_counter()
        spec = self._round_spec(server_round, len(results))
        if failures and not self.strategy.accept_failures:
            log(WARNING, "round %s: %s failures and accept_failures=False; no aggregation",
                server_round, len(failures))
            return None, {}
        shares: list[tuple[str, object]] = []
        rejected: dict[str, str] = {}
        by_id: dict[str, FitRes] = {}
        bytes_up = 0
        for proxy, res in results:
            bytes_up += sum(len(tensor) for tensor in res.parameters.tensors)
            try:
                arrays = parameters_to_ndarrays(res.parameters)
            except (ValueError, OSError, EOFError) as error:
                rejected[proxy.cid] = f"the parameters are not ndarrays: {error}"
                continue
            if len(arrays) != 1:
                rejected[proxy.cid] = (
                    f"expected one encrypted share, got {len(arrays)} arrays (plaintext "
                    "weights are discarded, never aggregated); the client is not wrapped "
                    "in PaillierNumPyClient")
                continue
            shares.append((proxy.cid, arrays[0]))
            by_id[proxy.cid] = res
        shares.sort(key=lambda share: share[0])
        outcome = self._sum_shares(server_round, spec, shares, rejected, "client")
        metrics: dict[str, Scalar] = {}
        if outcome.accepted and self.strategy.fit_metrics_aggregation_fn is not None:
            metrics = self.strategy.fit_metrics_aggregation_fn(
                [(by_id[cid].num_examples, by_id[cid].metrics) for cid in outcome.accepted])
        encrypted_sum = self._close_round(server_round, spec, outcome, rejected,
                                          bytes_up=bytes_up, num_failures=len(failures),
                                          started=start)
        if encrypted_sum is None:
            return None, metrics
        self._encrypted = ndarrays_to_parameters([encrypted_sum])
        return self._encrypted, metrics

    # ------------------------------------------------------------------ evaluation

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager
                           ) -> list[tuple[ClientProxy, EvaluateIns]]:
        """The inner strategy's evaluation instructions, each with the spec."""
        instructions = self.strategy.configure_evaluate(server_round, parameters,
                                                        client_manager)
        if not instructions:
            return instructions
        spec = self.server.spec(len(instructions))
        sized = sum(len(tensor) for tensor in parameters.tensors)
        self.server.record(server_round, bytes_down_evaluate=sized * len(instructions))
        return [(proxy, EvaluateIns(ins.parameters,
                                    self._with_spec(ins.parameters, ins.config, spec)))
                for proxy, ins in instructions]

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        """The inner strategy's aggregation (the clients evaluated the decrypted model)."""
        return self.strategy.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round: int, parameters: Parameters
                 ) -> tuple[float, dict[str, Scalar]] | None:
        """The inner ``evaluate_fn`` on the public initial model; None once encrypted."""
        if self._is_encrypted(parameters):
            return None
        return self.strategy.evaluate(server_round, parameters)
