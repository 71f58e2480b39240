"""Contribution-weighted FedAvg: the shared core, both Flower faces, both in the simulation engine.

The core is checked on games small enough to solve by hand; the wrappers are called
directly with Flower's own reply types (aggregate = contribution-weighted average, the
originals untouched) and then run for two rounds in the simulation engine (Ray) with
four same-architecture torch clients on scikit-learn digits, one of them a free-rider
that returns random weights.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.app.error import Error
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.serverapp.exception import InconsistentMessageReplies
from hypothesis import given, settings
from hypothesis import strategies as st

from flhet_strategies.weighting.contribution_fedavg import ContributionWeightedFedAvg
from flhet_strategies.weighting.contribution_fedavg import (
    WEIGHT_UNITS,
    ContributionWeightedFedAvgCompat,
)
from flhet_strategies.weighting.contribution.weight_average_round import WeightAverageContribution

TARGET = np.array([1.0, -1.0, 0.5])


def closeness(params: list[np.ndarray]) -> float:
    """An accuracy-like score in (0, 1]: 1 at TARGET, falling with the distance to it."""
    return float(np.exp(-np.linalg.norm(params[0] - TARGET)))


def first_entry(params: list[np.ndarray]) -> float:
    """A linear game: v(S) is the weighted average of the members' single parameter."""
    return float(params[0][0])


# --------------------------------------------------------------------------- core


def test_linear_game_matches_hand_computed_shapley_values_and_weights():
    # v({0}) = 0.8, v({1}) = 0.2, v({0,1}) = (1*0.8 + 3*0.2)/4 = 0.35, v(∅) = 0.
    # phi_0 = (0.8 + (0.35 - 0.2)) / 2 = 0.475, phi_1 = (0.2 + (0.35 - 0.8)) / 2 = -0.125.
    params = [[np.array([0.8])], [np.array([0.2])]]
    valuation = WeightAverageContribution(first_entry, mix=0.5, empty_value=0.0)
    weights = valuation(1, ["a", "b"], params, [1, 3])
    np.testing.assert_allclose(list(valuation.ledger.total.values()), [0.475, -0.125])
    # mix 0.5: 0.5 * [1, 0] (b's negative value clipped) + 0.5 * [1/4, 3/4]
    np.testing.assert_allclose(weights, [0.625, 0.375])
    assert valuation.weight_history == {1: {"a": 0.625, "b": 0.375}}


def test_empty_value_is_the_incoming_global_models_accuracy():
    params = [[np.array([0.8])], [np.array([0.2])]]
    valuation = WeightAverageContribution(first_entry)
    valuation(1, ["a", "b"], params, [1, 3], global_parameters=[np.array([0.3])])
    entry = valuation.ledger.rounds[0]
    assert entry.empty_value == pytest.approx(0.3)
    # Efficiency: the round's values sum to the improvement over the global model.
    assert sum(entry.values.values()) == pytest.approx(0.35 - 0.3)


def test_garbage_client_gets_the_lowest_value_and_zero_weight():
    params = [
        [TARGET + np.array([0.1, 0.0, -0.1])],
        [TARGET + np.array([-0.1, 0.1, 0.0])],
        [np.zeros(3)],  # zeroed model
        [np.array([40.0, -25.0, 13.0])],  # garbage
    ]
    counts = [100, 100, 100, 100]
    valuation = WeightAverageContribution(closeness)
    weights = valuation(1, ["h1", "h2", "zero", "junk"], params, counts)
    values = valuation.ledger.total
    assert min(values, key=values.get) == "junk"
    assert values["junk"] < 0 < min(values["h1"], values["h2"])
    assert weights[3] == 0.0
    assert weights[:2].min() > 0.0 and weights.sum() == pytest.approx(1.0)
    # mix=0: the same values are recorded, the weights are the sample counts.
    plain = WeightAverageContribution(closeness, mix=0.0)
    np.testing.assert_allclose(plain(1, ["a", "b", "c", "d"], params, [1, 2, 3, 4]),
                               [0.1, 0.2, 0.3, 0.4])


def test_ledger_sums_rounds_and_discounts_old_ones_for_weights():
    # Round 1: a = 0.8, b = 0.6 -> phi = (0.45, 0.25); round 2 swaps them -> (0.25, 0.45).
    params = [[np.array([0.8])], [np.array([0.6])]]
    valuation = WeightAverageContribution(first_entry, decay=0.0, empty_value=0.0)
    valuation(1, ["a", "b"], params, [1, 1])
    weights = valuation(2, ["a", "b"], params[::-1], [1, 1])
    assert valuation.ledger.total == pytest.approx({"a": 0.7, "b": 0.7})
    np.testing.assert_allclose(weights, [0.25 / 0.7, 0.45 / 0.7])  # decay 0: round 2 only
    audit = WeightAverageContribution(first_entry, use_for_weights=False, empty_value=0.0)
    np.testing.assert_allclose(audit(1, ["a", "b"], params, [1, 3]), [0.25, 0.75])
    assert audit.ledger.total["a"] > audit.ledger.total["b"]


