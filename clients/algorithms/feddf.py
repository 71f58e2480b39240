"""FedDF, client half: train the group model received, reply with its weights.

A client whose learner can share weights (PyTorch) loads its architecture group's model,
trains it on its private data and replies with the weights (named by architecture). A
client that can only predict (scikit-learn) answers as a DS-FL client: it distills on the
ensemble's predictions and replies with its proxy logits, which join the server's
teacher ensemble. The server half is :mod:`flhet_strategies.algorithms.feddf`.
"""

from __future__ import annotations

from flhet_strategies import wire
from flhet_strategies.algorithms.consensus import RoundPlan
from flhet_strategies.algorithms.recipes import DistillationRecipe, FedDFRecipe
from flhet_strategies.protocol import ClientAlgorithm, Instruction, Reply

from ..federated_client import FederatedClient
from .consensus import ConsensusClient


def shares_weights(learner: object) -> bool:
    """Whether a learner can join an architecture group (has weights to average)."""
    return all(hasattr(learner, a) for a in ("get_weights", "set_weights", "architecture"))


def _group_model(instruction: Instruction, learner) -> dict | None:
    """The instruction's model for the learner's architecture, if it carries one."""
    models = wire.group_models(instruction.arrays)
    if not models:
        return None
    if learner.architecture not in models:
        raise ValueError(f"the server sent models of {sorted(models)}, none for this client's "
                         f"architecture {learner.architecture!r}: build the server with a "
                         "constructor for it")
    return models[learner.architecture]


class FedDFClient(ClientAlgorithm):
    """Train from the group model (or, predictions only, distill and predict)."""

    name = "feddf"

    def fit(self, instruction: Instruction, client: FederatedClient) -> Reply:
        """One round; round 1 adds ``warmup_epochs``."""
        recipe = FedDFRecipe.from_config(instruction.config)
        learner = client.learner
        if not shares_weights(learner):
            plan = RoundPlan.from_arrays(instruction.server_round, instruction.arrays)
            kd = DistillationRecipe(local_epochs=recipe.local_epochs,
                                    warmup_epochs=recipe.warmup_epochs,
                                    kd_weight=recipe.kd_weight,
                                    kd_temperature=recipe.kd_temperature)
            reply = ConsensusClient.train(plan, kd, client)
            reply.arrays.pop(wire.CLASS_COUNTS, None)
            return reply
        weights = _group_model(instruction, learner) if recipe.use_global_model else None
        if weights is not None:
            learner.set_weights(weights)
        client.reseed(instruction.server_round)
        epochs = recipe.local_epochs + (recipe.warmup_epochs
                                        if instruction.server_round == 1 else 0)
        metrics = learner.train(client.x_train, client.y_train, epochs)
        arrays = {wire.model_key(learner.architecture, k): v
                  for k, v in learner.get_weights().items()}
        return Reply("", arrays, {**metrics, wire.NUM_EXAMPLES: client.num_examples})

    def evaluate(self, instruction: Instruction, client: FederatedClient) -> dict[str, float]:
        """Score the group model the request carries (the client's deployed model), else
        the client's own; the client's model is left as it was."""
        learner = client.learner
        weights = _group_model(instruction, learner) if shares_weights(learner) else None
        if weights is None:
            return client.evaluate()
        own = learner.get_weights()
        learner.set_weights(weights)
        try:
            return client.evaluate()
        finally:
            learner.set_weights(own)


__all__ = ["FedDFClient", "shares_weights"]
