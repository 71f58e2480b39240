"""DP FedAvg with an epsilon budget: RoundBudget, then both Flower faces in the simulation engine.

RoundBudget is checked against PrivacyLedger's own projections (brute force); the
wrappers run three rounds each through Flower's simulation engine (Ray) with Flower's
fixed-clipping wrappers doing the clipping and noising: four numpy softmax-regression
clients on random linearly separable data.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from flhet_strategies.privacy.dp.fedavg import DpFedAvg
from flhet_strategies.privacy.dp.fedavg import DpFedAvgCompat
from flhet_strategies.privacy.dp.accounting import PrivacyLedger
from flhet_strategies.privacy.dp.budget import (
    RoundBudget,
    mean_noise_multiplier,
    sampling_for_fraction,
)

DELTA = 1e-5

# --------------------------------------------------------------------------- RoundBudget


def _brute_force_rounds(ledger: PrivacyLedger, z: float, max_rounds: int, m, budget: float):
    fitting = 0
    for rounds in range(1, max_rounds + 1):
        if ledger.projected_epsilon(z, m, rounds) <= budget:
            fitting = rounds
    return fitting


@pytest.mark.parametrize(
    ("fraction", "population", "m", "z", "budget", "recorded", "max_rounds"),
    [(1.0, 10, None, 1.0, 12.0, 0, 30),   # full participation: 5 rounds fit
     (1.0, 10, None, 2.0, 3.0, 2, 30),    # 2 rounds already spent
     (0.3, 20, 6, 1.0, 20.0, 1, 6),       # fixed-size cohorts, 1 spent, 3 more fit
     (0.5, 8, 4, 0.8, 5.0, 0, 3)],        # not even one round fits
)
def test_cap_equals_the_brute_force_count_over_projected_epsilon(
        fraction, population, m, z, budget, recorded, max_rounds):
    rb = RoundBudget(population, DELTA, budget, fraction=fraction)
    for server_round in range(1, recorded + 1):
        rb.record(server_round, z, m)
    brute = _brute_force_rounds(rb.ledger, z, max_rounds, m, budget)
    assert rb.cap(max_rounds, z, m, first_round=recorded + 1) == brute
    assert brute < max_rounds  # every case is really capped ...
    assert rb.stopped_at == recorded + 1 + brute  # ... and plans where the run stops


def test_without_a_budget_cap_keeps_the_rounds_and_the_guard_always_allows():
    rb = RoundBudget(5, DELTA)
    assert rb.cap(1000, 0.5) == 1000 and rb.stopped_at is None
    assert all(rb.allows(r, 0.5) for r in range(1, 4))
    rb.record(1, 0.5)
    assert rb.epsilon > 0 and not rb.exhausted


def test_guard_refuses_the_round_past_the_budget_and_stays_stopped():
    z, m = 1.0, 3
    rb = RoundBudget(10, DELTA, fraction=0.3)
    two = rb.ledger.projected_epsilon(z, m, 2)
    three = rb.ledger.projected_epsilon(z, m, 3)
    rb = RoundBudget(10, DELTA, (two + three) / 2, fraction=0.3)
    for server_round in (1, 2):
        assert rb.allows(server_round, z, m)
        rb.record(server_round, z, m)
    assert rb.stopped_at is None
    assert not rb.allows(3, z, m)
    assert rb.stopped_at == 3 and rb.exhausted
    # Sticky: a later round with a cohort of 1 and ten times the noise would fit, but the run
    # has ended; earlier rounds are not affected.
    assert rb.ledger.projected_epsilon(10.0, 1) < rb.max_epsilon
    assert not rb.allows(4, 10.0, 1)
    assert rb.stopped_at == 3
    assert [h["round"] for h in rb.history] == [1, 2]


def test_record_keeps_one_history_entry_per_round():
    rb = RoundBudget(8, DELTA, fraction=0.5)
    entries = [rb.record(r, 1.2, 4) for r in (1, 2, 3)]
    assert rb.history == entries
    assert [e["round"] for e in entries] == [1, 2, 3]
    for entry, accounted in zip(entries, rb.ledger.rounds):
        assert set(entry) == {"round", "epsilon", "delta", "noise_multiplier", "sampling_rate"}
        assert entry["epsilon"] == accounted.epsilon and entry["delta"] == DELTA
        assert entry["noise_multiplier"] == 1.2 and entry["sampling_rate"] == 0.5
    epsilons = [e["epsilon"] for e in entries]
    assert 0 < epsilons[0] < epsilons[1] < epsilons[2] == rb.epsilon
    # Signed model updates: fixed-size cohorts are accounted under replace-one with 2 S.
    assert rb.sampling == "fixed-size" and rb.ledger.relation == "replace-one"
    assert rb.ledger.rounds[0].accounted_noise_multiplier == pytest.approx(0.6)


def test_sampling_scheme_follows_the_fraction_and_bad_input_is_refused():
    assert sampling_for_fraction(1.0) == "full" and sampling_for_fraction(1) == "full"
    assert sampling_for_fraction(0.25) == "fixed-size"
    for bad in (0.0, -0.5, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match="fraction"):
            sampling_for_fraction(bad)
    with pytest.raises(ValueError, match="max_epsilon"):
        RoundBudget(10, DELTA, 0.0)
    with pytest.raises(ValueError, match="sampling"):
        RoundBudget(10, DELTA, sampling="bernoulli")
    assert RoundBudget(10, DELTA, sampling="poisson", sampling_rate=0.2).sampling == "poisson"


def test_mean_noise_multiplier_of_flowers_noise_on_the_weighted_mean():
    assert mean_noise_multiplier(1.5, 4, [10, 10, 10, 10]) == pytest.approx(1.5)
    assert mean_noise_multiplier(1.5, 4, [7, 7, 7]) == pytest.approx(1.5 * 3 / 4)  # dropout
    # num-examples weights: the heaviest client moves the mean by S * 30/60, noise z S / 3.
    assert mean_noise_multiplier(1.0, 3, [10, 20, 30]) == pytest.approx(60 / (3 * 30))
    for weights in ([], [0, 0], [1, float("nan")], [1, -1]):
        with pytest.raises(ValueError, match="weights"):
            mean_noise_multiplier(1.0, 3, weights)
    with pytest.raises(ValueError, match="noise_multiplier"):
        mean_noise_multiplier(0.0, 3, [1])


def test_wrappers_refuse_bad_settings():
    from flwr.server.strategy import FedAvg as CompatFedAvg
    from flwr.serverapp.strategy import FedAvg

    with pytest.raises(ValueError, match="noise_multiplier"):
        DpFedAvg(FedAvg(), 0.0, 1.0, 2)
    with pytest.raises(ValueError, match="clipping"):
        DpFedAvg(FedAvg(), 1.0, 1.0, 2, clipping="local")
    with pytest.raises(ValueError, match="max_epsilon"):
        DpFedAvgCompat(CompatFedAvg(), 1.0, 1.0, 2, max_epsilon=-1.0)
    with pytest.raises(ValueError, match="population_size"):
        DpFedAvg(FedAvg(), 1.0, 1.0, 4, population_size=3)
    with pytest.raises(TypeError, match="DpFedAvgCompat"):
        DpFedAvg(CompatFedAvg(), 1.0, 1.0, 2)
    with pytest.raises(TypeError, match="DpFedAvg"):
        DpFedAvgCompat(FedAvg(), 1.0, 1.0, 2)
    strategy = DpFedAvg(FedAvg(fraction_train=0.5), 1.0, 1.0, 2, population_size=4)
    assert strategy.budget.sampling == "fixed-size" and strategy.epsilon == 0.0
    assert strategy.privacy_history == [] and strategy.stopped_at is None


def test_unequal_weights_are_accounted_at_the_noise_the_mean_really_carries():
    """Direct compat calls with real Flower objects: FitRes weights 10 and 30, m = 2."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.compat.grid_client_proxy import GridClientProxy
    from flwr.server.strategy import FedAvg

    manager = SimpleClientManager()
    proxies = [GridClientProxy(10 + i, grid=None, run_id=1) for i in range(2)]
    for proxy in proxies:
        manager.register(proxy)
    strategy = DpFedAvgCompat(FedAvg(min_fit_clients=2, min_available_clients=2), 1.0, 0.5, 2)
    start = [np.zeros(3, np.float32)]
    assert len(strategy.configure_fit(1, ndarrays_to_parameters(start), manager)) == 2
    updates = [np.array([3.0, 4.0, 0.0], np.float32), np.array([0.0, 0.0, 0.1], np.float32)]
    results = [(proxy, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([u]), n, {}))
               for proxy, u, n in zip(proxies, updates, [10, 30])]
    parameters, _ = strategy.aggregate_fit(1, results, [])
    # z_eff = z W / (m max w) = 40 / 60; the ledger saw it, and Flower did add noise.
    assert strategy.privacy_history[0]["noise_multiplier"] == pytest.approx(2 / 3)
    assert strategy.budget.population_size == 2 and strategy.budget.sampling == "full"
    clipped_mean = (10 * np.array([0.3, 0.4, 0.0]) + 30 * np.array([0.0, 0.0, 0.1])) / 40
    assert not np.allclose(parameters_to_ndarrays(parameters)[0], clipped_mean, atol=1e-6)
    # A failed client releases nothing, so nothing is accounted.
    strategy.configure_fit(2, parameters, manager)
    assert strategy.aggregate_fit(2, results, [RuntimeError("lost")]) == (None, {})
    assert len(strategy.privacy_history) == 1


