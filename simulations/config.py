"""Experiment configuration: one TOML file describes a whole run.

See ``simulations/configs/fmnist_hetero.toml`` for a commented example. Every section
is optional except ``[data]`` and ``[[clients]]``; unknown keys are errors, so a typo
never silently falls back to a default.
"""

from __future__ import annotations

import ast
import shlex
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from flhet_strategies.aggregation.logit_consensus import ConsensusConfig
from flhet_strategies.algorithms.prototypes import (
    PROTOTYPE_WEIGHTINGS,
    TGP_MARGIN_THRESHOLD,
    TGP_SERVER_BATCH_SIZE,
    TGP_SERVER_EPOCHS,
    TGP_SERVER_LR,
)
from flhet_strategies.algorithms.recipes import (
    DistillationRecipe,
    FedDFRecipe,
    PrototypeRecipe,
    SharedHeadRecipe,
)
from flhet_strategies.algorithms.shared_head import HEAD_BOUND, LG_WEIGHTINGS
from flhet_strategies.distill_settings import DistillSettings
from flhet_strategies.privacy.dp.clipping import CLIP_MODES
from flhet_strategies.privacy.dp.settings import DP_MODES
from flhet_strategies.privacy.paillier.secure_sum import DECRYPTION_MODES
from flhet_strategies.weighting.contribution.auto import ESTIMATOR_NAMES

from .data.partitioning import PartitionerSpec

API_FACES = ("message", "compat")

CLIENT_ROLES = ("", "free_rider", "label_noise", "twin", "poisoner", "absent")
"""Roles a ``[[clients]]`` group may play in contribution and robustness experiments
(``""``: honest)."""

ROBUST_RULES = ("", "median", "trimmed_mean", "validation_filter")
"""``[robust] rule`` values (``""``: the weighted mean)."""


class ConfigError(ValueError):
    """An invalid experiment configuration."""


@dataclass(frozen=True)
class ClientGroup:
    """A group of clients sharing one architecture.

    Parameters
    ----------
    architecture : str
        A model-zoo name (``cnn_small``, ``vit_tiny``, ...) or ``sklearn:<name>``.
    count : int
        Number of clients in the group.
    lr : float
        Learning rate (PyTorch models).
    optimizer : str
        ``sgd``, ``adam`` or ``adamw`` (PyTorch models).
    batch_size : int
        Mini-batch size.
    role : str
        ``""`` (honest), ``"free_rider"`` (never trains, replies with random logits:
        :class:`~clients.learners.free_rider.FreeRiderLearner`; ``architecture`` is
        what it claims to run), ``"label_noise"`` (data of its twin's size and class
        mix with ``flip_fraction`` of the training labels flipped, see
        :mod:`simulations.data.label_noise`) or ``"twin"`` (the honest client the
        label-noise client is matched to), ``"poisoner"`` (trains on its labels
        permuted, ``y -> (y + 1) mod C``, and so sends confidently wrong predictions),
        ``"absent"`` (trains honestly but is enrolled nowhere, so the server rejects
        every reply: the ``attackers_absent`` baseline turns poisoners into it).
        ``label_noise`` and ``twin`` groups hold one client each.
    flip_fraction : float
        Share of flipped training labels of a ``label_noise`` client, in ``(0, 1]``.
    """

    architecture: str
    count: int = 1
    lr: float = 0.05
    optimizer: str = "sgd"
    batch_size: int = 64
    role: str = ""
    flip_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.role not in CLIENT_ROLES:
            raise ValueError(f"role must be one of {CLIENT_ROLES}, got {self.role!r}")
        if self.role in ("label_noise", "twin") and self.count != 1:
            raise ValueError(f"a {self.role!r} group must have count = 1, got {self.count}")
        if not 0.0 < self.flip_fraction <= 1.0:
            raise ValueError(f"flip_fraction must lie in (0, 1], got {self.flip_fraction}")

    @property
    def framework(self) -> str:
        """``scikit-learn`` for ``sklearn:`` architectures, else ``pytorch``."""
        return "scikit-learn" if self.architecture.startswith("sklearn:") else "pytorch"


@dataclass(frozen=True)
class DataConfig:
    """Dataset, partitioning and the proxy / test splits (see ``make_federated_split``)."""

    dataset: str = "fashion_mnist"
    num_clients: int = 10
    partitioner: dict = field(default_factory=lambda: {"name": "dirichlet", "alpha": 0.1})
    proxy_size: int = 5000
    proxy_validation_size: int = 1000
    private_size: int | None = None
    global_test_size: int | None = None
    client_test_fraction: float = 0.25
    data_dir: str | None = None

    def partitioner_spec(self) -> PartitionerSpec:
        """The partitioner as a :class:`PartitionerSpec`."""
        return PartitionerSpec.from_dict(self.partitioner)


