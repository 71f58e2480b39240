"""Shapley contributions and aggregation weights of same-architecture clients.

The API-neutral core of :class:`~flhet_strategies.weighting.contribution_fedavg.ContributionWeightedFedAvg`
and its compat twin: :class:`WeightAverageContribution` values each round's clients on
the weighted average of coalitions' parameters and returns contribution weights. See
docs/contribution.md.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

import numpy as np

from flhet_strategies.weighting.contribution.auto import ESTIMATOR_NAMES, estimate_shapley
from flhet_strategies.weighting.contribution.ledger import ContributionLedger
from flhet_strategies.weighting.contribution.logit_utility import WeightedAverageUtility
from flhet_strategies.weighting.contribution.weighting import mix_weights

__all__ = ["EvalFn", "WeightAverageContribution"]

EvalFn = Callable[[list[np.ndarray]], float]
"""``eval_fn(parameters) -> accuracy in [0, 1]`` of a model loaded with ``parameters``
(float64 arrays in the order the clients send them)."""


class WeightAverageContribution:
    """Per-round Shapley values of weight-averaging clients, turned into aggregation weights.

    Parameters
    ----------
    eval_fn : EvalFn
        ``eval_fn(parameters) -> float``: the accuracy, a number in ``[0, 1]``,
        of the model loaded with ``parameters`` (a list of arrays in the order
        the clients send them, e.g. a PyTorch ``state_dict``'s values) on the
        server's labeled validation data. Called once per evaluated coalition.
    method : str (default: "auto")
        Shapley estimator, one of
        :data:`~flhet_strategies.weighting.contribution.auto.ESTIMATOR_NAMES`;
        ``"auto"`` is exact while ``2**n_clients <= budget``.
    budget : int (default: 1024)
        ``eval_fn`` calls per round for the sampling estimators.
    mix : float (default: 1.0)
        Share of the contribution part of the weights, in ``[0, 1]``; 0 gives
        sample-count weights.
    decay : float (default: 0.5)
        Weights use ``sum_t decay**(T - t) phi_i(t)`` over the rounds ``t <= T``
        client ``i`` took part in; 0 uses the current round alone, 1 the FedSV
        total (see :mod:`flhet_strategies.weighting.contribution.weighting`).
    use_for_weights : bool (default: True)
        False: audit only (values are recorded, weights are the sample counts).
    empty_value : float, optional
        ``v(∅)``. Default: ``eval_fn`` of the round's incoming global
        parameters when the caller passes them, else 0.0.
    seed : int (default: 0)
        Seed of the sampling estimators (combined with the round number).
    estimator_options : dict, optional
        Passed to the estimator's constructor.

    Attributes
    ----------
    ledger : ContributionLedger
        Per-round Shapley values and cumulative contributions.
    weight_history : dict[int, dict[str, float]]
        Round -> client id -> aggregation weight that round (weights sum to one).

    Examples
    --------
    >>> import numpy as np
    >>> target = np.array([1.0, 1.0])
    >>> def eval_fn(params):
    ...     return float(np.exp(-np.linalg.norm(params[0] - target)))
    >>> valuation = WeightAverageContribution(eval_fn)
    >>> params = [[np.array([1.0, 1.0])], [np.array([0.8, 1.2])], [np.array([9.0, -9.0])]]
    >>> weights = valuation(1, ["a", "b", "junk"], params, [10, 10, 10])
    >>> weights.round(3).tolist()[-1]
    0.0
    """

    def __init__(
        self,
        eval_fn: EvalFn,
        *,
        method: str = "auto",
        budget: int = 1024,
        mix: float = 1.0,
        decay: float = 0.5,
        use_for_weights: bool = True,
        empty_value: Optional[float] = None,
        seed: int = 0,
        estimator_options: Optional[dict[str, Any]] = None,
    ) -> None:
        if not callable(eval_fn):
            raise TypeError("eval_fn must be callable: list of parameter arrays -> accuracy.")
        if method not in ESTIMATOR_NAMES:
            raise ValueError(f"method must be one of {ESTIMATOR_NAMES}, got {method!r}")
        if int(budget) < 1:
            raise ValueError(f"budget must be at least 1, got {budget}")
        if not 0.0 <= mix <= 1.0:
            raise ValueError(f"mix must lie in [0, 1], got {mix}")
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must lie in [0, 1], got {decay}")
        if empty_value is not None and not math.isfinite(empty_value):
            raise ValueError(f"empty_value must be finite, got {empty_value}")
        self.eval_fn = eval_fn
        self.method = method
        self.budget = int(budget)
        self.mix = float(mix)
        self.decay = float(decay)
        self.use_for_weights = bool(use_for_weights)
        self.empty_value = None if empty_value is None else float(empty_value)
        self.seed = int(seed)
        self.estimator_options = dict(estimator_options or {})
        self.ledger = ContributionLedger()
        self.weight_history: dict[int, dict[str, float]] = {}

    def __call__(
        self,
        server_round: int,
        client_ids: Sequence[str],
        client_parameters: Sequence[Sequence[np.ndarray]],
        sample_counts: Sequence[float],
        global_parameters: Optional[Sequence[np.ndarray]] = None,
    ) -> np.ndarray:
        """Value one round's participants and return their aggregation weights.

        Parameters
        ----------
        server_round : int
            The round; later than every round valued so far.
        client_ids : Sequence[str]
            Stable client ids (the ledger sums values per id over rounds).
        client_parameters : Sequence[Sequence[np.ndarray]]
            Each client's parameter arrays; all clients must send the same shapes.
        sample_counts : Sequence[float]
            Each client's positive number of training examples.
        global_parameters : Sequence[np.ndarray], optional
            The global parameters the round started from; their accuracy is
            ``v(∅)`` unless ``empty_value`` was given.

        Returns
        -------
        np.ndarray
            One non-negative weight per client, in the order of ``client_ids``,
            summing to one.

        Raises
        ------
        ValueError
            If ids, parameters and counts disagree in number, a client's
            parameter shapes differ from the first client's or hold NaN or
            infinite values, a count is not positive, or ``eval_fn`` returns
            NaN or a value outside ``[0, 1]``.
        """
        ids = [str(c) for c in client_ids]
        counts = np.asarray(sample_counts, dtype=np.float64)
        if not len(ids) == len(client_parameters) == counts.size or counts.ndim != 1:
            raise ValueError(
                f"{len(ids)} client ids, {len(client_parameters)} parameter lists and "
                f"{counts.size} sample counts: give one of each per client."
            )
        if not ids:
            raise ValueError("No clients to value: client_ids is empty.")
        if not np.all(np.isfinite(counts)) or np.any(counts <= 0):
            bad = [c for c, n in zip(ids, counts) if not (np.isfinite(n) and n > 0)]
            raise ValueError(f"Sample counts must be positive and finite; clients {bad} are not.")
        _check_same_architecture(ids, client_parameters)
        evaluate = _checked_eval_fn(self.eval_fn, int(server_round))
        start = time.perf_counter()
        game = WeightedAverageUtility(
            client_parameters,
            evaluate,
            sample_counts=counts,
            empty_value=self._empty_value(evaluate, client_parameters, global_parameters),
        )
        result = estimate_shapley(
            game.as_utility(),
            self.method,
            budget=self.budget,
            rng=np.random.default_rng([self.seed, int(server_round)]),
            **self.estimator_options,
        )
        self.ledger.record(server_round, ids, result, time.perf_counter() - start)
        if self.use_for_weights:
            scores = self.ledger.discounted_total(self.decay)
            weights = mix_weights(np.array([scores[c] for c in ids]), counts, self.mix)
        else:
            weights = counts / counts.sum()
        self.weight_history[int(server_round)] = {c: float(w) for c, w in zip(ids, weights)}
        return weights

    def _empty_value(
        self,
        evaluate: EvalFn,
        client_parameters: Sequence[Sequence[np.ndarray]],
        global_parameters: Optional[Sequence[np.ndarray]],
    ) -> float:
        """``v(∅)``: the given value, else the incoming global model's accuracy, else 0."""
        if self.empty_value is not None:
            return self.empty_value
        if global_parameters is None:
            return 0.0
        expected = [np.shape(p) for p in client_parameters[0]]
        found = [np.shape(p) for p in global_parameters]
        if found != expected:
            raise ValueError(
                f"The global parameters have shapes {found} but the clients send {expected}."
            )
        return evaluate([np.asarray(p, dtype=np.float64) for p in global_parameters])


def _check_same_architecture(
    client_ids: Sequence[str], client_parameters: Sequence[Sequence[np.ndarray]]
) -> None:
    """Raise ValueError naming the first client with other shapes or non-finite values."""
    reference = [np.shape(p) for p in client_parameters[0]]
    for client, params in zip(client_ids, client_parameters):
        shapes = [np.shape(p) for p in params]
        if shapes != reference:
            raise ValueError(
                f"Client {client!r} sends parameter shapes {shapes}, but client "
                f"{client_ids[0]!r} sends {reference}; contribution-weighted averaging "
                "needs clients of one architecture."
            )
        for index, array in enumerate(params):
            if not np.all(np.isfinite(array)):
                raise ValueError(
                    f"Client {client!r} sends NaN or infinite values in parameter array {index}."
                )


def _checked_eval_fn(eval_fn: EvalFn, server_round: int) -> EvalFn:
    """``eval_fn`` with its result checked to be an accuracy in ``[0, 1]``."""

    def evaluate(parameters: list[np.ndarray]) -> float:
        value = eval_fn(parameters)
        try:
            accuracy = float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"eval_fn returned {value!r} in round {server_round}; it must return a number, "
                "the accuracy of the given parameters on the validation data."
            ) from None
        if not 0.0 <= accuracy <= 1.0:  # also catches NaN
            raise ValueError(
                f"eval_fn returned {accuracy!r} in round {server_round}; it must return an "
                "accuracy in [0, 1] (the fraction of validation samples predicted correctly)."
            )
        return accuracy

    return evaluate


class ContributionViews:
    """Read-only views shared by both contribution-weighted FedAvg faces.

    Expects ``self.contribution`` to be a :class:`WeightAverageContribution`.
    """

    contribution: WeightAverageContribution

    @property
    def ledger(self) -> ContributionLedger:
        """Per-round Shapley values and cumulative contributions (client id -> value)."""
        return self.contribution.ledger

    @property
    def round_contributions(self) -> dict[int, dict[str, float]]:
        """Round -> client id -> Shapley value in that round."""
        return {entry.server_round: dict(entry.values) for entry in self.ledger.rounds}

    @property
    def weight_history(self) -> dict[int, dict[str, float]]:
        """Round -> client id -> normalised aggregation weight given to the inner strategy."""
        return self.contribution.weight_history
