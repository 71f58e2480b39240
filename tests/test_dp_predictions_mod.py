"""DpNoiseMod (earlier DpPredictionsMod) on real Flower Messages, called as Flower calls a mod.

The mod runs :class:`clients.privacy.dp.DpNoiseStep` on a consensus client's reply; its
reply describes the noise in the reply metrics (``dp-noise-std``, ``dp-noise-multiplier``,
``dp-num-clients``, ``dp-norm-bound``). Default encoding: the linear noisy probabilities
(array ``noisy_probabilities``); ``"log-probabilities"`` still feeds a plain DS-FL server.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
from flwr.app import (
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from clients.mods import DpNoiseMod, DpPredictionsMod
from flhet_strategies import wire
from flhet_strategies.aggregation.logit_consensus import ConsensusConfig, logit_consensus, softmax
from flhet_strategies.aggregation.payload import ClientPayload, PayloadError, validate_payload
from flhet_strategies.faces.records import arrays_to_record, record_to_arrays
from flhet_strategies.privacy.dp.clipping import clip_payload

CLIP_NORM_KEY = wire.DP_CLIP_NORM
NOISE_MULTIPLIER_KEY = wire.DP_NOISE_MULTIPLIER
NOISY_PROBABILITIES_ARRAY = wire.NOISY_PROBABILITIES
NUM_CLIENTS_KEY = wire.DP_NUM_CLIENTS
CONFIG_KEY, METRICS_KEY, REPLY_KEY = wire.CONFIG, wire.METRICS, wire.ARRAYS
NOISE_STD, NORM_BOUND = wire.NOISE_STD_METRIC, "dp-norm-bound"
DP_METRICS = (NOISE_STD, NOISE_MULTIPLIER_KEY, NUM_CLIENTS_KEY, NORM_BOUND)

ROWS, CLASSES = 40, 10


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[None]:
    """The process identity Flower's runtime sets before app code builds Messages."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def _context(node_id: int = 7) -> Context:
    return Context(run_id=1, node_id=node_id, node_config={}, state=RecordDict(), run_config={})


def _train_message(config: dict | None = None, message_type: str = MessageType.TRAIN) -> Message:
    content = RecordDict({CONFIG_KEY: ConfigRecord({"server-round": 1, **(config or {})})})
    return Message(content=content, dst_node_id=7, message_type=message_type)


def _client_app(logits: np.ndarray, calls: list | None = None):
    """A train handler replying like clients.client_app: logits, class counts, metrics."""

    def handler(msg: Message, context: Context) -> Message:
        if calls is not None:
            calls.append(msg)
        content = RecordDict({
            REPLY_KEY: arrays_to_record({"logits": logits,
                                         "class_counts": np.arange(CLASSES, dtype=np.float64)}),
            METRICS_KEY: MetricRecord({"num-examples": 120, "client-id": 3}),
        })
        return Message(content, reply_to=msg)

    return handler


def _logits(seed: int, rows: int = ROWS) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(rows, CLASSES)) * 3).astype(np.float32)



DP_CONFIG = {NOISE_MULTIPLIER_KEY: 1.0, CLIP_NORM_KEY: 2.0, NUM_CLIENTS_KEY: 4}


def _server_config(num_clients: int = 4, rows: int = ROWS) -> dict:
    """What ``FedConsensus(privacy=PrivateConsensus(mode="distributed"))`` sends: the noise
    settings and the sum's layout."""
    from flhet_strategies.algorithms.consensus import ConsensusDistillation
    from flhet_strategies.privacy.dp.mechanism import DifferentialPrivacy
    from flhet_strategies.privacy.dp.settings import PrivateConsensus
    from flhet_strategies.weighting.base import uniform_weights

    core = ConsensusDistillation(rows, CLASSES, rows, ConsensusConfig(class_vote_weighting=False),
                                 weight_fn=uniform_weights)
    server = DifferentialPrivacy(core, PrivateConsensus(1.0, 2.0, "distributed", "flat"))
    nodes = [str(i) for i in range(num_clients)]
    return dict(server.instructions(1, nodes)[nodes[0]].config)


def _dp(reply: Message) -> dict:
    """The DP description in the reply metrics."""
    metrics = reply.content.metric_records[METRICS_KEY]
    return {key: metrics[key] for key in DP_METRICS if key in metrics}


