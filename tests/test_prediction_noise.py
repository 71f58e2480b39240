"""The client step of distributed DP on a weighted sum (the noise share), and its two faces.

:func:`noise_share` (clip the contribution, add a share ``N(0, (z S)^2 / n)``) is what
:class:`DpNoiseStep` runs, and so both :class:`DpNoiseMod` (Message API) and
:class:`DpNoiseNumPyClient` (compat): same settings and generator give the same reply.
Here on the consensus' term, the probabilities ``softmax(logits / T)``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.client import NumPyClient
from flwr.supercore.task_identity import TaskIdentity

from clients.faces.wrappers import (
    DpNoiseMod,
    DpNoiseNumPyClient,
    DpPredictionsMod,
    DpPredictionsNumPyClient,
)
from clients.privacy.dp import DpNoiseStep
from clients.privacy.step import StepEnv
from flhet_strategies import wire
from flhet_strategies.aggregation.logit_consensus import ConsensusConfig, softmax
from flhet_strategies.aggregation.weighted_sum import SumLayout, SumTerm
from flhet_strategies.algorithms.consensus import PROBABILITIES, SUM_RULE, ConsensusDistillation
from flhet_strategies.faces.records import arrays_to_record, record_to_arrays
from flhet_strategies.privacy.dp.clipping import clip_payload
from flhet_strategies.privacy.dp.mechanism import DifferentialPrivacy
from flhet_strategies.privacy.dp.noise_share import NoiseShareSettings, noise_share, noisy_name
from flhet_strategies.privacy.dp.postprocess import noisy_rows_to_probabilities
from flhet_strategies.privacy.dp.settings import PrivateConsensus
from flhet_strategies.protocol import Instruction, Reply
from flhet_strategies.weighting.base import uniform_weights

NOISE_MULTIPLIER_KEY = wire.DP_NOISE_MULTIPLIER
CLIP_NORM_KEY = wire.DP_CLIP_NORM
CLIP_MODE_KEY = wire.DP_CLIP_MODE
NUM_CLIENTS_KEY = wire.DP_NUM_CLIENTS
NOISE_STD_METRIC = wire.NOISE_STD_METRIC
NOISY_PROBABILITIES_ARRAY = wire.NOISY_PROBABILITIES
ROWS, CLASSES = 50, 10


def _logits(seed: int, rows: int = ROWS) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(rows, CLASSES)) * 3).astype(np.float32)


def _layout(rows: int = ROWS) -> SumLayout:
    """The consensus' weighted sum at temperature 1: uniform weights, one term."""
    return SumLayout("consensus", (SumTerm(PROBABILITIES, (rows, CLASSES), weight_axis=1),),
                     "uniform", {"temperature": 1.0})


def _share(logits: np.ndarray, settings: NoiseShareSettings, rng=None):
    """The core step on a client's logits (the consensus' term, then the noise share)."""
    layout = _layout(len(logits))
    values = SUM_RULE.terms(layout, {wire.LOGITS: logits}, {})
    return noise_share(layout, values, None, settings, rng)


def _instruction(config: dict) -> Instruction:
    return Instruction({}, {"server-round": 1, **config})


def _reply(logits: np.ndarray) -> Reply:
    return Reply("3", {wire.LOGITS: logits, wire.CLASS_COUNTS: np.ones(CLASSES)},
                 {wire.NUM_EXAMPLES: 10})


def test_the_consensus_noise_share_names_the_reply_array() -> None:
    assert noisy_name(PROBABILITIES) == NOISY_PROBABILITIES_ARRAY
    assert DpPredictionsMod is DpNoiseMod and DpPredictionsNumPyClient is DpNoiseNumPyClient


# ---------------------------------------------------------------- core function