# --------------------------------------------------------------------------- simulation

NUM_CLIENTS, PER_CLIENT, DIM, CLASSES, ROUNDS = 4, 40, 5, 2, 3
Z, CLIP = 1.0, 1.0
BACKEND = {"client_resources": {"num_cpus": 2, "num_gpus": 0.0},
           "init_args": {"num_cpus": 2, "include_dashboard": False}}


def _client_data(partition: int) -> tuple[np.ndarray, np.ndarray]:
    """A client's share of a linearly separable two-class problem (same w for everyone)."""
    w_true = np.random.default_rng(0).standard_normal(DIM)
    x = np.random.default_rng(100 + partition).standard_normal((PER_CLIENT, DIM))
    return x.astype(np.float32), (x @ w_true > 0).astype(np.int64)


def _initial() -> list[np.ndarray]:
    return [np.zeros((DIM, CLASSES), np.float32), np.zeros(CLASSES, np.float32)]


def _local_sgd(params: list[np.ndarray], partition: int) -> list[np.ndarray]:
    """Ten full-batch gradient steps of softmax regression."""
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


def _epsilons(sampling_fraction: float, cohort, rounds: int) -> list[float]:
    """What the ledger should report after each round (equal weights, no dropouts)."""
    ledger = RoundBudget(NUM_CLIENTS, DELTA, fraction=sampling_fraction).ledger
    return [ledger.projected_epsilon(Z, cohort, r) for r in range(1, rounds + 1)]