@settings(max_examples=25, deadline=None)
@given(
    entries=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=5),
    counts=st.lists(st.integers(1, 50), min_size=5, max_size=5),
    mix=st.floats(0.0, 1.0),
)
def test_values_are_efficient_and_weights_a_distribution(entries, counts, mix):
    n = len(entries)
    params = [[np.array([e])] for e in entries]
    valuation = WeightAverageContribution(first_entry, mix=mix, empty_value=0.0)
    weights = valuation(1, [str(i) for i in range(n)], params, counts[:n])
    entry = valuation.ledger.rounds[0]
    grand = np.dot(entries, counts[:n]) / sum(counts[:n])
    assert sum(entry.values.values()) == pytest.approx(grand, abs=1e-9)
    assert np.all(weights >= 0) and weights.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [float("nan"), 1.5, -0.1, "high"])
def test_eval_fn_must_return_an_accuracy(bad):
    valuation = WeightAverageContribution(lambda params: bad)
    with pytest.raises(ValueError, match="eval_fn returned"):
        valuation(1, ["a", "b"], [[np.ones(2)], [np.zeros(2)]], [1, 1])


def test_different_architectures_and_nan_parameters_name_the_client():
    valuation = WeightAverageContribution(closeness)
    same = [np.ones(3)]
    with pytest.raises(ValueError, match=r"Client 'wide' sends parameter shapes \[\(4,\)\]"):
        valuation(1, ["a", "wide"], [same, [np.ones(4)]], [1, 1])
    with pytest.raises(ValueError, match=r"Client 'extra' .*one architecture"):
        valuation(1, ["a", "extra"], [same, [np.ones(3), np.ones(1)]], [1, 1])
    with pytest.raises(ValueError, match="Client 'bad' sends NaN"):
        valuation(1, ["a", "bad"], [same, [np.array([1.0, np.nan, 0.0])]], [1, 1])
    with pytest.raises(ValueError, match=r"clients \['b'\]"):
        valuation(1, ["a", "b"], [same, same], [1, 0])
    with pytest.raises(ValueError, match="global parameters have shapes"):
        valuation(1, ["a", "b"], [same, same], [1, 1], global_parameters=[np.ones(2)])


# --------------------------------------------------------------------------- wrappers, direct


def _reply(node_id: int, params: list[np.ndarray], num_examples: int) -> Message:
    metadata = Metadata(run_id=1, message_id=f"m{node_id}", src_node_id=node_id, dst_node_id=0,
                        reply_to_message_id="", group_id="1", created_at=0.0, ttl=60.0,
                        message_type="train")
    content = RecordDict({"arrays": ArrayRecord(params),
                          "metrics": MetricRecord({"num-examples": num_examples, "loss": 1.0})})
    return Message(content=content, metadata=metadata)


def _three_clients() -> list[list[np.ndarray]]:
    return [[TARGET + 0.1, np.ones(2)], [TARGET - 0.1, np.zeros(2)], [TARGET * 50, np.ones(2) * 9]]


def test_message_api_wrapper_hands_fedavg_reweighted_copies():
    from flwr.serverapp.strategy import FedAvg

    strategy = ContributionWeightedFedAvg(FedAvg(), closeness, mix=0.5)
    replies = [_reply(10 + i, p, n) for i, (p, n) in enumerate(zip(_three_clients(), [5, 10, 20]))]
    failed = Message(error=Error(code=0, reason="boom"), metadata=copy.copy(replies[0].metadata))
    arrays, metrics = strategy.aggregate_train(1, replies + [failed])
    weights = strategy.weight_history[1]
    assert set(weights) == {"10", "11", "12"} and weights["12"] == pytest.approx(0.5 * 20 / 35)
    expected = [sum(weights[str(10 + i)] * p[k] for i, p in enumerate(_three_clients()))
                for k in range(2)]
    for got, want in zip(arrays.to_numpy_ndarrays(), expected):
        np.testing.assert_allclose(got, want)
    assert metrics["loss"] == pytest.approx(1.0)
    assert [r.content["metrics"]["num-examples"] for r in replies] == [5, 10, 20]  # untouched
    assert strategy.round_contributions[1]["12"] < 0


