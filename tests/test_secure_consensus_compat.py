"""SecureConsensusCompat (server) and SecureConsensusNumPyClient (client), Flower's compat API.

The in-process tests run Flower's own compat ``Server`` loop (``flwr.server.Server.fit``)
over ``ClientProxy`` s that deliver each instruction to a real ``NumPyClient.to_client()``
after converting it to a ``RecordDict`` and back, as the runtime does; keys are real
2048-bit Paillier keys. The integration test runs two rounds in Flower's simulation
engine (Ray) with ``ServerApp(server_fn=...)`` and ``ClientApp(client_fn=...)`` on digits,
one of the four clients left unwrapped.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.client import NumPyClient
from flwr.common import parameters_to_ndarrays
from flwr.server.client_manager import SimpleClientManager
from flwr.server.server import Server
from inprocess_proxy import InProcessProxy

from clients.secure_consensus_numpy_client import SecureConsensusNumPyClient
from flhet_strategies.compat_api import FedConsensusCompat
from flhet_strategies.aggregation.logit_consensus import ConsensusConfig, logit_consensus, softmax
from flhet_strategies.core.distillation import PLAN_ARRAY_KEYS, RoundPlan
from flhet_strategies.core.secure_consensus import (
    DECRYPT_FAILED_METRIC,
    DECRYPT_REQUEST_KEY,
    ENCRYPTED_CONSENSUS_ARRAY,
    SEALED_CONSENSUS_ARRAY,
    SPEC_CONFIG_KEY,
    SecureConsensusSpec,
)
from flhet_strategies.privacy.paillier import EncryptedVector, KeyHolder
from flhet_strategies.message_api import FedConsensus
from flhet_strategies.secure_consensus_compat import (
    DECRYPT_ERROR_METRIC,
    SECURE_PLAN_ARRAY_KEYS,
    SecureConsensusCompat,
)
from key_audit import assert_holds_no_private_key

NUM_PROXY, CLASSES, PER_ROUND = 300, 10, 40
COUNTS = np.array([
    [0, 0, 0, 40, 50, 60, 70, 80, 90, 100],
    [100, 90, 80, 70, 0, 0, 0, 10, 20, 30],
    [5, 5, 5, 5, 5, 5, 5, 5, 5, 5],
    [30, 30, 30, 30, 30, 30, 30, 30, 30, 30],
])


@pytest.fixture(scope="module")
def holder() -> KeyHolder:
    return KeyHolder.generate()


@pytest.fixture(scope="module")
def other_holder() -> KeyHolder:
    return KeyHolder.generate()


def client_logits(client_id: int, server_round: int, rows: int) -> np.ndarray:
    rng = np.random.default_rng([client_id, server_round])
    return (rng.normal(size=(rows, CLASSES)) * 3).astype(np.float32)


class EchoDistillationClient(NumPyClient):
    """Speaks flhet's compat plan like DistillationNumPyClient, with fixed logits per round.

    ``strict`` refuses plans of other than three arrays (as DistillationNumPyClient does);
    a lenient one reads the first three and replies in plaintext anyway.
    """

    def __init__(self, client_id: int, strict: bool = True) -> None:
        self.client_id = client_id
        self.strict = strict
        self.seen: list[RoundPlan] = []

    def fit(self, parameters, config):
        if self.strict and len(parameters) != len(PLAN_ARRAY_KEYS):
            raise ValueError(f"expected 3 plan arrays, got {len(parameters)}")
        plan = RoundPlan.from_arrays(int(config["server-round"]),
                                     dict(zip(PLAN_ARRAY_KEYS, parameters[:3])))
        self.seen.append(plan)
        logits = client_logits(self.client_id, plan.server_round, len(plan.proxy_indices))
        metrics = {"client-id": self.client_id, "train_loss": 1.0, "kd_loss": 0.5}
        return [logits, COUNTS[self.client_id]], int(COUNTS[self.client_id].sum()), metrics

    def evaluate(self, parameters, config):
        return 0.5, 10, {"client_accuracy": 0.5, "global_accuracy": 0.4,
                         "client-id": self.client_id}


def secure_strategy(holder: KeyHolder, decryption: str = "delegate", num_rounds: int = 3,
                    **inner) -> SecureConsensusCompat:
    fed = FedConsensusCompat(num_proxy=NUM_PROXY, num_classes=CLASSES, num_rounds=num_rounds,
                             proxy_per_round=PER_ROUND, min_available_clients=4, **inner)
    return SecureConsensusCompat(fed, holder.public_key, max_examples=1000, decryption=decryption)


def wrapped(holder: KeyHolder, client_id: int, **options) -> SecureConsensusNumPyClient:
    return SecureConsensusNumPyClient(EchoDistillationClient(client_id), key_holder=holder,
                                      **options)


def run_server(strategy, clients: dict[int, NumPyClient], num_rounds: int):
    manager = SimpleClientManager()
    for client_id, client in clients.items():
        manager.register(InProcessProxy(str(client_id), client))
    history, _ = Server(client_manager=manager, strategy=strategy).fit(num_rounds, timeout=None)
    return history


def echo(client: NumPyClient) -> EchoDistillationClient:
    return client.client if isinstance(client, SecureConsensusNumPyClient) else client


def expected_decryption(spec: SecureConsensusSpec, server_round: int, arrived: list[int]):
    """What decrypting the sum of ``arrived`` clients' shares gives (exact integers)."""
    sums = sum(spec.encode(client_logits(c, server_round, spec.num_samples), COUNTS[c],
                           int(COUNTS[c].sum())) for c in arrived)
    return spec.decode(sums, len(arrived))