def _check_history(history: list[dict], expected: list[float]) -> None:
    assert [h["round"] for h in history] == list(range(1, len(expected) + 1))
    for h, eps in zip(history, expected):
        assert h["delta"] == DELTA and h["noise_multiplier"] == pytest.approx(Z)
        assert h["epsilon"] == pytest.approx(eps, rel=1e-9)
    epsilons = [h["epsilon"] for h in history]
    assert all(0 < a < b for a, b in zip(epsilons, epsilons[1:]))


@pytest.mark.integration
def test_message_api_runs_all_rounds_then_stops_on_the_budget():
    """Client-side clipping (fixedclipping_mod), fixed-size cohorts of 2 out of 4."""
    from flwr.clientapp import ClientApp
    from flwr.clientapp.mod import fixedclipping_mod
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    client_app = ClientApp(mods=[fixedclipping_mod])

    @client_app.train()
    def train(msg: Message, context) -> Message:
        partition = int(context.node_config["partition-id"])
        arrays = msg.content["arrays"]
        params = _local_sgd(arrays.to_numpy_ndarrays(), partition)
        return Message(RecordDict({
            "arrays": ArrayRecord(params),
            "metrics": MetricRecord({"num-examples": PER_CLIENT}),
        }), reply_to=msg)

    def dp(max_epsilon=None) -> DpFedAvg:
        inner = FedAvg(fraction_train=0.5, fraction_evaluate=0.0, min_train_nodes=2,
                       min_available_nodes=NUM_CLIENTS)
        return DpFedAvg(inner, Z, CLIP, 2, max_epsilon=max_epsilon, clipping="client")

    expected = _epsilons(0.5, 2, ROUNDS)
    free, capped = dp(), dp(max_epsilon=(expected[1] + expected[2]) / 2)
    initial = ArrayRecord(_initial())
    sink: dict = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid, context) -> None:
        evaluated: list[int] = []
        sink["free"] = free.start(grid=grid, initial_arrays=initial, num_rounds=ROUNDS)
        sink["capped"] = capped.start(
            grid=grid, initial_arrays=initial, num_rounds=ROUNDS,
            evaluate_fn=lambda r, arrays: evaluated.append(r) or MetricRecord({"r": r}))
        sink["evaluated"] = evaluated

    run_simulation(server_app=server_app, client_app=client_app,
                   num_supernodes=NUM_CLIENTS, backend_config=BACKEND)

    assert free.budget.sampling == "fixed-size" and free.budget.population_size == NUM_CLIENTS
    _check_history(free.privacy_history, expected)
    assert free.epsilon == free.privacy_history[-1]["epsilon"] and free.stopped_at is None
    assert sorted(sink["free"].train_metrics_clientapp) == [1, 2, 3]
    # The budget fits two rounds: start ran two, cleanly, and returned the last model.
    _check_history(capped.privacy_history, expected[:2])
    assert capped.epsilon <= capped.budget.max_epsilon < free.epsilon
    assert capped.stopped_at == 3
    result = sink["capped"]
    assert sorted(result.train_metrics_clientapp) == [1, 2]
    assert sink["evaluated"] == [0, 1, 2]
    final = result.arrays.to_numpy_ndarrays()
    assert [a.shape for a in final] == [(DIM, CLASSES), (CLASSES,)]
    assert all(np.all(np.isfinite(a)) for a in final) and np.abs(final[0]).sum() > 0


