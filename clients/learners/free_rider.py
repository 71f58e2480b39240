"""A free-riding client: takes part in every round, contributes nothing.

Used to test contribution accounting (a free-rider's Shapley value should be the
lowest, and not above zero). It never trains and answers every prediction request
with random logits, so its replies pass the server's payload validation (right
shape, finite floats) and look like a real model's outputs.
"""

from __future__ import annotations

import numpy as np

from .base import DistillTarget


class FreeRiderLearner:
    """A :class:`~clients.learners.base.Learner` that returns random logits.

    Its logits are independent ``N(0, scale**2)`` draws: with the default scale of
    3 the implied class probabilities look like confident guesses (the largest is
    typically above one half), as a trained model's would; ``scale=0`` sends zeros,
    i.e. uniform predictions. The draws are reproducible: :meth:`reseed` (called
    by the client every round) restarts them. It has no features to embed, so it is
    not a :class:`~clients.learners.base.FeatureLearner` and
    :func:`~clients.learners.base.require_features` rejects it.

    Parameters
    ----------
    num_classes : int
        Number of classes of the task.
    scale : float (default: 3.0)
        Standard deviation of the random logits, ``>= 0``.
    seed : int (default: 0)
        Seed of the random logits.
    """

    framework = "none (free rider)"

    def __init__(self, num_classes: int, scale: float = 3.0, seed: int = 0) -> None:
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if not np.isfinite(scale) or scale < 0:
            raise ValueError(f"scale must be finite and >= 0, got {scale}")
        self.num_classes = int(num_classes)
        self.scale = float(scale)
        self._rng = np.random.default_rng(seed)

    def reseed(self, seed: int) -> None:
        """Restart the random logits from ``seed``."""
        self._rng = np.random.default_rng(seed)

    def train(
        self,
        x: np.ndarray,
        y: np.ndarray,
        epochs: int,
        distill: DistillTarget | None = None,
        lr_scale: float = 1.0,
    ) -> dict[str, float]:
        """Do nothing (a free-rider spends no compute); no metrics."""
        return {}

    def distill(self, target: DistillTarget, epochs: int) -> dict[str, float]:
        """Do nothing; no metrics."""
        return {}

    def predict_logits(self, x: np.ndarray) -> np.ndarray:
        """Random logits ``(len(x), num_classes)``, float32."""
        shape = (len(x), self.num_classes)
        return (self.scale * self._rng.standard_normal(shape)).astype(np.float32)

    def get_state(self) -> dict[str, np.ndarray]:
        """No model, no state."""
        return {}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Nothing to restore."""
