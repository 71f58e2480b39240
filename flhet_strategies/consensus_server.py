"""API-neutral server logic of logit-consensus distillation.

:class:`ConsensusServer` turns the core protocol (:class:`ConsensusDistillation`)
into what a Flower strategy does per round: instructions for sampled clients,
aggregation of their replies into the next consensus, evaluation summaries and a
history. It speaks in plain dicts of numpy arrays and config scalars; the Message-API
strategy :class:`~flhet_strategies.message_api.FedConsensus` and the compat strategy
:class:`~flhet_strategies.compat_api.FedConsensusCompat` only translate those to and
from their Flower record types.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from logging import INFO

import numpy as np
from flwr.common.logger import log

from .core.distillation import ConsensusDistillation
from .core.dp.private_consensus import NOISY_PROBABILITIES_ARRAY
from .core.payload import ClientPayload
from .core.recipe import DistillationRecipe
from .history import RoundHistory
from .privacy.round_budget import RoundBudget

REPLY_ARRAY_KEYS = ("logits", "class_counts")
"""Order of a client reply's arrays where a Flower API needs a list."""

CLIENT_ID_KEY = "client-id"
"""Metric key under which a client may report a stable id (e.g. its partition id)."""

PHASE_KEY = "flhet-phase"
"""Config key naming the run a message belongs to; clients keep one model per phase,
so one federation can host several runs (e.g. a strategy and its local-only baseline)."""

NUM_EXAMPLES_KEY = "num-examples"
"""Metric key of the number of private training examples (Flower's convention)."""


@dataclass(frozen=True)
class ClientResult:
    """A client's reply in API-neutral form.

    Parameters
    ----------
    client_id : str
        The reported ``client-id`` metric, else the Flower node id.
    arrays : Mapping[str, np.ndarray]
        Named reply arrays (``logits``, ``class_counts``).
    metrics : Mapping[str, float]
        Reply metrics, including ``num-examples``.
    """

    client_id: str
    arrays: Mapping[str, np.ndarray]
    metrics: Mapping[str, float]

    def to_payload(self, prediction_key: str = "logits") -> ClientPayload:
        """The protocol payload; missing pieces are left for validation to reject.

        ``prediction_key`` names the prediction array: ``"logits"``, or
        ``"noisy_probabilities"`` under distributed differential privacy.
        """
        return ClientPayload(
            client_id=self.client_id,
            logits=self.arrays.get(prediction_key, np.zeros((0, 0), dtype=np.float32)),
            num_examples=self.metrics.get(NUM_EXAMPLES_KEY, 0),
            class_counts=self.arrays.get("class_counts"),
        )


def sample_fraction(items: Sequence, fraction: float, seed: int, server_round: int) -> list:
    """A seeded random ``fraction`` of ``items`` (at least one), reproducible per round.

    Parameters
    ----------
    items : Sequence
        Candidates in a stable order (e.g. sorted node ids).
    fraction : float
        Share to sample, in ``(0, 1]``; 1 returns all items in order.
    seed : int
        Seed of the experiment.
    server_round : int
        The round, mixed into the seed.
    """
    if not items:
        return []
    if fraction >= 1.0:
        return list(items)
    size = expected_cohort(len(items), fraction)
    rng = np.random.default_rng([int(seed), int(server_round), 7])
    picked = np.sort(rng.choice(len(items), size=size, replace=False))
    return [items[i] for i in picked]


def expected_cohort(population: int, fraction: float) -> int:
    """Cohort size :func:`sample_fraction` draws from ``population`` clients."""
    return int(population) if fraction >= 1.0 else max(int(population * fraction), 1)


def default_budget(privacy, budget: RoundBudget | None, population: int,
                   fraction: float) -> RoundBudget | None:
    """The strategy's privacy accounting: ``budget`` if given, else one without a limit.

    Without ``privacy`` there is nothing to account (a budget is then an error).
    """
    if privacy is None:
        if budget is not None:
            raise ValueError("privacy_budget given without privacy (a PrivateConsensus)")
        return None
    if budget is not None:
        if not budget.ledger.non_negative_payloads:
            raise ValueError("the consensus releases probabilities: build its RoundBudget "
                             "with non_negative_payloads=True")
        return budget
    return RoundBudget(population, fraction=fraction, non_negative_payloads=True)


def privacy_metrics(privacy: Mapping[str, float]) -> dict[str, float]:
    """Round metrics ``epsilon`` and ``delta`` of a privacy entry (none without one)."""
    if not privacy:
        return {}
    return {"epsilon": float(privacy["epsilon"]), "delta": float(privacy["delta"])}