@pytest.mark.integration
def test_compat_api_stops_on_the_budget_with_the_per_round_guard():
    """Server-side clipping, full participation of 4 NumPyClients."""
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
            return _local_sgd(parameters, self.partition), PER_CLIENT, {}

    client_app = ClientApp(client_fn=lambda context: LinearClient(
        int(context.node_config["partition-id"])).to_client())
    evaluated: dict[int, list[np.ndarray]] = {}

    def keep(server_round: int, parameters, config):
        evaluated[server_round] = parameters
        return None

    expected = _epsilons(1.0, None, ROUNDS)
    inner = FedAvg(fraction_evaluate=0.0, min_fit_clients=NUM_CLIENTS,
                   min_available_clients=NUM_CLIENTS, evaluate_fn=keep,
                   initial_parameters=ndarrays_to_parameters(_initial()))
    strategy = DpFedAvgCompat(inner, Z, CLIP, NUM_CLIENTS,
                              max_epsilon=(expected[1] + expected[2]) / 2)
    server_app = ServerApp(server_fn=lambda context: ServerAppComponents(
        strategy=strategy, config=ServerConfig(num_rounds=ROUNDS)))
    run_simulation(server_app=server_app, client_app=client_app,
                   num_supernodes=NUM_CLIENTS, backend_config=BACKEND)

    assert strategy.budget.sampling == "full"
    _check_history(strategy.privacy_history, expected[:2])
    assert strategy.stopped_at == 3 and strategy.epsilon <= strategy.budget.max_epsilon
    # Round 3 configured no clients and was not evaluated; round 2's model is the last one.
    assert sorted(evaluated) == [0, 1, 2]
    final = evaluated[2]
    assert [a.shape for a in final] == [(DIM, CLASSES), (CLASSES,)]
    assert not np.allclose(final[0], evaluated[1][0])