def plaintext_mean(spec: SecureConsensusSpec, server_round: int, arrived: list[int]) -> np.ndarray:
    """The plaintext vote-weighted mean probability (sample counts x class counts)."""
    probs = np.stack([softmax(client_logits(c, server_round, spec.num_samples),
                              spec.temperature) for c in arrived])
    votes = COUNTS[arrived].sum(axis=1, keepdims=True) * COUNTS[arrived].astype(float)
    weights = votes / votes.sum(axis=0, keepdims=True)
    return np.einsum("ic,isc->sc", weights, probs)


# ---------------------------------------------------------------- the protocol end to end


@pytest.mark.parametrize("decryption", ["delegate", "every_client"])
def test_compat_rounds_give_every_client_the_consensus_to_the_quantization_bound(
    holder, decryption
) -> None:
    strategy = secure_strategy(holder, decryption)
    clients = {cid: wrapped(holder, cid) for cid in range(4)}
    run_server(strategy, clients, 3)

    history = strategy.history
    assert [h["round"] for h in history] == [1, 2, 3]
    mode = "delegated" if decryption == "delegate" else "every_client"
    assert [h["consensus_decryption"] for h in history] == [None, mode, mode]
    for h in history:
        assert h["accepted"] == ["0", "1", "2", "3"] and h["num_failures"] == 0
        assert h["client_accuracy_mean"] == 0.5 and set(h["per_client"]) == {"0", "1", "2", "3"}
    assert len(echo(clients[0]).seen[0].consensus_indices) == 0      # round 1: none yet
    for server_round in (1, 2):   # round r + 1 distills on round r's consensus
        spec = strategy.spec(server_round, 4)
        received = [echo(clients[cid]).seen[server_round] for cid in range(4)]
        np.testing.assert_array_equal(received[0].consensus_indices,
                                      strategy.server.protocol.proxy_indices(server_round))
        for plan in received:
            np.testing.assert_array_equal(plan.consensus, received[0].consensus)   # all alike
        result = expected_decryption(spec, server_round, [0, 1, 2, 3])
        np.testing.assert_allclose(received[0].consensus, result.consensus, atol=1e-6)
        error = np.abs(result.mean_probabilities - plaintext_mean(spec, server_round, [0, 1, 2, 3]))
        assert np.all(error <= result.error_bound[None, :] + 1e-12)
        plaintext = logit_consensus(
            np.stack([client_logits(c, server_round, PER_ROUND) for c in range(4)]),
            COUNTS.sum(axis=1).astype(float), ConsensusConfig(), COUNTS)
        assert np.abs(received[0].consensus - plaintext).mean() < 2e-3
        assert np.mean(received[0].consensus.argmax(1) == plaintext.argmax(1)) >= 0.95
    # The server kept ciphertexts only; the last one is round 3's sum of four shares.
    indices, encrypted = strategy.encrypted_consensus
    assert encrypted.dtype == np.uint8
    assert EncryptedVector.from_array(encrypted, holder.public_key).num_summands == 4
    np.testing.assert_array_equal(indices, strategy.server.protocol.proxy_indices(3))
    assert_holds_no_private_key(strategy, holder)