def test_noise_share_has_std_z_s_over_sqrt_n() -> None:
    rows, z, clip, n = 2000, 1.5, 4.0, 6
    settings = NoiseShareSettings(z, clip, n, "flat")
    logits = _logits(0, rows)
    out = _share(logits, settings, np.random.default_rng(1))
    values = out.arrays[NOISY_PROBABILITIES_ARRAY]
    assert set(out.arrays) == {NOISY_PROBABILITIES_ARRAY}
    assert values.shape == (rows, CLASSES) and values.dtype == np.float32
    assert out.norm_bound == clip and out.noise_std == pytest.approx(z * clip / math.sqrt(n))
    # The payload's norm is at least sqrt(rows / C) ~ 14 > S: the flat clip is active.
    noise = values.astype(np.float64) - clip_payload(softmax(logits), clip)
    assert np.std(noise) == pytest.approx(z * clip / math.sqrt(n), rel=0.015)   # 20k draws
    assert abs(np.mean(noise)) < 4 * out.noise_std / math.sqrt(noise.size)


def test_flat_clipping_bounds_the_payload_norm() -> None:
    logits = _logits(2)
    exact = softmax(logits)
    assert np.linalg.norm(exact) > 1.0       # the bound below really clips
    # z tiny: the payload is the clipped probabilities up to float32 rounding.
    out = _share(logits, NoiseShareSettings(1e-9, 1.0), np.random.default_rng(0))
    values = out.arrays[NOISY_PROBABILITIES_ARRAY].astype(np.float64)
    assert np.linalg.norm(values) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(values, exact / np.linalg.norm(exact), atol=1e-6)


def test_per_row_clipping_bounds_every_row_and_scales_the_bound() -> None:
    logits = _logits(3)
    settings = NoiseShareSettings(1e-9, 0.5, 1, "per-row")
    out = _share(logits, settings, np.random.default_rng(0))
    assert out.norm_bound == pytest.approx(0.5 * math.sqrt(ROWS))
    norms = np.linalg.norm(out.arrays[NOISY_PROBABILITIES_ARRAY].astype(np.float64), axis=1)
    assert np.all(norms <= 0.5 + 1e-6)
    # A probability row has norm at most 1: r = 1 clips nothing.
    same = _share(logits, NoiseShareSettings(1e-9, 1.0, 1, "per-row"), np.random.default_rng(0))
    np.testing.assert_allclose(same.arrays[NOISY_PROBABILITIES_ARRAY], softmax(logits),
                               atol=1e-6)


def test_log_probability_encoding_is_on_the_simplex() -> None:
    step = DpNoiseStep(encoding="log-probabilities", min_probability=1e-5,
                       rng=np.random.default_rng(0))
    instruction, memo = step.before(
        _instruction(NoiseShareSettings(1.0, 2.0, 4).to_config()), StepEnv(), "train")
    reply = step.after(instruction, memo, _reply(_logits(4)), StepEnv(), "train")
    assert set(reply.arrays) == {wire.LOGITS}
    values = reply.arrays[wire.LOGITS]
    q = np.exp(values.astype(np.float64))
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-5)
    assert np.all(np.isfinite(values)) and q.min() > 0   # clamped before the log
    assert not np.allclose(q, softmax(_logits(4)), atol=1e-2)   # noise was added


def _server_config(clip_mode: str, num_clients: int) -> dict:
    """The train config a distributed-DP consensus server sends (with its sum layout)."""
    core = ConsensusDistillation(ROWS, CLASSES, ROWS, ConsensusConfig(class_vote_weighting=False),
                                 weight_fn=uniform_weights)
    server = DifferentialPrivacy(core, PrivateConsensus(0.8, 0.7, "distributed", clip_mode))
    nodes = [str(i) for i in range(num_clients)]
    return dict(server.instructions(1, nodes)[nodes[0]].config)


