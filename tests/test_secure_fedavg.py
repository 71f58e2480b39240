"""Paillier secure FedAvg: the shared core, its errors, keys, and both Flower faces.

Keys are real 2048-bit keys from the key dealer (one pair per module). The core tests
check the encrypted weighted mean against FedAvg computed in float64; the Message-API
tests run the wrapper and the client mod in-process (messages serialized both ways),
then both faces in Flower's simulation engine (Ray) with three numpy softmax-regression
clients on scikit-learn digits, against plain FedAvg in the same setting.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from uuid import uuid4

import numpy as np
import phe
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.serde import message_from_proto, message_to_proto

from clients.fedavg.paillier import PaillierFedAvgMod, decrypt_model_record
from flhet_strategies.privacy.paillier import (
    InsecureKeyError,
    KeyHolder,
    KeyMismatchError,
    MalformedPayloadError,
    SecureSumError,
    SecureSumOverflowError,
    deal_keys,
    load_key_holder,
    load_public_key,
)
from flhet_strategies.privacy.paillier.model_client import ModelSumClient
from flhet_strategies.privacy.paillier.model_server import ModelSumServer
from flhet_strategies.privacy.paillier.model_updates import SecureModelSpec
from flhet_strategies.faces.records import arrays_to_record
from flhet_strategies.privacy.paillier.fedavg import SecureFedAvg
from flhet_strategies.privacy.paillier.fedavg import SecureFedAvgCompat
from flhet_strategies import wire
from key_audit import assert_holds_no_private_key

MODEL = {"conv": np.zeros((4, 3, 5), np.float32), "bias": np.zeros(7, np.float64),
         "head": np.zeros((30, 10), np.float32)}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    files = deal_keys(tmp_path_factory.mktemp("keys"))
    return files, load_key_holder(files.private_path), load_public_key(files.public_path)


@pytest.fixture(scope="module")
def holder(keys) -> KeyHolder:
    return keys[1]


@pytest.fixture(scope="module")
def other_holder() -> KeyHolder:
    return KeyHolder.generate()


def parties(holder: KeyHolder, **settings):
    settings = {"clip_bound": 1.0, "bits": 16, "weighting": "sample_count",
                "max_examples": 1000, "vote_bits": 16, **settings}
    server = ModelSumServer(holder.public_key, **settings)
    server.set_structure(MODEL)
    return server, ModelSumClient(holder)


def client_models(count: int, bound: float, seed: int = 0) -> list[dict]:
    """Random models with negatives and extremes: +-B exactly, beyond B, huge, zero, tiny."""
    rng = np.random.default_rng(seed)
    models = []
    for i in range(count):
        model = {k: (rng.uniform(-1, 1, v.shape) * bound).astype(v.dtype) for k, v in MODEL.items()}
        model["conv"][0, 0, :] = [bound, -bound, 3 * bound, -1e30, 0.0][i % 5:] + \
            [bound, -bound, 3 * bound, -1e30, 0.0][:i % 5]
        model["bias"][:3] = [-0.0, 1e-12, -bound]
        models.append(model)
    return models


def fedavg(models: list[dict], weights: list[float], bound: float) -> dict:
    """Plain FedAvg of the clipped models, in float64."""
    total = float(sum(weights))
    return {k: sum(w * np.clip(m[k].astype(np.float64), -bound, bound)
                   for m, w in zip(models, weights)) / total for k in MODEL}


# --------------------------------------------------------------------------- core


@pytest.mark.parametrize(("settings", "weights"), [
    ({"bits": 16, "max_examples": 1000}, [100, 999, 1, 250]),             # exact votes
    ({"bits": 20, "weighting": "uniform", "max_examples": None}, [1, 1, 1, 1]),
    ({"bits": 12, "max_examples": 10**6, "vote_bits": 8}, [10**6, 3000, 1, 500_000]),
    ({"bits": 8, "clip_bound": 0.01, "max_examples": 50}, [50, 1, 7, 20]),
])
def test_encrypted_weighted_mean_equals_fedavg_to_the_quantization_bound(
        holder, settings, weights) -> None:
    server, client = parties(holder, **settings)
    spec = server.spec(len(weights))
    bound = spec.clip_bound
    models = client_models(len(weights), bound)
    shares = [(str(i), client.encrypt(spec, m, w).payload) for i, (m, w) in
              enumerate(zip(models, weights))]
    outcome = server.aggregate(spec, shares)
    assert outcome.accepted == ["0", "1", "2", "3"] and outcome.rejected == {}
    result = client.decrypt(spec, outcome.encrypted_sum)
    expected = fedavg(models, weights, bound)
    assert result.num_summands == 4
    for name, array in zip(spec.names, result.arrays):
        assert array.dtype == MODEL[name].dtype and array.shape == MODEL[name].shape
        assert np.max(np.abs(array - expected[name])) <= result.error_bound
    if spec.vote_unit == 1:   # exact weights: the bound is half a step (plus float rounding)
        assert result.error_bound < 0.51 * spec.step + bound * 2e-7
        assert result.total_weight == sum(weights) or spec.weighting == "uniform"
    else:
        assert spec.vote_unit == math.ceil(10**6 / 255)
        assert result.error_bound > spec.step   # the vote-rounding term is counted


def test_clipped_values_are_counted_and_dropouts_are_not_in_the_sum(holder) -> None:
    server, client = parties(holder)
    spec = server.spec(3)
    models, weights = client_models(3, 1.0, seed=1), [10, 20, 30]
    encrypted = [client.encrypt(spec, m, w) for m, w in zip(models, weights)]
    assert [e.num_clipped for e in encrypted] == [2, 2, 2]     # 3B and -1e30 in each
    outcome = server.aggregate(spec, [("0", encrypted[0].payload), ("2", encrypted[2].payload)])
    result = client.decrypt(spec, outcome.encrypted_sum)
    expected = fedavg([models[0], models[2]], [10, 30], 1.0)
    assert result.num_summands == 2 and result.total_weight == 40
    for name, array in zip(spec.names, result.arrays):
        assert np.max(np.abs(array - expected[name])) <= result.error_bound


def test_overflow_raises_and_never_wraps(holder) -> None:
    server, client = parties(holder)
    spec = server.spec(2)
    models = client_models(3, 1.0)
    shares = [(str(i), client.encrypt(spec, m, 5).payload) for i, m in enumerate(models)]
    outcome = server.aggregate(spec, shares)            # carry room for 2 clients, not 3
    assert outcome.accepted == ["0", "1"] and "carries" in outcome.rejected["2"]
    with pytest.raises(ValueError, match="exceeds the public bound"):
        client.encrypt(spec, models[0], 1001)          # more examples than announced
    with pytest.raises(ValueError, match="NaN"):
        client.encrypt(spec, {**models[0], "bias": np.full(7, np.nan)}, 5)
    # A rogue client encrypts top levels with weight 1: the sum cannot come from honest
    # shares and decoding raises instead of returning a wrong model.
    values = np.full(spec.num_values, float((1 << spec.value_bits) - 1))
    values[-1] = 1.0
    rogue = client.codec(spec).encrypt(values).to_array()
    honest = client.encrypt(spec, models[0], 5).payload
    total = server.aggregate(spec, [("0", honest), ("1", rogue)])
    assert total.accepted == ["0", "1"]                # the server cannot tell ...
    with pytest.raises(SecureSumOverflowError, match="level sum|weight totals"):
        client.decrypt(spec, total.encrypted_sum)      # ... the key holder does
    with pytest.raises(ValueError, match="at most 32"):
        parties(holder, bits=24, vote_bits=16, max_examples=60_000)


def test_wrong_key_and_malformed_payloads_give_clear_errors(holder, other_holder) -> None:
    server, client = parties(holder)
    spec = server.spec(3)
    model = client_models(1, 1.0)[0]
    good = client.encrypt(spec, model, 5).payload
    foreign_spec = replace(spec, key_fingerprint=other_holder.fingerprint.hex())
    foreign = ModelSumClient(other_holder).encrypt(foreign_spec, model, 5).payload
    other_bits = parties(holder, bits=12)[0].spec(3)
    wrong_layout = client.encrypt(other_bits, model, 5).payload
    outcome = server.aggregate(spec, [
        ("0", good), ("1", foreign), ("2", good[:-7]), ("3", wrong_layout),
        ("4", model["head"]), ("5", good)])
    assert outcome.accepted == ["0", "5"]
    assert "encrypted under key" in outcome.rejected["1"]
    assert "bytes" in outcome.rejected["2"]
    assert "layout" in outcome.rejected["3"]
    assert "1-D uint8" in outcome.rejected["4"]
    # The client refuses a spec for another key, and a sum under another key.
    with pytest.raises(ValueError, match="server asks for key"):
        ModelSumClient(other_holder).decrypt(spec, outcome.encrypted_sum)
    with pytest.raises(KeyMismatchError):
        ModelSumClient(other_holder).decrypt(foreign_spec, outcome.encrypted_sum)
    with pytest.raises(MalformedPayloadError, match="bytes"):
        client.decrypt(spec, outcome.encrypted_sum[:-1])
    corrupted = outcome.encrypted_sum.copy()
    corrupted[-300:-290] ^= 0xFF                       # inside the last ciphertext
    with pytest.raises(SecureSumError):
        client.decrypt(spec, corrupted)
    assert client.decrypt(spec, outcome.encrypted_sum).num_summands == 2


def test_spec_travels_as_json_and_refuses_bad_settings(holder) -> None:
    spec = parties(holder)[0].spec(4)
    assert SecureModelSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="invalid secure FedAvg spec"):
        SecureModelSpec.from_json('{"names": ["a"]}')
    with pytest.raises(ValueError, match="clip_bound"):
        parties(holder, clip_bound=0.0)
    with pytest.raises(ValueError, match="max_examples"):
        parties(holder, max_examples=None)
    with pytest.raises(ValueError, match="floating"):
        SecureModelSpec.for_arrays({"steps": np.zeros(1, np.int64)}, clip_bound=1.0,
                                   bits=8, max_summands=2, weighting="uniform")
    with pytest.raises(ValueError, match="shape"):
        spec.check_arrays({**MODEL, "head": np.zeros((10, 30), np.float32)})


def test_server_side_objects_refuse_private_and_short_keys(holder) -> None:
    from flwr.server.strategy import FedAvg as CompatFedAvg
    from flwr.serverapp.strategy import FedAdam, FedAvg

    for key in (holder, holder._private_key):
        with pytest.raises(TypeError, match="private key"):
            SecureFedAvg(FedAvg(), key, clip_bound=1.0, max_examples=10)
        with pytest.raises(TypeError, match="private key"):
            SecureFedAvgCompat(CompatFedAvg(), key, clip_bound=1.0, max_examples=10)
    short, _ = phe.generate_paillier_keypair(n_length=1024)
    with pytest.raises(InsecureKeyError, match="2048"):
        SecureFedAvg(FedAvg(), short, clip_bound=1.0, max_examples=10)
    with pytest.raises(TypeError, match="aggregation"):
        SecureFedAvg(FedAdam(), holder.public_key, clip_bound=1.0, max_examples=10)
    with pytest.raises(TypeError, match="SecureFedAvgCompat"):
        SecureFedAvg(CompatFedAvg(), holder.public_key, clip_bound=1.0, max_examples=10)


# --------------------------------------------------------------------------- in-process

NODES = (11, 12, 13)


@pytest.fixture
def task_identity():
    """What a ServerApp process has set when a strategy builds messages."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


