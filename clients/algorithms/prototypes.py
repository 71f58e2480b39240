"""Class prototypes, client half (FedProto, FedTGP): train towards the global prototypes.

Each round the client trains with ``CE + lambda * MSE(f(x), p_y)`` (``f`` the body's
features in the common space, ``p_y`` the global prototype of the sample's class), then
replies with its per-class mean features and class counts (under DP-SGD their Gaussian
mechanism release, :func:`release_prototypes`). The server halves are in
:mod:`flhet_strategies.algorithms.prototypes`.
"""

from __future__ import annotations

import numpy as np
import torch

from flhet_strategies import wire
from flhet_strategies.algorithms.recipes import PrototypeRecipe
from flhet_strategies.protocol import ClientAlgorithm, Instruction, Reply

from ..federated_client import FederatedClient
from ..learners.base import FeatureLearner, require_features
from ..learners.dp_prototypes import private_class_prototypes

_NAMES = {"fedproto": "FedProto", "fedtgp": "FedTGP"}

_NOISE_STREAM = 0x70726F74
"""Seeds the prototype noise apart from the client's other randomness (``b"prot"``)."""

PROTOTYPES_STATE = "global_prototypes"
"""Client state: the last global prototypes received (for prototype inference)."""
MASK_STATE = "prototype_mask"
"""Client state: which classes they cover."""


def prototype_loss(prototypes: np.ndarray, mask: np.ndarray, weight: float):
    """``aux_loss(features, logits, labels)``: ``weight * MSE`` to the labels' prototypes.

    As in the authors' code, the mean runs over the whole batch and every feature
    dimension; samples whose class has no global prototype contribute zero.
    """
    table = torch.as_tensor(np.asarray(prototypes, dtype=np.float32))
    covered = torch.as_tensor(np.asarray(mask, dtype=bool))

    def loss(features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        target = table.to(features.device)[labels]
        keep = covered.to(features.device)[labels].to(features.dtype).unsqueeze(1)
        return weight * ((features - target) ** 2 * keep).sum() / features.numel()

    return loss


def class_prototypes(features: np.ndarray, labels: np.ndarray,
                     num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class mean features ``(C, d)`` (zero rows for absent classes) and counts."""
    features = np.asarray(features, dtype=np.float64)
    counts = np.bincount(labels, minlength=num_classes).astype(np.int64)
    sums = np.zeros((num_classes, features.shape[1]))
    np.add.at(sums, labels, features)
    means = np.divide(sums, counts[:, None], out=np.zeros_like(sums), where=counts[:, None] > 0)
    return means.astype(np.float32), counts


def release_prototypes(learner: FeatureLearner, client: FederatedClient,
                       server_round: int) -> dict[str, np.ndarray]:
    """What a client sends of its class prototypes: the exact means and counts
    (:func:`class_prototypes`), or under DP-SGD the Gaussian mechanism's noisy ones,
    accounted in the learner's accountant
    (:func:`~clients.learners.dp_prototypes.private_class_prototypes`; its noise is
    seeded by the client's seed and the round, so runs reproduce)."""
    if client.private_records:
        rng = np.random.default_rng([client.seed, int(server_round), _NOISE_STREAM])
        means, counts = private_class_prototypes(learner, client.x_train, client.y_train,
                                                 client.num_classes, rng)
    else:
        means, counts = class_prototypes(learner.embed(client.x_train), client.y_train,
                                         client.num_classes)
    return {wire.PROTOTYPES: means, wire.CLASS_COUNTS: counts}


class PrototypeClient(ClientAlgorithm):
    """Client half of FedProto and FedTGP (they differ on the server only)."""

    name = "fedproto"

    def _learner(self, instruction: Instruction, client: FederatedClient) -> FeatureLearner:
        algorithm = _NAMES.get(str(instruction.config.get(wire.ALGORITHM)), "FedProto")
        return require_features(client.learner, algorithm)

    def fit(self, instruction: Instruction, client: FederatedClient) -> Reply:
        """Train towards the global prototypes; reply with this client's prototypes."""
        learner = self._learner(instruction, client)
        recipe = PrototypeRecipe.from_config(instruction.config)
        prototypes, mask = _global(instruction, client.num_classes)
        if prototypes.shape[1] != learner.feature_dim:
            raise ValueError(
                f"the client's features are {learner.feature_dim}-dimensional but the global "
                f"prototypes are {prototypes.shape[1]}-dimensional: build every model with the "
                "common feature_dim (a projection adapter after its body)")
        client.state[PROTOTYPES_STATE], client.state[MASK_STATE] = prototypes, mask
        aux = None
        if recipe.proto_weight > 0 and mask.any():
            aux = prototype_loss(prototypes, mask, recipe.proto_weight)
        client.reseed(instruction.server_round)
        epochs = recipe.local_epochs + (recipe.warmup_epochs
                                        if instruction.server_round == 1 else 0)
        metrics = learner.train(client.x_train, client.y_train, epochs, aux_loss=aux)
        return Reply("", release_prototypes(learner, client, instruction.server_round),
                     {**metrics, wire.NUM_EXAMPLES: client.num_examples})

    def evaluate(self, instruction: Instruction, client: FederatedClient) -> dict[str, float]:
        """Score the deployed predictor: the head, or the nearest global prototype."""
        recipe = PrototypeRecipe.from_config(instruction.config)
        mask = np.asarray(client.state.get(MASK_STATE, np.zeros(0)), dtype=bool)
        if recipe.inference != "prototype" or not mask.any():
            return client.evaluate()
        learner = self._learner(instruction, client)
        prototypes = np.asarray(client.state[PROTOTYPES_STATE], dtype=np.float32)
        return client.evaluate(lambda x: nearest_prototype_scores(learner.embed(x), prototypes,
                                                                  mask))


def nearest_prototype_scores(features: np.ndarray, prototypes: np.ndarray,
                             mask: np.ndarray) -> np.ndarray:
    """Scores ``-||f - p_c||^2`` (``-inf`` for classes without a prototype)."""
    f = np.asarray(features, dtype=np.float64)
    p = np.asarray(prototypes, dtype=np.float64)
    dist = (f ** 2).sum(1, keepdims=True) - 2 * f @ p.T + (p ** 2).sum(1)[None, :]
    return np.where(np.asarray(mask, dtype=bool)[None, :], -dist, -np.inf)


def _global(instruction: Instruction, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    arrays = instruction.arrays
    missing = {wire.GLOBAL_PROTOTYPES, wire.PROTOTYPE_MASK} - set(arrays)
    if missing:
        raise ValueError(f"the instruction is missing {sorted(missing)}")
    prototypes = np.asarray(arrays[wire.GLOBAL_PROTOTYPES], dtype=np.float32)
    mask = np.asarray(arrays[wire.PROTOTYPE_MASK]).astype(bool)
    if prototypes.ndim != 2 or prototypes.shape[0] != num_classes or mask.shape != (num_classes,):
        raise ValueError(f"global prototypes of shape {prototypes.shape} and mask "
                         f"{mask.shape} do not fit {num_classes} classes")
    return prototypes, mask


__all__ = ["PrototypeClient", "class_prototypes", "nearest_prototype_scores", "prototype_loss",
           "release_prototypes"]