@pytest.mark.parametrize("server_layout", [False, True])
@pytest.mark.parametrize("encoding", ["probabilities", "log-probabilities"])
@pytest.mark.parametrize("clip_mode", ["flat", "per-row"])
def test_the_mod_sends_what_the_core_function_computes(encoding, clip_mode,
                                                       server_layout) -> None:
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        logits = _logits(5)
        if server_layout:   # what DifferentialPrivacy(mode="distributed") sends
            config = _server_config(clip_mode, 3)
            assert wire.DP_LAYOUT in config
        else:               # only the noise settings: the step reads the reply's logits
            config = {NOISE_MULTIPLIER_KEY: 0.8, CLIP_NORM_KEY: 0.7, CLIP_MODE_KEY: clip_mode,
                      NUM_CLIENTS_KEY: 3}
        msg = Message(content=RecordDict({wire.CONFIG: ConfigRecord(
            {"server-round": 1, **config})}), dst_node_id=7, message_type=MessageType.TRAIN)

        def app(msg: Message, context: Context) -> Message:
            return Message(RecordDict({
                wire.ARRAYS: arrays_to_record({wire.LOGITS: logits,
                                               wire.CLASS_COUNTS: np.ones(CLASSES)}),
                wire.METRICS: MetricRecord({"num-examples": 10})}), reply_to=msg)

        context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
        reply = DpNoiseMod(encoding=encoding, rng=np.random.default_rng(11))(
            msg, context, app)
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
    assert not reply.has_error()
    expected = _share(logits, NoiseShareSettings(0.8, 0.7, 3, clip_mode),
                      np.random.default_rng(11))
    values = expected.arrays[NOISY_PROBABILITIES_ARRAY]
    if encoding == "log-probabilities":
        values = np.log(noisy_rows_to_probabilities(values, floor=1e-6)).astype(np.float32)
    arrays = record_to_arrays(reply.content.array_records[wire.ARRAYS])
    key = NOISY_PROBABILITIES_ARRAY if encoding == "probabilities" else wire.LOGITS
    assert set(arrays) == {key}                      # the label histogram is not sent
    np.testing.assert_array_equal(arrays[key], values)
    metrics = reply.content.metric_records[wire.METRICS]
    assert metrics[NOISE_STD_METRIC] == pytest.approx(expected.noise_std)
    assert metrics["dp-norm-bound"] == pytest.approx(expected.norm_bound)
    assert metrics[NUM_CLIENTS_KEY] == 3 and metrics[NOISE_MULTIPLIER_KEY] == 0.8


def test_settings_read_the_server_config_and_name_bad_keys() -> None:
    private = PrivateConsensus(2.0, clip_norm=0.3, mode="distributed", clip_mode="per-row")
    settings = NoiseShareSettings.from_config(private.client_config(5))
    assert settings == NoiseShareSettings(2.0, 0.3, 5, "per-row")
    assert NoiseShareSettings.from_config(settings.to_config()) == settings
    assert settings.share_std(16) == pytest.approx(2.0 * 0.3 * 4 / math.sqrt(5))
    # Defaults fill in what the config lacks; the config wins.
    assert NoiseShareSettings.from_config({CLIP_NORM_KEY: 1.0}, 3.0, 9.0, 2) == \
        NoiseShareSettings(3.0, 1.0, 2, "flat")
    with pytest.raises(ValueError, match=CLIP_NORM_KEY):
        NoiseShareSettings.from_config({NOISE_MULTIPLIER_KEY: 1.0})
    with pytest.raises(ValueError, match=NUM_CLIENTS_KEY):
        NoiseShareSettings(1.0, 1.0, 2.5)
    with pytest.raises(ValueError, match=NOISE_MULTIPLIER_KEY):
        NoiseShareSettings(float("nan"), 1.0)
    with pytest.raises(ValueError, match=CLIP_MODE_KEY):
        NoiseShareSettings(1.0, 1.0, 1, "rows")


