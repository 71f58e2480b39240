"""One client of any flhet algorithm: a learner, its data and its state (Flower-free).

The client halves (``clients.algorithms``) work on a :class:`FederatedClient`; the
Flower faces rebuild it for every message and restore its model and state per phase.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from flhet_strategies import wire

from .learners.base import Learner

Predictor = Callable[[np.ndarray], np.ndarray]
"""Maps inputs to class scores ``(N, num_classes)`` (the argmax is the prediction)."""


class FederatedClient:
    """A learner and its private data, the unit every client half trains and scores.

    Parameters
    ----------
    learner : Learner
        The client's model (any framework, see :class:`~clients.learners.base.Learner`).
    x_train, y_train : np.ndarray
        Private training data.
    x_test, y_test : np.ndarray
        The client's own test split.
    proxy_x : np.ndarray or None
        The public proxy inputs (the consensus refers to them by index); ``None`` for
        algorithms that use none.
    num_classes : int
        Number of classes.
    global_test : tuple of np.ndarray, optional
        ``(x, y)`` of the shared global test set, for the FedDF-style metric.
    seed : int (default: 0)
        Base seed; each round reseeds the learner with ``(seed, round)``.

    Attributes
    ----------
    state : dict[str, np.ndarray]
        What a client half keeps between rounds besides the model (e.g. the last global
        prototypes); the faces save it per phase with the learner's state.
    """

    def __init__(self, learner: Learner, x_train: np.ndarray, y_train: np.ndarray,
                 x_test: np.ndarray, y_test: np.ndarray, proxy_x: np.ndarray | None,
                 num_classes: int, global_test: tuple[np.ndarray, np.ndarray] | None = None,
                 seed: int = 0) -> None:
        if len(x_train) == 0:
            raise ValueError("a client needs at least one private training example")
        if len(x_train) != len(y_train) or len(x_test) != len(y_test):
            raise ValueError("inputs and labels must have the same length")
        y_all = np.concatenate([np.asarray(y_train), np.asarray(y_test)])
        if y_all.min() < 0 or y_all.max() >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}), got "
                             f"{y_all.min()}..{y_all.max()}")
        if global_test is not None and len(global_test[0]) != len(global_test[1]):
            raise ValueError("global_test inputs and labels must have the same length")
        self.learner = learner
        self.x_train, self.y_train = x_train, np.asarray(y_train, dtype=np.int64)
        self.x_test, self.y_test = x_test, np.asarray(y_test, dtype=np.int64)
        self.proxy_x = proxy_x
        self.num_classes = int(num_classes)
        self.global_test = global_test
        self.seed = int(seed)
        self.state: dict[str, np.ndarray] = {}

    @property
    def class_counts(self) -> np.ndarray:
        """Label histogram of the private training data (int64, ``num_classes``)."""
        return np.bincount(self.y_train, minlength=self.num_classes).astype(np.int64)

    @property
    def private_records(self) -> bool:
        """Whether the learner trains with record-level DP (DP-SGD): then only what is
        post-processing of the model or of an accounted DP release may leave the client
        (no exact label histogram; class prototypes by the Gaussian mechanism)."""
        return getattr(self.learner, "dp", None) is not None

    def privacy_metrics(self) -> dict[str, float]:
        """Reply metrics of the record-level privacy spent so far (empty without DP-SGD)."""
        spent = getattr(self.learner, "privacy_spent", dict)()
        if not spent:
            return {}
        return {wire.RECORD_EPSILON: float(spent["epsilon"]),
                wire.RECORD_DELTA: float(spent["delta"])}

    @property
    def num_examples(self) -> int:
        """Private training examples."""
        return int(len(self.x_train))

    def reseed(self, server_round: int) -> None:
        """Reseed the learner for ``server_round`` (batch orders differ per round)."""
        self.learner.reseed(self.seed * 100_003 + int(server_round))

    def proxy(self, indices: np.ndarray) -> np.ndarray:
        """The proxy inputs at ``indices``.

        Raises
        ------
        ValueError
            If the client holds no proxy set or an index is out of range (its proxy set
            does not match the server's).
        """
        idx = np.asarray(indices, dtype=np.int64)
        if self.proxy_x is None:
            raise ValueError("this algorithm needs the public proxy set, but the client was "
                             "built with proxy_x=None")
        if idx.size and (idx.min() < 0 or idx.max() >= len(self.proxy_x)):
            raise ValueError(f"proxy indices out of range [0, {len(self.proxy_x)}): the "
                             "client's proxy set does not match the server's")
        return self.proxy_x[idx]

    def evaluate(self, predict: Predictor | None = None) -> dict[str, float]:
        """Accuracy on the own test split and, if available, on the global test set.

        Parameters
        ----------
        predict : Predictor, optional
            The deployed predictor (default: the learner's ``predict_logits``).
        """
        predict = predict or self.learner.predict_logits
        metrics = {"client_accuracy": _accuracy(predict, self.x_test, self.y_test)}
        if self.global_test is not None:
            metrics["global_accuracy"] = _accuracy(predict, *self.global_test)
        return metrics


def _accuracy(predict: Predictor, x: np.ndarray, y: np.ndarray) -> float:
    if len(x) == 0:
        return float("nan")
    return float((np.asarray(predict(x)).argmax(axis=1) == np.asarray(y)).mean())


DistillationClient = FederatedClient
"""Earlier name of :class:`FederatedClient` (kept for existing apps)."""

__all__ = ["DistillationClient", "FederatedClient", "Predictor"]