STRATEGIES = ("fedconsensus", "fedproto", "fedtgp", "lgfedavg", "fedgh", "feddf")
"""Strategies an experiment can run (``[strategy] name``)."""

PROTOTYPE_STRATEGIES = ("fedproto", "fedtgp")
"""Strategies that share class prototypes in a common feature space."""

SHARED_HEAD_STRATEGIES = ("lgfedavg", "fedgh")
"""Strategies that share the linear head over a common feature space."""

FEATURE_STRATEGIES = PROTOTYPE_STRATEGIES + SHARED_HEAD_STRATEGIES
"""Strategies whose clients must embed their inputs into the common feature space."""

TRAINED_STRATEGIES = ("fedtgp", "fedgh")
"""Strategies whose server trains on every client's upload (no sum for DP or Paillier)."""

PROTOTYPE_UPLOADS = ("fedproto", "fedtgp", "fedgh")
"""Strategies whose clients upload class prototypes and counts (FedGH's server trains
its head on them); under DP-SGD by the Gaussian mechanism (``[dp] proto_*``)."""


@dataclass(frozen=True)
class StrategyConfig:
    """Server strategy: which algorithm, and its settings.

    Parameters
    ----------
    name : str
        ``"fedconsensus"`` (logit consensus, FedMD / DS-FL), ``"fedproto"``, ``"fedtgp"``
        (class prototypes), ``"lgfedavg"`` or ``"fedgh"`` (a shared head).
    mode, temperature, era_temperature, class_vote_weighting, proxy_per_round
        The consensus rule and proxy sampling (``fedconsensus``).
    fraction_train : float
        Share of the clients sampled for training each round.
    feature_dim : int, optional
        Common feature space of the prototype and shared-head strategies (every model
        gets a projection adapter to it); required for them.
    weighting : str, optional
        FedProto's class weights (``"class_counts"``, ``"class_presence"``), LG-FedAvg's
        client weights (``"sample_count"``, ``"uniform"``).
    feature_bound : float
        FedProto: public bound on a prototype entry in a secure sum.
    head_bound : float
        LG-FedAvg: public bound on a head entry in a secure sum.
    margin_threshold, server_epochs, server_lr, server_batch_size
        FedTGP's generator training; FedGH's head training (the last three).
    distill_steps, distill_lr, distill_batch_size, distill_temperature, distill_eval_every,
    distill_patience
        FedDF's server distillation
        (:class:`~flhet_strategies.distill_settings.DistillSettings`; defaults: the
        authors' code). ``proxy_per_round`` is then the proxy rows distilled on per round
        (0: every row outside the validation slice).
    """

    name: str = "fedconsensus"
    mode: str = "dsfl"
    temperature: float = 1.0
    era_temperature: float | None = 0.1
    class_vote_weighting: bool = True
    proxy_per_round: int = 2000
    fraction_train: float = 1.0
    feature_dim: int | None = None
    weighting: str | None = None
    feature_bound: float = 8.0
    head_bound: float = HEAD_BOUND
    margin_threshold: float = TGP_MARGIN_THRESHOLD
    server_epochs: int = TGP_SERVER_EPOCHS
    server_lr: float = TGP_SERVER_LR
    server_batch_size: int = TGP_SERVER_BATCH_SIZE
    distill_steps: int = DistillSettings.max_steps
    distill_lr: float = DistillSettings.lr
    distill_batch_size: int = DistillSettings.batch_size
    distill_temperature: float = DistillSettings.temperature
    distill_eval_every: int = DistillSettings.eval_every
    distill_patience: int = DistillSettings.patience

    def __post_init__(self) -> None:
        if self.name not in STRATEGIES:
            raise ValueError(f"name must be one of {STRATEGIES}, got {self.name!r}")
        if self.features and (self.feature_dim is None or self.feature_dim < 1):
            raise ValueError(f"strategy {self.name!r} needs feature_dim, the width of the common "
                             "feature space every model projects into")
        weightings = LG_WEIGHTINGS if self.name == "lgfedavg" else PROTOTYPE_WEIGHTINGS
        if self.weighting is not None and self.weighting not in weightings:
            raise ValueError(f"weighting must be one of {weightings}, got {self.weighting!r}")

    @property
    def prototypes(self) -> bool:
        """Whether the strategy shares class prototypes (needs feature learners)."""
        return self.name in PROTOTYPE_STRATEGIES

    @property
    def features(self) -> bool:
        """Whether the clients must embed (prototypes or a shared head; signed payloads)."""
        return self.name in FEATURE_STRATEGIES

    @property
    def uploads_prototypes(self) -> bool:
        """Whether the clients upload class prototypes (:data:`PROTOTYPE_UPLOADS`)."""
        return self.name in PROTOTYPE_UPLOADS

    @property
    def recipe_type(self) -> type:
        """The ``[recipe]`` section's class for this strategy."""
        if self.prototypes:
            return PrototypeRecipe
        if self.name == "feddf":
            return FedDFRecipe
        return SharedHeadRecipe if self.name in SHARED_HEAD_STRATEGIES else DistillationRecipe

    @property
    def label(self) -> str:
        """The ``strategy`` entry of ``results.json``."""
        return f"{self.name}:{self.mode}" if self.name == "fedconsensus" else self.name

    def distillation(self) -> DistillSettings:
        """FedDF's server distillation settings."""
        return DistillSettings(self.distill_steps, self.distill_lr, self.distill_batch_size,
                               self.distill_temperature, self.distill_eval_every,
                               self.distill_patience)

    def consensus(self) -> ConsensusConfig:
        """The :class:`ConsensusConfig` of this strategy."""
        return ConsensusConfig(self.mode, self.temperature, self.era_temperature,
                               self.class_vote_weighting)


