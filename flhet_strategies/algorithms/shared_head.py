"""Shared heads, server half: LG-FedAvg and FedGH.

Every model's body ends in a projection adapter into one ``feature_dim`` space, so the
heads ``Linear(feature_dim, C)`` have one shape across architectures. LG-FedAvg (Liang et
al., 2020, https://arxiv.org/abs/2001.01523): the global head is the sample-weighted mean
of the clients' heads (a weighted sum, so DP and Paillier apply). FedGH (Yi et al., ACM
MM'23, https://arxiv.org/abs/2305.13137): the server trains the global head on the
clients' class prototypes. Flower-free; the client half is ``clients.algorithms.shared_head``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .. import wire
from ..aggregation.payload import check_num_examples, required_floating, validated
from ..aggregation.weighted_sum import (
    SumLayout,
    SumTerm,
    WeightedSums,
    client_weights,
    weighted_sums,
)
from ..protocol import Instruction, Outcome, Reply, ServerAlgorithm, mean_metrics
from .prototypes import PrototypeServer
from .recipes import SharedHeadRecipe

LG_WEIGHTINGS = ("sample_count", "uniform")
"""LG-FedAvg's weight of a client's head: its example count (the paper), or 1 (DP)."""
HEAD_BOUND = 4.0
"""Default public bound on a head entry in a secure sum (clipped to ``[-B, B]``)."""
GH_SERVER_EPOCHS = 100
"""FedGH's head-training epochs per round (HtFLlib's ``server_epochs`` default)."""
GH_SERVER_LR = 0.01
"""FedGH's server SGD learning rate (HtFLlib's ``server_learning_rate`` default)."""
GH_SERVER_BATCH_SIZE = 64
"""FedGH's mini-batch of uploaded prototypes (HtFLlib uses the clients' batch size)."""

_METRICS = ("train_loss",)


def initial_head(num_classes: int, feature_dim: int, seed: int) -> np.ndarray:
    """A seeded head ``(C, d + 1)``: weight and bias ``U(-1/sqrt(d), 1/sqrt(d))``, the
    distribution of ``torch.nn.Linear``'s default initialisation."""
    bound = 1.0 / np.sqrt(feature_dim)
    rng = np.random.default_rng([int(seed), num_classes, feature_dim])
    return rng.uniform(-bound, bound, (num_classes, feature_dim + 1)).astype(np.float32)


