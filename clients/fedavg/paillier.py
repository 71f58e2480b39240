"""FedAvg through a Paillier secure sum, client side of both faces (the user's own app).

:class:`PaillierFedAvgMod` (Message API) and :class:`PaillierNumPyClient` (compat) decrypt
the global model the server relays, let the app train on it and replace its reply by
one encrypted share of its weights. See docs/privacy_fedavg.md.
"""

from __future__ import annotations

from logging import INFO, WARNING

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.client import NumPyClient
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.logger import log

from flhet_strategies import wire
from flhet_strategies.privacy.paillier import KeyHolder, SecureSumError
from flhet_strategies.privacy.paillier.model_client import ModelSumClient
from flhet_strategies.privacy.paillier.model_updates import SecureModelSpec
from flhet_strategies.faces.records import arrays_to_record, record_to_arrays

from ..faces.steps import error_reply
from ..privacy.paillier import PaillierSettings
from ..privacy.step import StepEnv


class PaillierFedAvgMod(PaillierSettings):
    """Decrypt the global model the server relays, and encrypt this client's weights.

    Parameters
    ----------
    key_path : str or Path, optional
        The private key file (from a key dealer). If omitted, the node config entry
        ``node_config_key`` names it, else the run config entry of the same name.
    key_holder : KeyHolder, optional
        The key itself instead of a file (tests, or an app that loads the key itself).
    node_config_key : str (default: "paillier-key-path")
        Node-config key of the key file path.
    workers : int (default: 1)
        Threads computing Paillier randomness while the app trains. One per client
        suits simulation; raise it on a multi-core client machine.
    decrypt_workers : int, optional
        Threads decrypting the sum (default: every core this process may use).
    short_exponent : bool (default: True)
        Damgard-Jurik-Nielsen short-exponent randomness; False uses ``r**n``.
    require_secure : bool (default: True)
        Refuse (error reply) train messages without a spec, so that plaintext weights
        never leave the client by mistake.
    plaintext_phases : Collection[str] (default: ())
        Phases (config ``"flhet-phase"``) allowed in clear even when ``require_secure``
        is set, e.g. ``("plaintext",)`` for a baseline run in the same federation.

    Examples
    --------
    ::

        files = deal_keys("keys/")    # once, by the key dealer
        app = ClientApp(mods=[PaillierFedAvgMod(files.private_path)])
    """

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        """Decrypt the relayed model, run the app, encrypt the reply's arrays.

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
        kind = msg.metadata.message_type
        if kind not in (MessageType.TRAIN, MessageType.EVALUATE):
            return call_next(msg, context)
        config = _spec_config(msg)
        if config is None:
            phase = _phase(msg)
            if kind == MessageType.EVALUATE or self.allows_plaintext(phase):
                return call_next(msg, context)
            return error_reply(
                msg, "PaillierFedAvgMod: the server did not ask for a secure sum (no "
                f"'{wire.FEDAVG_SPEC}' in the config); refusing to send plaintext weights "
                f"(phase {phase!r}). Wrap the server strategy in SecureFedAvg, or list the "
                "phase in the mod's plaintext_phases.")
        arrays_key = str(config.get(wire.FEDAVG_ARRAYS_KEY, "arrays"))
        try:
            spec = SecureModelSpec.from_json(str(config[wire.FEDAVG_SPEC]))
            client = self.model_client(context)
            if kind == MessageType.TRAIN:
                client.prepare(spec)        # randomness computes while the app trains
            self._decrypt_into(msg, spec, client, arrays_key)
        except (ValueError, TypeError, OSError, SecureSumError) as error:
            return error_reply(msg, f"PaillierFedAvgMod: cannot use the global model: {error}")
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        if kind == MessageType.EVALUATE:
            for name in list(reply.content.array_records):
                del reply.content[name]     # only metrics go back
            return reply
        try:
            return self._encrypt_reply(reply, spec, client, arrays_key,
                                       str(config.get(wire.FEDAVG_WEIGHT_KEY, "num-examples")))
        except (ValueError, TypeError, SecureSumError) as error:
            return error_reply(msg, f"PaillierFedAvgMod: {error}")

    def model_client(self, context: Context) -> ModelSumClient:
        """This node's :class:`.ModelSumClient` (key from ``key_path``/``key_holder``/config)."""
        holder = self.holder(StepEnv(context.node_config, context.run_config))
        return ModelSumClient(holder, workers=self.workers, decrypt_workers=self.decrypt_workers,
                              short_exponent=self.short_exponent)

    # ------------------------------------------------------------------ the two halves

    def _decrypt_into(self, msg: Message, spec: SecureModelSpec, client: ModelSumClient,
                      arrays_key: str) -> None:
        records = msg.content.array_records
        if arrays_key not in records:
            raise ValueError(f"the message has no ArrayRecord '{arrays_key}'")
        record = records[arrays_key]
        if wire.FEDAVG_SUM not in record:
            spec.check_arrays(record_to_arrays(record))   # the public initial model
            return
        result = client.decrypt(spec, record[wire.FEDAVG_SUM].numpy())
        msg.content[arrays_key] = arrays_to_record(dict(zip(spec.names, result.arrays)))
        log(INFO, "PaillierFedAvgMod: decrypted the global model of %s clients (bound %.2e)",
            result.num_summands, result.error_bound)

    def _encrypt_reply(self, reply: Message, spec: SecureModelSpec, client: ModelSumClient,
                       arrays_key: str, weight_key: str) -> Message:
        records = reply.content.array_records
        if arrays_key not in records:
            raise ValueError(
                f"expected the trained model in the reply's ArrayRecord '{arrays_key}'; "
                f"found records {sorted(records)}")
        metrics_name, metrics = _metrics_with(reply.content, weight_key)
        weight = metrics.get(weight_key) if metrics is not None else None
        if weight is None and spec.weighting == "sample_count":
            raise ValueError(f"sample-count weighting needs the reply metric '{weight_key}'")
        share = client.encrypt(spec, record_to_arrays(records[arrays_key]), weight)
        for name in list(records):
            del reply.content[name]
        reply.content[arrays_key] = arrays_to_record({wire.FEDAVG_SHARE: share.payload})
        if metrics is not None:
            metrics[wire.CLIPPED_METRIC] = float(share.num_clipped)
            reply.content[metrics_name] = metrics
        if share.num_clipped:
            log(WARNING, "PaillierFedAvgMod: clipped %s of %s values to +-%s", share.num_clipped,
                spec.num_params, spec.clip_bound)
        log(INFO, "PaillierFedAvgMod: encrypted %s values into %s ciphertexts in %.2f s",
            spec.num_params, share.num_ciphertexts, share.seconds)
        return reply