def test_bad_logits_and_arguments_are_rejected() -> None:
    settings = NoiseShareSettings(1.0, 1.0)
    layout = _layout()
    with pytest.raises(ValueError, match="finite"):
        SUM_RULE.terms(layout, {wire.LOGITS: np.full((ROWS, CLASSES), np.nan)}, {})
    with pytest.raises(ValueError, match="shape"):
        SUM_RULE.terms(layout, {wire.LOGITS: np.zeros(4)}, {})
    with pytest.raises(ValueError, match="floats"):
        SUM_RULE.terms(layout, {wire.LOGITS: np.zeros((ROWS, CLASSES), dtype=np.int64)}, {})
    with pytest.raises(ValueError, match="'logits'"):
        SUM_RULE.terms(layout, {"w": np.zeros(3)}, {})
    # The noise share itself refuses values that do not fit the layout.
    with pytest.raises(ValueError, match="finite"):
        noise_share(layout, {PROBABILITIES: np.full((ROWS, CLASSES), np.nan)}, None, settings)
    with pytest.raises(ValueError, match="shape"):
        noise_share(layout, {PROBABILITIES: np.zeros((ROWS + 1, CLASSES))}, None, settings)
    with pytest.raises(ValueError, match="encoding"):
        DpNoiseStep(encoding="logits")
    with pytest.raises(ValueError, match="min_probability"):
        DpNoiseStep(min_probability=0.5)


# ---------------------------------------------------------------- compat wrapper

class _FakeDistillationClient(NumPyClient):
    """Replies like FlhetNumPyClient: [logits, class_counts], named in ``flhet-arrays``."""

    def __init__(self, logits: np.ndarray, named: bool = True) -> None:
        self.logits = logits
        self.named = named
        self.fits = 0

    def fit(self, parameters, config):
        self.fits += 1
        metrics = {"client-id": 3}
        if self.named:
            metrics[wire.ARRAY_NAMES] = wire.join_names([wire.LOGITS, wire.CLASS_COUNTS])
        return [self.logits, np.arange(CLASSES, dtype=np.float64)], 120, metrics

    def evaluate(self, parameters, config):
        return 0.25, 30, {"client_accuracy": 0.75}


def test_compat_wrapper_sends_only_the_noisy_probabilities() -> None:
    logits = _logits(6)
    private = PrivateConsensus(1.2, clip_norm=0.9, mode="distributed", clip_mode="per-row")
    config = {"server-round": 1, **private.client_config(4)}
    wrapper = DpNoiseNumPyClient(_FakeDistillationClient(logits), rng=np.random.default_rng(21))
    arrays, num_examples, metrics = wrapper.fit([], config)
    expected = _share(logits, NoiseShareSettings(1.2, 0.9, 4, "per-row"),
                      np.random.default_rng(21))
    assert len(arrays) == 1                          # the label histogram is not sent
    assert wire.split_names(metrics[wire.ARRAY_NAMES]) == [NOISY_PROBABILITIES_ARRAY]
    np.testing.assert_array_equal(arrays[0], expected.arrays[NOISY_PROBABILITIES_ARRAY])
    assert num_examples == 120 and metrics["client-id"] == 3
    assert metrics[NOISE_STD_METRIC] == pytest.approx(1.2 * 0.9 * math.sqrt(ROWS) / 2)
    assert wrapper.evaluate([], {}) == (0.25, 30, {"client_accuracy": 0.75})


def test_compat_wrapper_refuses_to_train_without_the_dp_config() -> None:
    inner = _FakeDistillationClient(_logits(7))
    with pytest.raises(ValueError, match=NOISE_MULTIPLIER_KEY):
        DpNoiseNumPyClient(inner).fit([], {"server-round": 1})
    assert inner.fits == 0                           # nothing left the client in clear
    with pytest.raises(TypeError, match="NumPyClient"):
        DpNoiseNumPyClient(object())
    with pytest.raises(ValueError, match=NUM_CLIENTS_KEY):
        DpNoiseNumPyClient(inner, noise_multiplier=1.0, clip_norm=1.0, num_clients=0)
    # A reply whose arrays are not named cannot be read as logits: refused, not sent.
    unnamed = DpNoiseNumPyClient(_FakeDistillationClient(_logits(7), named=False))
    with pytest.raises(ValueError, match="no logits in the reply"):
        unnamed.fit([], {"server-round": 1, **NoiseShareSettings(1.0, 1.0).to_config()})