def test_message_api_wrapper_errors():
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

    strategy = ContributionWeightedFedAvg(FedAvg(), closeness)
    good = _reply(1, [TARGET], 5)
    renamed = _reply(2, [TARGET], 5)
    renamed.content["arrays"] = ArrayRecord({"other": Array(TARGET)})
    with pytest.raises(InconsistentMessageReplies, match="Node 2 sends arrays"):
        strategy.aggregate_train(1, [good, renamed])
    no_count = _reply(3, [TARGET], 5)
    no_count.content["metrics"] = MetricRecord({"loss": 0.1})
    with pytest.raises(InconsistentMessageReplies, match="node 3 holds None under 'num-examples'"):
        strategy.aggregate_train(1, [good, no_count])
    with pytest.raises(ValueError, match=r"Client '5' sends parameter shapes"):
        strategy.aggregate_train(1, [good, _reply(5, [np.ones(4)], 5)])

    # Flower's DP wrapper averages through its inner FedAvg but has no weighted_by_key.
    dp = DifferentialPrivacyServerSideFixedClipping(FedAvg(), 1.0, 1.0, num_sampled_clients=2)
    with pytest.raises(ValueError, match="weighted_by_key"):
        ContributionWeightedFedAvg(dp, closeness)
    assert ContributionWeightedFedAvg(dp, closeness, weighted_by_key="num-examples")
    with pytest.raises(TypeError, match="ContributionWeightedFedAvgCompat"):
        from flwr.server.strategy import FedAvg as CompatFedAvg

        ContributionWeightedFedAvg(CompatFedAvg(), closeness)


def test_compat_wrapper_hands_fedavg_reweighted_copies():
    from flwr.server.strategy import FedAvg

    from flwr.server.client_manager import SimpleClientManager

    seen = []  # what FedAvg's metrics hook receives as num_examples

    def record_weights(pairs):
        seen.extend(n for n, _ in pairs)
        return {}

    inner = FedAvg(min_fit_clients=0, min_available_clients=0,
                   fit_metrics_aggregation_fn=record_weights)
    strategy = ContributionWeightedFedAvgCompat(inner, closeness, mix=0.5)
    results = [
        (GridClientProxy(20 + i, grid=None, run_id=1),
         FitRes(Status(Code.OK, ""), ndarrays_to_parameters(p), n, {}))
        for i, (p, n) in enumerate(zip(_three_clients(), [5, 10, 20]))
    ]
    strategy.configure_fit(1, ndarrays_to_parameters([TARGET * 0, np.zeros(2)]),
                           SimpleClientManager())  # no client connected: samples none
    parameters, _ = strategy.aggregate_fit(1, results, [])
    weights = strategy.weight_history[1]
    assert weights["22"] == pytest.approx(0.5 * 20 / 35)
    assert strategy.ledger.rounds[0].empty_value == pytest.approx(closeness([TARGET * 0]))
    expected = [sum(weights[str(20 + i)] * p[k] for i, p in enumerate(_three_clients()))
                for k in range(2)]
    for got, want in zip(parameters_to_ndarrays(parameters), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5)
    assert [res.num_examples for _, res in results] == [5, 10, 20]  # untouched
    assert all(isinstance(n, int) for n in seen)  # FitRes.num_examples stays an int
    assert seen == [round(weights[str(20 + i)] * WEIGHT_UNITS) for i in range(3)]


# --------------------------------------------------------------------------- simulation engine

NUM_CLIENTS, FREE_RIDER, ROUNDS = 4, 3, 2
# One Ray actor runs the four clients in turn: starting a second one (a Python process
# importing torch) costs more on two shared cores than the few seconds of training it saves.
BACKEND = {"client_resources": {"num_cpus": 2, "num_gpus": 0.0},
           "init_args": {"num_cpus": 2, "include_dashboard": False}}


def _mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, 10))


def _load(model: torch.nn.Module, params: list[np.ndarray]) -> torch.nn.Module:
    keys = list(model.state_dict())
    model.load_state_dict({k: torch.as_tensor(np.asarray(p, dtype=np.float32))
                           for k, p in zip(keys, params)})
    return model


@pytest.fixture(scope="module")
def digits_federation():
    """IID partitions of digits' train split, and the server's validation data (test split)."""
    from simulations.data.loaders import load_dataset
    from simulations.data.partitioning import PartitionerSpec, partition_indices

    train, test, _ = load_dataset("digits")
    parts = partition_indices(train.y, NUM_CLIENTS, PartitionerSpec("iid"), seed=0)
    clients = [(np.array(train.x[idx]), np.array(train.y[idx])) for idx in parts]
    val_x, val_y = torch.from_numpy(np.array(test.x)), torch.from_numpy(np.array(test.y))

    def eval_fn(params: list[np.ndarray]) -> float:
        with torch.no_grad():
            predictions = _load(_mlp(), params)(val_x).argmax(1)
        return float((predictions == val_y).float().mean())

    torch.manual_seed(0)
    initial = [v.numpy().copy() for v in _mlp().state_dict().values()]
    return clients, eval_fn, initial


