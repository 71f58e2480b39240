"""Logit consensus, client half (FedMD / DS-FL): distill on the consensus, reply with logits.

The server half is :class:`flhet_strategies.algorithms.consensus.ConsensusDistillation`.
"""

from __future__ import annotations

from flhet_strategies import wire
from flhet_strategies.algorithms.consensus import RoundPlan
from flhet_strategies.algorithms.recipes import DistillationRecipe
from flhet_strategies.protocol import ClientAlgorithm, Instruction, Reply

from ..federated_client import FederatedClient
from ..learners.base import DistillTarget


class ConsensusClient(ClientAlgorithm):
    """Distill on the consensus it receives, train privately, reply with proxy logits."""

    name = "consensus"

    def fit(self, instruction: Instruction, client: FederatedClient) -> Reply:
        """One round: the plan's consensus and recipe in, logits and class counts out."""
        plan = RoundPlan.from_arrays(instruction.server_round, instruction.arrays)
        return self.train(plan, DistillationRecipe.from_config(instruction.config), client)

    @staticmethod
    def train(plan: RoundPlan, recipe: DistillationRecipe, client: FederatedClient) -> Reply:
        """Run one round of ``plan`` with ``recipe`` on ``client``.

        Round 1 adds ``warmup_epochs`` private epochs; ``"sequential"`` digests the
        consensus first (FedMD), ``"joint"`` adds ``kd_weight * KD`` to every private
        step; in the final round ``final_private_epochs`` follow the reply.
        """
        client.reseed(plan.server_round)
        target = None
        if len(plan.consensus_indices):
            if plan.consensus.shape[1] != client.num_classes:
                raise ValueError(f"consensus has {plan.consensus.shape[1]} classes, client has "
                                 f"{client.num_classes}")
            target = DistillTarget(x=client.proxy(plan.consensus_indices), probs=plan.consensus,
                                   weight=recipe.kd_weight, temperature=recipe.kd_temperature)
        epochs = recipe.local_epochs + (recipe.warmup_epochs if plan.server_round == 1 else 0)
        digest: dict[str, float] = {}
        if target is not None and recipe.schedule == "sequential":
            digest = client.learner.distill(target, epochs=1)  # FedMD: digest, then revisit
            target = None
        metrics = {**client.learner.train(client.x_train, client.y_train, epochs,
                                          distill=target), **digest}
        logits = client.learner.predict_logits(client.proxy(plan.proxy_indices))
        if recipe.final_round and recipe.final_private_epochs > 0:
            client.learner.train(client.x_train, client.y_train, recipe.final_private_epochs,
                                 lr_scale=recipe.final_lr_scale)
        arrays = {wire.LOGITS: logits}
        if not client.private_records:    # a label histogram is not covered by DP-SGD
            arrays[wire.CLASS_COUNTS] = client.class_counts
        return Reply("", arrays, {**metrics, wire.NUM_EXAMPLES: client.num_examples})


__all__ = ["ConsensusClient"]
