"""Per-round and cumulative Shapley contributions of federated clients.

Each round values only the clients that took part in it; a client's cumulative
contribution is the sum of its per-round values over the rounds it joined
(FedSV, Wang et al., "A Principled Approach to Data Valuation for Federated
Learning", 2020). :meth:`ContributionLedger.discounted_total` gives the same sum
with older rounds discounted, for aggregation weights that follow a client's
recent behaviour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from flhet_strategies.weighting.contribution.estimator import ShapleyResult

__all__ = ["ContributionLedger", "RoundContribution"]


@dataclass(frozen=True)
class RoundContribution:
    """Shapley values of one round's participants.

    Parameters
    ----------
    server_round : int
        The round.
    values : dict[str, float]
        Client id -> Shapley value in that round's game.
    n_evaluations : int
        Utility evaluations the estimate used.
    estimator : str
        Name of the estimator.
    seconds : float
        Wall-clock seconds of the estimate (utility construction included).
    empty_value : float
        ``v(∅)`` of the round's game.
    grand_value : float
        ``v(N)`` of the round's game: the utility of all participants together.
    """

    server_round: int
    values: dict[str, float]
    n_evaluations: int
    estimator: str
    seconds: float
    empty_value: float
    grand_value: float

    def to_dict(self) -> dict:
        """Plain-dict form for ``results.json``."""
        return {
            "round": self.server_round,
            "values": dict(self.values),
            "n_evaluations": self.n_evaluations,
            "estimator": self.estimator,
            "seconds": self.seconds,
            "empty_value": self.empty_value,
            "grand_value": self.grand_value,
        }


class ContributionLedger:
    """Records per-round Shapley values and sums them per client.

    Examples
    --------
    >>> import numpy as np
    >>> from flhet_strategies.weighting.contribution.estimator import ShapleyResult
    >>> ledger = ContributionLedger()
    >>> _ = ledger.record(1, ["a", "b"], ShapleyResult(np.array([0.2, -0.1]), 4, "exact", 0.1, 0.2))
    >>> _ = ledger.record(2, ["b"], ShapleyResult(np.array([0.3]), 2, "exact", 0.1, 0.4))
    >>> {k: round(v, 6) for k, v in ledger.total.items()}
    {'a': 0.2, 'b': 0.2}
    """

    def __init__(self) -> None:
        self._rounds: list[RoundContribution] = []

    @property
    def rounds(self) -> list[RoundContribution]:
        """The recorded rounds, in the order they were recorded."""
        return list(self._rounds)

    def record(
        self,
        server_round: int,
        client_ids: Sequence[str],
        result: ShapleyResult,
        seconds: float = 0.0,
    ) -> RoundContribution:
        """Add one round's Shapley values.

        Parameters
        ----------
        server_round : int
            The round; must be later than every round recorded so far.
        client_ids : Sequence[str]
            Participants, in the order of ``result.values``.
        result : ShapleyResult
            The round's estimate.
        seconds : float (default: 0.0)
            Wall-clock seconds the estimate took.

        Returns
        -------
        RoundContribution
            The recorded entry.

        Raises
        ------
        ValueError
            If ids and values disagree in number, ids repeat, a value is not
            finite, or the round is not later than the last recorded one.
        """
        ids = [str(c) for c in client_ids]
        values = np.asarray(result.values, dtype=np.float64)
        if values.shape != (len(ids),):
            raise ValueError(f"{len(ids)} client ids but {values.shape} Shapley values")
        if len(set(ids)) != len(ids):
            raise ValueError(f"client ids repeat: {ids}")
        if not np.all(np.isfinite(values)):
            raise ValueError(f"Shapley values must be finite, got {values}")
        if self._rounds and int(server_round) <= self._rounds[-1].server_round:
            raise ValueError(
                f"round {server_round} is not after the last recorded round "
                f"{self._rounds[-1].server_round}"
            )
        entry = RoundContribution(
            server_round=int(server_round),
            values={c: float(v) for c, v in zip(ids, values)},
            n_evaluations=int(result.n_evaluations),
            estimator=str(result.estimator),
            seconds=float(seconds),
            empty_value=float(result.empty_value),
            grand_value=float(result.grand_value),
        )
        self._rounds.append(entry)
        return entry

    @property
    def total(self) -> dict[str, float]:
        """Cumulative contribution per client: the sum of its per-round values."""
        return self.discounted_total(1.0)

    def discounted_total(self, decay: float) -> dict[str, float]:
        """Per-client sum of per-round values, a round ``k`` rounds old weighted ``decay**k``.

        Age is counted from the last recorded round, so with ``decay=0`` only that
        round counts and with ``decay=1`` this is :attr:`total`.

        Parameters
        ----------
        decay : float
            In ``[0, 1]``.

        Returns
        -------
        dict[str, float]
            Client id -> discounted sum, for every client seen in any round.
        """
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must lie in [0, 1], got {decay}")
        totals: dict[str, float] = {}
        if not self._rounds:
            return totals
        last = self._rounds[-1].server_round
        for entry in self._rounds:
            factor = decay ** (last - entry.server_round)  # 0.0**0 == 1.0
            for client_id, value in entry.values.items():
                totals[client_id] = totals.get(client_id, 0.0) + factor * value
        return totals

    def to_dict(self) -> dict:
        """``{"rounds": [per-round entries], "total": {client id: cumulative value}}``."""
        return {"rounds": [entry.to_dict() for entry in self._rounds], "total": self.total}