def test_train_reply_carries_noisy_log_probabilities_and_no_label_histogram() -> None:
    msg = _train_message(DP_CONFIG)
    mod = DpPredictionsMod(encoding="log-probabilities", rng=np.random.default_rng(0))
    reply = mod(msg, _context(), _client_app(_logits(1)))
    assert not reply.has_error()
    assert reply.metadata.reply_to_message_id == msg.metadata.message_id
    arrays = record_to_arrays(reply.content.array_records[REPLY_KEY])
    assert set(arrays) == {"logits"}          # the log-probability encoding, no histogram
    assert arrays["logits"].shape == (ROWS, CLASSES) and arrays["logits"].dtype == np.float32
    q = np.exp(arrays["logits"].astype(np.float64))
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(q, softmax(_logits(1)), atol=1e-2)   # noise was added
    dp = _dp(reply)
    assert dp[NOISE_STD] == pytest.approx(1.0 * 2.0 / math.sqrt(4))
    assert dp[NORM_BOUND] == 2.0
    assert reply.content.metric_records[METRICS_KEY]["num-examples"] == 120
    assert reply.content.metric_records[METRICS_KEY]["client-id"] == 3
    # Without class counts today's per-class vote weighting rejects the reply (loudly).
    with pytest.raises(PayloadError, match="class_counts"):
        validate_payload(ClientPayload("3", arrays["logits"], 120, None), ROWS, CLASSES, True)


def test_default_encoding_sends_the_linear_noisy_probabilities() -> None:
    assert DpPredictionsMod is DpNoiseMod
    logits = _logits(1)
    reply = DpNoiseMod(rng=np.random.default_rng(0))(_train_message(DP_CONFIG), _context(),
                                                      _client_app(logits))
    assert not reply.has_error()
    arrays = record_to_arrays(reply.content.array_records[REPLY_KEY])
    assert set(arrays) == {NOISY_PROBABILITIES_ARRAY}     # no "logits" to misread
    noise = arrays[NOISY_PROBABILITIES_ARRAY].astype(np.float64) - clip_payload(softmax(logits),
                                                                                2.0)
    assert np.std(noise) > 0.5 * 1.0 * 2.0 / math.sqrt(4)  # the share's std is 1.0
    assert _dp(reply)[NOISE_STD] == pytest.approx(1.0)


def test_dsfl_consensus_of_log_probability_replies_is_the_mean_of_noisy_distributions() -> None:
    replies = [DpPredictionsMod(encoding="log-probabilities", rng=np.random.default_rng(seed))(
        _train_message(DP_CONFIG), _context(seed), _client_app(_logits(seed)))
        for seed in range(3)]
    logits = np.stack([reply.content.array_records[REPLY_KEY]["logits"].numpy()
                       for reply in replies])
    config = ConsensusConfig(mode="dsfl", temperature=1.0, era_temperature=None,
                             class_vote_weighting=False)
    consensus = logit_consensus(logits, np.ones(3), config)
    # softmax(log q) = q, so the server's DS-FL consensus is the mean of the noisy q_i.
    np.testing.assert_allclose(consensus, np.exp(logits.astype(np.float64)).mean(axis=0),
                               atol=1e-6)
    # ... and they are noisy: not the plain consensus of the clients' own predictions.
    plain = logit_consensus(np.stack([_logits(seed) for seed in range(3)]), np.ones(3), config)
    assert not np.allclose(consensus, plain, atol=1e-2)


@pytest.mark.parametrize("server_layout", [False, True])
def test_linear_encoding_shares_add_up_to_the_noise_of_the_sum(server_layout) -> None:
    rows, n, z, clip = 2000, 5, 1.0, 3.0
    config = {NOISE_MULTIPLIER_KEY: z, CLIP_NORM_KEY: clip, NUM_CLIENTS_KEY: n}
    if server_layout:  # the server's layout of a 2000-row consensus, temperature 1
        config = {**_server_config(n, rows), **config}
        assert config[wire.DP_CLIP_MODE] == "flat" and wire.DP_LAYOUT in config
    logits = [_logits(seed, rows) for seed in range(n)]
    noise = []
    for seed in range(n):
        mod = DpPredictionsMod(encoding="probabilities", rng=np.random.default_rng(100 + seed))
        reply = mod(_train_message(config), _context(seed), _client_app(logits[seed]))
        assert not reply.has_error()
        arrays = record_to_arrays(reply.content.array_records[REPLY_KEY])
        assert set(arrays) == {NOISY_PROBABILITIES_ARRAY}   # no "logits" to misread
        clipped = clip_payload(softmax(logits[seed]), clip)
        noise.append(arrays[NOISY_PROBABILITIES_ARRAY].astype(np.float64) - clipped)
    entries = rows * CLASSES
    # Each share has std z S / sqrt(n); their sum z S (sample std within ~1.5% at 20k draws).
    assert np.std(noise[0]) == pytest.approx(z * clip / math.sqrt(n), rel=0.015)
    assert np.std(np.sum(noise, axis=0)) == pytest.approx(z * clip, rel=0.015)
    assert abs(np.mean(np.sum(noise, axis=0))) < 4 * z * clip / math.sqrt(entries)


