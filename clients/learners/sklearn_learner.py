"""A :class:`~clients.learners.base.Learner` for scikit-learn classifiers.

A scikit-learn model cannot take gradients from a KL loss, so it takes part through
its predictions alone: it shares ``log predict_proba`` on the proxy set, and it learns
from the consensus by pseudo-labelling, adding the proxy samples with the consensus'
argmax as label and ``weight * confidence`` as sample weight to its training set.
"""

from __future__ import annotations

import pickle

import numpy as np

from ..models.sklearn_models import full_class_proba
from .base import DistillTarget

_EPS = 1e-6


class SklearnLearner:
    """Wrap a scikit-learn classifier with ``predict_proba``.

    Estimators with ``partial_fit`` (e.g. ``SGDClassifier(loss="log_loss")``) train
    incrementally, one pass per epoch, like a neural network; others are refitted
    from scratch on every :meth:`train` call and ``epochs`` is ignored.

    It only predicts: it has no features to embed, so it is not a
    :class:`~clients.learners.base.FeatureLearner` and
    :func:`~clients.learners.base.require_features` rejects it.

    Parameters
    ----------
    estimator : sklearn estimator
        A classifier with ``fit(X, y, sample_weight=...)`` and ``predict_proba``.
    num_classes : int
        Number of classes of the task (``predict_logits`` always returns this many
        columns, also for classes the estimator has not seen).
    seed : int (default: 0)
        Seed of the per-epoch shuffling for ``partial_fit``.
    """

    framework = "scikit-learn"

    def __init__(self, estimator, num_classes: int, seed: int = 0) -> None:
        if not hasattr(estimator, "predict_proba"):
            raise TypeError(f"{type(estimator).__name__} has no predict_proba")
        self.estimator = estimator
        self.num_classes = int(num_classes)
        self._rng = np.random.default_rng(seed)

    def reseed(self, seed: int) -> None:
        """Reset the shuffling seed."""
        self._rng = np.random.default_rng(seed)

    @staticmethod
    def _flatten(x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float32).reshape(len(x), -1)

    def _fit(self, x: np.ndarray, y: np.ndarray, w: np.ndarray, epochs: int) -> None:
        if hasattr(self.estimator, "partial_fit"):
            classes = np.arange(self.num_classes)
            for _ in range(max(int(epochs), 1)):
                order = self._rng.permutation(len(x))
                self.estimator.partial_fit(x[order], y[order], classes=classes,
                                           sample_weight=w[order])
        else:
            self.estimator.fit(x, y, sample_weight=w)

    def train(
        self,
        x: np.ndarray,
        y: np.ndarray,
        epochs: int,
        distill: DistillTarget | None = None,
        lr_scale: float = 1.0,
    ) -> dict[str, float]:
        """Fit on private data plus, if given, consensus pseudo-labels.

        ``lr_scale`` is ignored (scikit-learn estimators own their step sizes).
        """
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs but {len(y)} labels")
        xs = [self._flatten(x)]
        ys = [np.asarray(y, dtype=np.int64)]
        ws = [np.ones(len(x))]
        if distill is not None and distill.weight > 0 and len(distill.x):
            probs = np.asarray(distill.probs)
            xs.append(self._flatten(distill.x))
            ys.append(probs.argmax(axis=1).astype(np.int64))
            ws.append(distill.weight * probs.max(axis=1))
        self._fit(np.concatenate(xs), np.concatenate(ys), np.concatenate(ws), epochs)
        return {"train_loss": self._log_loss(xs[0], ys[0]), "kd_loss": 0.0}

    def distill(self, target: DistillTarget, epochs: int) -> dict[str, float]:
        """Fit on the consensus pseudo-labels alone."""
        probs = np.asarray(target.probs)
        x = self._flatten(target.x)
        self._fit(x, probs.argmax(axis=1), target.weight * probs.max(axis=1), epochs)
        return {"kd_loss": 0.0}

    def _proba(self, x: np.ndarray) -> np.ndarray:
        return full_class_proba(self.estimator, x, self.num_classes)

    def _log_loss(self, x: np.ndarray, y: np.ndarray) -> float:
        p = self._proba(x)[np.arange(len(y)), y]
        return float(-np.log(np.clip(p, _EPS, 1.0)).mean())

    def predict_logits(self, x: np.ndarray) -> np.ndarray:
        """``log(predict_proba)`` (clipped at 1e-6) over all classes, float32.

        An estimator that has not been trained yet predicts uniformly (zero logits).
        """
        if not hasattr(self.estimator, "classes_"):
            return np.zeros((len(x), self.num_classes), dtype=np.float32)  # untrained: uniform
        return np.log(np.clip(self._proba(self._flatten(x)), _EPS, 1.0)).astype(np.float32)

    def get_state(self) -> dict[str, np.ndarray]:
        """The pickled estimator as a uint8 array (state stays on the client)."""
        return {"estimator": np.frombuffer(pickle.dumps(self.estimator), dtype=np.uint8)}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore an estimator pickled by :meth:`get_state` (trusted, local state)."""
        self.estimator = pickle.loads(np.asarray(state["estimator"], dtype=np.uint8).tobytes())
