"""FedConsensusCompat with distributed DP, run by Flower's compat ``Server`` loop in process.

Four real ``NumPyClient`` s (a fixed-logits distillation client wrapped in
:class:`DpPredictionsNumPyClient`) behind ``ClientProxy`` s that go through Flower's
``FitIns``/``FitRes`` <-> ``RecordDict`` conversion, as the runtime does.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.client import NumPyClient
from flwr.server.client_manager import SimpleClientManager
from flwr.server.server import Server
from inprocess_proxy import InProcessProxy

from clients.dp_predictions_numpy_client import DpPredictionsNumPyClient
from flhet_strategies.compat_api import FedConsensusCompat
from flhet_strategies.consensus_server import REPLY_ARRAY_KEYS
from flhet_strategies.aggregation.logit_consensus import ConsensusConfig
from flhet_strategies.core.distillation import PLAN_ARRAY_KEYS, RoundPlan
from flhet_strategies.privacy.dp.noise_share import (
    PredictionNoiseSettings,
    privatize_predictions,
)
from flhet_strategies.privacy.dp.settings import (
    NOISY_PROBABILITIES_ARRAY,
    NUM_CLIENTS_KEY,
    PrivateConsensus,
)

NUM_PROXY, CLASSES, PER_ROUND, Z = 300, 10, 40, 1.5
CONSENSUS = ConsensusConfig("dsfl", 1.0, None, False)


def _logits(client_id: int, server_round: int) -> np.ndarray:
    rng = np.random.default_rng([client_id, server_round])
    return (rng.normal(size=(PER_ROUND, CLASSES)) * 3).astype(np.float32)


class FixedClient(NumPyClient):
    """Speaks flhet's compat plan like DistillationNumPyClient, fixed logits per round."""

    def __init__(self, client_id: int) -> None:
        self.client_id = client_id
        self.configs: list[dict] = []

    def fit(self, parameters, config):
        assert len(parameters) == len(PLAN_ARRAY_KEYS)
        plan = RoundPlan.from_arrays(int(config["server-round"]),
                                     dict(zip(PLAN_ARRAY_KEYS, parameters)))
        self.configs.append(dict(config))
        return ([_logits(self.client_id, plan.server_round), np.ones(CLASSES)], 100,
                {"client-id": self.client_id})

    def evaluate(self, parameters, config):
        return 0.5, 10, {"client_accuracy": 0.5, "client-id": self.client_id}


def test_compat_face_sends_the_cohort_and_sums_noisy_probability_replies() -> None:
    privacy = PrivateConsensus(Z, clip_norm=1.0, mode="distributed", min_margin=None)
    strategy = FedConsensusCompat(NUM_PROXY, CLASSES, num_rounds=2, proxy_per_round=PER_ROUND,
                                  consensus=CONSENSUS, min_available_clients=4,
                                  fraction_evaluate=0.0, privacy=privacy)
    assert strategy.reply_array_keys == (NOISY_PROBABILITIES_ARRAY,)
    inner = {i: FixedClient(i) for i in range(4)}
    manager = SimpleClientManager()
    for i, client in inner.items():
        manager.register(InProcessProxy(str(i), DpPredictionsNumPyClient(
            client, rng=np.random.default_rng(100 + i))))
    Server(client_manager=manager, strategy=strategy).fit(2, timeout=None)

    # Every client was told the cohort size the noise is split over, every round.
    assert all(c[NUM_CLIENTS_KEY] == 4 for client in inner.values() for c in client.configs)
    history = strategy.history
    assert [h["round"] for h in history] == [1, 2]
    assert all(h["noise_multiplier"] == pytest.approx(Z) for h in history)
    assert all(len(h["accepted"]) == 4 for h in history)
    # Round 2's consensus is PrivateConsensus.combine of the four noisy replies
    # (the wrappers' generators advanced by one draw in round 1).
    rngs = [np.random.default_rng(100 + i) for i in range(4)]
    settings = PredictionNoiseSettings(Z, 1.0, 4, "per-row")
    replies = {r: [privatize_predictions(_logits(i, r), settings, rng=rngs[i]).values
                   for i in range(4)] for r in (1, 2)}
    expected, realized, _ = privacy.combine(replies[2], CONSENSUS, 2, num_expected=4)
    indices, consensus = strategy.server.protocol.consensus
    assert realized == pytest.approx(Z) and len(indices) == PER_ROUND
    np.testing.assert_allclose(consensus, expected, atol=1e-6)


def test_central_mode_keeps_the_plain_reply_layout() -> None:
    strategy = FedConsensusCompat(NUM_PROXY, CLASSES, proxy_per_round=PER_ROUND,
                                  consensus=CONSENSUS, privacy=PrivateConsensus(1.0))
    assert strategy.reply_array_keys == REPLY_ARRAY_KEYS
    assert FedConsensusCompat(NUM_PROXY, CLASSES).reply_array_keys == REPLY_ARRAY_KEYS
