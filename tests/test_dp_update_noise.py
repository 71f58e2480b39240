"""Distributed DP for FedAvg: the client step, its two faces, z_eff, and both server faces.

The core step (clip the update, add a share N(0, (z S)^2 / m)) is checked on its own and
through the Message-API mod and the compat NumPyClient wrapper called with real Flower
objects; the server's ``clipping="distributed"`` mode runs three rounds per face through
Flower's simulation engine (Ray) with four numpy softmax-regression clients.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from clients.fedavg.dp import DpUpdateNoiseMod, DpUpdateNumPyClient
from clients.mods import DpUpdateNoiseMod as ExportedDpUpdateNoiseMod
from flhet_strategies import wire
from flhet_strategies.privacy.dp.gaussian import realized_noise_multiplier
from flhet_strategies.privacy.dp.noise_share import (
    NoiseShareSettings,
    model_update,
    privatize_update,
)
from flhet_strategies.privacy.dp.fedavg import DpFedAvg
from flhet_strategies.privacy.dp.fedavg import DpFedAvgCompat
from flhet_strategies.privacy.dp.budget import (
    RoundBudget,
    distributed_mean_noise_multiplier,
)

DELTA = 1e-5
NOISE_MULTIPLIER_KEY = wire.DP_NOISE_MULTIPLIER
CLIP_NORM_KEY = wire.DP_CLIP_NORM
NUM_CLIENTS_KEY = wire.DP_NUM_CLIENTS
UPDATE_NOISE_KEYS = (NOISE_MULTIPLIER_KEY, CLIP_NORM_KEY, NUM_CLIENTS_KEY, wire.DP_CLIP_MODE)
"""What the server sends for update noise: z, S, m and the (flat) clip mode."""

# --------------------------------------------------------------------------- core step


def test_noise_share_has_std_z_s_over_sqrt_m_and_m_shares_sum_to_z_s():
    z, s, m = 2.0, 3.0, 9
    zeros = [np.zeros((400, 500))]
    noise = privatize_update(zeros, zeros, NoiseShareSettings(z, s, m),
                             np.random.default_rng(1))[0]
    assert noise.std() == pytest.approx(z * s / math.sqrt(m), rel=0.01)  # 2.0
    assert abs(noise.mean()) < 0.01
    # Four clients with independent generators: their shares add up to z S on the sum.
    settings = NoiseShareSettings(z, s, 4)
    total = sum(privatize_update([np.zeros(50_000)], [np.zeros(50_000)], settings,
                                 np.random.default_rng(10 + i))[0] for i in range(4))
    assert total.std() == pytest.approx(z * s, rel=0.02)


def test_update_is_clipped_over_all_arrays_together_and_added_to_the_received_model():
    received = [np.array([1.0, 1.0], np.float32), np.array([[2.0]], np.float32)]
    returned = [np.array([4.0, 1.0], np.float32), np.array([[6.0]], np.float32)]  # update 3,0,4
    tiny = NoiseShareSettings(1e-12, 1.0, 1)
    out = privatize_update(received, returned, tiny, np.random.default_rng(0))
    np.testing.assert_allclose(out[0], [1.6, 1.0], atol=1e-6)  # 1 + 3/5
    np.testing.assert_allclose(out[1], [[2.8]], atol=1e-6)     # 2 + 4/5
    assert [a.dtype for a in out] == [np.float32, np.float32]
    assert [a.shape for a in out] == [(2,), (1, 1)]
    # An update already within the bound is kept as it is.
    small = [np.array([1.3, 1.0], np.float32), np.array([[2.4]], np.float32)]  # norm 0.5
    kept = privatize_update(received, small, tiny, np.random.default_rng(0))
    for a, b in zip(kept, small):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_same_generator_seed_gives_the_same_reply_and_os_randomness_differs():
    received = [np.zeros((3, 4), np.float32), np.zeros(4, np.float32)]
    returned = [np.ones((3, 4), np.float32), -np.ones(4, np.float32)]
    settings = NoiseShareSettings(1.0, 1.0, 2)
    first, again, other = (privatize_update(received, returned, settings,
                                            np.random.default_rng(seed)) for seed in (5, 5, 6))
    for a, b, c in zip(first, again, other):
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)
    fresh = [privatize_update(received, returned, settings)[0] for _ in range(2)]
    assert not np.array_equal(*fresh)


def test_bad_updates_and_settings_are_refused():
    ok = [np.zeros(3)]
    settings = NoiseShareSettings(1.0, 1.0, 2)
    with pytest.raises(ValueError, match="shape"):
        privatize_update(ok, [np.zeros(4)], settings)
    with pytest.raises(ValueError, match="returned 2 arrays"):
        model_update(ok, [np.zeros(3), np.zeros(1)])
    with pytest.raises(ValueError, match="int64"):
        privatize_update([np.zeros(3, np.int64)], [np.ones(3, np.int64)], settings)
    with pytest.raises(ValueError, match="NaN"):
        privatize_update(ok, [np.array([0.0, np.nan, 0.0])], settings)
    for args, key in (((0.0, 1.0, 2), NOISE_MULTIPLIER_KEY), ((1.0, -1.0, 2), CLIP_NORM_KEY),
                      ((1.0, 1.0, 0), NUM_CLIENTS_KEY), ((1.0, 1.0, 2.5), NUM_CLIENTS_KEY),
                      ((float("inf"), 1.0, 2), NOISE_MULTIPLIER_KEY)):
        with pytest.raises(ValueError, match=key):
            NoiseShareSettings(*args)


def test_settings_come_from_the_config_first_then_the_defaults():
    config = {NOISE_MULTIPLIER_KEY: 0.7, NUM_CLIENTS_KEY: 5}
    settings = NoiseShareSettings.from_config(config, 9.0, 2.0, 1)
    assert settings == NoiseShareSettings(0.7, 2.0, 5)
    assert NoiseShareSettings.from_config(settings.to_config()) == settings
    assert set(settings.to_config()) == set(UPDATE_NOISE_KEYS)
    # Flat clipping: the share's std does not depend on the update's size.
    assert settings.clip_mode == "flat"
    assert settings.share_std(1) == settings.share_std(1000) == pytest.approx(
        0.7 * 2.0 / math.sqrt(5))
    with pytest.raises(ValueError, match=CLIP_NORM_KEY):
        NoiseShareSettings.from_config(config)


# --------------------------------------------------------------------------- z_eff


def test_distributed_mean_noise_multiplier_against_hand_computed_values():
    f = distributed_mean_noise_multiplier
    assert f(1.5, 4, [10, 10, 10, 10]) == pytest.approx(1.5)                  # equal, n = m
    assert f(1.5, 4, [7, 7, 7]) == pytest.approx(1.5 * math.sqrt(3 / 4))     # one dropout
    assert f(1.5, 4, [7, 7, 7]) == pytest.approx(realized_noise_multiplier(1.5, 4, 3))
    # sqrt((100 + 400 + 900) / 3) / 30 = 21.6025 / 30
    assert f(1.0, 3, [10, 20, 30]) == pytest.approx(0.7200823, rel=1e-6)
    assert f(2.0, 2, [1, 3]) == pytest.approx(2 * math.sqrt(5) / 3)            # 1.4907
    for weights in ([], [0, 0], [1, float("nan")], [1, -1]):
        with pytest.raises(ValueError, match="weights"):
            f(1.0, 3, weights)
    with pytest.raises(ValueError, match="noise_multiplier"):
        f(0.0, 3, [1])


def test_z_eff_matches_the_simulated_noise_of_a_weighted_mean():
    """Weights 1, 2, 5 over m = 4 shares: the mean's noise std over its sensitivity."""
    z, s, m, weights = 1.3, 0.5, 4, np.array([1.0, 2.0, 5.0])
    rng = np.random.default_rng(3)
    shares = rng.normal(0.0, z * s / math.sqrt(m), size=(3, 200_000))
    noise_of_mean = weights @ shares / weights.sum()
    sensitivity = s * weights.max() / weights.sum()
    assert noise_of_mean.std() / sensitivity == pytest.approx(
        distributed_mean_noise_multiplier(z, m, weights), rel=0.01)


