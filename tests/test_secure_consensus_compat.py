"""SecureConsensusCompat (server) and SecureSumNumPyClient (client), Flower's compat API.

The in-process tests run Flower's own compat ``Server`` loop (``flwr.server.Server.fit``)
over ``ClientProxy`` s that deliver each instruction to a real ``NumPyClient.to_client()``
after converting it to a ``RecordDict`` and back, as the runtime does; keys are real
2048-bit Paillier keys. The integration test runs three rounds in Flower's simulation
engine (Ray) with ``ServerApp(server_fn=...)`` and ``ClientApp(client_fn=...)`` on digits,
one of the four clients left unwrapped.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from flwr.client import NumPyClient
from flwr.common import parameters_to_ndarrays
from flwr.server.client_manager import SimpleClientManager
from flwr.server.server import Server
from inprocess_proxy import InProcessProxy

from clients.faces.wrappers import SecureConsensusNumPyClient, SecureSumNumPyClient
from flhet_strategies import wire
from flhet_strategies.aggregation.logit_consensus import ConsensusConfig, logit_consensus, softmax
from flhet_strategies.aggregation.weighted_sum import client_weights
from flhet_strategies.algorithms.consensus import (
    PLAN_ARRAY_KEYS,
    PROBABILITIES,
    ConsensusSumRule,
    RoundPlan,
)
from flhet_strategies.faces.records import instruction_from_compat, reply_to_compat
from flhet_strategies.privacy.paillier import EncryptedVector, KeyHolder
from flhet_strategies.privacy.paillier.spec import SecureSumSpec
from flhet_strategies.protocol import Reply
from flhet_strategies.strategies import FedConsensus, FedConsensusCompat, SecureConsensusCompat
from key_audit import assert_holds_no_private_key

NUM_PROXY, CLASSES, PER_ROUND = 300, 10, 40
COUNTS = np.array([
    [0, 0, 0, 40, 50, 60, 70, 80, 90, 100],
    [100, 90, 80, 70, 0, 0, 0, 10, 20, 30],
    [5, 5, 5, 5, 5, 5, 5, 5, 5, 5],
    [30, 30, 30, 30, 30, 30, 30, 30, 30, 30],
])
SEALED_METRIC = wire.ARRAY_METRIC_PREFIX + wire.SEALED_REPLY


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
    """Speaks flhet's compat instruction like FlhetNumPyClient, with fixed logits per round.

    ``strict`` refuses instructions with arrays other than a plain consensus plan's (an
    app that knows nothing of secure sums); a lenient one reads the plan and ignores the
    rest, so it replies in plaintext.
    """

    def __init__(self, client_id: int, strict: bool = True) -> None:
        self.client_id = client_id
        self.strict = strict
        self.seen: list[RoundPlan] = []

    def fit(self, parameters, config):
        instruction = instruction_from_compat(parameters, config)
        unknown = set(instruction.arrays) - set(PLAN_ARRAY_KEYS)
        if self.strict and unknown:
            raise ValueError(f"unexpected instruction arrays {sorted(unknown)}")
        plan = RoundPlan.from_arrays(instruction.server_round, instruction.arrays)
        self.seen.append(plan)
        logits = client_logits(self.client_id, plan.server_round, len(plan.proxy_indices))
        arrays, metrics = reply_to_compat(Reply("", {"logits": logits,
                                                     "class_counts": COUNTS[self.client_id]},
                                                {"train_loss": 1.0, "kd_loss": 0.5}))
        return arrays, int(COUNTS[self.client_id].sum()), {**metrics,
                                                           "client-id": self.client_id}

    def evaluate(self, parameters, config):
        if not config.get(wire.EVALUATE, True):
            return 0.0, 0, {"client-id": self.client_id}
        return 0.5, 10, {"client_accuracy": 0.5, "global_accuracy": 0.4,
                         "client-id": self.client_id}


def secure_strategy(holder: KeyHolder, decryption: str = "delegate", num_rounds: int = 3,
                    **inner) -> SecureConsensusCompat:
    fed = FedConsensusCompat(num_proxy=NUM_PROXY, num_classes=CLASSES, num_rounds=num_rounds,
                             proxy_per_round=PER_ROUND, min_available_clients=4, **inner)
    return SecureConsensusCompat(fed, holder.public_key, max_examples=1000, decryption=decryption)


def wrapped(holder: KeyHolder, client_id: int, **options) -> SecureSumNumPyClient:
    return SecureSumNumPyClient(EchoDistillationClient(client_id), key_holder=holder, **options)


def manager_of(clients: dict[int, NumPyClient]) -> SimpleClientManager:
    manager = SimpleClientManager()
    for client_id, client in clients.items():
        manager.register(InProcessProxy(str(client_id), client))
    return manager


def run_server(strategy, clients: dict[int, NumPyClient], num_rounds: int):
    history, _ = Server(client_manager=manager_of(clients), strategy=strategy).fit(
        num_rounds, timeout=None)
    return history


def echo(client: NumPyClient) -> EchoDistillationClient:
    return client.client if isinstance(client, SecureSumNumPyClient) else client


def named(ins) -> dict[str, np.ndarray]:
    """The arrays of a compat instruction, by the names its config gives them."""
    return instruction_from_compat(parameters_to_ndarrays(ins.parameters), ins.config).arrays


def expected_decryption(spec: SecureSumSpec, server_round: int, arrived: list[int]):
    """What decrypting the sum of ``arrived`` clients' shares gives (exact integers), and
    the consensus it finishes into."""
    layout = spec.sum_layout
    rows = layout.term(PROBABILITIES).shape[0]
    shares = []
    for c in arrived:
        values = ConsensusSumRule.terms(layout, {"logits": client_logits(c, server_round, rows)},
                                        {})
        weights = {t.name: client_weights(layout, t, COUNTS[c], int(COUNTS[c].sum()))
                   for t in layout.terms}
        shares.append(spec.encode(values, weights)[0])
    sums = spec.decode(sum(shares), len(arrived))
    return sums, ConsensusSumRule.finish(layout, sums, {wire.CONSENSUS_INDICES: np.arange(rows)})


def plaintext_mean(spec: SecureSumSpec, server_round: int, arrived: list[int]) -> np.ndarray:
    """The plaintext vote-weighted mean probability (sample counts x class counts)."""
    rows = spec.sum_layout.term(PROBABILITIES).shape[0]
    probs = np.stack([softmax(client_logits(c, server_round, rows),
                              spec.sum_layout.params["temperature"]) for c in arrived])
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
    assert [h["sum_decryption"] for h in history] == [None, mode, mode]
    for h in history:
        assert h["accepted"] == ["0", "1", "2", "3"] and h["num_failures"] == 0
        assert h["client_accuracy_mean"] == 0.5 and set(h["per_client"]) == {"0", "1", "2", "3"}
    assert len(echo(clients[0]).seen[0].consensus_indices) == 0      # round 1: none yet
    for server_round in (1, 2):   # round r + 1 distills on round r's consensus
        spec = strategy.algorithm.spec(server_round, 4)
        term = spec.sum_layout.term(PROBABILITIES)
        received = [echo(clients[cid]).seen[server_round] for cid in range(4)]
        np.testing.assert_array_equal(received[0].consensus_indices,
                                      strategy.core.proxy_indices(server_round))
        for plan in received:
            np.testing.assert_array_equal(plan.consensus, received[0].consensus)   # all alike
        sums, finished = expected_decryption(spec, server_round, [0, 1, 2, 3])
        np.testing.assert_allclose(received[0].consensus, finished[wire.CONSENSUS], atol=1e-6)
        error = np.abs(sums.mean(term) - plaintext_mean(spec, server_round, [0, 1, 2, 3]))
        bound = spec.error_bound(term, sums.count, sums.denominators[term.name])
        assert np.all(error <= bound[None, :] + 1e-12)
        plaintext = logit_consensus(
            np.stack([client_logits(c, server_round, PER_ROUND) for c in range(4)]),
            COUNTS.sum(axis=1).astype(float), ConsensusConfig(), COUNTS)
        assert np.abs(received[0].consensus - plaintext).mean() < 2e-3
        assert np.mean(received[0].consensus.argmax(1) == plaintext.argmax(1)) >= 0.95
    # The server kept ciphertexts only; the last one is round 3's sum of four shares.
    encrypted = strategy.algorithm.encrypted_sum
    assert encrypted.dtype == np.uint8
    assert EncryptedVector.from_array(encrypted, holder.public_key).num_summands == 4
    np.testing.assert_array_equal(strategy.algorithm.sum_context[wire.CONSENSUS_INDICES],
                                  strategy.core.proxy_indices(3))
    assert strategy.core.consensus[1].size == 0      # never formed in plaintext
    assert_holds_no_private_key(strategy, holder)


def test_the_wire_format_holds_no_plaintext_consensus_or_predictions(holder) -> None:
    strategy = secure_strategy(holder, "every_client")
    clients = {cid: wrapped(holder, cid) for cid in range(4)}
    run_server(strategy, clients, 1)
    instructions = strategy.configure_fit(2, None, manager_of(clients))
    ins = instructions[0][1]
    arrays = parameters_to_ndarrays(ins.parameters)
    plan = named(ins)
    context_key = wire.SUM_CONTEXT_PREFIX + wire.CONSENSUS_INDICES
    assert set(plan) == {*PLAN_ARRAY_KEYS, wire.ENCRYPTED_SUM, context_key} and len(arrays) == 5
    assert plan["consensus"].shape == (0, CLASSES) and plan["consensus_indices"].size == 0
    assert wire.SEALED_SUM not in plan and plan[wire.ENCRYPTED_SUM].dtype == np.uint8
    np.testing.assert_array_equal(plan[context_key], strategy.core.proxy_indices(1))
    spec = SecureSumSpec.from_json(ins.config[wire.SECURE_SPEC])
    assert spec.key_fingerprint == holder.fingerprint.hex() and spec.max_summands == 4
    relayed = SecureSumSpec.from_json(ins.config[wire.RELAYED_SPEC])
    assert relayed == strategy.algorithm.spec(1, 4)
    reply, num_examples, metrics = clients[0].fit(arrays, ins.config)
    assert len(reply) == 1 and reply[0].dtype == np.uint8 and num_examples == COUNTS[0].sum()
    assert wire.split_names(metrics[wire.ARRAY_NAMES]) == [wire.ENCRYPTED_SHARE]
    # Bytes: each plan carries the encrypted sum; each reply one share.
    share_bytes = spec.layout(2047).num_ciphertexts * 512
    assert strategy.history[0]["bytes_up"] > 4 * share_bytes


def test_the_earlier_wrapper_name_is_the_same_wrapper() -> None:
    assert SecureConsensusNumPyClient is SecureSumNumPyClient


# ---------------------------------------------------------------- bad clients


def test_unwrapped_and_plaintext_clients_are_rejected_and_the_rounds_go_on(holder) -> None:
    strategy = secure_strategy(holder)
    clients = {0: wrapped(holder, 0), 1: wrapped(holder, 1),
               2: EchoDistillationClient(2),                 # refuses the secure instruction
               3: EchoDistillationClient(3, strict=False)}   # replies in plaintext
    run_server(strategy, clients, 2)
    first, second = strategy.history
    # Round 1's instruction is a plain plan (no sum to relay yet): both unwrapped clients
    # train and reply in plaintext, and both replies are refused.
    assert first["accepted"] == ["0", "1"] and set(first["rejected"]) == {"2", "3"}
    # Round 2's carries the encrypted sum: the strict client refuses it (a failure).
    assert second["accepted"] == ["0", "1"] and set(second["rejected"]) == {"3"}
    for entry in (first, second):
        for reason in entry["rejected"].values():
            assert "plaintext" in reason and "SecureSumNumPyClient" in reason
        assert entry["num_failures"] == 2    # rejected replies + the client that raised
    assert len(clients[2].seen) == 1
    # Round 2's instruction carries no plaintext consensus: the lenient client trained
    # without one (its plan names no consensus rows), and its reply was refused again.
    assert len(clients[3].seen) == 2 and len(clients[3].seen[1].consensus_indices) == 0
    assert clients[3].seen[1].consensus.shape == (0, CLASSES)
    spec = strategy.algorithm.spec(1, 4)
    _, finished = expected_decryption(spec, 1, [0, 1])    # round 2 distilled on clients 0, 1
    np.testing.assert_allclose(echo(clients[0]).seen[1].consensus, finished[wire.CONSENSUS],
                               atol=1e-6)
    # Plaintext predictions were discarded, never added: the sum holds two shares.
    encrypted = strategy.algorithm.encrypted_sum
    assert EncryptedVector.from_array(encrypted, holder.public_key).num_summands == 2


def test_wrapper_refuses_plaintext_requests_and_foreign_keys(holder, other_holder) -> None:
    plain_plan = [np.arange(5), np.zeros(0, np.int64), np.zeros((0, CLASSES), np.float32)]
    names = {wire.ARRAY_NAMES: wire.join_names(PLAN_ARRAY_KEYS)}
    with pytest.raises(ValueError, match="refusing to send a plaintext"):
        wrapped(holder, 0).fit(plain_plan, {"server-round": 1, **names})
    allowed = wrapped(holder, 0, plaintext_phases=("local_only",))
    reply, _, _ = allowed.fit(plain_plan, {"server-round": 1, "flhet-phase": "local_only",
                                           **names})
    assert len(reply) == 2                                   # the listed phase goes in clear
    with pytest.raises(ValueError, match="phase 'main'"):
        allowed.fit(plain_plan, {"server-round": 1, "flhet-phase": "main", **names})

    strategy = secure_strategy(holder)
    manager = manager_of({cid: EchoDistillationClient(cid) for cid in range(4)})
    (_, ins), *_ = strategy.configure_fit(1, None, manager)
    foreign = wrapped(other_holder, 0)
    with pytest.raises(ValueError, match=holder.fingerprint.hex()):
        foreign.fit(parameters_to_ndarrays(ins.parameters), ins.config)
    assert not foreign.client.seen                            # it never trained
    with pytest.raises(ValueError, match="names 3 arrays"):
        wrapped(holder, 0).fit(parameters_to_ndarrays(ins.parameters)[:2], ins.config)


def test_a_sum_that_does_not_decrypt_is_reported_and_training_goes_on(holder) -> None:
    strategy = secure_strategy(holder, "every_client")
    clients = {cid: wrapped(holder, cid) for cid in range(4)}
    run_server(strategy, clients, 1)
    (_, ins), *_ = strategy.configure_fit(2, None, manager_of(clients))
    arrays = parameters_to_ndarrays(ins.parameters)
    position = wire.split_names(ins.config[wire.ARRAY_NAMES]).index(wire.ENCRYPTED_SUM)
    arrays[position] = arrays[position].copy()
    arrays[position][-3] ^= 0x5A                               # flip bits near the end
    reply, _, metrics = clients[0].fit(arrays, ins.config)
    assert metrics[wire.DECRYPT_FAILED_METRIC] == 1.0
    assert len(echo(clients[0]).seen[-1].consensus_indices) == 0   # trained without one
    assert len(reply) == 1 and reply[0].dtype == np.uint8         # and still sent its share


def test_a_failed_delegated_decryption_falls_back_to_every_client(holder, other_holder) -> None:
    strategy = secure_strategy(holder)
    # Round 1's evaluation asks client "2" (for round 2: index 2 of the sorted ids) to
    # decrypt; it holds another key, so it cannot, and its own shares are refused too.
    clients = {0: wrapped(holder, 0), 1: wrapped(holder, 1), 2: wrapped(other_holder, 2),
               3: wrapped(holder, 3)}
    run_server(strategy, clients, 2)
    history = strategy.history
    assert [h["sum_decryption"] for h in history] == [None, "every_client"]
    assert all(h["accepted"] == ["0", "1", "3"] for h in history)
    _, finished = expected_decryption(strategy.algorithm.spec(1, 4), 1, [0, 1, 3])
    for cid in (0, 1, 3):
        np.testing.assert_allclose(echo(clients[cid]).seen[1].consensus,
                                   finished[wire.CONSENSUS], atol=1e-6)
    assert "client_accuracy_mean" in history[0]     # the error answer did not break the summary
    assert set(history[0]["per_client"]) == {"0", "1", "2", "3"}


def test_the_decryption_request_rides_along_with_the_evaluation_only_before_a_next_round(
    holder
) -> None:
    strategy = secure_strategy(holder, num_rounds=2)
    clients = {cid: wrapped(holder, cid) for cid in range(4)}
    manager = manager_of(clients)
    server = Server(client_manager=manager, strategy=strategy)
    server.parameters = strategy.initialize_parameters(manager)
    server.fit_round(1, None)
    asked = strategy.configure_evaluate(1, server.parameters, manager)
    assert len(asked) == 4
    requests = [(proxy.cid, ins) for proxy, ins in asked if ins.config.get(wire.DECRYPT_REQUEST)]
    assert [cid for cid, _ in requests] == ["2"]
    assert set(named(requests[0][1])) == {wire.ENCRYPTED_SUM,
                                           wire.SUM_CONTEXT_PREFIX + wire.CONSENSUS_INDICES}
    results = [(proxy, proxy.evaluate(ins, None, 0)) for proxy, ins in asked]
    answers = {proxy.cid: res for proxy, res in results}
    assert isinstance(answers["2"].metrics[SEALED_METRIC], bytes)
    seal = np.load(io.BytesIO(answers["2"].metrics[SEALED_METRIC]), allow_pickle=False)
    assert seal.dtype == np.uint8 and seal.ndim == 1
    assert wire.DECRYPT_ERROR_METRIC not in answers["2"].metrics
    assert not any(SEALED_METRIC in answers[cid].metrics for cid in ("0", "1", "3"))
    _, metrics = strategy.aggregate_evaluate(1, results, [])
    assert metrics["client_accuracy_mean"] == 0.5
    assert not any("sealed" in key for key in metrics)
    server.fit_round(2, None)
    assert strategy.history[1]["sum_decryption"] == "delegated"
    last = strategy.configure_evaluate(2, server.parameters, manager)   # the last round
    assert len(last) == 4
    assert not any(ins.config.get(wire.DECRYPT_REQUEST) for _, ins in last)


def test_a_round_without_evaluation_sends_the_decryptor_a_task_only_instruction(holder) -> None:
    strategy = secure_strategy(holder, num_rounds=2, fraction_evaluate=0.0)
    clients = {cid: wrapped(holder, cid) for cid in range(4)}
    run_server(strategy, clients, 2)
    assert [h["sum_decryption"] for h in strategy.history] == [None, "delegated"]
    assert "client_accuracy_mean" not in strategy.history[0]      # nobody scored
    spec = strategy.algorithm.spec(1, 4)
    _, finished = expected_decryption(spec, 1, [0, 1, 2, 3])
    for cid in range(4):
        np.testing.assert_allclose(echo(clients[cid]).seen[1].consensus,
                                   finished[wire.CONSENSUS], atol=1e-6)


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
        SecureSumNumPyClient(object(), key_holder=holder)


# ---------------------------------------------------------------- Flower's simulation engine


@pytest.mark.integration
def test_three_secure_compat_rounds_in_the_simulation_engine(tmp_path) -> None:
    import torch
    from flwr.clientapp import ClientApp
    from flwr.server import ServerAppComponents, ServerConfig
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from clients.faces.numpy_client import FlhetNumPyClient
    from clients.faces.state import client_id_from_context
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

    class RecordingClient(FlhetNumPyClient):
        """Saves the plan it distills on and the reply it makes (before encryption)."""

        def fit(self, parameters, config):
            plan = instruction_from_compat(parameters, config).arrays
            result = super().fit(parameters, config)
            reply = dict(zip(wire.split_names(result[2][wire.ARRAY_NAMES]), result[0]))
            np.savez(records / f"c{self.client_id}_r{config['server-round']}.npz",
                     consensus_indices=plan["consensus_indices"], consensus=plan["consensus"],
                     logits=reply["logits"], class_counts=reply["class_counts"],
                     num_examples=result[1])
            return result

    def client_fn(context):
        torch.set_num_threads(1)
        cid = client_id_from_context(context)
        (records / f"node_{cid}.txt").write_text(str(context.node_id))
        client = RecordingClient(build_client(cfg, cid), cid, context)
        if cid == unwrapped:   # no wrapper: its plaintext reply is refused
            return client.to_client()
        return SecureSumNumPyClient(client, files.private_path, context=context).to_client()

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
        assert set(h["rejected"]) == {str(unwrapped)} and "plaintext" in h["rejected"]["3"]
        assert 0.0 <= h["global_accuracy_mean"] <= 1.0
        assert set(h["per_client"]) == {"0", "1", "2", "3"}   # the unwrapped one evaluates
    # The unwrapped client never received a consensus: the server holds none in clear.
    for server_round in (1, 2, 3):
        made = np.load(records / f"c{unwrapped}_r{server_round}.npz")
        assert made["consensus_indices"].size == 0 and made["consensus"].size == 0
    # Round r's decryptor is index r of the numerically sorted node ids (two different
    # nodes for rounds 2 and 3, so at least one is wrapped); the unwrapped client cannot
    # decrypt, and that round falls back to every client decrypting the sum.
    nodes = {cid: (records / f"node_{cid}.txt").read_text() for cid in range(4)}
    ordered = sorted(nodes.values(), key=int)
    expected_modes = [None] + [
        "every_client" if ordered[r % 4] == nodes[unwrapped] else "delegated" for r in (2, 3)]
    assert [h["sum_decryption"] for h in history] == expected_modes
    assert "delegated" in expected_modes      # the seal crossed the real transport

    # What the clients decrypted in round r + 1 is round r's consensus of clients 0-2.
    for server_round in (1, 2):
        spec = strategy.algorithm.spec(server_round, 4)
        layout = spec.sum_layout
        made = [np.load(records / f"c{cid}_r{server_round}.npz") for cid in range(3)]
        used = [np.load(records / f"c{cid}_r{server_round + 1}.npz") for cid in range(3)]
        shares = []
        for r in made:
            values = ConsensusSumRule.terms(layout, {"logits": r["logits"]}, {})
            weights = {t.name: client_weights(layout, t, r["class_counts"],
                                              int(r["num_examples"])) for t in layout.terms}
            shares.append(spec.encode(values, weights)[0])
        indices = strategy.core.proxy_indices(server_round)
        finished = ConsensusSumRule.finish(layout, spec.decode(sum(shares), 3),
                                           {wire.CONSENSUS_INDICES: indices})
        plaintext = logit_consensus(np.stack([r["logits"] for r in made]),
                                    np.array([float(r["num_examples"]) for r in made]),
                                    ConsensusConfig(), np.stack([r["class_counts"] for r in made]))
        for record in used:
            np.testing.assert_array_equal(record["consensus_indices"], indices)
            np.testing.assert_allclose(record["consensus"], finished[wire.CONSENSUS], atol=1e-6)
            assert np.abs(record["consensus"] - plaintext).mean() < 2e-3
    assert_holds_no_private_key(strategy, load_key_holder(files.private_path))
