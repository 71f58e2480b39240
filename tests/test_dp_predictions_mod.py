"""DpPredictionsMod on real Flower Messages (Message API), called as Flower calls a mod."""

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

from clients.mods.dp_predictions import (
    CLIP_NORM_KEY,
    NOISE_MULTIPLIER_KEY,
    NOISY_PROBABILITIES_ARRAY,
    NUM_CLIENTS_KEY,
    DpPredictionsMod,
)
from flhet_strategies.aggregation.logit_consensus import ConsensusConfig, logit_consensus, softmax
from flhet_strategies.core.dp import clip_payload
from flhet_strategies.aggregation.payload import ClientPayload, PayloadError, validate_payload
from flhet_strategies.message_api import CONFIG_KEY, METRICS_KEY, REPLY_KEY
from flhet_strategies.faces.records import arrays_to_record, record_to_arrays

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


def test_train_reply_carries_noisy_log_probabilities_and_no_label_histogram() -> None:
    msg = _train_message(DP_CONFIG)
    mod = DpPredictionsMod(rng=np.random.default_rng(0))
    reply = mod(msg, _context(), _client_app(_logits(1)))
    assert not reply.has_error()
    assert reply.metadata.reply_to_message_id == msg.metadata.message_id
    arrays = record_to_arrays(reply.content.array_records[REPLY_KEY])
    assert set(arrays) == {"logits"}
    assert arrays["logits"].shape == (ROWS, CLASSES) and arrays["logits"].dtype == np.float32
    q = np.exp(arrays["logits"].astype(np.float64))
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(q, softmax(_logits(1)), atol=1e-2)   # noise was added
    dp = reply.content.config_records["dp"]
    assert dp["noise-std"] == pytest.approx(1.0 * 2.0 / math.sqrt(4))
    assert dp["norm-bound"] == 2.0 and dp["encoding"] == "log-probabilities"
    assert reply.content.metric_records[METRICS_KEY]["num-examples"] == 120
    # Without class counts today's per-class vote weighting rejects the reply (loudly).
    with pytest.raises(PayloadError, match="class_counts"):
        validate_payload(ClientPayload("3", arrays["logits"], 120, None), ROWS, CLASSES, True)


def test_dsfl_consensus_of_log_probability_replies_is_the_mean_of_noisy_distributions() -> None:
    replies = [DpPredictionsMod(rng=np.random.default_rng(seed))(
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


def test_linear_encoding_shares_add_up_to_the_noise_of_the_sum() -> None:
    rows, n, z, clip = 2000, 5, 1.0, 3.0
    config = {NOISE_MULTIPLIER_KEY: z, CLIP_NORM_KEY: clip, NUM_CLIENTS_KEY: n}
    logits = [_logits(seed, rows) for seed in range(n)]
    noise = []
    for seed in range(n):
        mod = DpPredictionsMod(encoding="probabilities", rng=np.random.default_rng(100 + seed))
        reply = mod(_train_message(config), _context(seed), _client_app(logits[seed]))
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
    app = ClientApp(mods=[DpPredictionsMod(rng=np.random.default_rng(3))])
    app.train()(_client_app(_logits(4)))
    reply = app(_train_message(DP_CONFIG), _context())
    assert not reply.has_error() and "dp" in reply.content.config_records
    q = np.exp(reply.content.array_records[REPLY_KEY]["logits"].numpy().astype(np.float64))
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-5)


def test_per_row_clipping_reports_the_whole_payload_bound() -> None:
    mod = DpPredictionsMod(noise_multiplier=0.5, clip_norm=0.2, clip_mode="per-row",
                           rng=np.random.default_rng(1))
    reply = mod(_train_message(), _context(), _client_app(_logits(2)))
    dp = reply.content.config_records["dp"]
    assert dp["norm-bound"] == pytest.approx(0.2 * math.sqrt(ROWS))
    assert dp["num-clients"] == 1    # constructor default: local DP
    assert dp["noise-std"] == pytest.approx(0.5 * 0.2 * math.sqrt(ROWS))


def test_config_overrides_construction_arguments() -> None:
    mod = DpPredictionsMod(noise_multiplier=9.0, clip_norm=9.0, num_clients=9,
                           rng=np.random.default_rng(1))
    reply = mod(_train_message(DP_CONFIG), _context(), _client_app(_logits(2)))
    dp = reply.content.config_records["dp"]
    assert (dp["noise-multiplier"], dp["norm-bound"], dp["num-clients"]) == (1.0, 2.0, 4)


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
    assert handled and "dp" not in reply.content.config_records

    def failing_app(msg: Message, context: Context) -> Message:
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason="boom"),
                       reply_to=msg)

    reply = DpPredictionsMod()(_train_message(DP_CONFIG), _context(), failing_app)
    assert reply.error.reason == "boom"


def test_replies_outside_the_distillation_protocol_are_an_error() -> None:
    def fedavg_like_app(msg: Message, context: Context) -> Message:
        return Message(RecordDict({"arrays": arrays_to_record({"w": np.ones(3)})}), reply_to=msg)

    reply = DpPredictionsMod()(_train_message(DP_CONFIG), _context(), fedavg_like_app)
    assert reply.has_error() and "'logits'" in reply.error.reason

    reply = DpPredictionsMod()(_train_message(DP_CONFIG), _context(),
                               _client_app(np.full((ROWS, CLASSES), np.nan, np.float32)))
    assert reply.has_error() and "finite" in reply.error.reason


def test_bad_construction_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="clip_mode"):
        DpPredictionsMod(clip_mode="rows")
    with pytest.raises(ValueError, match="encoding"):
        DpPredictionsMod(encoding="logits")