class LocalGrid:
    """Grid stand-in: runs each node's ClientApp in-process, messages serialized both ways."""

    def __init__(self, apps: dict[int, ClientApp]) -> None:
        self.apps = apps

    def get_node_ids(self) -> list[int]:
        return list(self.apps)

    def send_and_receive(self, messages, timeout=None) -> list[Message]:
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            node = msg.metadata.dst_node_id
            ctx = Context(run_id=1, node_id=node, node_config={}, state=RecordDict(),
                          run_config={})
            replies.append(_transported(self.apps[node](_transported(msg), ctx)))
        return replies


def _transported(msg: Message) -> Message:
    return message_from_proto(message_to_proto(msg))


def _echo_app(mods: list, shift: float, seen: list) -> ClientApp:
    """Trains by adding ``shift`` to every weight; records the model it was given."""
    app = ClientApp(mods=mods)

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        arrays = msg.content["arrays"].to_numpy_ndarrays()
        seen.append(arrays)
        return Message(RecordDict({
            "arrays": ArrayRecord([a + np.asarray(shift, a.dtype) for a in arrays]),
            "metrics": MetricRecord({"num-examples": 10 + int(10 * shift)})}), reply_to=msg)

    return app


def test_wrapper_and_mod_in_process_reject_plaintext_and_foreign_keys(
        holder, other_holder, task_identity):
    from flwr.serverapp.strategy import FedAvg

    seen: dict[int, list] = {node: [] for node in NODES}
    initial = ArrayRecord([np.full((3, 2), 0.5, np.float32), np.zeros(4, np.float32)])
    apps = {11: _echo_app([PaillierFedAvgMod(key_holder=holder)], 0.1, seen[11]),
            12: _echo_app([PaillierFedAvgMod(key_holder=holder)], 0.3, seen[12]),
            13: _echo_app([], 0.9, seen[13])}                     # no mod: plaintext reply
    strategy = SecureFedAvg(FedAvg(fraction_evaluate=0.0, min_available_nodes=3),
                            holder.public_key, clip_bound=2.0, bits=16, max_examples=100)
    result = strategy.start(grid=LocalGrid(apps), initial_arrays=initial, num_rounds=2)
    for entry in strategy.history:
        assert entry["accepted"] == ["11", "12"] and "plaintext" in entry["rejected"]["13"]
        assert entry["num_failures"] == 0
    # Round 2: node 13 got the encrypted sum (it cannot read it); 11 and 12 the model.
    assert seen[13][1][0].dtype == np.uint8
    expected = (11 * (0.5 + 0.1) + 13 * (0.5 + 0.3)) / 24
    np.testing.assert_allclose(seen[11][1][0], expected, atol=strategy.spec().step)
    final = decrypt_model_record(result.arrays, strategy.spec(), holder).to_numpy_ndarrays()
    np.testing.assert_allclose(final[0], (11 * (expected + 0.1) + 13 * (expected + 0.3)) / 24,
                               atol=2 * strategy.spec().step)
    assert result.train_metrics_clientapp[2][wire.CLIPPED_METRIC] == 0.0
    # A client with another key refuses the round (its mod errors); one without a spec
    # would send plaintext weights, so the mod refuses that too.
    foreign = {**apps, 13: _echo_app([PaillierFedAvgMod(key_holder=other_holder)], 0.9, [])}
    strategy = SecureFedAvg(FedAvg(fraction_evaluate=0.0, min_available_nodes=3),
                            holder.public_key, clip_bound=2.0, bits=16, max_examples=100)
    strategy.start(grid=LocalGrid(foreign), initial_arrays=initial, num_rounds=1)
    assert strategy.history[0]["num_failures"] == 1 and strategy.history[0]["rejected"] == {}
    plain = FedAvg(fraction_evaluate=0.0, min_available_nodes=3)
    refused = plain.start(grid=LocalGrid(foreign), initial_arrays=initial, num_rounds=1)
    assert len(refused.arrays) == 0 and not refused.train_metrics_clientapp
    assert_holds_no_private_key(strategy, holder)