# --------------------------------------------------------------------------- client faces


@pytest.fixture
def task_identity() -> Iterator[None]:
    """The process identity Flower's runtime sets before app code builds Messages."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


RECEIVED = [np.full((3, 2), 0.5, np.float32), np.zeros(2, np.float32)]
TRAINED = [np.full((3, 2), 2.5, np.float32), np.ones(2, np.float32)]
DP_CONFIG = {NOISE_MULTIPLIER_KEY: 1.0, CLIP_NORM_KEY: 0.5, NUM_CLIENTS_KEY: 3}


def _train_message(config: dict, message_type: str = MessageType.TRAIN) -> Message:
    content = RecordDict({"arrays": ArrayRecord(RECEIVED),
                          "config": ConfigRecord({"server-round": 1, **config})})
    return Message(content=content, dst_node_id=7, message_type=message_type)


def _app(calls: list, arrays: list[np.ndarray] = TRAINED):
    def handler(msg: Message, context: Context) -> Message:
        calls.append(msg)
        return Message(RecordDict({"arrays": ArrayRecord(arrays),
                                   "metrics": MetricRecord({"num-examples": 10})}),
                       reply_to=msg)
    return handler


def _context() -> Context:
    return Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})


def test_mod_and_numpy_client_send_exactly_the_core_step(task_identity):
    assert ExportedDpUpdateNoiseMod is DpUpdateNoiseMod
    settings = NoiseShareSettings(1.0, 0.5, 3)
    expected = privatize_update(RECEIVED, TRAINED, settings, np.random.default_rng(42))
    calls: list = []
    reply = DpUpdateNoiseMod(rng=np.random.default_rng(42))(
        _train_message(DP_CONFIG), _context(), _app(calls))
    assert not reply.has_error() and len(calls) == 1
    sent = reply.content["arrays"]
    assert list(sent.keys()) == ["0", "1"]
    for a, b in zip(sent.to_numpy_ndarrays(), expected):
        np.testing.assert_array_equal(a, b)
    assert reply.content["metrics"]["num-examples"] == 10

    from flwr.client import NumPyClient

    class Trained(NumPyClient):
        def fit(self, parameters, config):
            return [a.copy() for a in TRAINED], 10, {"seen": config[NUM_CLIENTS_KEY]}

        def evaluate(self, parameters, config):
            return 0.25, 10, {}

    wrapped = DpUpdateNumPyClient(Trained(), rng=np.random.default_rng(42))
    arrays, num_examples, metrics = wrapped.fit([a.copy() for a in RECEIVED], dict(DP_CONFIG))
    for a, b in zip(arrays, expected):
        np.testing.assert_array_equal(a, b)
    assert (num_examples, metrics) == (10, {"seen": 3})
    assert wrapped.evaluate(RECEIVED, {}) == (0.25, 10, {})
    with pytest.raises(ValueError, match=NUM_CLIENTS_KEY):
        DpUpdateNumPyClient(Trained()).fit(RECEIVED, {NOISE_MULTIPLIER_KEY: 1.0,
                                                      CLIP_NORM_KEY: 1.0})
    with pytest.raises(TypeError, match="NumPyClient"):
        DpUpdateNumPyClient(object())


def test_mod_refuses_missing_settings_and_foreign_replies_and_passes_other_messages(
        task_identity):
    calls: list = []
    reply = DpUpdateNoiseMod()(_train_message({CLIP_NORM_KEY: 1.0}), _context(), _app(calls))
    assert reply.has_error() and calls == []
    assert reply.error.code == ErrorCode.MOD_FAILED_PRECONDITION
    assert NOISE_MULTIPLIER_KEY in reply.error.reason
    # Construction arguments fill in what the server did not send.
    ok = DpUpdateNoiseMod(1.0, 1.0, 2)(_train_message({}), _context(), _app(calls))
    assert not ok.has_error() and len(calls) == 1
    # A reply with other array names is not a model update of the sent model.
    renamed = [np.zeros(6, np.float32)]
    bad = DpUpdateNoiseMod()(_train_message(DP_CONFIG), _context(), _app(calls, renamed))
    assert bad.has_error() and "not the ones sent" in bad.error.reason
    # Evaluate messages pass through untouched.
    plain = DpUpdateNoiseMod()(_train_message({}, MessageType.EVALUATE), _context(),
                               _app(calls))
    assert not plain.has_error()
    for a, b in zip(plain.content["arrays"].to_numpy_ndarrays(), TRAINED):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=NUM_CLIENTS_KEY):
        DpUpdateNoiseMod(1.0, 1.0, 0)


# --------------------------------------------------------------------------- server, direct


def test_compat_server_announces_the_cohort_adds_no_noise_and_accounts_z_eff():
    """Direct compat calls with real Flower objects: 2 clients with weights 10 and 30."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.strategy import FedAvg

    manager = SimpleClientManager()
    proxies = [GridClientProxy(10 + i, grid=None, run_id=1) for i in range(2)]
    for proxy in proxies:
        manager.register(proxy)
    inner = FedAvg(min_fit_clients=2, min_available_clients=2,
                   on_fit_config_fn=lambda r: {"lr": 0.1})
    strategy = DpFedAvgCompat(inner, 1.0, 0.5, 2, clipping="distributed")
    assert strategy.dp_strategy is inner
    start = ndarrays_to_parameters([np.zeros(3, np.float32)])
    instructions = strategy.configure_fit(1, start, manager)
    assert len(instructions) == 2
    for _, ins in instructions:
        assert ins.config == {"lr": 0.1, NOISE_MULTIPLIER_KEY: 1.0, CLIP_NORM_KEY: 0.5,
                              NUM_CLIENTS_KEY: 2, wire.DP_CLIP_MODE: "flat"}
    updates = [np.array([0.3, 0.4, 0.0], np.float32), np.array([0.0, 0.0, 0.1], np.float32)]
    results = [(proxy, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([u]), n, {}))
               for proxy, u, n in zip(proxies, updates, [10, 30])]
    parameters, _ = strategy.aggregate_fit(1, results, [])
    # The server only averages what the clients sent ...
    np.testing.assert_allclose(parameters_to_ndarrays(parameters)[0],
                               (10 * updates[0] + 30 * updates[1]) / 40, atol=1e-7)
    # ... and accounts z sqrt((10^2 + 30^2) / 2) / 30.
    assert strategy.privacy_history[0]["noise_multiplier"] == pytest.approx(
        math.sqrt(500) / 30)