def test_the_wire_format_holds_no_plaintext_consensus_or_predictions(holder) -> None:
    strategy = secure_strategy(holder, "every_client")
    clients = {cid: wrapped(holder, cid) for cid in range(4)}
    run_server(strategy, clients, 1)
    manager = SimpleClientManager()
    for cid in range(4):
        manager.register(InProcessProxy(str(cid), clients[cid]))
    instructions = strategy.configure_fit(2, None, manager)
    arrays = parameters_to_ndarrays(instructions[0][1].parameters)
    plan = dict(zip(SECURE_PLAN_ARRAY_KEYS, arrays))
    assert len(arrays) == 5 and plan["consensus"].shape == (0, CLASSES)
    assert plan[SEALED_CONSENSUS_ARRAY].size == 0 and plan[ENCRYPTED_CONSENSUS_ARRAY].dtype == np.uint8
    spec = SecureConsensusSpec.from_json(instructions[0][1].config[SPEC_CONFIG_KEY])
    assert spec.key_fingerprint == holder.fingerprint.hex() and spec.max_summands == 4
    reply, num_examples, _ = clients[0].fit(arrays, instructions[0][1].config)
    assert len(reply) == 1 and reply[0].dtype == np.uint8 and num_examples == COUNTS[0].sum()
    # Bytes: each plan carries the encrypted sum; each reply one share.
    share_bytes = spec.layout(2047).num_ciphertexts * 512
    assert strategy.history[0]["bytes_up"] > 4 * share_bytes


# ---------------------------------------------------------------- bad clients


def test_unwrapped_and_plaintext_clients_are_rejected_and_the_rounds_go_on(holder) -> None:
    strategy = secure_strategy(holder)
    clients = {0: wrapped(holder, 0), 1: wrapped(holder, 1),
               2: EchoDistillationClient(2),                 # refuses the 5-array plan
               3: EchoDistillationClient(3, strict=False)}   # replies in plaintext
    run_server(strategy, clients, 2)
    first, second = strategy.history
    assert first["accepted"] == ["0", "1"] and set(first["rejected"]) == {"3"}
    assert "plaintext predictions" in first["rejected"]["3"]
    assert "SecureConsensusNumPyClient" in first["rejected"]["3"]
    assert first["num_failures"] == 2          # the client that raised + the rejected one
    # Round 2's plan names consensus indices but carries no plaintext consensus: the
    # lenient client cannot build its plan either, and fails instead of training blind.
    assert second["accepted"] == ["0", "1"] and second["rejected"] == {}
    assert second["num_failures"] == 2
    spec = strategy.spec(1, 4)
    result = expected_decryption(spec, 1, [0, 1])    # round 2 distilled on clients 0 and 1
    np.testing.assert_allclose(echo(clients[0]).seen[1].consensus, result.consensus, atol=1e-6)
    # Plaintext predictions were discarded, never added: the sum holds two shares.
    _, encrypted = strategy.encrypted_consensus
    assert EncryptedVector.from_array(encrypted, holder.public_key).num_summands == 2


