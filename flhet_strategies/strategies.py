"""The strategies users import: an algorithm's server half in one of the two generic faces.

Each class only builds its server half (and its privacy wrappers) and hands it to
:class:`~flhet_strategies.faces.message.MessageStrategy` or
:class:`~flhet_strategies.faces.compat.CompatStrategy`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from phe import PaillierPublicKey

from .aggregation.claims import ClaimCheck
from .aggregation.logit_consensus import ConsensusConfig
from .algorithms.consensus import ConsensusDistillation
from .algorithms.feddf import FedDFServer
from .algorithms.prototypes import FedProtoServer, FedTGPServer
from .algorithms.recipes import DistillationRecipe, PrototypeRecipe, SharedHeadRecipe
from .algorithms.shared_head import HEAD_BOUND, FedGHServer, LGFedAvgServer
from .faces.compat import CompatStrategy
from .faces.message import MessageStrategy
from .privacy.dp.budget import RoundBudget
from .privacy.dp.mechanism import DifferentialPrivacy
from .privacy.dp.settings import DpSettings, PrivateConsensus
from .privacy.paillier.secure_sum import SecureSum
from .privacy.paillier.threshold_keys import ThresholdCohort
from .protocol import ServerAlgorithm
from .weighting.base import WeightFn, sample_count_weights, uniform_weights


def consensus_algorithm(num_proxy: int, num_classes: int, proxy_per_round: int = 2000,
                        consensus: ConsensusConfig | None = None,
                        recipe: DistillationRecipe | None = None,
                        weight_fn: WeightFn = sample_count_weights, seed: int = 0,
                        always_include: np.ndarray | None = None,
                        privacy: PrivateConsensus | None = None,
                        privacy_budget: RoundBudget | None = None, *, population: int = 2,
                        fraction: float = 1.0) -> ServerAlgorithm:
    """The consensus server half, wrapped in differential privacy when ``privacy`` is set.

    See :class:`FedConsensus` for the parameters; ``population`` and ``fraction`` size
    the default privacy budget.

    Raises
    ------
    ValueError
        For a budget without ``privacy``, or ``privacy`` with a rule it cannot privatize
        (FedMD, per-class votes, a custom ``weight_fn``).
    """
    consensus = consensus or ConsensusConfig()
    if privacy is None:
        if privacy_budget is not None:
            raise ValueError("privacy_budget given without privacy (a PrivateConsensus)")
        return ConsensusDistillation(num_proxy, num_classes, proxy_per_round, consensus, recipe,
                                     weight_fn, seed, always_include)
    if consensus.mode != "dsfl":
        raise ValueError("differential privacy is implemented for the DS-FL consensus (mean of "
                         f"probabilities), not for mode {consensus.mode!r}")
    if consensus.class_vote_weighting:
        raise ValueError("differential privacy needs class_vote_weighting = False: per-class "
                         "vote weights use the clients' exact label histograms")
    if weight_fn is not sample_count_weights and weight_fn is not uniform_weights:
        raise ValueError("differential privacy weights clients equally; a custom weight_fn "
                         "would make the sensitivity data-dependent")
    if privacy_budget is not None and not privacy_budget.ledger.non_negative_payloads:
        raise ValueError("the consensus releases probabilities: build its RoundBudget with "
                         "non_negative_payloads=True")
    core = ConsensusDistillation(num_proxy, num_classes, proxy_per_round, consensus, recipe,
                                 uniform_weights, seed, always_include,
                                 min_margin=getattr(privacy, "min_margin", 2.0),
                                 min_rows=getattr(privacy, "min_rows", 10))
    return DifferentialPrivacy(core, privacy, privacy_budget, population_size=population,
                               fraction=fraction)


class FedConsensus(MessageStrategy):
    """Logit-consensus distillation over a public proxy set (FedMD / DS-FL), Message API.

    Clients of any architecture train on their private data and share only their
    predictions on public proxy samples; each round the server forms a weighted
    consensus (FedMD: mean logits; DS-FL: mean probabilities sharpened by entropy
    reduction; optionally per-class votes) and sends it back to distill on. Pair it with
    :func:`clients.faces.client_app.flhet_client_app`.
    FedMD: https://arxiv.org/abs/1910.03581, DS-FL: https://arxiv.org/abs/2008.06180.

    Parameters
    ----------
    num_proxy : int
        Size of the public proxy set the clients hold.
    num_classes : int
        Number of classes.
    proxy_per_round : int (default: 2000)
        Proxy samples per round (a fresh seeded subset each round).
    consensus : ConsensusConfig, optional
        The consensus rule (DS-FL + ERA 0.1 + per-class votes by default).
    recipe : DistillationRecipe, optional
        The client recipe (epochs, KD weight/temperature, schedule, final epochs).
    weight_fn : WeightFn (default: sample_count_weights)
        Client weights; swap in contribution-based or adaptive weights here.
    fraction_train : float (default: 1.0)
        Fraction of connected nodes sampled for training each round.
    fraction_evaluate : float (default: 1.0)
        Fraction of connected nodes sampled for evaluation.
    min_available_nodes : int (default: 2)
        Wait until this many nodes are connected.
    evaluate_every : int (default: 1)
        Clients evaluate every this many rounds (and always after the last one).
    seed : int (default: 0)
        Seed of the proxy subsets and the node sampler.
    phase : str (default: "main")
        Name of this run, sent with every message; clients keep one model per phase.
    always_include : np.ndarray, optional
        Proxy indices requested every round (e.g. the server's labeled validation slice
        for :class:`~flhet_strategies.weighting.contribution.weighting.ContributionWeighting`).
    privacy : PrivateConsensus, optional
        Client-level DP of every released consensus (the server half is wrapped in
        :class:`~flhet_strategies.privacy.dp.mechanism.DifferentialPrivacy`); central, or
        distributed with :class:`clients.mods.DpNoiseMod` on the clients. Needs DS-FL
        without per-class votes; clients are weighted equally.
    privacy_budget : RoundBudget, optional
        Accounting of ``privacy`` (Flower's ``RdpAccountant``), with ``max_epsilon`` a
        budget: the run stops cleanly after the last round that fits. Default with
        ``privacy``: ``min_available_nodes`` clients, delta 1e-5, no limit.
    claims : ClaimCheck, optional
        Screens the replies' client ids, example counts and histograms
        (:class:`~flhet_strategies.aggregation.claims.ClaimCheck`; default: duplicate ids
        and inconsistent histograms are rejected).
    checkpoint : str or Path, optional
        File the round state is written to after every round; :meth:`resume` continues
        from it (docs/resume.md).
    """

    def __init__(self, num_proxy: int, num_classes: int, proxy_per_round: int = 2000,
                 consensus: ConsensusConfig | None = None,
                 recipe: DistillationRecipe | None = None,
                 weight_fn: WeightFn = sample_count_weights, fraction_train: float = 1.0,
                 fraction_evaluate: float = 1.0, min_available_nodes: int = 2,
                 evaluate_every: int = 1, seed: int = 0, phase: str = "main",
                 always_include: np.ndarray | None = None,
                 privacy: PrivateConsensus | None = None,
                 privacy_budget: RoundBudget | None = None,
                 claims: ClaimCheck | None = None,
                 checkpoint: str | Path | None = None) -> None:
        algorithm = consensus_algorithm(num_proxy, num_classes, proxy_per_round, consensus,
                                        recipe, weight_fn, seed, always_include, privacy,
                                        privacy_budget, population=min_available_nodes,
                                        fraction=fraction_train)
        super().__init__(algorithm, fraction_train=fraction_train,
                         fraction_evaluate=fraction_evaluate,
                         min_available_nodes=min_available_nodes,
                         evaluate_every=evaluate_every, seed=seed, phase=phase, claims=claims,
                         checkpoint=checkpoint)


class FedConsensusCompat(CompatStrategy):
    """:class:`FedConsensus` for Flower's compat API (``ServerApp(server_fn=...)``).

    Same parameters, with the compat names ``fraction_fit`` and
    ``min_available_clients``, plus ``num_rounds`` (as in ``ServerConfig``, so the last
    round carries ``final-round`` and a budget can cap the rounds). Pair it with
    :class:`clients.faces.numpy_client.FlhetNumPyClient`.
    """

    def __init__(self, num_proxy: int, num_classes: int, num_rounds: int | None = None,
                 proxy_per_round: int = 2000, consensus: ConsensusConfig | None = None,
                 recipe: DistillationRecipe | None = None,
                 weight_fn: WeightFn = sample_count_weights, fraction_fit: float = 1.0,
                 fraction_evaluate: float = 1.0, min_available_clients: int = 2,
                 evaluate_every: int = 1, seed: int = 0, phase: str = "main",
                 always_include: np.ndarray | None = None,
                 privacy: PrivateConsensus | None = None,
                 privacy_budget: RoundBudget | None = None,
                 claims: ClaimCheck | None = None,
                 checkpoint: str | Path | None = None) -> None:
        algorithm = consensus_algorithm(num_proxy, num_classes, proxy_per_round, consensus,
                                        recipe, weight_fn, seed, always_include, privacy,
                                        privacy_budget, population=min_available_clients,
                                        fraction=fraction_fit)
        super().__init__(algorithm, num_rounds=num_rounds, fraction_fit=fraction_fit,
                         fraction_evaluate=fraction_evaluate,
                         min_available_clients=min_available_clients,
                         evaluate_every=evaluate_every, seed=seed, phase=phase, claims=claims,
                         checkpoint=checkpoint)


def fedproto_algorithm(num_classes: int, feature_dim: int,
                       recipe: PrototypeRecipe | None = None, weighting: str | None = None,
                       feature_bound: float = 8.0, privacy: DpSettings | None = None,
                       privacy_budget: RoundBudget | None = None, *, population: int = 2,
                       fraction: float = 1.0) -> ServerAlgorithm:
    """FedProto's server half, wrapped in differential privacy when ``privacy`` is set.

    See :class:`FedProto` for the parameters. Under DP every held class weighs 1
    (``weighting="class_presence"``): exact class counts would be private data.
    """
    def build(rule: str) -> FedProtoServer:
        return FedProtoServer(num_classes, feature_dim, recipe, rule, feature_bound)

    return _summed(build, weighting, ("class_counts", "class_presence"), privacy, privacy_budget,
                   population, fraction, private="every held class by 1",
                   counts="class counts")


def _summed(build, weighting: str | None, rules: tuple[str, str],
            privacy: DpSettings | None, privacy_budget: RoundBudget | None, population: int,
            fraction: float, *, private: str, counts: str) -> ServerAlgorithm:
    """``build(rule)``: in plaintext with ``weighting`` (default ``rules[0]``); under
    ``privacy`` with ``rules[1]`` (what DP allows: it weighs ``private``, since ``counts``
    are private data), wrapped in differential privacy."""
    plain, public = rules
    if privacy is None:
        if privacy_budget is not None:
            raise ValueError("privacy_budget given without privacy (a DpSettings)")
        return build(weighting or plain)
    if weighting not in (None, public):
        raise ValueError(f"differential privacy weights {private} (weighting={public!r}), not "
                         f"{weighting!r}: {counts} are private data")
    return DifferentialPrivacy(build(public), privacy, privacy_budget,
                               population_size=population, fraction=fraction)


class _FedProto:
    """FedProto's constructor for either face (a mixin; the face comes second)."""

    def __init__(self, num_classes: int, feature_dim: int, recipe: PrototypeRecipe | None = None,
                 weighting: str | None = None, feature_bound: float = 8.0,
                 privacy: DpSettings | None = None, privacy_budget: RoundBudget | None = None,
                 **face) -> None:
        self.init_face(fedproto_algorithm(num_classes, feature_dim, recipe, weighting,
                                          feature_bound, privacy, privacy_budget,
                                          **self.population(face)), **face)


class FedProto(_FedProto, MessageStrategy):
    """FedProto (Tan et al., AAAI'22, https://arxiv.org/abs/2105.00243), Message API.

    Clients of any architecture share per-class mean features in one common feature
    space (every model's projection adapter) and train with
    ``CE + lambda * MSE(f(x), p_y)`` towards the global prototypes, the weighted means of
    the clients'. Pair it with :func:`clients.faces.client_app.flhet_client_app` and
    learners that embed (:class:`clients.learners.torch_learner.TorchLearner` on zoo
    models built with ``feature_dim``).

    Parameters
    ----------
    num_classes : int
        Number of classes.
    feature_dim : int
        Width of the common feature space.
    recipe : PrototypeRecipe, optional
        The client recipe (epochs, ``proto_weight`` lambda, inference by head or nearest
        prototype).
    weighting : str, optional
        A client's weight on class ``c``: ``"class_counts"`` (the paper; default) or
        ``"class_presence"`` (1 per held class, the authors' code; forced under DP).
    feature_bound : float (default: 8.0)
        Public bound on a prototype entry for a secure sum.
    privacy : DpSettings, optional
        Client-level DP of the released prototypes (central or distributed).
    privacy_budget : RoundBudget, optional
        Its accounting (default: the face's ``min_available_nodes`` clients, no limit).
    **face
        The parameters of :class:`~flhet_strategies.faces.message.MessageStrategy`
        (``fraction_train``, ``min_available_nodes``, ``evaluate_every``, ``seed``,
        ``phase``, ...).
    """


class FedProtoCompat(_FedProto, CompatStrategy):
    """:class:`FedProto` for the compat API; ``**face`` are the parameters of
    :class:`~flhet_strategies.faces.compat.CompatStrategy` (``num_rounds``, ``fraction_fit``,
    ``min_available_clients``, ...)."""


_TGP_OPTIONS = ("margin_threshold", "server_epochs", "server_lr", "server_batch_size",
                "hidden_dim")


class _Trained:
    """The constructor of a strategy whose server trains on every upload, for either face
    (a mixin; the face comes second). There is no sum, so no privacy wrapper."""

    server_type: type = ServerAlgorithm
    options: tuple[str, ...] = ()
    refusal = ""

    def __init__(self, num_classes: int, feature_dim: int, recipe=None, **options) -> None:
        if "privacy" in options:
            raise ValueError(self.refusal)
        server = {k: options.pop(k) for k in self.options if k in options}
        self.init_face(self.server_type(num_classes, feature_dim, recipe,
                                        seed=options.get("seed", 0), **server), **options)


class _FedTGP(_Trained):
    """FedTGP's constructor for either face."""

    server_type, options = FedTGPServer, _TGP_OPTIONS
    refusal = ("FedTGP trains on every client's prototypes: there is no sum to privatize or "
               "encrypt (use FedProto for DP and secure sums)")


class FedTGP(_FedTGP, MessageStrategy):
    """FedTGP (Zhang et al., AAAI'24, https://arxiv.org/abs/2401.03230), Message API.

    As :class:`FedProto` on the clients; the server trains global prototypes (a small
    generator of class embeddings) on the uploaded ones with the adaptive-margin
    contrastive loss and sends the generated prototypes of every class.

    Parameters
    ----------
    num_classes : int
        Number of classes.
    feature_dim : int
        Width of the common feature space.
    recipe : PrototypeRecipe, optional
        The client recipe.
    **options
        The generator's training (:class:`~flhet_strategies.algorithms.prototypes.FedTGPServer`:
        ``margin_threshold``, ``server_epochs``, ``server_lr``, ``server_batch_size``,
        ``hidden_dim``) and the parameters of
        :class:`~flhet_strategies.faces.message.MessageStrategy`.
    """


class FedTGPCompat(_FedTGP, CompatStrategy):
    """:class:`FedTGP` for the compat API (face options of
    :class:`~flhet_strategies.faces.compat.CompatStrategy`)."""


def lgfedavg_algorithm(num_classes: int, feature_dim: int,
                       recipe: SharedHeadRecipe | None = None, weighting: str | None = None,
                       head_bound: float = HEAD_BOUND, seed: int = 0,
                       privacy: DpSettings | None = None,
                       privacy_budget: RoundBudget | None = None, *, population: int = 2,
                       fraction: float = 1.0) -> ServerAlgorithm:
    """LG-FedAvg's server half, wrapped in differential privacy when ``privacy`` is set.

    See :class:`LGFedAvg` for the parameters. Under DP every client weighs 1
    (``weighting="uniform"``): example counts would change the sensitivity.
    """
    def build(rule: str) -> LGFedAvgServer:
        return LGFedAvgServer(num_classes, feature_dim, recipe, rule, head_bound, seed)

    return _summed(build, weighting, ("sample_count", "uniform"), privacy, privacy_budget,
                   population, fraction, private="every client by 1",
                   counts="example counts")


class _LGFedAvg:
    """LG-FedAvg's constructor for either face (a mixin; the face comes second)."""

    def __init__(self, num_classes: int, feature_dim: int,
                 recipe: SharedHeadRecipe | None = None, weighting: str | None = None,
                 head_bound: float = HEAD_BOUND, privacy: DpSettings | None = None,
                 privacy_budget: RoundBudget | None = None, **face) -> None:
        self.init_face(lgfedavg_algorithm(num_classes, feature_dim, recipe, weighting,
                                          head_bound, face.get("seed", 0), privacy,
                                          privacy_budget, **self.population(face)), **face)


class LGFedAvg(_LGFedAvg, MessageStrategy):
    """LG-FedAvg (Liang et al., 2020, https://arxiv.org/abs/2001.01523), Message API.

    Clients keep their own bodies (any architecture, each ending in a projection adapter
    into one common feature space) and share the linear head: each round they load the
    global head, train the whole model, and send their head; the global head is the
    sample-weighted mean. Pair it with :func:`clients.faces.client_app.flhet_client_app`
    and learners that embed (zoo models built with ``feature_dim``).

    Parameters
    ----------
    num_classes : int
        Number of classes.
    feature_dim : int
        Width of the common feature space.
    recipe : SharedHeadRecipe, optional
        The client recipe (epochs; ``use_global_head=False`` for a local-only run).
    weighting : str, optional
        ``"sample_count"`` (the paper; default) or ``"uniform"`` (forced under DP).
    head_bound : float (default: 4.0)
        Public bound on a head entry for a secure sum.
    privacy : DpSettings, optional
        Client-level DP of the released head (central or distributed).
    privacy_budget : RoundBudget, optional
        Its accounting (default: the face's ``min_available_nodes`` clients, no limit).
    **face
        The parameters of :class:`~flhet_strategies.faces.message.MessageStrategy`
        (``seed`` also seeds the initial head).
    """


class LGFedAvgCompat(_LGFedAvg, CompatStrategy):
    """:class:`LGFedAvg` for the compat API; ``**face`` are the parameters of
    :class:`~flhet_strategies.faces.compat.CompatStrategy`."""


_GH_OPTIONS = ("server_epochs", "server_lr", "server_batch_size")


class _FedGH(_Trained):
    """FedGH's constructor for either face."""

    server_type, options = FedGHServer, _GH_OPTIONS
    refusal = ("FedGH trains its head on every client's prototypes: there is no sum to "
               "privatize or encrypt (use LGFedAvg for DP and secure sums)")


class FedGH(_FedGH, MessageStrategy):
    """FedGH (Yi et al., ACM MM'23, https://arxiv.org/abs/2305.13137), Message API.

    Clients load the global head, train their whole model and upload per-class mean
    features; the server trains the generalized global head with cross-entropy on the
    uploaded ``(prototype, class)`` pairs and sends it back.

    Parameters
    ----------
    num_classes : int
        Number of classes.
    feature_dim : int
        Width of the common feature space.
    recipe : SharedHeadRecipe, optional
        The client recipe.
    **options
        The head's training (:class:`~flhet_strategies.algorithms.shared_head.FedGHServer`:
        ``server_epochs``, ``server_lr``, ``server_batch_size``) and the parameters of
        :class:`~flhet_strategies.faces.message.MessageStrategy`.
    """


class FedGHCompat(_FedGH, CompatStrategy):
    """:class:`FedGH` for the compat API (face options of
    :class:`~flhet_strategies.faces.compat.CompatStrategy`)."""


_DF_OPTIONS = ("validation_labels", "recipe", "distillation", "proxy_per_round")


class _FedDF:
    """FedDF's constructor for either face (a mixin; the face comes second)."""

    def __init__(self, models, proxy_x, num_classes: int, validation_indices,
                 **options) -> None:
        if "privacy" in options:
            raise ValueError("FedDF's server distills on every group's model: DP and secure "
                             "sums of its group averages are not wired yet")
        server = {k: options.pop(k) for k in _DF_OPTIONS if k in options}
        self.init_face(FedDFServer(models, proxy_x, num_classes, validation_indices,
                                   seed=options.get("seed", 0), **server), **options)


class FedDF(_FedDF, MessageStrategy):
    """FedDF (Lin et al., NeurIPS'20, https://arxiv.org/abs/2006.07242), Message API.

    Clients of one architecture form a group whose models are averaged; the server then
    distills every group's average on the unlabeled proxy set toward the mean logits of
    all received models (and of predictions-only clients) and sends each node its group's
    model. Pair it with :func:`clients.faces.client_app.flhet_client_app`.

    Parameters
    ----------
    models : Mapping[str, Callable[[], torch.nn.Module]]
        Architecture name -> constructor of its model (picklable: a function or
        ``functools.partial``); clients' ``TorchLearner.architecture`` names their group.
    proxy_x : np.ndarray
        The public proxy inputs (the clients hold the same rows).
    num_classes : int
        Number of classes.
    validation_indices : np.ndarray
        Proxy rows held out for the server's early stopping.
    **options
        ``validation_labels``, ``recipe`` (:class:`~flhet_strategies.algorithms.recipes.FedDFRecipe`),
        ``distillation`` (:class:`~flhet_strategies.distill_settings.DistillSettings`),
        ``proxy_per_round`` (:class:`~flhet_strategies.algorithms.feddf.FedDFServer`) and
        the parameters of :class:`~flhet_strategies.faces.message.MessageStrategy`.
    """


class FedDFCompat(_FedDF, CompatStrategy):
    """:class:`FedDF` for the compat API (face options of
    :class:`~flhet_strategies.faces.compat.CompatStrategy`)."""


class _Secured:
    """The secure twin's constructor for either face (a mixin; the face comes second)."""

    face_type: type = object

    def __init__(self, strategy, public_key: PaillierPublicKey | ThresholdCohort, *,
                 max_examples: int | None = None, probability_bits: int | None = None,
                 vote_bits: int = 16, decryption: str | None = None,
                 decryptors: int | None = None) -> None:
        if not isinstance(strategy, self.face_type):
            message = self.face_type is MessageStrategy
            examples = "FedConsensus, FedProto" if message else \
                "FedConsensusCompat, FedProtoCompat"
            other = "SecureConsensusCompat" if message else "SecureConsensus"
            raise TypeError(f"{type(self).__name__} wraps a flhet {self.face_type.__name__} "
                            f"(e.g. {examples}), got {type(strategy).__name__}; for the other "
                            f"API use {other}")
        self.init_face(SecureSum(strategy.algorithm, public_key, max_examples=max_examples,
                                 bits=probability_bits, vote_bits=vote_bits,
                                 decryption=decryption, decryptors=decryptors),
                       **strategy.face_settings())


class SecureConsensus(_Secured, MessageStrategy):
    """A Message-API strategy whose clients' contributions reach the server only encrypted.

    Wraps the server half of ``strategy`` (:class:`FedConsensus`, :class:`FedProto`, or any
    flhet strategy whose aggregate is a weighted sum) in a Paillier
    :class:`~flhet_strategies.privacy.paillier.secure_sum.SecureSum` and keeps its
    sampling, phase and evaluation settings. Clients run :class:`clients.mods.PaillierMod`.

    Parameters
    ----------
    strategy : MessageStrategy
        The plaintext strategy to secure (e.g. ``FedConsensus(...)``).
    public_key : phe.PaillierPublicKey or ThresholdCohort
        The key dealer's public key (at least 2048 bits; a private key is refused), or a
        threshold key's public side (``load_threshold_cohort``).
    max_examples : int, optional
        Public bound on any client's number of training examples (bounds the weights).
    probability_bits : int, optional
        Quantization bits of a value (default: the algorithm's, 8 for the consensus: a
        probability within ``1 / (2 (2**bits - 1))``; 16 for prototypes).
    vote_bits : int (default: 16)
        Most bits of an integer weight.
    decryption : str, optional
        ``"delegate"`` (the default with a single key: one client per round decrypts and
        seals the sum for the cohort), ``"every_client"``, or ``"threshold"`` (the only
        mode of a threshold key: ``t`` clients' partial decryptions, sealed for the
        cohort; no client can decrypt alone).
    decryptors : int, optional
        Threshold mode: clients asked for a partial decryption each round (default t + 1).
    """

    face_type = MessageStrategy


class SecureConsensusCompat(_Secured, CompatStrategy):
    """:class:`SecureConsensus` for the compat API: wraps a compat flhet strategy.

    Same parameters; clients are wrapped in :class:`clients.SecureSumNumPyClient`.
    """

    face_type = CompatStrategy


__all__ = ["FedConsensus", "FedConsensusCompat", "FedGH", "FedGHCompat", "FedProto",
           "FedProtoCompat", "FedTGP", "FedTGPCompat", "LGFedAvg", "LGFedAvgCompat",
           "SecureConsensus", "SecureConsensusCompat", "consensus_algorithm",
           "fedproto_algorithm", "lgfedavg_algorithm"]