class SharedHeadServer(ServerAlgorithm):
    """What LG-FedAvg's and FedGH's server halves share: the global head and its messages.

    Round 1 sends a common seeded initial head; later rounds the latest released one (a
    server under a secure sum releases none: the clients' step adds the decrypted head).
    Evaluation requests carry the released head, so clients score their body with it.

    Parameters
    ----------
    num_classes : int
        Number of classes.
    feature_dim : int
        Width of the common feature space (every client's projection adapter output).
    recipe : SharedHeadRecipe, optional
        The client recipe sent every round.
    seed : int (default: 0)
        Seeds the initial head.
    """

    def __init__(self, num_classes: int, feature_dim: int,
                 recipe: SharedHeadRecipe | None = None, seed: int = 0) -> None:
        if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if isinstance(feature_dim, bool) or int(feature_dim) != feature_dim or feature_dim < 1:
            raise ValueError(f"feature_dim must be a positive integer, got {feature_dim!r}")
        self.num_classes, self.feature_dim = int(num_classes), int(feature_dim)
        self.recipe = recipe or SharedHeadRecipe()
        self.seed = int(seed)
        self._head = initial_head(self.num_classes, self.feature_dim, self.seed)
        self._released = False

    @property
    def head(self) -> np.ndarray:
        """The global head ``(C, d + 1)`` (weight, bias as the last column)."""
        return self._head

    @property
    def head_shape(self) -> tuple[int, int]:
        """``(C, d + 1)``."""
        return self.num_classes, self.feature_dim + 1

    def _arrays(self, released_only: bool, server_round: int) -> dict[str, np.ndarray]:
        if not self.recipe.use_global_head:
            return {}
        if self._released or (not released_only and server_round <= 1):
            return {wire.GLOBAL_HEAD: self._head}
        return {}

    def instructions(self, server_round: int, nodes: Sequence[str]) -> dict[str, Instruction]:
        """The global head (if any this round) and the recipe, the same for every node."""
        arrays, config = self._arrays(False, server_round), self.recipe.to_config()
        return {node: Instruction(dict(arrays), dict(config)) for node in nodes}

    def evaluate_instructions(self, server_round: int,
                              nodes: Sequence[str]) -> dict[str, Instruction]:
        """The recipe and the released head (the client scores its body with it)."""
        arrays, config = self._arrays(True, server_round), self.recipe.to_config()
        return {node: Instruction(dict(arrays), dict(config)) for node in nodes}

    def result_arrays(self) -> dict[str, np.ndarray]:
        """The global head."""
        return {wire.GLOBAL_HEAD: self._head}

    def release(self, server_round: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Adopt a global head formed here or outside (a private release)."""
        head = np.asarray(arrays[wire.GLOBAL_HEAD], dtype=np.float32)
        if head.shape != self.head_shape:
            raise ValueError(f"a global head must have shape {self.head_shape}, got {head.shape}")
        self._head, self._released = head, True

    def state_dict(self) -> dict:
        """The global head and whether it was released."""
        return {"head": self._head, "released": np.array(self._released)}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore :meth:`state_dict`."""
        self.release(0, {wire.GLOBAL_HEAD: state["head"]})
        self._released = bool(np.asarray(state["released"]))


class LGFedAvgServer(SharedHeadServer):
    """LG-FedAvg's server half: the global head is the weighted mean of the clients' heads.

    Parameters
    ----------
    num_classes, feature_dim, recipe, seed
        As :class:`SharedHeadServer`.
    weighting : str (default: "sample_count")
        A client's weight: its example count (the paper) or ``"uniform"`` (what DP needs).
    head_bound : float (default: 4.0)
        Public bound on a head entry for a secure sum (16-bit quantization of ``[-B, B]``).
    """

    name = "lgfedavg"
    reply_array_names = (wire.HEAD,)

    def __init__(self, num_classes: int, feature_dim: int,
                 recipe: SharedHeadRecipe | None = None, weighting: str = "sample_count",
                 head_bound: float = HEAD_BOUND, seed: int = 0) -> None:
        super().__init__(num_classes, feature_dim, recipe, seed)
        if weighting not in LG_WEIGHTINGS:
            raise ValueError(f"weighting must be one of {LG_WEIGHTINGS}, got {weighting!r}")
        if not np.isfinite(head_bound) or head_bound <= 0:
            raise ValueError(f"head_bound must be positive and finite, got {head_bound!r}")
        self.weighting, self.head_bound = weighting, float(head_bound)

    def describe(self) -> list[str]:
        """The head's shape and weighting, and the recipe."""
        return [f"LG-FedAvg: {self.num_classes} classes, {self.feature_dim}-d shared head, "
                f"{self.weighting} weights", f"Client recipe: {self.recipe}"]

    def check_reply(self, server_round: int, reply: Reply) -> tuple[np.ndarray, int]:
        """A reply's head ``(C, d + 1)`` and example count, validated.

        Raises
        ------
        PayloadError
            If the head is missing, of the wrong shape or dtype, or not finite, or
            ``num-examples`` is not a positive integer.
        """
        head = required_floating(reply.arrays, wire.HEAD, self.head_shape)
        return head, check_num_examples(reply.num_examples)

    def aggregate(self, server_round: int, replies: Sequence[Reply]) -> Outcome:
        """The weighted mean of the valid replies' heads."""
        valid, rejected = validated(replies, lambda r: self.check_reply(server_round, r))
        if not valid:
            return Outcome(rejected=rejected)
        layout = self.sum_layout(server_round)
        term = layout.terms[0]
        weights = {cid: client_weights(layout, term, None, n) for cid, _, n in valid}
        sums = weighted_sums(layout, [({term.name: h}, {term.name: weights[cid]})
                                      for cid, h, _ in valid])
        self.release(server_round, SUM_RULE.finish(layout, sums, {}, None))
        total = float(sum(w[0] for w in weights.values()))
        accepted = [cid for cid, _, _ in valid]
        return Outcome(accepted=accepted, rejected=rejected,
                       weights={c: float(weights[c][0]) / total for c in accepted},
                       metrics=mean_metrics(replies, accepted, _METRICS), released=True)

    # ------------------------------------------------------------------ as a weighted sum

    broadcast_names = (wire.GLOBAL_HEAD,)

    def sum_layout(self, server_round: int) -> SumLayout:
        """One term: the ``(C, d + 1)`` head, one weight per client (a row per class)."""
        term = SumTerm(wire.HEAD, self.head_shape, low=-self.head_bound, high=self.head_bound)
        return SumLayout(self.name, (term,), self.weighting, {"bits": 16})

    def sum_context(self, server_round: int) -> dict[str, np.ndarray]:
        """Nothing public is needed to finish a head sum."""
        return {}


class HeadSumRule:
    """LG-FedAvg's head as a weighted sum, for both sides (privacy steps and wrappers)."""

    @staticmethod
    def terms(layout: SumLayout, arrays: Mapping[str, np.ndarray],
              metrics: Mapping[str, object]) -> dict[str, np.ndarray]:
        """A client's term: its head (a ``ValueError`` if missing or malformed)."""
        head = required_floating(arrays, wire.HEAD, layout.term(wire.HEAD).shape)
        return {wire.HEAD: head.astype(np.float64)}

    @staticmethod
    def finish(layout: SumLayout, sums: WeightedSums, context: Mapping[str, np.ndarray],
               noise_std: float | None = None) -> dict[str, np.ndarray]:
        """The global head: the weighted mean, every class row (under DP, noise included)."""
        mean = np.nan_to_num(sums.mean(layout.term(wire.HEAD)), nan=0.0)
        return {wire.GLOBAL_HEAD: mean.astype(np.float32)}

    @staticmethod
    def released(arrays: Mapping[str, np.ndarray]) -> int:
        """Class rows of the released head (all of them)."""
        return int(np.shape(arrays[wire.GLOBAL_HEAD])[0])


SUM_RULE = HeadSumRule()


class FedGHServer(SharedHeadServer):
    """FedGH's server half: a generalized global head trained on the clients' prototypes.

    Every round the server trains its head (kept across rounds) with cross-entropy on
    every valid uploaded ``(class prototype, class)`` pair, ``server_epochs`` epochs of
    plain SGD, and sends it; clients replace their head with it.

    Parameters
    ----------
    num_classes, feature_dim, recipe, seed
        As :class:`SharedHeadServer` (``seed`` also seeds the shuffles).
    server_epochs : int (default: 100)
        Head-training epochs per round.
    server_lr : float (default: 0.01)
        SGD learning rate of the head.
    server_batch_size : int (default: 64)
        Mini-batch of uploaded prototypes.
    """

    name = "fedgh"
    reply_array_names = PrototypeServer.reply_array_names

    def __init__(self, num_classes: int, feature_dim: int,
                 recipe: SharedHeadRecipe | None = None, server_epochs: int = GH_SERVER_EPOCHS,
                 server_lr: float = GH_SERVER_LR, server_batch_size: int = GH_SERVER_BATCH_SIZE,
                 seed: int = 0) -> None:
        super().__init__(num_classes, feature_dim, recipe, seed)
        for key, value in (("server_epochs", server_epochs),
                           ("server_batch_size", server_batch_size)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if not np.isfinite(server_lr) or server_lr <= 0:
            raise ValueError(f"server_lr must be positive and finite, got {server_lr!r}")
        self.server_epochs, self.server_batch_size = int(server_epochs), int(server_batch_size)
        self.server_lr = float(server_lr)
        self._uploads = PrototypeServer(num_classes, feature_dim)   # validates the replies

    def describe(self) -> list[str]:
        """The head, its training and the recipe."""
        return [f"FedGH: {self.num_classes} classes, {self.feature_dim}-d global head, "
                f"{self.server_epochs} server epochs per round (lr {self.server_lr}, batch "
                f"{self.server_batch_size})", f"Client recipe: {self.recipe}"]

    def aggregate(self, server_round: int, replies: Sequence[Reply]) -> Outcome:
        """Train the head on the valid uploads' held classes; release it."""
        from ..server_training import train_head   # torch, only where it trains

        valid, rejected = self._uploads.validate(server_round, replies)
        if not valid:
            return Outcome(rejected=rejected)
        protos = np.concatenate([p[counts > 0] for _, p, counts in valid])
        labels = np.concatenate([np.flatnonzero(counts > 0) for _, _, counts in valid])
        seed = np.random.SeedSequence([self.seed, int(server_round)]).generate_state(1)[0]
        head, losses = train_head(self._head, protos, labels, epochs=self.server_epochs,
                                  batch_size=self.server_batch_size, lr=self.server_lr,
                                  seed=int(seed))
        self.release(server_round, {wire.GLOBAL_HEAD: head})
        accepted = [cid for cid, _, _ in valid]
        return Outcome(accepted=accepted, rejected=rejected,
                       weights={c: 1.0 / len(accepted) for c in accepted},
                       metrics={**mean_metrics(replies, accepted, _METRICS),
                                "gh-loss": float(losses[-1])}, released=True)


__all__ = ["FedGHServer", "GH_SERVER_BATCH_SIZE", "GH_SERVER_EPOCHS", "GH_SERVER_LR",
           "HEAD_BOUND", "HeadSumRule", "LGFedAvgServer", "LG_WEIGHTINGS", "SUM_RULE",
           "SharedHeadServer", "initial_head"]