# --------------------------------------------------------------------------- simulations

SIZES = (90, 120, 150)            # examples per client: FedAvg weights differ
CLASSES, FEATURES, STEPS, ROUNDS = 10, 64, 5, 2
CLIP, BITS = 1.0, 16
BACKEND = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
           "init_args": {"num_cpus": 2, "include_dashboard": False}}


def _digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    return (x[order] / 16.0), y[order]


def client_data(partition: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = _digits()
    start = sum(SIZES[:partition])
    return x[start:start + SIZES[partition]], y[start:start + SIZES[partition]]


def learning_rate() -> float:
    """1 / L for softmax regression on digits: L <= max ||[x, 1]||^2 / 2, so every local
    gradient step (and FedAvg of them) is non-expansive."""
    x, _ = _digits()
    return 2.0 / (np.max(np.sum(x**2, axis=1)) + 1.0)


def initial_model() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [(rng.standard_normal((FEATURES, CLASSES)) * 0.01).astype(np.float32),
            np.zeros(CLASSES, np.float32)]


def local_train(params: list[np.ndarray], partition: int) -> list[np.ndarray]:
    """STEPS full-batch gradient steps of softmax regression, in float64."""
    x, y = client_data(partition)
    w, b = (np.array(p, dtype=np.float64) for p in params)
    onehot, lr = np.eye(CLASSES)[y], learning_rate()
    for _ in range(STEPS):
        z = x @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        grad = (p - onehot) / len(y)
        w -= lr * x.T @ grad
        b -= lr * grad.sum(0)
    return [w.astype(np.float32), b.astype(np.float32)]


def accuracy(params: list[np.ndarray], partition: int) -> float:
    x, y = client_data(partition)
    return float(np.mean(np.argmax(x @ params[0] + params[1], axis=1) == y))


def reference_fedavg() -> list[np.ndarray]:
    """Plain FedAvg of the same clients, computed directly (float64 mean)."""
    model = initial_model()
    for _ in range(ROUNDS):
        trained = [local_train(model, i) for i in range(len(SIZES))]
        model = [sum(n * t[k].astype(np.float64) for n, t in zip(SIZES, trained)) / sum(SIZES)
                 for k in range(2)]
        model = [a.astype(np.float32) for a in model]
    return model


def check_against_plain(secure: list[np.ndarray], plain: list[np.ndarray],
                        spec: SecureModelSpec) -> None:
    """Each round adds at most ``error_bound`` per entry (plus float32 rounding of plain
    FedAvg, 1e-6); local training and averaging are non-expansive in L2, so after ROUNDS
    rounds the L2 distance is at most ROUNDS * sqrt(P) * (bound + 1e-6)."""
    per_entry = spec.error_bound_model(len(SIZES), sum(SIZES)) + 1e-6
    bound = ROUNDS * math.sqrt(spec.num_params) * per_entry
    distance = math.sqrt(sum(float(np.sum((s.astype(np.float64) - p) ** 2))
                             for s, p in zip(secure, plain)))
    moved = math.sqrt(sum(float(np.sum((p.astype(np.float64) - i) ** 2))
                          for p, i in zip(plain, initial_model())))
    assert distance <= bound
    assert moved > 100 * bound       # the model really trained: the bound is not vacuous


@pytest.mark.integration
def test_message_api_secure_fedavg_matches_plain_fedavg_in_simulation(keys) -> None:
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    files, holder, public_key = keys
    client_app = ClientApp(mods=[PaillierFedAvgMod(files.private_path,
                                                   plaintext_phases=("plaintext",))])

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        params = local_train(msg.content["arrays"].to_numpy_ndarrays(), partition)
        return Message(RecordDict({
            "arrays": ArrayRecord(params),
            "metrics": MetricRecord({"num-examples": SIZES[partition]})}), reply_to=msg)

    @client_app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        acc = accuracy(msg.content["arrays"].to_numpy_ndarrays(), partition)
        return Message(RecordDict({"metrics": MetricRecord(
            {"num-examples": SIZES[partition], "accuracy": acc})}), reply_to=msg)

    def inner() -> FedAvg:
        return FedAvg(min_train_nodes=3, min_evaluate_nodes=3, min_available_nodes=3)

    secure = SecureFedAvg(inner(), public_key, clip_bound=CLIP, bits=BITS,
                          max_examples=max(SIZES))
    initial, sink = ArrayRecord(initial_model()), {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid, context) -> None:
        sink["plain"] = inner().start(
            grid=grid, initial_arrays=initial, num_rounds=ROUNDS,
            train_config=ConfigRecord({"flhet-phase": "plaintext"}))
        sink["secure"] = secure.start(grid=grid, initial_arrays=initial, num_rounds=ROUNDS)

    start = time.perf_counter()
    run_simulation(server_app=server_app, client_app=client_app,
                   num_supernodes=len(SIZES), backend_config=BACKEND)
    print(f"message-API simulation: {time.perf_counter() - start:.1f} s")

    plain = sink["plain"].arrays.to_numpy_ndarrays()
    np.testing.assert_allclose(plain[0], reference_fedavg()[0], atol=1e-5)
    result = sink["secure"]
    assert list(result.arrays.keys()) == [wire.FEDAVG_SUM]   # the server holds ciphertexts
    spec = secure.spec(len(SIZES))
    final = decrypt_model_record(result.arrays, spec, holder).to_numpy_ndarrays()
    check_against_plain(final, plain, spec)
    # The clients evaluated the decrypted model, reaching what plain FedAvg reaches.
    for rnd in range(1, ROUNDS + 1):
        assert result.evaluate_metrics_clientapp[rnd]["accuracy"] == pytest.approx(
            sink["plain"].evaluate_metrics_clientapp[rnd]["accuracy"], abs=0.01)
        assert result.train_metrics_clientapp[rnd][wire.CLIPPED_METRIC] == 0.0
    share_bytes = spec.layout(2047).num_ciphertexts * 512
    history = secure.history
    assert [h["round"] for h in history] == [1, 2]
    for h in history:
        assert len(h["accepted"]) == 3 and h["rejected"] == {} and h["num_failures"] == 0
        assert 3 * share_bytes < h["bytes_up"] < 3 * (share_bytes + 1024)
        assert 3 * share_bytes < h["bytes_down_evaluate"] < 3 * (share_bytes + 1024)
    assert history[0]["bytes_down"] < 3 * (spec.num_params * 4 + 1024)   # plaintext init
    assert 3 * share_bytes < history[1]["bytes_down"] < 3 * (share_bytes + 1024)
    assert_holds_no_private_key(secure, holder)


@pytest.mark.integration
def test_compat_api_secure_fedavg_matches_plain_fedavg_in_simulation(keys) -> None:
    from flwr.client import NumPyClient
    from flwr.common import ndarrays_to_parameters
    from flwr.server import ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from clients.fedavg.paillier import PaillierNumPyClient

    files, holder, public_key = keys

    class SoftmaxClient(NumPyClient):
        def __init__(self, partition: int) -> None:
            self.partition = partition

        def fit(self, parameters, config):
            return local_train(parameters, self.partition), SIZES[self.partition], {}

        def evaluate(self, parameters, config):
            acc = accuracy(parameters, self.partition)
            return 1.0 - acc, SIZES[self.partition], {"accuracy": acc}

    def client_fn(context: Context):
        client = SoftmaxClient(int(context.node_config["partition-id"]))
        return PaillierNumPyClient(client, files.private_path, context=context).to_client()

    evaluated: list[float] = []

    def evaluate_metrics(results):
        total = sum(n for n, _ in results)
        evaluated.append(sum(n * m["accuracy"] for n, m in results) / total)
        return {"accuracy": evaluated[-1]}

    inner = FedAvg(min_fit_clients=3, min_evaluate_clients=3, min_available_clients=3,
                   initial_parameters=ndarrays_to_parameters(initial_model()),
                   evaluate_metrics_aggregation_fn=evaluate_metrics)
    strategy = SecureFedAvgCompat(inner, public_key, clip_bound=CLIP, bits=BITS,
                                  max_examples=max(SIZES))
    server_app = ServerApp(server_fn=lambda context: ServerAppComponents(
        strategy=strategy, config=ServerConfig(num_rounds=ROUNDS)))
    start = time.perf_counter()
    run_simulation(server_app=server_app, client_app=ClientApp(client_fn=client_fn),
                   num_supernodes=len(SIZES), backend_config=BACKEND)
    print(f"compat simulation: {time.perf_counter() - start:.1f} s")

    spec = strategy.spec(len(SIZES))
    record = arrays_to_record({wire.FEDAVG_SUM: strategy.encrypted_model})
    final = decrypt_model_record(record, spec, holder).to_numpy_ndarrays()
    reference = reference_fedavg()
    check_against_plain(final, reference, spec)
    plain_accuracy = np.average([accuracy(reference, i) for i in range(3)], weights=SIZES)
    assert len(evaluated) == ROUNDS
    assert evaluated[-1] == pytest.approx(plain_accuracy, abs=0.01)
    for h in strategy.history:
        assert len(h["accepted"]) == 3 and h["rejected"] == {} and h["num_failures"] == 0
    assert strategy.history[1]["bytes_down"] > 3 * spec.layout(2047).num_ciphertexts * 512
    assert_holds_no_private_key(strategy, holder)