def _local_update(clients, partition: int, params: list[np.ndarray], server_round: int):
    """Two epochs of SGD for an honest client; standard-normal weights for the free-rider."""
    x, y = clients[partition]
    if partition == FREE_RIDER:  # claims its sample count, trains nothing
        rng = np.random.default_rng([partition, server_round])
        return [rng.standard_normal(p.shape).astype(np.float32) for p in params], len(y)
    torch.set_num_threads(1)
    torch.manual_seed(1000 * server_round + partition)
    model = _load(_mlp(), params)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    xs, ys = torch.tensor(x), torch.tensor(y)  # the actor's copies are read-only
    for _ in range(2):
        for batch in torch.randperm(len(ys)).split(32):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(xs[batch]), ys[batch]).backward()
            optimizer.step()
    return [v.detach().numpy().copy() for v in model.state_dict().values()], len(y)


def _check_free_rider_loses(strategy, eval_fn, final_params):
    totals = strategy.ledger.total
    assert set(totals) == {str(i) for i in range(NUM_CLIENTS)}
    assert sorted(strategy.round_contributions) == [1, 2]
    assert min(totals, key=totals.get) == str(FREE_RIDER)
    assert totals[str(FREE_RIDER)] < 0
    for weights in strategy.weight_history.values():
        assert weights[str(FREE_RIDER)] == 0.0
        assert min(w for c, w in weights.items() if c != str(FREE_RIDER)) > 0.0
    # The free-rider's noise never reached the global model; sample-count weights of the
    # same replies (v of the grand coalition) would have let it wreck the average.
    assert eval_fn(final_params) > 0.8
    assert strategy.ledger.rounds[-1].grand_value < 0.5


@pytest.mark.integration
def test_message_api_wrapper_in_simulation(digits_federation):
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    clients, eval_fn, initial = digits_federation
    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context) -> Message:
        partition = int(context.node_config["partition-id"])
        params, n = _local_update(clients, partition, msg.content["arrays"].to_numpy_ndarrays(),
                                  int(msg.content["config"]["server-round"]))
        metrics = MetricRecord({"num-examples": n, "client-id": partition})
        return Message(RecordDict({"arrays": ArrayRecord(params), "metrics": metrics}),
                       reply_to=msg)

    inner = FedAvg(fraction_evaluate=0.0, min_train_nodes=NUM_CLIENTS,
                   min_available_nodes=NUM_CLIENTS)
    strategy = ContributionWeightedFedAvg(inner, eval_fn)
    sink = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid, context) -> None:
        sink["result"] = strategy.start(grid=grid, initial_arrays=ArrayRecord(initial),
                                        num_rounds=ROUNDS, train_config=ConfigRecord())

    run_simulation(server_app=server_app, client_app=client_app,
                   num_supernodes=NUM_CLIENTS, backend_config=BACKEND)
    _check_free_rider_loses(strategy, eval_fn, sink["result"].arrays.to_numpy_ndarrays())


@pytest.mark.integration
def test_compat_wrapper_in_simulation(digits_federation):
    from flwr.client import NumPyClient
    from flwr.clientapp import ClientApp
    from flwr.server import ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    clients, eval_fn, initial = digits_federation

    class DigitsClient(NumPyClient):
        def __init__(self, partition: int) -> None:
            self.partition = partition

        def fit(self, parameters, config):
            params, n = _local_update(clients, self.partition, parameters,
                                      int(config["server-round"]))
            return params, n, {"client-id": self.partition}

    client_app = ClientApp(client_fn=lambda context: DigitsClient(
        int(context.node_config["partition-id"])).to_client())
    sink = {}

    def keep_final(server_round: int, parameters, config):
        sink["final"] = parameters  # centralized evaluate hook: sees every round's global model
        return None

    inner = FedAvg(fraction_evaluate=0.0, min_fit_clients=NUM_CLIENTS,
                   min_available_clients=NUM_CLIENTS, evaluate_fn=keep_final,
                   initial_parameters=ndarrays_to_parameters(initial),
                   on_fit_config_fn=lambda server_round: {"server-round": server_round})
    strategy = ContributionWeightedFedAvgCompat(inner, eval_fn)
    server_app = ServerApp(server_fn=lambda context: ServerAppComponents(
        strategy=strategy, config=ServerConfig(num_rounds=ROUNDS)))
    run_simulation(server_app=server_app, client_app=client_app,
                   num_supernodes=NUM_CLIENTS, backend_config=BACKEND)
    _check_free_rider_loses(strategy, eval_fn, sink["final"])
