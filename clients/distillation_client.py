"""Client half of logit-consensus distillation, independent of any Flower API.

:class:`DistillationClient` holds one client's learner and data and answers the two
requests of the protocol: ``train`` (distill on the consensus it receives, train on
private data, return logits on the requested proxy samples) and ``evaluate``. The
Flower ``NumPyClient`` wrapper and the Message-API ``ClientApp`` handlers are thin
shells around it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flhet_strategies.core.distillation import RoundPlan
from flhet_strategies.core.recipe import DistillationRecipe

from .learners.base import DistillTarget, Learner

@dataclass
class ClientReply:
    """A client's answer to a training round.

    Parameters
    ----------
    logits : np.ndarray
        float32 logits on the plan's proxy indices.
    class_counts : np.ndarray
        int64 label histogram of the private training data.
    num_examples : int
        Number of private training examples.
    metrics : dict[str, float]
        Training metrics (losses).
    """

    logits: np.ndarray
    class_counts: np.ndarray
    num_examples: int
    metrics: dict[str, float]


class DistillationClient:
    """One client of logit-consensus distillation: a learner and its data.

    Parameters
    ----------
    learner : Learner
        The client's model (any framework, see :class:`~clients.learners.base.Learner`).
    x_train, y_train : np.ndarray
        Private training data.
    x_test, y_test : np.ndarray
        The client's own test split.
    proxy_x : np.ndarray
        The public proxy inputs (the server refers to them by index).
    num_classes : int
        Number of classes.
    global_test : tuple of np.ndarray, optional
        ``(x, y)`` of the shared global test set, for the FedDF-style metric.
    seed : int (default: 0)
        Base seed; each round reseeds the learner with ``(seed, round)``.
    """

    def __init__(
        self,
        learner: Learner,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_test: np.ndarray,
        y_test: np.ndarray,
        proxy_x: np.ndarray,
        num_classes: int,
        global_test: tuple[np.ndarray, np.ndarray] | None = None,
        seed: int = 0,
    ) -> None:
        if len(x_train) == 0:
            raise ValueError("a client needs at least one private training example")
        if len(x_train) != len(y_train) or len(x_test) != len(y_test):
            raise ValueError("inputs and labels must have the same length")
        y_all = np.concatenate([np.asarray(y_train), np.asarray(y_test)])
        if y_all.min() < 0 or y_all.max() >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes}), got {y_all.min()}..{y_all.max()}")
        self.learner = learner
        self.x_train, self.y_train = x_train, np.asarray(y_train, dtype=np.int64)
        self.x_test, self.y_test = x_test, np.asarray(y_test, dtype=np.int64)
        self.proxy_x = proxy_x
        self.num_classes = int(num_classes)
        self.global_test = global_test
        self.seed = int(seed)

    @property
    def class_counts(self) -> np.ndarray:
        """Label histogram of the private training data (int64, ``num_classes``)."""
        return np.bincount(self.y_train, minlength=self.num_classes).astype(np.int64)

    def _check_indices(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self.proxy_x)):
            raise ValueError(
                f"proxy indices out of range [0, {len(self.proxy_x)}): the client's proxy "
                "set does not match the server's"
            )
        return idx

    def train(self, plan: RoundPlan, config: DistillationRecipe) -> ClientReply:
        """Run one round: distill, train privately, reply with proxy logits."""
        self.learner.reseed(self.seed * 100_003 + plan.server_round)
        target = None
        if len(plan.consensus_indices):
            if plan.consensus.shape[1] != self.num_classes:
                raise ValueError(
                    f"consensus has {plan.consensus.shape[1]} classes, client has {self.num_classes}"
                )
            target = DistillTarget(
                x=self.proxy_x[self._check_indices(plan.consensus_indices)],
                probs=plan.consensus,
                weight=config.kd_weight,
                temperature=config.kd_temperature,
            )
        epochs = config.local_epochs + (config.warmup_epochs if plan.server_round == 1 else 0)
        digest: dict[str, float] = {}
        if target is not None and config.schedule == "sequential":
            digest = self.learner.distill(target, epochs=1)  # FedMD: digest, then revisit
            target = None
        metrics = {**self.learner.train(self.x_train, self.y_train, epochs, distill=target), **digest}
        logits = self.learner.predict_logits(self.proxy_x[self._check_indices(plan.proxy_indices)])
        if config.final_round and config.final_private_epochs > 0:
            self.learner.train(self.x_train, self.y_train, config.final_private_epochs,
                               lr_scale=config.final_lr_scale)
        return ClientReply(logits, self.class_counts, len(self.x_train), metrics)

    def train_local_only(self, epochs: int) -> dict[str, float]:
        """Train on private data alone (the local-only baseline)."""
        self.learner.reseed(self.seed * 100_003)
        return self.learner.train(self.x_train, self.y_train, epochs)

    def evaluate(self) -> dict[str, float]:
        """Accuracy on the own test split and, if available, on the global test set."""
        metrics = {"client_accuracy": _accuracy(self.learner, self.x_test, self.y_test)}
        if self.global_test is not None:
            metrics["global_accuracy"] = _accuracy(self.learner, *self.global_test)
        return metrics


def _accuracy(learner: Learner, x: np.ndarray, y: np.ndarray) -> float:
    if len(x) == 0:
        return float("nan")
    return float((learner.predict_logits(x).argmax(axis=1) == np.asarray(y)).mean())