def decrypt_model_record(record: ArrayRecord, spec: SecureModelSpec, holder: KeyHolder,
                         workers: int = 1) -> ArrayRecord:
    """Decrypt an encrypted global model (e.g. ``SecureFedAvg.start(...).arrays``).

    Parameters
    ----------
    record : ArrayRecord
        Holding array ``"secure-fedavg-sum"``.
    spec : SecureModelSpec
        The model's spec (``strategy.spec()``).
    holder : KeyHolder
        A holder of the private key (a client or the key dealer, never the server).
    workers : int (default: 1)
        Decryption threads.

    Returns
    -------
    ArrayRecord
        The global model, under the spec's array names.

    Raises
    ------
    ValueError
        If the record holds no encrypted sum.
    KeyMismatchError, MalformedPayloadError, SecureSumOverflowError
        If the sum does not decrypt.
    """
    if wire.FEDAVG_SUM not in record:
        raise ValueError(f"the record holds no '{wire.FEDAVG_SUM}' array: {sorted(record)}")
    client = ModelSumClient(holder, decrypt_workers=workers)
    result = client.decrypt(spec, record[wire.FEDAVG_SUM].numpy())
    return arrays_to_record(dict(zip(spec.names, result.arrays)))


def _spec_config(msg: Message) -> ConfigRecord | None:
    for record in msg.content.config_records.values():
        if wire.FEDAVG_SPEC in record:
            return record
    return None


def _phase(msg: Message) -> str:
    for record in msg.content.config_records.values():
        if wire.PHASE in record:
            return str(record[wire.PHASE])
    return "main"


def _metrics_with(content: RecordDict, key: str) -> tuple[str | None, MetricRecord | None]:
    """The (name, record) of the MetricRecord holding ``key``, else the first one, else None."""
    records = content.metric_records
    for name, record in records.items():
        if key in record:
            return name, record
    for name, record in records.items():
        return name, record
    return None, None