def test_distributed_mode_has_no_flower_wrapper_and_checks_the_clipping_norm():
    from flwr.serverapp.strategy import FedAvg

    strategy = DpFedAvg(FedAvg(), 1.0, 1.0, 2, clipping="distributed")
    assert strategy.dp_strategy is strategy.strategy
    with pytest.raises(ValueError, match=CLIP_NORM_KEY):
        DpFedAvg(FedAvg(), 1.0, 0.0, 2, clipping="distributed")


# --------------------------------------------------------------------------- simulation

NUM_CLIENTS, PER_CLIENT, DIM, CLASSES, ROUNDS = 4, 40, 50, 4, 3
Z, CLIP = 1.0, 0.5
BACKEND = {"client_resources": {"num_cpus": 2, "num_gpus": 0.0},
           "init_args": {"num_cpus": 2, "include_dashboard": False}}


def _client_data(partition: int) -> tuple[np.ndarray, np.ndarray]:
    """A client's share of a linear four-class problem (same weights for everyone)."""
    w_true = np.random.default_rng(0).standard_normal((DIM, CLASSES))
    x = np.random.default_rng(100 + partition).standard_normal((PER_CLIENT, DIM))
    return x.astype(np.float32), np.argmax(x @ w_true, axis=1)


def _initial() -> list[np.ndarray]:
    return [np.zeros((DIM, CLASSES), np.float32), np.zeros(CLASSES, np.float32)]


