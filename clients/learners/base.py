"""What flhet needs from a client model: the :class:`Learner` protocol.

Every learner can train, distill and predict (:class:`Learner`). Feature-level methods
(prototypes, shared heads) also need a learner that embeds its inputs and exposes its
head: :class:`FeatureLearner`, checked with :func:`require_features`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

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
    scikit-learn classifier. Implement these members for anything else.
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


AuxLoss = Callable[[Any, Any, Any], Any]
"""An auxiliary training loss ``aux_loss(features, logits, labels) -> scalar``.

For a PyTorch learner the arguments are the private batch's body features
``(B, feature_dim)``, its logits ``(B, num_classes)`` and its labels ``(B,)`` as tensors,
and the result is a scalar tensor added to the batch loss.
"""


@runtime_checkable
class FeatureLearner(Learner, Protocol):
    """A :class:`Learner` that can also embed its inputs and share its classifier head.

    Needed by feature-level algorithms (e.g. FedProto's class prototypes, shared heads,
    feature discriminators). :class:`~clients.learners.torch_learner.TorchLearner` on a
    model with a ``body``/``head`` split (every zoo model) is one; scikit-learn and
    free-rider learners are not. ``isinstance`` checks only that the members exist: use
    :func:`require_features`, which also checks that the learner's model is split.
    """

    feature_dim: int
    """Width of the features :meth:`embed` returns (= the head's input width)."""

    def train(
        self,
        x: np.ndarray,
        y: np.ndarray,
        epochs: int,
        distill: DistillTarget | None = None,
        lr_scale: float = 1.0,
        aux_loss: AuxLoss | None = None,
    ) -> dict[str, float]:
        """As :meth:`Learner.train`, adding ``aux_loss`` (see :data:`AuxLoss`) every step."""

    def embed(self, x: np.ndarray) -> np.ndarray:
        """Features ``(num_samples, feature_dim)`` float32 of inputs ``x``."""

    def get_head(self) -> dict[str, np.ndarray]:
        """The classifier head's parameters as named numpy arrays."""

    def set_head(self, head: dict[str, np.ndarray]) -> None:
        """Load head parameters from :meth:`get_head` (strict on names and shapes)."""

    def predict_from_features(self, features: np.ndarray) -> np.ndarray:
        """Logits ``(num_samples, num_classes)`` of the head on ``features``."""


_FEATURE_MEMBERS = ("embed", "get_head", "set_head", "predict_from_features")


def require_features(learner: object, algorithm: str) -> FeatureLearner:
    """Return ``learner`` if it can embed its inputs, else raise a clear ``TypeError``.

    Parameters
    ----------
    learner : object
        A client's learner.
    algorithm : str
        Name of the algorithm that needs features, used in the message (e.g. ``"FedProto"``).

    Returns
    -------
    FeatureLearner
        ``learner`` itself.

    Raises
    ------
    TypeError
        If the learner lacks a feature member (e.g. a scikit-learn or free-rider learner),
        or its model has no ``body``/``head`` split. The message names the algorithm, the
        learner's class and its framework.
    """
    cls = type(learner).__name__
    framework = getattr(learner, "framework", "unknown-framework")
    needs = (
        f"{algorithm} needs a learner that can embed its inputs into features (a TorchLearner "
        f"on a zoo model with a body/head split); client's learner is a {framework} {cls}"
    )
    missing = [m for m in _FEATURE_MEMBERS if not callable(getattr(learner, m, None))]
    if missing:
        raise TypeError(f"{needs}, which can only predict (it has no {', '.join(missing)}).")
    try:
        int(learner.feature_dim)  # type: ignore[attr-defined]
    except (AttributeError, TypeError) as error:
        raise TypeError(f"{needs}, which cannot embed: {error}") from error
    return learner  # type: ignore[return-value]