def test_wrapper_refuses_plaintext_requests_and_foreign_keys(holder, other_holder) -> None:
    plain_plan = [np.arange(5), np.zeros(0, np.int64), np.zeros((0, CLASSES), np.float32)]
    with pytest.raises(ValueError, match="refusing to send plaintext"):
        wrapped(holder, 0).fit(plain_plan, {"server-round": 1})
    allowed = wrapped(holder, 0, plaintext_phases=("local_only",))
    reply, _, _ = allowed.fit(plain_plan, {"server-round": 1, "flhet-phase": "local_only"})
    assert len(reply) == 2                                   # the listed phase goes in clear
    with pytest.raises(ValueError, match="phase 'main'"):
        allowed.fit(plain_plan, {"server-round": 1, "flhet-phase": "main"})

    strategy = secure_strategy(holder)
    manager = SimpleClientManager()
    for cid in range(4):
        manager.register(InProcessProxy(str(cid), EchoDistillationClient(cid)))
    (_, ins), *_ = strategy.configure_fit(1, None, manager)
    foreign = wrapped(other_holder, 0)
    with pytest.raises(ValueError, match=holder.fingerprint.hex()):
        foreign.fit(parameters_to_ndarrays(ins.parameters), ins.config)
    assert not foreign.client.seen                            # it never trained
    with pytest.raises(ValueError, match="5 arrays"):
        wrapped(holder, 0).fit(parameters_to_ndarrays(ins.parameters)[:3], ins.config)


def test_a_sum_that_does_not_decrypt_is_reported_and_training_goes_on(holder) -> None:
    strategy = secure_strategy(holder, "every_client")
    clients = {cid: wrapped(holder, cid) for cid in range(4)}
    run_server(strategy, clients, 1)
    manager = SimpleClientManager()
    for cid in range(4):
        manager.register(InProcessProxy(str(cid), clients[cid]))
    (_, ins), *_ = strategy.configure_fit(2, None, manager)
    arrays = parameters_to_ndarrays(ins.parameters)
    position = SECURE_PLAN_ARRAY_KEYS.index(ENCRYPTED_CONSENSUS_ARRAY)
    arrays[position] = arrays[position].copy()
    arrays[position][-3] ^= 0x5A                               # flip bits near the end
    reply, _, metrics = clients[0].fit(arrays, ins.config)
    assert metrics[DECRYPT_FAILED_METRIC] == 1.0
    assert len(echo(clients[0]).seen[-1].consensus_indices) == 0   # trained without one
    assert len(reply) == 1 and reply[0].dtype == np.uint8         # and still sent its share


def test_a_failed_delegated_decryption_falls_back_to_every_client(holder, other_holder) -> None:
    strategy = secure_strategy(holder)
    # Round 1's evaluation asks node "2" (for round 2: index 2 of the sorted ids) to decrypt;
    # it holds another key, so it cannot, and its own shares are refused too.
    clients = {0: wrapped(holder, 0), 1: wrapped(holder, 1), 2: wrapped(other_holder, 2),
               3: wrapped(holder, 3)}
    run_server(strategy, clients, 2)
    history = strategy.history
    assert [h["consensus_decryption"] for h in history] == [None, "every_client"]
    assert all(h["accepted"] == ["0", "1", "3"] for h in history)
    result = expected_decryption(strategy.spec(1, 4), 1, [0, 1, 3])
    for cid in (0, 1, 3):
        np.testing.assert_allclose(echo(clients[cid]).seen[1].consensus, result.consensus,
                                   atol=1e-6)
    assert "client_accuracy_mean" in history[0]     # the error answer did not break the summary


