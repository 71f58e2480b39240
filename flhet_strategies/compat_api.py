"""Compat-API face of logit-consensus distillation (``flwr.server.strategy``).

For deployments built on ``ServerApp(server_fn=...)`` / ``NumPyClient``. The plan
travels as ``Parameters`` holding ``[proxy_indices, consensus_indices, consensus]``
(:data:`~flhet_strategies.core.distillation.PLAN_ARRAY_KEYS`); a client replies with
``[logits, class_counts]`` (:data:`~flhet_strategies.consensus_server.REPLY_ARRAY_KEYS`),
or ``[noisy_probabilities]`` under distributed differential privacy
(:class:`clients.dp_predictions_numpy_client.DpPredictionsNumPyClient`).
"""

from __future__ import annotations

import numpy as np
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from .consensus_server import (
    REPLY_ARRAY_KEYS,
    ClientResult,
    ConsensusServer,
    client_id_of,
    default_budget,
    sample_fraction,
)
from .core.consensus import ConsensusConfig
from .core.distillation import PLAN_ARRAY_KEYS, ConsensusDistillation
from .core.dp.private_consensus import PrivateConsensus
from .core.recipe import DistillationRecipe
from .core.weighting import WeightFn, sample_count_weights
from .privacy.round_budget import PrivacyViews, RoundBudget


