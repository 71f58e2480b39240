"""What flhet needs from a client model: the :class:`Learner` protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class DistillTarget:
    """Soft targets on public proxy inputs, to distill towards.

    Parameters
    ----------
    x : np.ndarray
        Proxy inputs, ``(num_samples, C, H, W)`` float32.
    probs : np.ndarray
        Consensus soft targets, ``(num_samples, num_classes)``, rows sum to one.
    weight : float
        Weight of the distillation term against the private cross-entropy.
    temperature : float
        Distillation temperature.
    """

    x: np.ndarray
    probs: np.ndarray
    weight: float = 0.5
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if len(self.x) != len(self.probs):
            raise ValueError(
                f"{len(self.x)} proxy inputs but {len(self.probs)} soft targets"
            )
        if self.weight < 0 or self.temperature <= 0:
            raise ValueError("weight must be >= 0 and temperature > 0")


@runtime_checkable
class Learner(Protocol):
    """A client model that can take part in prediction-sharing federated learning.

    Any framework fits: :class:`~clients.learners.torch_learner.TorchLearner` wraps a
    ``torch.nn.Module``, :class:`~clients.learners.sklearn_learner.SklearnLearner` a
    scikit-learn classifier. Implement these five members for anything else.
    """

    framework: str
    """Name of the ML framework, e.g. ``"pytorch"`` or ``"scikit-learn"``."""

    def train(
        self,
        x: np.ndarray,
        y: np.ndarray,
        epochs: int,
        distill: DistillTarget | None = None,
        lr_scale: float = 1.0,
    ) -> dict[str, float]:
        """Train on private data, jointly distilling towards ``distill`` if given."""

    def distill(self, target: DistillTarget, epochs: int) -> dict[str, float]:
        """Train on the proxy soft targets alone (FedMD's digest step)."""

    def predict_logits(self, x: np.ndarray) -> np.ndarray:
        """Class scores ``(num_samples, num_classes)``; softmax gives probabilities."""

    def get_state(self) -> dict[str, np.ndarray]:
        """The model's state as named numpy arrays (kept on the client)."""

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore a state produced by :meth:`get_state`."""

    def reseed(self, seed: int) -> None:
        """Reset the learner's own randomness (batch order), e.g. once per round."""