def _local_sgd(params: list[np.ndarray], partition: int) -> list[np.ndarray]:
    """Ten full-batch gradient steps of softmax regression (deterministic)."""
    x, y = _client_data(partition)
    w, b = (np.array(p, dtype=np.float64) for p in params)
    onehot = np.eye(CLASSES)[y]
    for _ in range(10):
        logits = x @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        grad = (p - onehot) / len(y)
        w -= 0.5 * x.T @ grad
        b -= 0.5 * grad.sum(0)
    return [w.astype(np.float32), b.astype(np.float32)]


def _clipped_update(partition: int) -> np.ndarray:
    """Flat update of the first round from the zero model, clipped to CLIP (checked > CLIP)."""
    update = np.concatenate([a.ravel() for a in _local_sgd(_initial(), partition)])
    norm = float(np.linalg.norm(update))
    assert norm > 2 * CLIP  # clipping really acts
    return update.astype(np.float64) * CLIP / norm


def _check_noise(first_round: list[np.ndarray], partitions: list[int], cohort: int) -> None:
    """The first model is the plain mean of clipped updates plus noise of std z S / m."""
    plain = np.mean([_clipped_update(p) for p in partitions], axis=0)
    residual = np.concatenate([a.ravel() for a in first_round]) - plain
    expected = Z * CLIP / cohort
    assert residual.size == DIM * CLASSES + CLASSES
    assert 0.75 < residual.std() / expected < 1.25   # 204 entries: one sd ~0.05
    assert abs(residual.mean()) < 0.5 * expected


