"""Class prototypes, server half: FedProto and FedTGP.

FedProto (Tan et al., AAAI'22, https://arxiv.org/abs/2105.00243): global prototypes are
the count-weighted means of the clients' per-class mean features (a weighted sum, so DP
and Paillier apply). FedTGP (Zhang et al., AAAI'24, https://arxiv.org/abs/2401.03230):
the server trains global prototypes on the uploaded ones with an adaptive-margin
contrastive loss. Flower-free; the client half is ``clients.algorithms.prototypes``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .. import wire
from ..aggregation.payload import (
    PayloadError,
    check_class_counts,
    check_floating,
    check_num_examples,
)
from ..aggregation.weighted_sum import (
    SumLayout,
    SumTerm,
    WeightedSums,
    client_weights,
    weighted_sums,
)
from ..protocol import Instruction, Outcome, Reply, ServerAlgorithm, client_sort_key, mean_metrics
from .recipes import PrototypeRecipe

PROTOTYPE_WEIGHTINGS = ("class_counts", "class_presence")
"""FedProto's weights of a client's class prototype: its count of the class (the paper),
or 1 for every class it holds (the authors' code; what differential privacy needs)."""

_METRICS = ("train_loss", "aux_loss")

TGP_MARGIN_THRESHOLD = 100.0
"""FedTGP's ``tau``, the cap on the adaptive margin (the authors' default)."""
TGP_SERVER_EPOCHS = 100
"""FedTGP's generator epochs per round (the authors' default)."""
TGP_SERVER_LR = 0.01
"""FedTGP's generator SGD learning rate (the authors use the clients' rate)."""
TGP_SERVER_BATCH_SIZE = 64
"""FedTGP's mini-batch of uploaded prototypes (the authors use the clients' batch)."""


class PrototypeServer(ServerAlgorithm):
    """What FedProto's and FedTGP's server halves share: instructions and validation.

    Parameters
    ----------
    num_classes : int
        Number of classes.
    feature_dim : int
        Width of the common feature space (every client's projection adapter output).
    recipe : PrototypeRecipe, optional
        The client recipe sent every round.
    """

    reply_array_names = (wire.PROTOTYPES, wire.CLASS_COUNTS)

    def __init__(self, num_classes: int, feature_dim: int,
                 recipe: PrototypeRecipe | None = None) -> None:
        if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if isinstance(feature_dim, bool) or int(feature_dim) != feature_dim or feature_dim < 1:
            raise ValueError(f"feature_dim must be a positive integer, got {feature_dim!r}")
        self.num_classes, self.feature_dim = int(num_classes), int(feature_dim)
        self.recipe = recipe or PrototypeRecipe()
        self._prototypes = np.zeros((self.num_classes, self.feature_dim), dtype=np.float32)
        self._mask = np.zeros(self.num_classes, dtype=np.uint8)

    @property
    def prototypes(self) -> tuple[np.ndarray, np.ndarray]:
        """The global prototypes ``(C, d)`` and which classes have one (bool ``(C,)``)."""
        return self._prototypes, self._mask.astype(bool)

    def instructions(self, server_round: int, nodes: Sequence[str]) -> dict[str, Instruction]:
        """The global prototypes and the recipe, the same for every node."""
        arrays = self.result_arrays()
        config = self.recipe.to_config()
        return {node: Instruction(dict(arrays), dict(config)) for node in nodes}

    def evaluate_instructions(self, server_round: int,
                              nodes: Sequence[str]) -> dict[str, Instruction]:
        """The recipe (the client's inference mode) with every evaluation request."""
        return {node: Instruction(config=self.recipe.to_config()) for node in nodes}

    def result_arrays(self) -> dict[str, np.ndarray]:
        """The global prototypes and their class mask."""
        return {wire.GLOBAL_PROTOTYPES: self._prototypes, wire.PROTOTYPE_MASK: self._mask}

    def check_reply(self, server_round: int, reply: Reply) -> tuple[np.ndarray, np.ndarray]:
        """A reply's prototypes ``(C, d)`` and class counts ``(C,)``, validated.

        Raises
        ------
        PayloadError
            If an array is missing, of the wrong shape or dtype, not finite, the counts
            are not non-negative integers, or ``num-examples`` is not a positive integer.
        """
        if wire.PROTOTYPES not in reply.arrays:
            raise PayloadError(f"the reply has no '{wire.PROTOTYPES}' array; found "
                               f"{sorted(reply.arrays)}")
        protos = check_floating(wire.PROTOTYPES, reply.arrays[wire.PROTOTYPES],
                                (self.num_classes, self.feature_dim))
        counts = check_class_counts(reply.arrays.get(wire.CLASS_COUNTS), self.num_classes, True)
        if np.any(counts != np.round(counts)):
            raise PayloadError("class_counts must be integers")
        check_num_examples(reply.num_examples)
        if counts.sum() <= 0:
            raise PayloadError("class_counts are all zero: the client holds no class (under "
                               "DP-SGD: it released none, its budget spent or every noisy "
                               "count under the release threshold)")
        return protos, counts

    def validate(self, server_round: int, replies: Sequence[Reply]
                 ) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], dict[str, str]]:
        """Valid ``(client id, prototypes, counts)`` in client-id order, and the rejected."""
        valid, rejected = [], {}
        for reply in sorted(replies, key=lambda r: client_sort_key(r.client_id)):
            try:
                valid.append((reply.client_id, *self.check_reply(server_round, reply)))
            except PayloadError as error:
                rejected[reply.client_id] = str(error)
        return valid, rejected

    def release(self, server_round: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Adopt global prototypes formed outside (a private or secure release)."""
        self._prototypes = np.asarray(arrays[wire.GLOBAL_PROTOTYPES], dtype=np.float32)
        self._mask = np.asarray(arrays[wire.PROTOTYPE_MASK], dtype=np.uint8)

    def state_dict(self) -> dict:
        """The global prototypes."""
        return {"prototypes": self._prototypes, "mask": self._mask}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore :meth:`state_dict`."""
        self.release(0, {wire.GLOBAL_PROTOTYPES: state["prototypes"],
                         wire.PROTOTYPE_MASK: state["mask"]})


class FedProtoServer(PrototypeServer):
    """FedProto's server half: global prototypes are weighted means of the clients'.

    ``p_c = sum_i w_ic p_ic / sum_i w_ic`` over the clients holding class ``c``; a class
    no client holds this round has no global prototype (its mask is 0).

    Parameters
    ----------
    num_classes, feature_dim, recipe
        As :class:`PrototypeServer`.
    weighting : str (default: "class_counts")
        ``w_ic``: the client's count of class ``c`` (the paper) or ``"class_presence"``
        (1 per held class, as the authors' code averages; what DP needs).
    feature_bound : float (default: 8.0)
        Public bound on a prototype entry for a secure sum (values are clipped to
        ``[-B, B]`` and quantized to 16 bits).
    """

    name = "fedproto"

    def __init__(self, num_classes: int, feature_dim: int,
                 recipe: PrototypeRecipe | None = None, weighting: str = "class_counts",
                 feature_bound: float = 8.0) -> None:
        super().__init__(num_classes, feature_dim, recipe)
        if weighting not in PROTOTYPE_WEIGHTINGS:
            raise ValueError(f"weighting must be one of {PROTOTYPE_WEIGHTINGS}, got "
                             f"{weighting!r}")
        if not np.isfinite(feature_bound) or feature_bound <= 0:
            raise ValueError(f"feature_bound must be positive and finite, got {feature_bound!r}")
        self.weighting, self.feature_bound = weighting, float(feature_bound)

    def describe(self) -> list[str]:
        """The prototype space and weighting, and the recipe."""
        return [f"FedProto: {self.num_classes} classes, {self.feature_dim}-d prototypes, "
                f"{self.weighting} weights", f"Client recipe: {self.recipe}"]

    def aggregate(self, server_round: int, replies: Sequence[Reply]) -> Outcome:
        """Weighted means per class of the valid replies' prototypes."""
        valid, rejected = self.validate(server_round, replies)
        if not valid:
            return Outcome(rejected=rejected)
        layout = self.sum_layout(server_round)
        term = layout.terms[0]
        sums = weighted_sums(layout, [({term.name: p}, {term.name: client_weights(
            layout, term, counts, None)}) for _, p, counts in valid])
        self.release(server_round, SUM_RULE.finish(layout, sums, {}, None))
        accepted = [cid for cid, _, _ in valid]
        totals = np.array([counts.sum() for _, _, counts in valid])
        return Outcome(accepted=accepted, rejected=rejected,
                       weights={c: float(t / totals.sum()) for c, t in zip(accepted, totals)},
                       metrics=mean_metrics(replies, accepted, _METRICS), released=True)

    # ------------------------------------------------------------------ as a weighted sum

    broadcast_names = (wire.GLOBAL_PROTOTYPES, wire.PROTOTYPE_MASK)

    def sum_layout(self, server_round: int) -> SumLayout:
        """One term: the ``(C, d)`` prototypes, weighted per class (axis 0)."""
        term = SumTerm(wire.PROTOTYPES, (self.num_classes, self.feature_dim), weight_axis=0,
                       low=-self.feature_bound, high=self.feature_bound)
        return SumLayout(self.name, (term,), self.weighting, {"bits": 16})

    def sum_context(self, server_round: int) -> dict[str, np.ndarray]:
        """Nothing public is needed to finish a prototype sum."""
        return {}


RELEASE_STDS = 4.0
"""A noisy class weight must exceed this many noise stds for the class to get a prototype.

A class nobody holds passes with probability 3e-5 per round (at 2 stds, 2.3%: a 10-client,
30-round FedProto run under DP released 8 prototypes made of noise alone)."""


class PrototypeSumRule:
    """FedProto's prototypes as a weighted sum, for both sides (privacy steps and wrappers)."""

    @staticmethod
    def terms(layout: SumLayout, arrays: Mapping[str, np.ndarray],
              metrics: Mapping[str, object]) -> dict[str, np.ndarray]:
        """A client's term: its prototypes (``ValueError`` if missing or malformed)."""
        term = layout.term(wire.PROTOTYPES)
        if wire.PROTOTYPES not in arrays:
            raise ValueError(f"the reply has no '{wire.PROTOTYPES}' array; found {sorted(arrays)}")
        try:
            protos = check_floating(wire.PROTOTYPES, arrays[wire.PROTOTYPES], term.shape)
        except PayloadError as error:
            raise ValueError(str(error)) from error
        return {wire.PROTOTYPES: protos.astype(np.float64)}

    @staticmethod
    def finish(layout: SumLayout, sums: WeightedSums, context: Mapping[str, np.ndarray],
               noise_std: float | None = None) -> dict[str, np.ndarray]:
        """Global prototypes: the per-class means, for classes whose total weight is
        positive (for a noisy sum: beyond ``RELEASE_STDS`` noise stds, and at least 0.5)."""
        term = layout.term(wire.PROTOTYPES)
        den = np.asarray(sums.denominators[term.name], dtype=np.float64)
        threshold = 0.0 if noise_std is None else max(0.5, RELEASE_STDS * float(noise_std))
        mask = den > threshold
        mean = np.nan_to_num(sums.mean(term), nan=0.0)
        mean[~mask] = 0.0
        return {wire.GLOBAL_PROTOTYPES: mean.astype(np.float32),
                wire.PROTOTYPE_MASK: mask.astype(np.uint8)}

    @staticmethod
    def released(arrays: Mapping[str, np.ndarray]) -> int:
        """Classes with a global prototype."""
        return int(np.count_nonzero(arrays[wire.PROTOTYPE_MASK]))


SUM_RULE = PrototypeSumRule()


class FedTGPServer(PrototypeServer):
    """FedTGP's server half: trainable global prototypes, trained on the uploaded ones.

    Every round the server fits its :class:`~flhet_strategies.server_training.PrototypeGenerator`
    (kept across rounds) on every valid uploaded class prototype with the adaptive-margin
    contrastive loss, then sends the generated prototypes of every class.

    Parameters
    ----------
    num_classes, feature_dim, recipe
        As :class:`PrototypeServer`.
    margin_threshold : float (default: 100.0)
        ``tau``, the cap on the adaptive margin.
    server_epochs : int (default: 100)
        Generator epochs per round.
    server_lr : float (default: 0.01)
        SGD learning rate of the generator (the authors use the clients' rate).
    server_batch_size : int (default: 64)
        Mini-batch of uploaded prototypes.
    hidden_dim : int, optional
        Hidden width of the generator (default: ``feature_dim``).
    seed : int (default: 0)
        Seeds the generator's initialisation and shuffles.
    """

    name = "fedtgp"

    def __init__(self, num_classes: int, feature_dim: int,
                 recipe: PrototypeRecipe | None = None,
                 margin_threshold: float = TGP_MARGIN_THRESHOLD,
                 server_epochs: int = TGP_SERVER_EPOCHS, server_lr: float = TGP_SERVER_LR,
                 server_batch_size: int = TGP_SERVER_BATCH_SIZE,
                 hidden_dim: int | None = None, seed: int = 0) -> None:
        super().__init__(num_classes, feature_dim, recipe)
        from ..server_training import PrototypeGenerator   # torch, only where it trains

        self.generator = PrototypeGenerator(num_classes, feature_dim, hidden_dim,
                                            margin_threshold, server_epochs,
                                            server_batch_size, server_lr, seed)

    def describe(self) -> list[str]:
        """The prototype space, the generator's training and the recipe."""
        g = self.generator
        return [f"FedTGP: {self.num_classes} classes, {self.feature_dim}-d prototypes, "
                f"{g.epochs} server epochs per round (lr {g.lr}, margin cap "
                f"{g.margin_threshold})", f"Client recipe: {self.recipe}"]

    def aggregate(self, server_round: int, replies: Sequence[Reply]) -> Outcome:
        """Train the generator on the valid uploads; send its prototypes of every class."""
        valid, rejected = self.validate(server_round, replies)
        if not valid:
            return Outcome(rejected=rejected)
        protos = np.concatenate([p[counts > 0] for _, p, counts in valid])
        labels = np.concatenate([np.flatnonzero(counts > 0) for _, _, counts in valid])
        fit = self.generator.fit(protos, labels)
        self.release(server_round, {wire.GLOBAL_PROTOTYPES: self.generator.prototypes(),
                                    wire.PROTOTYPE_MASK: np.ones(self.num_classes, np.uint8)})
        accepted = [cid for cid, _, _ in valid]
        metrics = {**mean_metrics(replies, accepted, _METRICS),
                   "tgp-margin": float(fit["margin"]), "tgp-loss": float(fit["loss"])}
        return Outcome(accepted=accepted, rejected=rejected,
                       weights={c: 1.0 / len(accepted) for c in accepted}, metrics=metrics,
                       released=True)

    def state_dict(self) -> dict:
        """The global prototypes and the generator."""
        return {**super().state_dict(), **{f"generator.{k}": v
                                           for k, v in self.generator.state_dict().items()}}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state)
        self.generator.load_state_dict({k[len("generator."):]: v for k, v in state.items()
                                        if k.startswith("generator.")})


__all__ = ["FedProtoServer", "FedTGPServer", "PROTOTYPE_WEIGHTINGS", "PrototypeServer",
           "PrototypeSumRule", "RELEASE_STDS", "SUM_RULE", "TGP_MARGIN_THRESHOLD",
           "TGP_SERVER_BATCH_SIZE", "TGP_SERVER_EPOCHS", "TGP_SERVER_LR"]