def test_mod_runs_in_a_client_app_mod_chain() -> None:
    app = ClientApp(mods=[DpPredictionsMod(encoding="log-probabilities",
                                           rng=np.random.default_rng(3))])
    app.train()(_client_app(_logits(4)))
    reply = app(_train_message(DP_CONFIG), _context())
    assert not reply.has_error() and set(_dp(reply)) == set(DP_METRICS)
    q = np.exp(reply.content.array_records[REPLY_KEY]["logits"].numpy().astype(np.float64))
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(q, softmax(_logits(4)), atol=1e-2)   # noise was added


def test_per_row_clipping_reports_the_whole_payload_bound() -> None:
    mod = DpPredictionsMod(noise_multiplier=0.5, clip_norm=0.2, clip_mode="per-row",
                           rng=np.random.default_rng(1))
    reply = mod(_train_message(), _context(), _client_app(_logits(2)))
    dp = _dp(reply)
    assert dp[NORM_BOUND] == pytest.approx(0.2 * math.sqrt(ROWS))
    assert dp[NUM_CLIENTS_KEY] == 1    # constructor default: local DP
    assert dp[NOISE_STD] == pytest.approx(0.5 * 0.2 * math.sqrt(ROWS))
    noisy = reply.content.array_records[REPLY_KEY][NOISY_PROBABILITIES_ARRAY].numpy()
    norms = np.linalg.norm(noisy.astype(np.float64), axis=1)
    assert norms.min() > 0.2 + 0.1     # every row: clipped to 0.2, then noised (std 0.63)


def test_config_overrides_construction_arguments() -> None:
    mod = DpPredictionsMod(noise_multiplier=9.0, clip_norm=9.0, num_clients=9,
                           rng=np.random.default_rng(1))
    reply = mod(_train_message(DP_CONFIG), _context(), _client_app(_logits(2)))
    dp = _dp(reply)
    assert (dp[NOISE_MULTIPLIER_KEY], dp[NORM_BOUND], dp[NUM_CLIENTS_KEY]) == (1.0, 2.0, 4)


def test_missing_parameters_fail_before_the_app_runs() -> None:
    calls: list = []
    msg = _train_message({NOISE_MULTIPLIER_KEY: 1.0})
    reply = DpPredictionsMod()(msg, _context(), _client_app(_logits(1), calls))
    assert reply.has_error() and not calls
    assert reply.error.code == ErrorCode.MOD_FAILED_PRECONDITION
    assert CLIP_NORM_KEY in reply.error.reason
    bad_n = _train_message({**DP_CONFIG, NUM_CLIENTS_KEY: 0})
    assert "dp-num-clients" in DpPredictionsMod()(bad_n, _context(),
                                                  _client_app(_logits(1))).error.reason


def test_evaluate_messages_and_app_errors_pass_through_untouched() -> None:
    evaluate = _train_message(message_type=MessageType.EVALUATE)
    handled = []

    def evaluate_app(msg: Message, context: Context) -> Message:
        handled.append(msg)
        return Message(RecordDict({METRICS_KEY: MetricRecord({"client_accuracy": 0.5})}),
                       reply_to=msg)

    reply = DpPredictionsMod()(evaluate, _context(), evaluate_app)
    assert handled and not reply.has_error()
    assert dict(reply.content.metric_records[METRICS_KEY]) == {"client_accuracy": 0.5}
    assert not _dp(reply) and not record_to_arrays(reply.content.array_records[REPLY_KEY])

    def failing_app(msg: Message, context: Context) -> Message:
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason="boom"),
                       reply_to=msg)

    reply = DpPredictionsMod()(_train_message(DP_CONFIG), _context(), failing_app)
    assert reply.error.reason == "boom"


def test_replies_outside_the_distillation_protocol_are_an_error() -> None:
    def fedavg_like_app(msg: Message, context: Context) -> Message:
        return Message(RecordDict({"arrays": arrays_to_record({"w": np.ones(3)})}), reply_to=msg)

    # Without the server's layout the step noises the reply's logits, and there are none.
    reply = DpPredictionsMod()(_train_message(DP_CONFIG), _context(), fedavg_like_app)
    assert reply.has_error() and reply.error.code == ErrorCode.MOD_FAILED_PRECONDITION
    assert "no logits" in reply.error.reason and wire.DP_LAYOUT in reply.error.reason
    # With it, the reply does not fit the consensus' sum.
    reply = DpPredictionsMod()(_train_message(_server_config()), _context(), fedavg_like_app)
    assert reply.has_error() and "'logits'" in reply.error.reason

    for config in (DP_CONFIG, _server_config()):
        reply = DpPredictionsMod()(_train_message(config), _context(),
                                   _client_app(np.full((ROWS, CLASSES), np.nan, np.float32)))
        assert reply.has_error() and "finite" in reply.error.reason


def test_bad_construction_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="clip_mode"):
        DpPredictionsMod(clip_mode="rows")
    with pytest.raises(ValueError, match="encoding"):
        DpPredictionsMod(encoding="logits")