def test_the_decryption_request_rides_along_with_the_evaluation_only_before_a_next_round(
    holder
) -> None:
    strategy = secure_strategy(holder, num_rounds=2)
    clients = {cid: wrapped(holder, cid) for cid in range(4)}
    manager = SimpleClientManager()
    for cid in range(4):
        manager.register(InProcessProxy(str(cid), clients[cid]))
    server = Server(client_manager=manager, strategy=strategy)
    server.parameters = strategy.initialize_parameters(manager)
    server.fit_round(1, None)
    asked = strategy.configure_evaluate(1, server.parameters, manager)
    requests = [(proxy.cid, ins) for proxy, ins in asked if ins.config.get(DECRYPT_REQUEST_KEY)]
    assert [cid for cid, _ in requests] == ["2"]
    assert len(parameters_to_ndarrays(requests[0][1].parameters)) == 2
    results = [(proxy, proxy.evaluate(ins, None, 0)) for proxy, ins in asked]
    answer = dict((proxy.cid, res) for proxy, res in results)["2"]
    assert isinstance(answer.metrics[SEALED_CONSENSUS_ARRAY], bytes)
    assert DECRYPT_ERROR_METRIC not in answer.metrics
    _, metrics = strategy.aggregate_evaluate(1, results, [])
    assert metrics["client_accuracy_mean"] == 0.5 and SEALED_CONSENSUS_ARRAY not in metrics
    server.fit_round(2, None)
    assert strategy.history[1]["consensus_decryption"] == "delegated"
    last = strategy.configure_evaluate(2, server.parameters, manager)   # the last round
    assert not any(ins.config.get(DECRYPT_REQUEST_KEY) for _, ins in last)


def test_the_compat_wrapper_refuses_what_it_cannot_wrap(holder) -> None:
    fed = FedConsensusCompat(num_proxy=NUM_PROXY, num_classes=CLASSES)
    with pytest.raises(TypeError, match="never hold the private key"):
        SecureConsensusCompat(fed, holder, max_examples=10)
    with pytest.raises(TypeError, match="FedConsensusCompat"):
        SecureConsensusCompat(FedConsensus(NUM_PROXY, CLASSES), holder.public_key,
                              max_examples=10)
    with pytest.raises(ValueError, match="DS-FL"):
        SecureConsensusCompat(
            FedConsensusCompat(NUM_PROXY, CLASSES, consensus=ConsensusConfig(mode="fedmd")),
            holder.public_key, max_examples=10)
    with pytest.raises(ValueError, match="decryption"):
        SecureConsensusCompat(fed, holder.public_key, max_examples=10, decryption="server")
    with pytest.raises(TypeError, match="NumPyClient"):
        SecureConsensusNumPyClient(object(), key_holder=holder)


# ---------------------------------------------------------------- Flower's simulation engine