@dataclass(frozen=True)
class ContributionConfig:
    """Shapley contributions of the clients, and aggregation weights from them.

    See :class:`flhet_strategies.weighting.contribution.weighting.ContributionWeighting`
    for ``method``, ``budget``, ``mix``, ``use_for_weights``, ``decay`` and ``metric``.
    Values are measured on the server's labeled validation slice of the proxy set
    (``data.proxy_validation_size`` samples, requested from the clients every round).

    Parameters
    ----------
    enabled : bool
        Measure contributions (``results.json`` gets ``contributions``).
    method : str
        Shapley estimator (``"auto"``: exact while ``2**n <= budget``).
    budget : int
        Utility evaluations per round for sampling estimators.
    mix : float
        Share of contribution weights vs sample-count weights, in ``[0, 1]``.
    use_for_weights : bool
        False: audit only (aggregate with sample counts).
    decay : float
        Discount of older rounds in the weighting score, in ``[0, 1]``.
    metric : str
        ``"accuracy"`` or ``"neg_log_loss"`` of a coalition's consensus.
    sample_count_baseline : bool
        Also run the same strategy with sample-count weights (contributions audited)
        in the same invocation: ``baselines.sample_count_weighting``.
    """

    enabled: bool = False
    method: str = "auto"
    budget: int = 2000
    mix: float = 1.0
    use_for_weights: bool = True
    decay: float = 0.5
    metric: str = "accuracy"
    sample_count_baseline: bool = True

    def __post_init__(self) -> None:
        if self.method not in ESTIMATOR_NAMES:
            raise ValueError(f"method must be one of {ESTIMATOR_NAMES}, got {self.method!r}")
        if self.budget < 1:
            raise ValueError(f"budget must be at least 1, got {self.budget}")
        for name in ("mix", "decay"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.metric not in ("accuracy", "neg_log_loss"):
            raise ValueError(f'metric must be "accuracy" or "neg_log_loss", got {self.metric!r}')


@dataclass(frozen=True)
class AdaptiveConfig:
    """Adaptive aggregation from the rate of change of each client's predictions.

    See :class:`flhet_strategies.weighting.adaptive.AdaptiveWeighting` (test-retest
    reliability of a client's predictions across rounds scales its weight) for
    ``smoothing``, ``power`` and ``min_factor``; it wraps the strategy's weights
    (sample counts, or contributions with ``[contribution]``).

    Parameters
    ----------
    enabled : bool
        Adapt the weights.
    smoothing, power, min_factor : float
        The rule's parameters.
    unadapted_baseline : bool
        Also run the same configuration without adaptation in the same invocation
        (``baselines.unadapted``) and report rounds to the target accuracy of both
        (``results.json`` ``adaptive``).
    target_fraction : float
        The target: this share of the unadapted run's final global accuracy.
    """

    enabled: bool = False
    smoothing: float = 0.5
    power: float = 1.0
    min_factor: float = 0.0
    unadapted_baseline: bool = True
    target_fraction: float = 0.95

    def __post_init__(self) -> None:
        if not 0.0 < self.target_fraction <= 1.0:
            raise ValueError(f"target_fraction must lie in (0, 1], got {self.target_fraction}")


DP_LEVELS = ("client", "record")
"""``[dp] level``: one client's whole payload, or one training record (DP-SGD)."""


@dataclass(frozen=True)
class DpConfig:
    """Differential privacy: client level (the released sums) or record level (DP-SGD).

    See :class:`flhet_strategies.privacy.dp.settings.PrivateConsensus` for the
    mechanism and :class:`flhet_strategies.privacy.dp.accounting.PrivacyLedger` for the
    accounting (Flower's ``RdpAccountant``; full participation when
    ``strategy.fraction_train`` is 1, else fixed-size cohorts).

    With ``level = "record"`` every PyTorch client trains with DP-SGD
    (:class:`clients.learners.dpsgd.DPSGD`): ``clip_norm`` bounds each example's gradient,
    ``target_epsilon`` calibrates each client's noise multiplier over its planned private
    epochs (and, for FedProto, FedTGP and FedGH, one class-prototype release per round:
    ``proto_noise_multiplier``, ``proto_clip_norm``), ``max_epsilon`` stops its private
    training and releases; every ``history`` entry carries ``epsilon_per_client``,
    ``epsilon_mean`` and ``epsilon_max`` (docs/dp_sgd.md). ``mode``, ``clip_mode``,
    ``min_margin`` and ``min_rows`` are for the client level only.

    Parameters
    ----------
    enabled : bool
        Privatize the consensus; every ``history`` entry then carries ``epsilon`` and
        ``delta``.
    level : str
        ``"client"`` (the server-side sums, below) or ``"record"`` (DP-SGD in every client).
    mode : str
        ``"central"`` (the server clips and noises the sum) or ``"distributed"`` (each
        client adds its share: :class:`clients.mods.DpNoiseMod` with ``api = "message"``,
        :class:`clients.faces.wrappers.DpNoiseNumPyClient` with ``api = "compat"``).
    target_epsilon : float, optional
        Calibrate the noise multiplier so that ``num_rounds`` rounds spend this epsilon
        (:func:`~flhet_strategies.privacy.dp.accounting.noise_multiplier_for_epsilon`).
    noise_multiplier : float, optional
        ``z = sigma / S`` directly (give this or ``target_epsilon``).
    delta : float
        The delta epsilon is reported at.
    max_epsilon : float, optional
        Budget: the run stops cleanly (results and the server's state saved; the last
        round that fits is the clients' final round) before a round would exceed it. Default: ``target_epsilon``.
    clip_norm : float
        Clipping parameter (the row bound with ``"per-row"``; 1 clips nothing).
    clip_mode : str
        ``"per-row"`` or ``"flat"``.
    min_margin : float
        Consensus only: release only rows whose noisy top-1 beats the runner-up by this many
        noise standard deviations (post-processing, free); 0 releases (almost) all.
    min_rows : int
        Consensus only: release nothing in a round where fewer rows pass ``min_margin``.
    no_dp_baseline : bool
        Also run the same configuration without DP in the same invocation:
        ``baselines.no_dp``.
    proto_noise_multiplier : float
        Record level, prototype strategies: ``z`` of each round's class-prototype release
        (noise ``z * proto_clip_norm`` on each class's feature sum, ``z`` on its count;
        accounted as ``z / sqrt(2)`` at sample rate 1,
        :mod:`clients.learners.dp_prototypes`).
    proto_clip_norm : float
        Record level, prototype strategies: L2 bound of each record's feature vector.
    """

    enabled: bool = False
    level: str = "client"
    mode: str = "central"
    target_epsilon: float | None = None
    noise_multiplier: float | None = None
    delta: float = 1e-5
    max_epsilon: float | None = None
    clip_norm: float = 1.0
    clip_mode: str = "per-row"
    min_margin: float = 2.0
    min_rows: int = 10
    no_dp_baseline: bool = True
    proto_noise_multiplier: float = 10.0
    proto_clip_norm: float = 1.0

    def __post_init__(self) -> None:
        if self.level not in DP_LEVELS:
            raise ValueError(f"level must be one of {DP_LEVELS}, got {self.level!r}")
        if self.mode not in DP_MODES:
            raise ValueError(f"mode must be one of {DP_MODES}, got {self.mode!r}")
        if self.enabled and (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise ValueError("give exactly one of target_epsilon and noise_multiplier")
        for name in ("target_epsilon", "noise_multiplier", "max_epsilon",
                     "proto_noise_multiplier", "proto_clip_norm"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta must lie in (0, 1), got {self.delta}")
        if not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be positive, got {self.clip_norm}")
        if not self.min_margin >= 0:
            raise ValueError(f"min_margin must be non-negative, got {self.min_margin}")
        if self.min_rows < 0:
            raise ValueError(f"min_rows must be non-negative, got {self.min_rows}")
        if self.clip_mode not in CLIP_MODES:
            raise ValueError(f"clip_mode must be one of {CLIP_MODES}, got {self.clip_mode!r}")

    @property
    def budget(self) -> float | None:
        """``max_epsilon``, defaulting to ``target_epsilon``."""
        return self.max_epsilon if self.max_epsilon is not None else self.target_epsilon

    @property
    def client_level(self) -> bool:
        """Client-level DP of the released sums is on."""
        return self.enabled and self.level == "client"

    @property
    def record_level(self) -> bool:
        """Record-level DP (DP-SGD inside every client) is on."""
        return self.enabled and self.level == "record"


@dataclass(frozen=True)
class RobustConfig:
    """Robust aggregation against poisoning clients (docs/robust_aggregation.md).

    Parameters
    ----------
    rule : str
        ``""`` (the weighted mean), ``"median"`` or ``"trimmed_mean"``
        (:class:`~flhet_strategies.aggregation.robust.RobustAggregation`), or
        ``"validation_filter"`` (consensus only: replies scored on the labeled proxy
        slice, :class:`~flhet_strategies.aggregation.validation_filter.ValidationFilter`).
    trim : float
        Tail share of the trimmed mean, in ``[0, 0.5)``.
    min_accuracy : float
        The validation filter's least accuracy on the labeled rows of a client's classes.
    clean_baseline : bool
        Also run the federation with every ``poisoner`` honest (``baselines.clean``).
    plain_mean_baseline : bool
        Also run it with the attackers and the weighted mean (``baselines.plain_mean``).
    absent_baseline : bool
        Also run it with the attackers taking no part (their replies rejected, the same
        partition, the weighted mean: ``baselines.attackers_absent``), what a perfect
        filter would give.
    """

    rule: str = ""
    trim: float = 0.2
    min_accuracy: float = 0.5
    clean_baseline: bool = True
    plain_mean_baseline: bool = True
    absent_baseline: bool = True

    def __post_init__(self) -> None:
        if self.rule not in ROBUST_RULES:
            raise ValueError(f"rule must be one of {ROBUST_RULES}, got {self.rule!r}")
        if not 0.0 <= self.trim < 0.5:
            raise ValueError(f"trim must lie in [0, 0.5), got {self.trim}")
        if not 0.0 <= self.min_accuracy <= 1.0:
            raise ValueError(f"min_accuracy must lie in [0, 1], got {self.min_accuracy}")

    @property
    def enabled(self) -> bool:
        """Whether a robust rule replaces the weighted mean."""
        return bool(self.rule)


@dataclass(frozen=True)
class PaillierConfig:
    """Paillier secure sum of the consensus (the server adds ciphertexts only).

    See :class:`flhet_strategies.privacy.paillier.secure_sum.SecureSum` (the server half's
    wrapper) and :class:`clients.mods.PaillierMod` / :class:`clients.faces.wrappers.SecureSumNumPyClient`
    (the clients). Keys are dealt outside the server into ``key_dir``: the strategy loads
    the public key only.

    Parameters
    ----------
    enabled : bool
        Encrypt the clients' predictions; the server never sees a plaintext.
    key_dir : str, optional
        Folder of the key files (default: ``<out>/paillier_keys``); existing keys are
        reused.
    key_bits : int
        Modulus size (at least 2048).
    max_examples : int, optional
        Public bound on a client's example count (sizes the vote slots); default: the
        largest client training set of the split.
    decryption : str
        ``"delegate"`` (one client per round decrypts the sum and relays it sealed to
        the others), ``"every_client"``, or ``"threshold"`` (a ``t``-of-``n`` key: no
        client holds the private key; ``t`` partial decryptions are combined).
    threshold : int, optional
        Threshold mode: ``t`` (default ``num_clients // 2 + 1``).
    decryptors : int, optional
        Threshold mode: clients asked for a partial decryption each round (default
        ``t + 1``).
    workers : int
        Threads computing Paillier randomness in each client's mod.
    plaintext_baseline : bool
        Also run the same configuration without encryption in the same invocation:
        ``baselines.plaintext``.
    """

    enabled: bool = False
    key_dir: str | None = None
    key_bits: int = 2048
    max_examples: int | None = None
    decryption: str = "delegate"
    threshold: int | None = None
    decryptors: int | None = None
    workers: int = 1
    plaintext_baseline: bool = True

    def __post_init__(self) -> None:
        if self.key_bits < 2048:
            raise ValueError(f"key_bits must be at least 2048, got {self.key_bits}")
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(f"max_examples must be positive, got {self.max_examples}")
        if self.decryption not in DECRYPTION_MODES:
            raise ValueError(f"decryption must be one of {DECRYPTION_MODES}, "
                             f"got {self.decryption!r}")
        for name in ("threshold", "decryptors"):
            value = getattr(self, name)
            if value is not None and (self.decryption != "threshold" or value < 1):
                raise ValueError(f'{name} is a positive int of decryption = "threshold", got '
                                 f"{value!r} with decryption = {self.decryption!r}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")


@dataclass(frozen=True)
class SimulationConfig:
    """Resources of Flower's simulation engine (Ray backend).

    Parameters
    ----------
    num_cpus : int (default: 2)
        CPUs Ray may use in all.
    cpus_per_client : float (default: 1.0)
        CPUs per simulated client (``num_cpus / cpus_per_client`` run at once).
    threads_per_client : int (default: 1)
        ``torch.set_num_threads`` inside each client (fixed for reproducible timing).
    eval_every : int (default: 1)
        Clients evaluate every this many rounds (always after the last one).
    """

    num_cpus: int = 2
    cpus_per_client: float = 1.0
    threads_per_client: int = 1
    eval_every: int = 1


@dataclass(frozen=True)
class ExperimentConfig:
    """A complete experiment: rounds, data, strategy, client recipe, contributions, clients.

    Parameters
    ----------
    name : str
        Label of the experiment.
    seed : int
        Seeds the split, proxy subsets, model initialisations and batch orders.
    num_rounds : int
        Federated rounds.
    api : str
        ``"message"`` (Message API strategy + ClientApp) or ``"compat"``
        (compat strategy + ``NumPyClient``).
    local_only_eval_every : int, optional
        Evaluation period of the local-only baseline (default: after the last round).
    round_timeout : float (default: 3600)
        Seconds the server waits for the replies of a round's training and, separately,
        of its evaluation; a node that has not answered by then counts as failed for
        that round and is asked again in the next.
    data, strategy, recipe, simulation, contribution, adaptive, dp, paillier, robust
        The sections of the same names.
    clients : tuple[ClientGroup, ...]
        Client groups, in client-id order; their counts add up to ``data.num_clients``.
    """

    name: str = "experiment"
    seed: int = 0
    num_rounds: int = 30
    api: str = "message"
    local_only_eval_every: int | None = None
    round_timeout: float = 3600.0
    data: DataConfig = field(default_factory=DataConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    recipe: DistillationRecipe | PrototypeRecipe | SharedHeadRecipe | FedDFRecipe = field(
        default_factory=DistillationRecipe)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    contribution: ContributionConfig = field(default_factory=ContributionConfig)
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)
    dp: DpConfig = field(default_factory=DpConfig)
    paillier: PaillierConfig = field(default_factory=PaillierConfig)
    robust: RobustConfig = field(default_factory=RobustConfig)
    clients: tuple[ClientGroup, ...] = ()

    def __post_init__(self) -> None:
        if self.api not in API_FACES:
            raise ConfigError(f"api must be one of {API_FACES}, got {self.api!r}")
        for name in ("num_rounds", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{name} must be an integer, got {value!r} (several --set "
                                  "overrides are given as separate --set options)")
        if self.num_rounds < 1:
            raise ConfigError(f"num_rounds must be at least 1, got {self.num_rounds}")
        if not self.round_timeout > 0:
            raise ConfigError(f"round_timeout must be a positive number of seconds, "
                              f"got {self.round_timeout}")
        if not self.clients:
            raise ConfigError("at least one [[clients]] group is required")
        total = sum(g.count for g in self.clients)
        if total != self.data.num_clients:
            raise ConfigError(
                f"[[clients]] groups add up to {total} clients but data.num_clients is "
                f"{self.data.num_clients}"
            )
        self.strategy.consensus()  # validates the consensus fields
        self.data.partitioner_spec()
        self._check_roles()
        self._check_algorithm()
        self._check_privacy()
        self._check_robust()
        if self.contribution.enabled and not (
            1 <= self.data.proxy_validation_size <= self.strategy.proxy_per_round
        ):
            raise ConfigError(
                "[contribution] needs the labeled validation slice in every round: "
                f"data.proxy_validation_size ({self.data.proxy_validation_size}) must be "
                f"between 1 and strategy.proxy_per_round ({self.strategy.proxy_per_round})"
            )

    def _check_roles(self) -> None:
        by_role = {role: [g for g in self.clients if g.role == role]
                   for role in ("label_noise", "twin")}
        if any(len(groups) > 1 for groups in by_role.values()):
            raise ConfigError("at most one [[clients]] group may have role 'label_noise', "
                              "and at most one role 'twin'")
        noisy, twin = by_role["label_noise"], by_role["twin"]
        if bool(noisy) != bool(twin):
            raise ConfigError("a 'label_noise' client needs a 'twin' group and vice versa")
        if noisy and noisy[0].architecture != twin[0].architecture:
            raise ConfigError(
                f"the label-noise client ({noisy[0].architecture}) and its twin "
                f"({twin[0].architecture}) must have the same architecture: a matched pair"
            )

    def _check_algorithm(self) -> None:
        recipe_type = self.strategy.recipe_type
        if not isinstance(self.recipe, recipe_type):
            raise ConfigError(f"strategy {self.strategy.name!r} takes a {recipe_type.__name__} "
                              f"[recipe], got a {type(self.recipe).__name__}")
        if self.strategy.name == "feddf":
            self._check_feddf()
        if not self.strategy.features:
            return
        flat = [g for g in self.clients if g.framework != "pytorch" or g.role == "free_rider"]
        shares = "class prototypes" if self.strategy.prototypes else "a head over features"
        if flat:
            raise ConfigError(
                f"strategy {self.strategy.name!r} shares {shares}: every client must "
                "embed its inputs (a PyTorch zoo model); "
                f"{sorted({g.architecture + (' (free rider)' if g.role else '') for g in flat})} "
                "can only predict")
        if self.contribution.enabled or self.adaptive.enabled:
            raise ConfigError("[contribution] and [adaptive] weight consensus predictions; "
                              f"strategy {self.strategy.name!r} has none")
        if self.strategy.name in TRAINED_STRATEGIES and (self.dp.client_level
                                                         or self.paillier.enabled):
            label, summed = {"fedtgp": ("FedTGP", "fedproto"),
                             "fedgh": ("FedGH", "lgfedavg")}[self.strategy.name]
            raise ConfigError(f"{label} trains on every client's prototypes: there is no sum "
                              f"to privatize or encrypt (use {summed} for [dp] and [paillier])")

    def _check_feddf(self) -> None:
        others = [k for k, on in (("[dp]", self.dp.enabled), ("[paillier]", self.paillier.enabled),
                                  ("[robust]", self.robust.enabled),
                                  ("[contribution]", self.contribution.enabled),
                                  ("[adaptive]", self.adaptive.enabled)) if on]
        if others:
            raise ConfigError(f"strategy 'feddf' cannot be combined with {others} yet: its "
                              "group averages and distillation are not wired to them")
        if not any(g.framework == "pytorch" and g.role != "free_rider" for g in self.clients):
            raise ConfigError("strategy 'feddf' needs at least one PyTorch client group (the "
                              "architecture groups it averages and distills)")
        if self.data.proxy_validation_size < 1:
            raise ConfigError("strategy 'feddf' stops its server distillation early on the "
                              "labeled proxy slice: data.proxy_validation_size must be >= 1")

    def _check_record_dp(self) -> None:
        if not self.dp.record_level:
            return
        flat = sorted({g.architecture for g in self.clients
                       if g.framework != "pytorch" and g.role != "free_rider"})
        if flat:
            raise ConfigError(f'[dp] level = "record" trains every client with DP-SGD (Opacus, '
                              f"PyTorch models); {flat} cannot: use a PyTorch zoo model")
        if self.strategy.uploads_prototypes and self.dp.target_epsilon is not None:
            from clients.learners.dp_prototypes import releases_epsilon   # opacus: lazily

            alone = releases_epsilon(self.dp.proto_noise_multiplier, self.num_rounds,
                                     self.dp.delta)
            if alone >= self.dp.target_epsilon:
                raise ConfigError(
                    f"[dp] target_epsilon = {self.dp.target_epsilon}: the {self.num_rounds} "
                    f"class-prototype releases alone spend epsilon {alone:.2f} at "
                    f"proto_noise_multiplier = {self.dp.proto_noise_multiplier}; raise it")
        if not self.strategy.features and self.strategy.class_vote_weighting:
            raise ConfigError('[dp] level = "record" needs strategy.class_vote_weighting = '
                              "false: class votes need each client's exact label histogram")

    def _check_privacy(self) -> None:
        self._check_record_dp()
        if not (self.dp.client_level or self.paillier.enabled):
            return
        what = "[dp]" if self.dp.client_level else "[paillier]"
        threshold = self.paillier.threshold
        if self.paillier.enabled and threshold is not None and threshold > self.data.num_clients:
            raise ConfigError(f"[paillier] threshold = {threshold} exceeds the "
                              f"{self.data.num_clients} clients who hold key shares")
        if self.dp.client_level and self.paillier.enabled and self.dp.mode != "distributed":
            raise ConfigError(
                f'[dp] mode = "{self.dp.mode}" cannot be combined with [paillier]: central DP '
                "needs the server to see the plaintext sum it noises; use "
                '[dp] mode = "distributed" (the clients add the noise inside the encrypted sum)')
        if self.strategy.features:
            return
        if self.adaptive.enabled:
            raise ConfigError(f"{what} cannot be combined with [adaptive]: the private "
                              "consensus weights clients equally (DP) or by public counts "
                              "(Paillier), not by their plaintext predictions")
        if self.contribution.enabled:
            raise ConfigError(f"{what} cannot be combined with [contribution]: Shapley values "
                              "need every client's plaintext predictions")
        if self.strategy.mode != "dsfl":
            raise ConfigError(f'{what} needs strategy.mode = "dsfl" (a sum of probabilities)')
        if self.dp.client_level and self.strategy.class_vote_weighting:
            raise ConfigError("[dp] needs strategy.class_vote_weighting = false: per-class "
                              "vote weights use the clients' exact label histograms")

    def _check_robust(self) -> None:
        if not self.robust.enabled:
            return
        if self.dp.client_level or self.paillier.enabled:
            raise ConfigError("[robust] cannot be combined with [dp] or [paillier]: a median "
                              "is not a sum, it can be neither noised by the sum's "
                              "sensitivity nor computed under encryption")
        if self.strategy.name in TRAINED_STRATEGIES:
            raise ConfigError(f"[robust] needs a weighted-sum aggregation; strategy "
                              f"{self.strategy.name!r} trains on every client's prototypes")
        if self.contribution.enabled or self.adaptive.enabled:
            raise ConfigError("[robust] replaces the weighted mean; it cannot be combined with "
                              "[contribution] or [adaptive] weights")
        if self.robust.rule == "validation_filter" and (
                self.strategy.features
                or not 1 <= self.data.proxy_validation_size <= self.strategy.proxy_per_round):
            raise ConfigError(
                "[robust] rule = 'validation_filter' scores consensus predictions on the "
                "labeled proxy slice in every round: it needs a consensus strategy and "
                f"data.proxy_validation_size ({self.data.proxy_validation_size}) between 1 and "
                f"strategy.proxy_per_round ({self.strategy.proxy_per_round})")

    def client_roles(self) -> list[str]:
        """The role of every client id, in order (``""`` for honest clients)."""
        return [g.role for g in self.client_groups()]

    def client_groups(self) -> list[ClientGroup]:
        """One :class:`ClientGroup` per client id, in order."""
        return [g for g in self.clients for _ in range(g.count)]

    def with_overrides(self, **changes: Any) -> "ExperimentConfig":
        """A copy with top-level fields or ``section.field`` entries replaced."""
        raw = self.to_dict()
        for key, value in changes.items():
            section, _, name = key.rpartition(".")
            (raw[section] if section else raw)[name] = value
        return from_dict(raw)

    def to_dict(self) -> dict:
        """Plain-dict form (inverse of :func:`from_dict`), for results.json."""
        raw = asdict(self)
        raw["clients"] = [asdict(g) for g in self.clients]
        return raw


_SECTIONS = {"data": DataConfig, "strategy": StrategyConfig,
             "simulation": SimulationConfig, "contribution": ContributionConfig,
             "adaptive": AdaptiveConfig, "dp": DpConfig, "paillier": PaillierConfig,
             "robust": RobustConfig}


def _build(cls: type, raw: dict, where: str):
    known = {f.name for f in fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"unknown key(s) in [{where}]: {sorted(unknown)}; known: {sorted(known)}")
    for f in fields(cls):
        if f.type in ("bool", bool) and f.name in raw and not isinstance(raw[f.name], bool):
            raise ConfigError(f"[{where}] {f.name} must be true or false, got {raw[f.name]!r}")
    try:
        return cls(**raw)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid [{where}]: {err}") from err


def from_dict(raw: dict) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from a plain dict."""
    raw = dict(raw)
    kwargs: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        if name in raw:
            kwargs[name] = _build(cls, dict(raw.pop(name)), name)
    strategy = kwargs.get("strategy", StrategyConfig())
    kwargs["recipe"] = _build(strategy.recipe_type, dict(raw.pop("recipe", {})), "recipe")
    groups = raw.pop("clients", [])
    kwargs["clients"] = tuple(_build(ClientGroup, dict(g), "clients") for g in groups)
    known = {f.name for f in fields(ExperimentConfig)} - set(_SECTIONS) - {"clients", "recipe"}
    unknown = set(raw) - known
    if unknown:
        hint = (" ([compare] makes this a comparison config: run it with flhet-sim compare)"
                if "compare" in unknown else "")
        raise ConfigError(f"unknown top-level key(s): {sorted(unknown)}; known: {sorted(known)}"
                          + hint)
    try:
        return ExperimentConfig(**raw, **kwargs)
    except TypeError as err:
        raise ConfigError(str(err)) from err


def load_config(path: str | Path) -> ExperimentConfig:
    """Read an experiment TOML file.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ConfigError
        If the TOML is malformed or a value is invalid.
    """
    return from_dict(read_toml(path))


def read_toml(path: str | Path) -> dict:
    """The TOML file at ``path`` as a dict (``FileNotFoundError``; ``ConfigError`` if it
    is not valid TOML)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err


def parse_overrides(text: str) -> dict[str, object]:
    """Parse ``"key=value key=value"`` (``flhet-sim --set`` syntax) into a dict.

    Entries are separated by whitespace (shell-style quoting groups a value that
    contains spaces); each value is read as a Python literal, else as a TOML value
    (``true``, ``false``, ``{ name = "iid" }``), else kept as a string.

    Raises
    ------
    ConfigError
        If an entry has no ``=`` or an empty key, or the quoting is unbalanced.
    """
    try:
        entries = shlex.split(text)
    except ValueError as err:
        raise ConfigError(f"run config 'overrides' = {text!r}: {err}") from err
    changes: dict[str, object] = {}
    for entry in entries:
        key, sep, raw = entry.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"run config 'overrides': entry {entry!r} is not KEY=VALUE "
                "(e.g. 'num_rounds=5 recipe.kd_weight=0.3')"
            )
        changes[key.strip()] = _literal(raw)
    return changes


def _literal(raw: str) -> object:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        pass
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        return raw
