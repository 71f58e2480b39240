"""FedConsensusCompat with distributed DP, run by Flower's compat ``Server`` loop in process.

Four real ``NumPyClient`` s (a fixed-logits consensus client wrapped in
:class:`DpNoiseNumPyClient`) behind ``ClientProxy`` s that go through Flower's
``FitIns``/``FitRes`` <-> ``RecordDict`` conversion, as the runtime does.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.client import NumPyClient
from flwr.server.client_manager import SimpleClientManager
from flwr.server.server import Server
from inprocess_proxy import InProcessProxy

from clients.faces.wrappers import DpNoiseNumPyClient
from flhet_strategies import wire
from flhet_strategies.aggregation.logit_consensus import ConsensusConfig
from flhet_strategies.algorithms.consensus import (
    PLAN_ARRAY_KEYS,
    PROBABILITIES,
    SUM_RULE,
    ConsensusDistillation,
    RoundPlan,
)
from flhet_strategies.privacy.dp.noise_share import NoiseShareSettings, noise_share
from flhet_strategies.privacy.dp.postprocess import noisy_rows_to_probabilities
from flhet_strategies.privacy.dp.settings import PrivateConsensus
from flhet_strategies.strategies import FedConsensusCompat

NUM_PROXY, CLASSES, PER_ROUND, Z = 300, 10, 40, 1.5
CONSENSUS = ConsensusConfig("dsfl", 1.0, None, False)
NOISY_PROBABILITIES_ARRAY = wire.NOISY_PROBABILITIES
NUM_CLIENTS_KEY = wire.DP_NUM_CLIENTS
REPLY_ARRAY_KEYS = ConsensusDistillation.reply_array_names


def _logits(client_id: int, server_round: int) -> np.ndarray:
    rng = np.random.default_rng([client_id, server_round])
    return (rng.normal(size=(PER_ROUND, CLASSES)) * 3).astype(np.float32)


class FixedClient(NumPyClient):
    """Speaks flhet's compat instruction like FlhetNumPyClient, fixed logits per round."""

    def __init__(self, client_id: int) -> None:
        self.client_id = client_id
        self.configs: list[dict] = []

    def fit(self, parameters, config):
        names = wire.split_names(config[wire.ARRAY_NAMES])
        assert sorted(names) == sorted(PLAN_ARRAY_KEYS) and len(parameters) == len(names)
        plan = RoundPlan.from_arrays(int(config["server-round"]), dict(zip(names, parameters)))
        self.configs.append(dict(config))
        return ([_logits(self.client_id, plan.server_round), np.ones(CLASSES)], 100,
                {"client-id": self.client_id,
                 wire.ARRAY_NAMES: wire.join_names([wire.LOGITS, wire.CLASS_COUNTS])})

    def evaluate(self, parameters, config):
        return 0.5, 10, {"client_accuracy": 0.5, "client-id": self.client_id}


def test_compat_face_sends_the_cohort_and_sums_noisy_probability_replies() -> None:
    privacy = PrivateConsensus(Z, clip_norm=1.0, mode="distributed", min_margin=None)
    strategy = FedConsensusCompat(NUM_PROXY, CLASSES, num_rounds=2, proxy_per_round=PER_ROUND,
                                  consensus=CONSENSUS, min_available_clients=4,
                                  fraction_evaluate=0.0, privacy=privacy)
    assert strategy.algorithm.reply_array_names == (NOISY_PROBABILITIES_ARRAY,)
    inner = {i: FixedClient(i) for i in range(4)}
    manager = SimpleClientManager()
    for i, client in inner.items():
        manager.register(InProcessProxy(str(i), DpNoiseNumPyClient(
            client, rng=np.random.default_rng(100 + i))))
    Server(client_manager=manager, strategy=strategy).fit(2, timeout=None)

    # Every client was told the cohort size the noise is split over, every round.
    assert all(c[NUM_CLIENTS_KEY] == 4 for client in inner.values() for c in client.configs)
    assert all(len(client.configs) == 2 for client in inner.values())
    history = strategy.history
    assert [h["round"] for h in history] == [1, 2]
    assert all(h["noise_multiplier"] == pytest.approx(Z) for h in history)
    assert all(len(h["accepted"]) == 4 and not h["rejected"] for h in history)
    # Round 2's consensus is the private combine of the four noisy replies (the
    # wrappers' generators advanced by one draw in round 1): their sum over 4 put back
    # onto the simplex (no ERA, every row released).
    core = strategy.core
    layout = core.sum_layout(2)
    rngs = [np.random.default_rng(100 + i) for i in range(4)]
    settings = NoiseShareSettings(Z, 1.0, 4, "per-row")
    replies = {r: [noise_share(layout, SUM_RULE.terms(layout, {wire.LOGITS: _logits(i, r)}, {}),
                               None, settings, rngs[i]).arrays[NOISY_PROBABILITIES_ARRAY]
                   for i in range(4)] for r in (1, 2)}
    total = np.sum([share.astype(np.float64) for share in replies[2]], axis=0)
    expected = noisy_rows_to_probabilities(total / 4)
    indices, consensus = core.consensus
    np.testing.assert_array_equal(indices, core.proxy_indices(2))
    assert len(indices) == PER_ROUND and layout.term(PROBABILITIES).shape == (PER_ROUND, CLASSES)
    np.testing.assert_allclose(consensus, expected, atol=1e-6)
    # The noise is there: the plain consensus of the clients' own predictions differs.
    plain = SUM_RULE.finish(layout, _plain_sums(layout, 2), {wire.CONSENSUS_INDICES: indices})
    assert not np.allclose(consensus, plain[wire.CONSENSUS], atol=1e-2)


def _plain_sums(layout, server_round):
    from flhet_strategies.aggregation.weighted_sum import weighted_sums

    return weighted_sums(layout, [(SUM_RULE.terms(layout, {wire.LOGITS: _logits(i, server_round)},
                                                  {}), {PROBABILITIES: np.ones(CLASSES)})
                                  for i in range(4)])


def test_central_mode_keeps_the_plain_reply_layout() -> None:
    strategy = FedConsensusCompat(NUM_PROXY, CLASSES, proxy_per_round=PER_ROUND,
                                  consensus=CONSENSUS, privacy=PrivateConsensus(1.0))
    assert strategy.algorithm.reply_array_names == REPLY_ARRAY_KEYS
    assert FedConsensusCompat(NUM_PROXY, CLASSES).algorithm.reply_array_names == REPLY_ARRAY_KEYS
    assert REPLY_ARRAY_KEYS == (wire.LOGITS, wire.CLASS_COUNTS)