class FedConsensusCompat(PrivacyViews, Strategy):
    """Logit-consensus distillation (FedMD / DS-FL) for Flower's compat API.

    Same protocol and parameters as :class:`~flhet_strategies.message_api.FedConsensus`;
    pair it with :class:`clients.numpy_client.DistillationNumPyClient`.

    Parameters
    ----------
    num_proxy : int
        Size of the public proxy set the clients hold.
    num_classes : int
        Number of classes.
    num_rounds : int, optional
        Total rounds (as in ``ServerConfig``), so the last round carries
        ``final-round`` for the recipe's final private epochs.
    proxy_per_round : int (default: 2000)
        Proxy samples per round.
    consensus : ConsensusConfig, optional
        The consensus rule.
    recipe : DistillationRecipe, optional
        The client recipe.
    weight_fn : WeightFn (default: sample_count_weights)
        Client weights.
    fraction_fit : float (default: 1.0)
        Fraction of available clients sampled for training.
    fraction_evaluate : float (default: 1.0)
        Fraction of available clients sampled for evaluation.
    min_available_clients : int (default: 2)
        Wait until this many clients are connected.
    evaluate_every : int (default: 1)
        Clients evaluate every this many rounds (and always after the last one).
    seed : int (default: 0)
        Seed of the proxy-subset sampler.
    phase : str (default: "main")
        Name of this run, sent with every message; clients keep one model per phase,
        so one federation can host several runs (e.g. a local-only baseline).
    always_include : np.ndarray, optional
        Proxy indices requested in every round (part of ``proxy_per_round``), e.g. the
        server's labeled validation slice for contribution weighting.
    privacy : PrivateConsensus, optional
        Client-level differential privacy of every released consensus. ``"central"``:
        the server clips and noises; ``"distributed"``: the fit config carries
        ``privacy.client_config(cohort)`` and the clients, wrapped in
        :class:`clients.dp_predictions_numpy_client.DpPredictionsNumPyClient`, reply
        ``[noisy_probabilities]``.
    privacy_budget : RoundBudget, optional
        Accounting of ``privacy``; with ``max_epsilon``, rounds past the budget are
        skipped (no messages) and the last round that fits is the clients' final
        round (give ``num_rounds``). Default with ``privacy``: no budget.
    """

    def __init__(
        self,
        num_proxy: int,
        num_classes: int,
        num_rounds: int | None = None,
        proxy_per_round: int = 2000,
        consensus: ConsensusConfig | None = None,
        recipe: DistillationRecipe | None = None,
        weight_fn: WeightFn = sample_count_weights,
        fraction_fit: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_available_clients: int = 2,
        evaluate_every: int = 1,
        seed: int = 0,
        phase: str = "main",
        always_include: np.ndarray | None = None,
        privacy: PrivateConsensus | None = None,
        privacy_budget: RoundBudget | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < fraction_fit <= 1.0 or not 0.0 <= fraction_evaluate <= 1.0:
            raise ValueError("fraction_fit must be in (0, 1], fraction_evaluate in [0, 1]")
        protocol = ConsensusDistillation(num_proxy, num_classes, proxy_per_round,
                                         consensus, weight_fn, seed, always_include, privacy)
        budget = default_budget(privacy, privacy_budget, min_available_clients, fraction_fit)
        self.server = ConsensusServer(protocol, recipe, num_rounds, evaluate_every, phase, budget)
        self._capped = num_rounds is None
        self.fraction_fit = fraction_fit
        self.fraction_evaluate = fraction_evaluate
        self.min_available_clients = min_available_clients

    def __repr__(self) -> str:
        return f"FedConsensusCompat(consensus={self.server.protocol.consensus_config})"

    @property
    def budget(self) -> RoundBudget | None:
        """The privacy accounting (``None`` without ``privacy``)."""
        return self.server.budget

    @property
    def reply_array_keys(self) -> tuple[str, ...]:
        """Names of a fit reply's arrays, in order: ``REPLY_ARRAY_KEYS``, or the one
        prediction array under distributed DP (:attr:`ConsensusServer.prediction_key`)."""
        key = self.server.prediction_key
        return REPLY_ARRAY_KEYS if key == REPLY_ARRAY_KEYS[0] else (key,)

    @property
    def history(self) -> list[dict]:
        """Per-round history (traffic, timing, accuracy summaries, rejections)."""
        return self.server.history.rounds

    def _sample(self, client_manager: ClientManager, fraction: float,
                server_round: int) -> list[ClientProxy]:
        # Wait for min_available_clients first, then sample a fraction of all connected.
        client_manager.wait_for(self.min_available_clients)
        clients = sorted(client_manager.all().values(), key=lambda c: c.cid)
        return sample_fraction(clients, fraction, self.server.protocol.seed, server_round)

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """No global model: the protocol starts from an empty consensus."""
        return ndarrays_to_parameters([])

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        """Send the round plan to the sampled clients."""
        clients = self._sample(client_manager, self.fraction_fit, server_round)
        if not self._capped:  # the compat Server runs a fixed number of rounds
            self._capped = True
            self.server.cap_rounds(self.server.num_rounds, len(clients))
        if not self.server.round_allowed(server_round, len(clients)):
            return []
        arrays, config = self.server.train_instructions(server_round)
        self.server.start_round(server_round, len(clients), arrays)
        fit_ins = FitIns(ndarrays_to_parameters([arrays[k] for k in PLAN_ARRAY_KEYS]), config)
        return [(client, fit_ins) for client in clients]

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Validate replies and form the new consensus; bad replies count as failures."""
        parsed = []
        keys = self.reply_array_keys
        for proxy, res in results:
            arrays = parameters_to_ndarrays(res.parameters)
            metrics = {**res.metrics, "num-examples": res.num_examples}
            named = dict(zip(keys, arrays)) if len(arrays) == len(keys) else {}
            parsed.append(ClientResult(client_id_of(metrics, proxy.cid), named, metrics))
        consensus, metrics = self.server.aggregate_train(server_round, parsed, len(failures))
        if consensus is None:
            return None, metrics
        return ndarrays_to_parameters([consensus["consensus_indices"], consensus["consensus"]]), metrics

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager) -> list[tuple[ClientProxy, EvaluateIns]]:
        """Ask sampled clients to evaluate their own models."""
        if self.fraction_evaluate == 0.0 or not self.server.should_evaluate(server_round):
            return []
        clients = self._sample(client_manager, self.fraction_evaluate, server_round)
        ins = EvaluateIns(ndarrays_to_parameters([]), self.server.evaluate_config(server_round))
        return [(client, ins) for client in clients]

    def aggregate_evaluate(self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]],
                           failures: list) -> tuple[float | None, dict[str, Scalar]]:
        """Summarise per-client accuracy; the loss is the mean of the clients' losses."""
        parsed = [(client_id_of(res.metrics, proxy.cid), dict(res.metrics)) for proxy, res in results]
        summary = self.server.aggregate_evaluate(server_round, parsed)
        losses = [res.loss for _, res in results]
        return (sum(losses) / len(losses) if losses else None), summary

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        """No centralized evaluation: clients evaluate their own models."""
        return None
