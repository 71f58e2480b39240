"""The core client step of distributed DP on predictions, and its two client faces.

:func:`privatize_predictions` (softmax, clip, noise share, encoding) is what both
:class:`DpPredictionsMod` (Message API) and :class:`DpPredictionsNumPyClient` (compat)
run: same settings and generator give the same payload.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.client import NumPyClient
from flwr.supercore.task_identity import TaskIdentity

from clients.dp_predictions_numpy_client import NOISE_STD_METRIC, DpPredictionsNumPyClient
from clients.mods.dp_predictions import DpPredictionsMod
from flhet_strategies.aggregation.logit_consensus import softmax
from flhet_strategies.core.dp import clip_payload
from flhet_strategies.privacy.dp.noise_share import (
    PredictionNoiseSettings,
    privatize_predictions,
)
from flhet_strategies.privacy.dp.settings import (
    CLIP_MODE_KEY,
    CLIP_NORM_KEY,
    NOISE_MULTIPLIER_KEY,
    NOISY_PROBABILITIES_ARRAY,
    NUM_CLIENTS_KEY,
    PrivateConsensus,
)
from flhet_strategies.message_api import CONFIG_KEY, METRICS_KEY, REPLY_KEY
from flhet_strategies.faces.records import arrays_to_record, record_to_arrays

ROWS, CLASSES = 50, 10


def _logits(seed: int, rows: int = ROWS) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(rows, CLASSES)) * 3).astype(np.float32)


# ---------------------------------------------------------------- core function

def test_noise_share_has_std_z_s_over_sqrt_n() -> None:
    rows, z, clip, n = 2000, 1.5, 4.0, 6
    settings = PredictionNoiseSettings(z, clip, n, "flat")
    logits = _logits(0, rows)
    out = privatize_predictions(logits, settings, rng=np.random.default_rng(1))
    assert out.values.shape == (rows, CLASSES) and out.values.dtype == np.float32
    assert out.norm_bound == clip and out.noise_std == pytest.approx(z * clip / math.sqrt(n))
    # The payload's norm is at least sqrt(rows / C) ~ 14 > S: the flat clip is active.
    noise = out.values.astype(np.float64) - clip_payload(softmax(logits), clip)
    assert np.std(noise) == pytest.approx(z * clip / math.sqrt(n), rel=0.015)   # 20k draws
    assert abs(np.mean(noise)) < 4 * out.noise_std / math.sqrt(noise.size)


def test_flat_clipping_bounds_the_payload_norm() -> None:
    logits = _logits(2)
    exact = softmax(logits)
    assert np.linalg.norm(exact) > 1.0       # the bound below really clips
    # z tiny: the payload is the clipped probabilities up to float32 rounding.
    out = privatize_predictions(logits, PredictionNoiseSettings(1e-9, 1.0),
                                rng=np.random.default_rng(0))
    assert np.linalg.norm(out.values.astype(np.float64)) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(out.values, exact / np.linalg.norm(exact), atol=1e-6)


def test_per_row_clipping_bounds_every_row_and_scales_the_bound() -> None:
    logits = _logits(3)
    settings = PredictionNoiseSettings(1e-9, 0.5, 1, "per-row")
    out = privatize_predictions(logits, settings, rng=np.random.default_rng(0))
    assert out.norm_bound == pytest.approx(0.5 * math.sqrt(ROWS))
    norms = np.linalg.norm(out.values.astype(np.float64), axis=1)
    assert np.all(norms <= 0.5 + 1e-6)
    # A probability row has norm at most 1: r = 1 clips nothing.
    same = privatize_predictions(logits, PredictionNoiseSettings(1e-9, 1.0, 1, "per-row"),
                                 rng=np.random.default_rng(0))
    np.testing.assert_allclose(same.values, softmax(logits), atol=1e-6)


def test_log_probability_encoding_is_on_the_simplex() -> None:
    out = privatize_predictions(_logits(4), PredictionNoiseSettings(1.0, 2.0, 4),
                                encoding="log-probabilities", min_probability=1e-5,
                                rng=np.random.default_rng(0))
    q = np.exp(out.values.astype(np.float64))
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-5)
    assert np.all(np.isfinite(out.values)) and q.min() > 0   # clamped before the log


@pytest.mark.parametrize("encoding", ["probabilities", "log-probabilities"])
@pytest.mark.parametrize("clip_mode", ["flat", "per-row"])
def test_the_mod_sends_what_the_core_function_computes(encoding, clip_mode) -> None:
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        logits = _logits(5)
        config = {NOISE_MULTIPLIER_KEY: 0.8, CLIP_NORM_KEY: 0.7, CLIP_MODE_KEY: clip_mode,
                  NUM_CLIENTS_KEY: 3}
        msg = Message(content=RecordDict({CONFIG_KEY: ConfigRecord({"server-round": 1, **config})}),
                      dst_node_id=7, message_type=MessageType.TRAIN)

        def app(msg: Message, context: Context) -> Message:
            return Message(RecordDict({
                REPLY_KEY: arrays_to_record({"logits": logits,
                                             "class_counts": np.ones(CLASSES)}),
                METRICS_KEY: MetricRecord({"num-examples": 10})}), reply_to=msg)

        context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
        reply = DpPredictionsMod(encoding=encoding, rng=np.random.default_rng(11))(
            msg, context, app)
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
    assert not reply.has_error()
    expected = privatize_predictions(logits, PredictionNoiseSettings(0.8, 0.7, 3, clip_mode),
                                     encoding, rng=np.random.default_rng(11))
    arrays = record_to_arrays(reply.content.array_records[REPLY_KEY])
    key = NOISY_PROBABILITIES_ARRAY if encoding == "probabilities" else "logits"
    np.testing.assert_array_equal(arrays[key], expected.values)
    dp = reply.content.config_records["dp"]
    assert dp["noise-std"] == pytest.approx(expected.noise_std)
    assert dp["norm-bound"] == pytest.approx(expected.norm_bound)


def test_settings_read_the_server_config_and_name_bad_keys() -> None:
    private = PrivateConsensus(2.0, clip_norm=0.3, mode="distributed", clip_mode="per-row")
    settings = PredictionNoiseSettings.from_config(private.client_config(5))
    assert settings == PredictionNoiseSettings(2.0, 0.3, 5, "per-row")
    assert settings.share_std(16) == pytest.approx(2.0 * 0.3 * 4 / math.sqrt(5))
    # Defaults fill in what the config lacks; the config wins.
    assert PredictionNoiseSettings.from_config({CLIP_NORM_KEY: 1.0}, 3.0, 9.0, 2) == \
        PredictionNoiseSettings(3.0, 1.0, 2, "flat")
    with pytest.raises(ValueError, match=CLIP_NORM_KEY):
        PredictionNoiseSettings.from_config({NOISE_MULTIPLIER_KEY: 1.0})
    with pytest.raises(ValueError, match=NUM_CLIENTS_KEY):
        PredictionNoiseSettings(1.0, 1.0, 2.5)
    with pytest.raises(ValueError, match=NOISE_MULTIPLIER_KEY):
        PredictionNoiseSettings(float("nan"), 1.0)
    with pytest.raises(ValueError, match=CLIP_MODE_KEY):
        PredictionNoiseSettings(1.0, 1.0, 1, "rows")


def test_bad_logits_and_arguments_are_rejected() -> None:
    settings = PredictionNoiseSettings(1.0, 1.0)
    with pytest.raises(ValueError, match="finite"):
        privatize_predictions(np.full((3, 4), np.nan), settings)
    with pytest.raises(ValueError, match="shape"):
        privatize_predictions(np.zeros(4), settings)
    with pytest.raises(ValueError, match="floating"):
        privatize_predictions(np.zeros((3, 4), dtype=np.int64), settings)
    with pytest.raises(ValueError, match="encoding"):
        privatize_predictions(_logits(0), settings, encoding="logits")
    with pytest.raises(ValueError, match="min_probability"):
        privatize_predictions(_logits(0), settings, min_probability=0.5)


# ---------------------------------------------------------------- compat wrapper

class _FakeDistillationClient(NumPyClient):
    """Replies like DistillationNumPyClient: [logits, class_counts]."""

    def __init__(self, logits: np.ndarray) -> None:
        self.logits = logits
        self.fits = 0

    def fit(self, parameters, config):
        self.fits += 1
        return [self.logits, np.arange(CLASSES, dtype=np.float64)], 120, {"client-id": 3}

    def evaluate(self, parameters, config):
        return 0.25, 30, {"client_accuracy": 0.75}


def test_compat_wrapper_sends_only_the_noisy_probabilities() -> None:
    logits = _logits(6)
    private = PrivateConsensus(1.2, clip_norm=0.9, mode="distributed", clip_mode="per-row")
    config = {"server-round": 1, **private.client_config(4)}
    wrapper = DpPredictionsNumPyClient(_FakeDistillationClient(logits),
                                       rng=np.random.default_rng(21))
    arrays, num_examples, metrics = wrapper.fit([], config)
    expected = privatize_predictions(logits, PredictionNoiseSettings(1.2, 0.9, 4, "per-row"),
                                     rng=np.random.default_rng(21))
    assert len(arrays) == 1                          # the label histogram is not sent
    np.testing.assert_array_equal(arrays[0], expected.values)
    assert num_examples == 120 and metrics["client-id"] == 3
    assert metrics[NOISE_STD_METRIC] == pytest.approx(1.2 * 0.9 * math.sqrt(ROWS) / 2)
    assert wrapper.evaluate([], {}) == (0.25, 30, {"client_accuracy": 0.75})


def test_compat_wrapper_refuses_to_train_without_the_dp_config() -> None:
    inner = _FakeDistillationClient(_logits(7))
    with pytest.raises(ValueError, match=NOISE_MULTIPLIER_KEY):
        DpPredictionsNumPyClient(inner).fit([], {"server-round": 1})
    assert inner.fits == 0                           # nothing left the client in clear
    with pytest.raises(TypeError, match="NumPyClient"):
        DpPredictionsNumPyClient(object())
    with pytest.raises(ValueError, match=NUM_CLIENTS_KEY):
        DpPredictionsNumPyClient(inner, noise_multiplier=1.0, clip_norm=1.0, num_clients=0)