@pytest.mark.integration
def test_three_secure_compat_rounds_in_the_simulation_engine(tmp_path) -> None:
    import torch
    from flwr.clientapp import ClientApp
    from flwr.server import ServerAppComponents, ServerConfig
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from clients.numpy_client import DistillationNumPyClient
    from clients.state import client_id_from_context
    from flhet_strategies.privacy.paillier import deal_keys, load_key_holder, load_public_key
    from simulations.config import from_dict
    from simulations.experiment import backend_config, build_client, build_split

    cfg = from_dict({
        "name": "it-paillier-compat", "seed": 0, "num_rounds": 3, "api": "compat",
        "data": {"dataset": "digits", "num_clients": 4,
                 "partitioner": {"name": "dirichlet", "alpha": 0.5, "min_partition_size": 40},
                 "proxy_size": 300, "proxy_validation_size": 100},
        "strategy": {"proxy_per_round": 120},
        "recipe": {"warmup_epochs": 1, "local_epochs": 1, "final_private_epochs": 1},
        "clients": [{"architecture": a, "count": 1, "lr": 0.05}
                    for a in ("cnn_small", "mlp", "mlp", "sklearn:sgd_logreg")],
    })
    split = build_split(cfg)
    files = deal_keys(tmp_path / "keys")
    records = tmp_path / "records"
    records.mkdir()
    unwrapped = 3

    class RecordingClient(DistillationNumPyClient):
        """Saves the plan it distills on and the reply it makes (before encryption)."""

        def fit(self, parameters, config):
            result = super().fit(parameters, config)
            np.savez(records / f"c{self.client_id}_r{config['server-round']}.npz",
                     consensus_indices=parameters[1], consensus=parameters[2],
                     logits=result[0][0], class_counts=result[0][1], num_examples=result[1])
            return result

    def client_fn(context):
        torch.set_num_threads(1)
        cid = client_id_from_context(context)
        (records / f"node_{cid}.txt").write_text(str(context.node_id))
        client = RecordingClient(build_client(cfg, cid), cid, context)
        if cid == unwrapped:   # no wrapper: it refuses the secure plan, sends nothing
            return client.to_client()
        return SecureConsensusNumPyClient(client, files.private_path, context=context).to_client()

    max_examples = max(len(client.train) for client in split.clients)
    inner = FedConsensusCompat(num_proxy=len(split.proxy_x), num_classes=split.num_classes,
                               num_rounds=3, proxy_per_round=120, recipe=cfg.recipe,
                               min_available_clients=4)
    strategy = SecureConsensusCompat(inner, load_public_key(files.public_path),
                                     max_examples=max_examples)
    server_app = ServerApp(server_fn=lambda context: ServerAppComponents(
        strategy=strategy, config=ServerConfig(num_rounds=3)))
    run_simulation(server_app=server_app, client_app=ClientApp(client_fn=client_fn),
                   num_supernodes=4, backend_config=backend_config(cfg))

    history = strategy.history
    assert [h["round"] for h in history] == [1, 2, 3]
    for h in history:
        assert h["accepted"] == ["0", "1", "2"] and h["num_failures"] == 1
        assert 0.0 <= h["global_accuracy_mean"] <= 1.0
        assert set(h["per_client"]) == {"0", "1", "2", "3"}   # the unwrapped one evaluates
    assert not list(records.glob(f"c{unwrapped}_r*.npz"))      # its fit never completed
    # Round r's decryptor is index r of the sorted node ids (two different nodes for
    # rounds 2 and 3, so at least one is wrapped); the unwrapped client cannot decrypt,
    # and that round falls back to every client decrypting the sum.
    nodes = {cid: (records / f"node_{cid}.txt").read_text() for cid in range(4)}
    expected_modes = [None] + [
        "every_client" if sorted(nodes.values())[r % 4] == nodes[unwrapped] else "delegated"
        for r in (2, 3)]
    assert [h["consensus_decryption"] for h in history] == expected_modes
    assert "delegated" in expected_modes      # the seal crossed the real transport

    # What the clients decrypted in round r + 1 is round r's consensus of clients 0-2.
    for server_round in (1, 2):
        spec = strategy.spec(server_round, 4)
        made = [np.load(records / f"c{cid}_r{server_round}.npz") for cid in range(3)]
        used = [np.load(records / f"c{cid}_r{server_round + 1}.npz") for cid in range(3)]
        sums = sum(spec.encode(r["logits"], r["class_counts"], int(r["num_examples"]))
                   for r in made)
        result = spec.decode(sums, 3)
        plaintext = logit_consensus(np.stack([r["logits"] for r in made]),
                                    np.array([float(r["num_examples"]) for r in made]),
                                    ConsensusConfig(), np.stack([r["class_counts"] for r in made]))
        for record in used:
            np.testing.assert_array_equal(record["consensus_indices"],
                                          strategy.server.protocol.proxy_indices(server_round))
            np.testing.assert_allclose(record["consensus"], result.consensus, atol=1e-6)
            assert np.abs(record["consensus"] - plaintext).mean() < 2e-3
    assert_holds_no_private_key(strategy, load_key_holder(files.private_path))