class PaillierNumPyClient(PaillierSettings, NumPyClient):
    """Wrap a ``NumPyClient`` so that its weights leave it only Paillier-encrypted.

    Parameters
    ----------
    client : NumPyClient
        The wrapped client (any model, any framework).
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
        Threads decrypting the sum (default: every core this process may use).
    short_exponent : bool (default: True)
        Damgard-Jurik-Nielsen short-exponent randomness; False uses ``r**n``.
    require_secure : bool (default: True)
        Raise in ``fit`` when the server did not ask for a secure sum, so that plaintext
        weights never leave the client by mistake.
    plaintext_phases : Collection[str] (default: ())
        Phases (fit config ``"flhet-phase"``) allowed in clear anyway.

    Notes
    -----
    ``get_parameters`` is delegated: it is only called when the server has no initial
    parameters, which :class:`SecureFedAvgCompat` refuses.

    Examples
    --------
    >>> def client_fn(context):                                         # doctest: +SKIP
    ...     return PaillierNumPyClient(MyClient(...), context=context).to_client()
    """

    def __init__(self, client: NumPyClient, key_path=None, *, context=None, **settings) -> None:
        if not isinstance(client, NumPyClient):
            raise TypeError(f"client must be a NumPyClient, got {type(client).__name__}")
        PaillierSettings.__init__(self, key_path, **settings)
        self.client = client
        self._context = context
        self._model_client: ModelSumClient | None = None

    def __repr__(self) -> str:
        return f"PaillierNumPyClient({type(self.client).__name__})"

    def model_client(self) -> ModelSumClient:
        """This client's :class:`.ModelSumClient` (the key is loaded on first use)."""
        if self._model_client is None:
            env = StepEnv() if self._context is None else \
                StepEnv(self._context.node_config, self._context.run_config)
            self._model_client = ModelSumClient(
                self.holder(env), workers=self.workers, decrypt_workers=self.decrypt_workers,
                short_exponent=self.short_exponent)
        return self._model_client

    def get_properties(self, config):
        """Delegate to the wrapped client."""
        return self.client.get_properties(config)

    def get_parameters(self, config):
        """Delegate to the wrapped client."""
        return self.client.get_parameters(config)

    def fit(self, parameters, config):
        """Decrypt the global model, train the wrapped client, return its encrypted share.

        Returns
        -------
        tuple
            ``([share], num_examples, metrics)``: one ``uint8`` ndarray, the wrapped
            client's ``num_examples``, and its metrics plus ``"secure-clipped-values"``.

        Raises
        ------
        ValueError
            If the server did not ask for a secure sum (and the phase is not allowed in
            clear), the sum does not decrypt, or the trained model does not fit the spec.
        """
        spec = self._spec(config)
        if spec is None:
            phase = str(config.get(wire.PHASE, "main"))
            if not self.allows_plaintext(phase):
                raise ValueError(
                    f"PaillierNumPyClient: the server did not ask for a secure sum (no "
                    f"'{wire.FEDAVG_SPEC}' in the fit config); refusing to send plaintext "
                    f"weights (phase {phase!r}). Wrap the server strategy in "
                    "SecureFedAvgCompat, or list the phase in plaintext_phases.")
            return self.client.fit(parameters, config)
        model_client = self.model_client()
        model_client.prepare(spec)            # randomness computes while the client trains
        arrays = self._global_model(spec, parameters, config)
        trained, num_examples, metrics = self.client.fit(arrays, config)
        share = model_client.encrypt(spec, trained, num_examples)
        if share.num_clipped:
            log(WARNING, "PaillierNumPyClient: clipped %s of %s values to +-%s",
                share.num_clipped, spec.num_params, spec.clip_bound)
        return [share.payload], num_examples, {**metrics,
                                               wire.CLIPPED_METRIC: float(share.num_clipped)}

    def evaluate(self, parameters, config):
        """Decrypt the global model and let the wrapped client evaluate it."""
        spec = self._spec(config)
        if spec is not None:
            parameters = self._global_model(spec, parameters, config)
        return self.client.evaluate(parameters, config)

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _spec(config) -> SecureModelSpec | None:
        if wire.FEDAVG_SPEC not in config:
            return None
        return SecureModelSpec.from_json(str(config[wire.FEDAVG_SPEC]))

    def _global_model(self, spec: SecureModelSpec, parameters, config) -> list[np.ndarray]:
        if not config.get(wire.FEDAVG_ENCRYPTED_FLAG, False):
            return spec.check_arrays(parameters)       # the public initial model
        if len(parameters) != 1:
            raise ValueError(
                f"the encrypted global model must be one uint8 ndarray, got {len(parameters)}")
        return self.model_client().decrypt(spec, parameters[0]).arrays


__all__ = ["PaillierFedAvgMod", "PaillierNumPyClient", "decrypt_model_record"]