def client_id_of(metrics: Mapping[str, object], node_id: int | str) -> str:
    """The client's self-reported id if present, else its Flower node id."""
    value = metrics.get(CLIENT_ID_KEY)
    return str(int(value)) if isinstance(value, (int, float)) else str(node_id)


class ConsensusServer:
    """Server-side round logic shared by both Flower faces.

    Parameters
    ----------
    protocol : ConsensusDistillation
        Proxy sampling, validation, weighting and consensus.
    recipe : DistillationRecipe, optional
        Client recipe sent with every round (defaults of :class:`DistillationRecipe`).
    num_rounds : int, optional
        Total rounds, so the last round can carry ``final-round``; set by the
        strategy's ``start`` (Message API) or given explicitly (compat API).
    evaluate_every : int (default: 1)
        Evaluate clients every this many rounds; the last round is always evaluated.
    phase : str (default: "main")
        Sent as ``flhet-phase`` with every message; clients keep a separate model
        per phase.
    budget : RoundBudget, optional
        Privacy accounting when ``protocol.privacy`` is set: every released consensus
        is composed into it (``epsilon`` and ``delta`` in the round's history entry),
        and a ``max_epsilon`` budget caps the rounds and refuses a round that would
        exceed it. Created without a budget (epsilon recorded only) by the strategies
        when omitted.
    """

    def __init__(
        self,
        protocol: ConsensusDistillation,
        recipe: DistillationRecipe | None = None,
        num_rounds: int | None = None,
        evaluate_every: int = 1,
        phase: str = "main",
        budget: RoundBudget | None = None,
    ) -> None:
        if evaluate_every < 1:
            raise ValueError(f"evaluate_every must be at least 1, got {evaluate_every}")
        self.protocol = protocol
        self.evaluate_every = int(evaluate_every)
        self.phase = str(phase)
        self.recipe = recipe or DistillationRecipe()
        self.num_rounds = num_rounds
        self.history = RoundHistory()
        if budget is not None and protocol.privacy is None:
            raise ValueError("a privacy budget needs a protocol with privacy (PrivateConsensus)")
        self.budget = budget
        self._cohorts: dict[int, int] = {}
        self._refused: set[int] = set()

    @property
    def prediction_key(self) -> str:
        """Reply array holding the predictions (noisy probabilities under distributed DP)."""
        privacy = self.protocol.privacy
        if privacy is not None and privacy.mode == "distributed":
            return NOISY_PROBABILITIES_ARRAY
        return "logits"

    def cap_rounds(self, num_rounds: int, cohort_size: int | None = None) -> int:
        """Rounds of ``num_rounds`` that fit in the privacy budget (all without one).

        Flower runs a fixed number of rounds; a strategy calls this before its first
        round and runs the returned number, so that the last round that fits is
        also the ``final-round`` the clients finish on. Sets :attr:`num_rounds`.
        """
        rounds = int(num_rounds)
        if self.budget is not None:
            rounds = self.budget.cap(rounds, self.protocol.privacy.noise_multiplier, cohort_size)
        self.num_rounds = rounds
        return rounds

    def round_allowed(self, server_round: int, cohort_size: int) -> bool:
        """Whether ``server_round`` runs: within :attr:`num_rounds` and the privacy budget.

        A refused round sends nothing; the strategy returns no messages. Call it with
        the sampled cohort before :meth:`train_instructions` (distributed DP tells the
        clients how many noise shares make up the sum).
        """
        self._cohorts[int(server_round)] = int(cohort_size)
        allowed = self.num_rounds is None or server_round <= self.num_rounds
        if allowed and self.budget is not None:
            allowed = self.budget.allows(server_round, self.protocol.privacy.noise_multiplier,
                                         cohort_size)
        if not allowed:
            self._refused.add(int(server_round))
        return allowed

    def train_instructions(
        self, server_round: int, extra_config: Mapping[str, object] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        """Arrays and config for every client sampled in ``server_round``.

        ``extra_config`` entries (e.g. from a user's ``train_config``) override the
        recipe's entries.
        """
        plan = self.protocol.plan(server_round)
        final = self.num_rounds is not None and server_round >= self.num_rounds
        config = replace(self.recipe, final_round=final).to_config()
        config.update(dict(extra_config or {}))
        privacy = self.protocol.privacy
        if privacy is not None and privacy.mode == "distributed":
            config.update(privacy.client_config(self._cohorts.get(int(server_round), 1)))
        config["server-round"] = int(server_round)
        config[PHASE_KEY] = self.phase
        return plan.to_arrays(), config

    def start_round(self, server_round: int, num_clients: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Record that the round's instructions went to ``num_clients`` clients."""
        self._cohorts[int(server_round)] = int(num_clients)
        nbytes = sum(np.asarray(a).nbytes for a in arrays.values())
        self.history.start_round(server_round, bytes_down=nbytes * num_clients)

    def aggregate_train(
        self, server_round: int, results: Sequence[ClientResult], failures: int
    ) -> tuple[dict[str, np.ndarray] | None, dict[str, float]]:
        """Aggregate replies into the new consensus.

        Returns
        -------
        tuple
            The consensus arrays (``consensus``, ``consensus_indices``) or ``None``
            when no reply was valid, and round metrics (accepted/rejected counts,
            mean training losses of the accepted clients).
        """
        if self.is_refused(server_round):
            return None, {}
        outcome = self.protocol.aggregate(
            server_round, [r.to_payload(self.prediction_key) for r in results],
            self.cohort_size(server_round))
        self.history.record_train(server_round, outcome, failures)
        privacy: dict[str, float] = {}
        if outcome.noise_multiplier is not None:
            privacy = self.record_release(server_round, outcome.noise_multiplier,
                                          len(outcome.consensus))
        accepted = set(outcome.accepted)
        metrics: dict[str, float] = {
            "num-accepted": float(len(outcome.accepted)),
            "num-rejected": float(len(outcome.rejected) + failures),
        }
        for key in ("train_loss", "kd_loss"):
            values = [float(r.metrics[key]) for r in results
                      if r.client_id in accepted and key in r.metrics]
            if values:
                metrics[key] = float(np.mean(values))
        metrics.update(privacy_metrics(privacy))
        if outcome.consensus is None:
            return None, metrics
        indices, consensus = self.protocol.consensus
        return {"consensus_indices": indices, "consensus": consensus}, metrics

    def cohort_size(self, server_round: int) -> int | None:
        """Clients sampled in ``server_round`` (``None`` before it was configured)."""
        return self._cohorts.get(int(server_round))

    def is_refused(self, server_round: int) -> bool:
        """Whether :meth:`round_allowed` refused ``server_round``."""
        return int(server_round) in self._refused

    def record_release(self, server_round: int, noise_multiplier: float,
                       released_rows: int | None = None) -> dict[str, float]:
        """Compose a released private consensus into the budget and the round's history.

        Parameters
        ----------
        server_round : int
            The round.
        noise_multiplier : float
            The realized ``z`` of the release (fewer shares than the cohort carry less).
        released_rows : int, optional
            Rows released (unknown to a server that only sums ciphertexts).

        Returns
        -------
        dict
            The round's privacy entry (``epsilon``, ``delta``, ...), also written into
            the history entry.

        Raises
        ------
        RuntimeError
            Without a :class:`RoundBudget`.
        """
        if self.budget is None:
            raise RuntimeError("a private consensus was released without a RoundBudget")
        privacy = self.budget.record(server_round, noise_multiplier,
                                     self.cohort_size(server_round))
        if released_rows is not None:
            privacy = {**privacy, "released_rows": int(released_rows)}
        self.history.record_privacy(server_round, privacy)
        return privacy

    def should_evaluate(self, server_round: int) -> bool:
        """Whether clients evaluate after ``server_round``."""
        if self.is_refused(server_round):
            return False
        last = self.num_rounds is not None and server_round >= self.num_rounds
        if self.num_rounds is not None and server_round > self.num_rounds:
            return False
        return last or server_round % self.evaluate_every == 0

    def evaluate_config(self, server_round: int) -> dict[str, object]:
        """Config sent with evaluation requests."""
        return {"server-round": int(server_round), PHASE_KEY: self.phase}

    def aggregate_evaluate(
        self, server_round: int, results: Sequence[tuple[str, Mapping[str, float]]],
        bytes_down: int = 0,
    ) -> dict[str, float]:
        """Summarise per-client accuracies into round metrics (flat, scalar)."""
        per_client = {cid: dict(m) for cid, m in results if "client_accuracy" in m}
        summary = self.history.record_evaluate(server_round, per_client, bytes_down)
        if summary is None:
            return {}
        entry = self.history.rounds[-1]
        log(INFO, "round %s: client accuracy %.4f (min %.4f), global accuracy %s, "
            "%.1f KiB up, %.1f KiB down, %.1f s", server_round, summary["client_accuracy_mean"],
            summary["client_accuracy_min"],
            "n/a" if summary["global_accuracy_mean"] is None else f"{summary['global_accuracy_mean']:.4f}",
            entry["bytes_up"] / 1024, entry["bytes_down"] / 1024, entry["seconds"])
        return {k: v for k, v in summary.items()
                if isinstance(v, (int, float)) and v is not None}
