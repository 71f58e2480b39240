"""What both Flower faces expose of the algorithm they drive (a mixin, Flower-free)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..protocol import ServerAlgorithm, find_wrapper, unwrap, wrapper_chain


class FaceViews:
    """Views of a face's :class:`~flhet_strategies.faces.driver.RoundDriver`, and
    :meth:`resume` from its checkpoint.

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

    def resume(self, path: str | Path | None = None) -> bool:
        """Continue from a checkpoint, if there is one; return whether there was.

        Loads the round state the run wrote after its last finished round (default:
        the ``checkpoint`` this strategy was built with, which keeps being written) and
        drives it from the next round on. Call it on the outermost strategy (e.g. the
        :class:`~flhet_strategies.strategies.SecureConsensus`), before the run starts.

        Raises
        ------
        ValueError
            Without a path, or when the checkpoint holds another algorithm or phase.
        """
        from .driver import RoundDriver

        path = path if path is not None else self.driver.checkpoint
        if path is None:
            raise ValueError("resume needs a checkpoint: give the path or build the strategy "
                             "with checkpoint=...")
        if not Path(path).is_file():
            return False
        loaded = RoundDriver.resume(path, on_round_end=self.driver.on_round_end)
        mine, theirs = _kinds(self.driver.algorithm), _kinds(loaded.algorithm)
        if (mine, self.driver.phase) != (theirs, loaded.phase):
            raise ValueError(f"{path} holds {' > '.join(theirs)} (phase {loaded.phase!r}); "
                             f"this strategy runs {' > '.join(mine)} (phase "
                             f"{self.driver.phase!r}): start a fresh run or point elsewhere")
        if self.driver.checkpoint is not None:
            loaded.checkpoint = self.driver.checkpoint
        self.driver = loaded
        return True

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.algorithm.describe()[0]})"


def _kinds(algorithm: ServerAlgorithm) -> list[str]:
    # the wrapper chain's class names, outermost first
    return [type(a).__name__ for a in wrapper_chain(algorithm)]


__all__ = ["FaceViews"]
