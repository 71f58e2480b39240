"""What both Flower faces expose of the algorithm they drive (a mixin, Flower-free)."""

from __future__ import annotations

from typing import Any

from ..protocol import ServerAlgorithm, find_wrapper, unwrap


class FaceViews:
    """Read-only views of a face's :class:`~flhet_strategies.faces.driver.RoundDriver`.

    A subclass sets ``driver``.
    """

    driver: Any

    @property
    def algorithm(self) -> ServerAlgorithm:
        """The server half this strategy drives (with its wrappers)."""
        return self.driver.algorithm

    @property
    def core(self) -> ServerAlgorithm:
        """The algorithm inside any privacy or secure-sum wrappers."""
        return unwrap(self.driver.algorithm)

    @property
    def history(self) -> list[dict]:
        """Per-round history (traffic, timing, accuracy summaries, rejections, privacy)."""
        return self.driver.history.rounds

    @property
    def phase(self) -> str:
        """The run's name (``flhet-phase``)."""
        return self.driver.phase

    @property
    def budget(self):
        """The privacy accounting (a ``RoundBudget``), or ``None`` without DP."""
        from ..privacy.dp.mechanism import DifferentialPrivacy

        wrapper = find_wrapper(self.driver.algorithm, DifferentialPrivacy)
        return None if wrapper is None else wrapper.budget

    @property
    def privacy_history(self) -> list[dict[str, Any]]:
        """Per released round: ``round``, ``epsilon`` (cumulative), ``delta``, ...."""
        budget = self.budget
        return [] if budget is None else list(budget.history)

    @property
    def epsilon(self) -> float:
        """Cumulative epsilon at the target delta (0 before the first release)."""
        budget = self.budget
        return 0.0 if budget is None else budget.epsilon

    @property
    def stopped_at(self) -> int | None:
        """The first round the privacy budget refused, if any."""
        budget = self.budget
        return None if budget is None else budget.stopped_at

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.algorithm.describe()[0]})"


__all__ = ["FaceViews"]