def _epsilons(sampling_fraction: float, cohort, rounds: int) -> list[float]:
    ledger = RoundBudget(NUM_CLIENTS, DELTA, fraction=sampling_fraction).ledger
    return [ledger.projected_epsilon(Z, cohort, r) for r in range(1, rounds + 1)]


def _check_history(history: list[dict], expected: list[float]) -> None:
    assert [h["round"] for h in history] == list(range(1, len(expected) + 1))
    for h, eps in zip(history, expected):
        assert h["delta"] == DELTA and h["noise_multiplier"] == pytest.approx(Z)
        assert h["epsilon"] == pytest.approx(eps, rel=1e-9)


@pytest.mark.integration
def test_message_api_distributed_noise_in_the_simulation_engine():
    """Full participation of 4 ClientApps with DpUpdateNoiseMod; a free and a capped run."""
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    client_app = ClientApp(mods=[DpUpdateNoiseMod()])

    @client_app.train()
    def train(msg: Message, context) -> Message:
        partition = int(context.node_config["partition-id"])
        seen = msg.content["config"][NUM_CLIENTS_KEY]
        params = _local_sgd(msg.content["arrays"].to_numpy_ndarrays(), partition)
        return Message(RecordDict({
            "arrays": ArrayRecord(params),
            "metrics": MetricRecord({"num-examples": PER_CLIENT, "seen-m": int(seen)}),
        }), reply_to=msg)

    def dp(max_epsilon=None) -> DpFedAvg:
        inner = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=NUM_CLIENTS,
                       min_available_nodes=NUM_CLIENTS)
        return DpFedAvg(inner, Z, CLIP, NUM_CLIENTS, max_epsilon=max_epsilon,
                        clipping="distributed")

    expected = _epsilons(1.0, None, ROUNDS)
    free, capped = dp(), dp(max_epsilon=(expected[1] + expected[2]) / 2)
    initial = ArrayRecord(_initial())
    sink: dict = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid, context) -> None:
        models: dict[int, list[np.ndarray]] = {}

        def keep(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            models[server_round] = arrays.to_numpy_ndarrays()
            return MetricRecord({"r": server_round})

        sink["free"] = free.start(grid=grid, initial_arrays=initial, num_rounds=ROUNDS,
                                  evaluate_fn=keep)
        sink["models"] = dict(models)
        sink["capped"] = capped.start(grid=grid, initial_arrays=initial, num_rounds=ROUNDS)

    run_simulation(server_app=server_app, client_app=client_app,
                   num_supernodes=NUM_CLIENTS, backend_config=BACKEND)

    assert free.budget.sampling == "full" and free.stopped_at is None
    _check_history(free.privacy_history, expected)
    metrics = sink["free"].train_metrics_clientapp
    assert sorted(metrics) == [1, 2, 3]
    assert all(metrics[r]["seen-m"] == NUM_CLIENTS for r in metrics)  # the cohort announced
    _check_noise(sink["models"][1], list(range(NUM_CLIENTS)), NUM_CLIENTS)
    # The budget fits two rounds: start ran two and returned the last model.
    _check_history(capped.privacy_history, expected[:2])
    assert capped.stopped_at == 3 and capped.epsilon <= capped.budget.max_epsilon
    assert sorted(sink["capped"].train_metrics_clientapp) == [1, 2]
    final = sink["capped"].arrays.to_numpy_ndarrays()
    assert [a.shape for a in final] == [(DIM, CLASSES), (CLASSES,)]


@pytest.mark.integration
def test_compat_api_distributed_noise_with_cohorts_stops_on_the_budget():
    """Fixed-size cohorts of 2 of 4 DpUpdateNumPyClients; the guard skips round 3."""
    from flwr.client import NumPyClient
    from flwr.clientapp import ClientApp
    from flwr.common import ndarrays_to_parameters
    from flwr.server import ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    class LinearClient(NumPyClient):
        def __init__(self, partition: int) -> None:
            self.partition = partition

        def fit(self, parameters, config):
            return (_local_sgd(parameters, self.partition), PER_CLIENT,
                    {"partition": self.partition, "seen-m": int(config[NUM_CLIENTS_KEY])})

    client_app = ClientApp(client_fn=lambda context: DpUpdateNumPyClient(LinearClient(
        int(context.node_config["partition-id"]))).to_client())
    evaluated: dict[int, list[np.ndarray]] = {}
    cohorts: list[list[tuple[int, int]]] = []

    def keep(server_round: int, parameters, config):
        evaluated[server_round] = parameters
        return None

    def record_cohort(results):
        cohorts.append(sorted((int(m["partition"]), int(m["seen-m"])) for _, m in results))
        return {}

    expected = _epsilons(0.5, 2, ROUNDS)
    inner = FedAvg(fraction_fit=0.5, fraction_evaluate=0.0, min_fit_clients=2,
                   min_available_clients=NUM_CLIENTS, evaluate_fn=keep,
                   fit_metrics_aggregation_fn=record_cohort,
                   initial_parameters=ndarrays_to_parameters(_initial()))
    strategy = DpFedAvgCompat(inner, Z, CLIP, 2, clipping="distributed",
                              max_epsilon=(expected[1] + expected[2]) / 2)
    server_app = ServerApp(server_fn=lambda context: ServerAppComponents(
        strategy=strategy, config=ServerConfig(num_rounds=ROUNDS)))
    run_simulation(server_app=server_app, client_app=client_app,
                   num_supernodes=NUM_CLIENTS, backend_config=BACKEND)

    assert strategy.budget.sampling == "fixed-size"
    _check_history(strategy.privacy_history, expected[:2])
    assert strategy.stopped_at == 3 and strategy.epsilon <= strategy.budget.max_epsilon
    assert sorted(evaluated) == [0, 1, 2]  # round 3 configured no clients
    assert len(cohorts) == 2 and all(len(c) == 2 and {m for _, m in c} == {2} for c in cohorts)
    _check_noise(evaluated[1], [p for p, _ in cohorts[0]], 2)
