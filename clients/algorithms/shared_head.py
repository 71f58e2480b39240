"""Shared heads, client half (LG-FedAvg, FedGH): a local body under a global head.

Each round the client loads the global head into its model, trains the whole model on
its private data, and replies with its head (LG-FedAvg) or its per-class mean features
and class counts (FedGH; under DP-SGD their Gaussian mechanism release). It scores its
body with the latest global head. The server halves are in
:mod:`flhet_strategies.algorithms.shared_head`.
"""

from __future__ import annotations

import numpy as np

from flhet_strategies import wire
from flhet_strategies.algorithms.recipes import SharedHeadRecipe
from flhet_strategies.protocol import ClientAlgorithm, Instruction, Reply

from ..federated_client import FederatedClient
from ..learners.base import FeatureLearner, require_features
from .prototypes import release_prototypes

_NAMES = {"lgfedavg": "LG-FedAvg", "fedgh": "FedGH"}


def head_matrix(head: dict[str, np.ndarray]) -> np.ndarray:
    """A linear head's ``{"weight": (C, d), "bias": (C,)}`` as one ``(C, d + 1)`` array.

    Raises
    ------
    ValueError
        If the head is not one linear layer with a bias.
    """
    if set(head) != {"weight", "bias"}:
        raise ValueError(f"a shared head must be one linear layer with a bias (weight, bias); "
                         f"this model's head has {sorted(head)}")
    weight, bias = np.asarray(head["weight"]), np.asarray(head["bias"])
    return np.hstack([weight, bias[:, None]]).astype(np.float32)


def head_state(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Inverse of :func:`head_matrix`."""
    matrix = np.asarray(matrix, dtype=np.float32)
    return {"weight": matrix[:, :-1].copy(), "bias": matrix[:, -1].copy()}


class SharedHeadClient(ClientAlgorithm):
    """What LG-FedAvg's and FedGH's client halves share: load, train, score.

    Subclasses say what a client uploads (:meth:`upload`).
    """

    name = "shared_head"

    def _learner(self, instruction: Instruction, client: FederatedClient) -> FeatureLearner:
        algorithm = _NAMES.get(str(instruction.config.get(wire.ALGORITHM)), self.name)
        return require_features(client.learner, algorithm)

    @staticmethod
    def _global_head(instruction: Instruction, learner: FeatureLearner,
                     num_classes: int) -> np.ndarray | None:
        """The instruction's global head, if the recipe uses one and it carries one."""
        recipe = SharedHeadRecipe.from_config(instruction.config)
        if not recipe.use_global_head or wire.GLOBAL_HEAD not in instruction.arrays:
            return None
        head = np.asarray(instruction.arrays[wire.GLOBAL_HEAD], dtype=np.float32)
        expected = (num_classes, learner.feature_dim + 1)
        if head.shape != expected:
            raise ValueError(
                f"the global head has shape {head.shape} but this client's head is "
                f"{expected} ({learner.feature_dim}-d features, bias last): build every model "
                "with the common feature_dim (a projection adapter after its body)")
        return head

    def fit(self, instruction: Instruction, client: FederatedClient) -> Reply:
        """Load the global head, train the whole model; reply with :meth:`upload`."""
        learner = self._learner(instruction, client)
        recipe = SharedHeadRecipe.from_config(instruction.config)
        head = self._global_head(instruction, learner, client.num_classes)
        if head is not None:
            learner.set_head(head_state(head))
        client.reseed(instruction.server_round)
        epochs = recipe.local_epochs + (recipe.warmup_epochs
                                        if instruction.server_round == 1 else 0)
        metrics = learner.train(client.x_train, client.y_train, epochs)
        return Reply("", self.upload(learner, client, instruction.server_round),
                     {**metrics, wire.NUM_EXAMPLES: client.num_examples})

    def upload(self, learner: FeatureLearner, client: FederatedClient,
               server_round: int) -> dict[str, np.ndarray]:
        """The reply arrays after training in ``server_round``."""
        raise NotImplementedError

    def evaluate(self, instruction: Instruction, client: FederatedClient) -> dict[str, float]:
        """Score the body under the request's global head (else the client's own head);
        the model is left as it was."""
        learner = self._learner(instruction, client)
        head = self._global_head(instruction, learner, client.num_classes)
        if head is None:
            return client.evaluate()
        own = learner.get_head()
        learner.set_head(head_state(head))
        try:
            return client.evaluate()
        finally:
            learner.set_head(own)


class LGFedAvgClient(SharedHeadClient):
    """LG-FedAvg's client half: uploads its trained head."""

    name = "lgfedavg"

    def upload(self, learner: FeatureLearner, client: FederatedClient,
               server_round: int) -> dict[str, np.ndarray]:
        """The head ``(C, d + 1)``."""
        return {wire.HEAD: head_matrix(learner.get_head())}


class FedGHClient(SharedHeadClient):
    """FedGH's client half: uploads its per-class mean features and class counts."""

    name = "fedgh"

    def upload(self, learner: FeatureLearner, client: FederatedClient,
               server_round: int) -> dict[str, np.ndarray]:
        """Prototypes ``(C, d)`` (zero rows for absent classes) and class counts
        (:func:`~clients.algorithms.prototypes.release_prototypes`)."""
        return release_prototypes(learner, client, server_round)


__all__ = ["FedGHClient", "LGFedAvgClient", "SharedHeadClient", "head_matrix", "head_state"]
