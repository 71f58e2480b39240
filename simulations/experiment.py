"""Build an experiment's pieces from its config: data split, clients, strategy, apps.

Both ways of running an experiment use these builders: the ``flhet-sim`` CLI (which
calls Flower's ``run_simulation``) and the Flower App in ``simulations/flower_app``
(``flwr run``).
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context

from clients.faces.client_app import flhet_client_app
from clients.faces.numpy_client import FlhetNumPyClient
from clients.faces.state import client_id_from_context
from clients.faces.wrappers import DpNoiseMod, DpNoiseNumPyClient, PaillierMod, SecureSumNumPyClient
from clients.federated_client import FederatedClient
from clients.learners.dp_prototypes import planned_releases
from clients.learners.dpsgd import DPSGD, calibrate_noise_multiplier, sample_rate, steps_per_epoch
from clients.learners.free_rider import FreeRiderLearner
from clients.learners.sklearn_learner import SklearnLearner
from clients.learners.torch_learner import TorchLearner
from clients.models.sklearn_models import build_sklearn_model
from clients.models.zoo import build_model
from flhet_strategies.aggregation.claims import ClaimCheck
from flhet_strategies.aggregation.robust import RobustAggregation
from flhet_strategies.aggregation.validation_filter import ValidationFilter
from flhet_strategies.algorithms.recipes import (
    DistillationRecipe,
    FedDFRecipe,
    PrototypeRecipe,
    SharedHeadRecipe,
)
from flhet_strategies.faces.compat import CompatStrategy
from flhet_strategies.faces.driver import expected_cohort
from flhet_strategies.faces.message import MessageStrategy
from flhet_strategies.privacy.dp.accounting import noise_multiplier_for_epsilon
from flhet_strategies.privacy.dp.budget import RoundBudget, sampling_for_fraction
from flhet_strategies.privacy.dp.mechanism import DifferentialPrivacy
from flhet_strategies.privacy.dp.settings import DpSettings, PrivateConsensus
from flhet_strategies.privacy.paillier.key_files import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    KeyFiles,
    deal_keys,
    load_public_key,
)
from flhet_strategies.privacy.paillier.keys import key_fingerprint
from flhet_strategies.privacy.paillier.secure_sum import SecureSum
from flhet_strategies.privacy.paillier.threshold_keys import (
    PUBLIC_FILE as THRESHOLD_PUBLIC_FILE,
    deal_threshold_keys,
    load_threshold_cohort,
)
from flhet_strategies.protocol import find_wrapper, unwrap
from flhet_strategies.strategies import (
    FedConsensus,
    FedConsensusCompat,
    FedDF,
    FedDFCompat,
    FedGH,
    FedGHCompat,
    FedProto,
    FedProtoCompat,
    FedTGP,
    FedTGPCompat,
    LGFedAvg,
    LGFedAvgCompat,
    SecureConsensus,
    SecureConsensusCompat,
)
from flhet_strategies.weighting.adaptive import AdaptiveWeighting
from flhet_strategies.weighting.base import sample_count_weights
from flhet_strategies.weighting.contribution.ledger import ContributionLedger
from flhet_strategies.weighting.contribution.weighting import ContributionWeighting

from .config import ExperimentConfig, from_dict
from .data.federated_split import FederatedSplit, make_federated_split
from .data.label_noise import with_label_noise_twin


def build_split(cfg: ExperimentConfig) -> FederatedSplit:
    """The experiment's data split (cached per process by ``make_federated_split``).

    A ``label_noise`` client gets its twin's size and class mix with flipped labels
    (:func:`~simulations.data.label_noise.with_label_noise_twin`, cached as well).
    """
    d = cfg.data
    split = make_federated_split(
        d.dataset, d.num_clients, d.partitioner_spec(), proxy_size=d.proxy_size,
        proxy_validation_size=d.proxy_validation_size, private_size=d.private_size,
        global_test_size=d.global_test_size, client_test_fraction=d.client_test_fraction,
        seed=cfg.seed, data_dir=d.data_dir,
    )
    roles = cfg.client_roles()
    if "label_noise" in roles:
        noisy = roles.index("label_noise")
        split = with_label_noise_twin(split, noisy, roles.index("twin"),
                                      cfg.client_groups()[noisy].flip_fraction, cfg.seed,
                                      d.dataset, d.data_dir)
    return split


def build_client(cfg: ExperimentConfig, client_id: int) -> FederatedClient:
    """Client ``client_id`` with a freshly initialised model of its group's architecture."""
    groups = cfg.client_groups()
    if not 0 <= client_id < len(groups):
        raise ValueError(f"client_id {client_id} out of range [0, {len(groups)})")
    group = groups[client_id]
    split = build_split(cfg)
    data = split.clients[client_id]
    model_seed = cfg.seed * 1000 + client_id
    if group.role == "free_rider":
        learner = FreeRiderLearner(split.num_classes, seed=model_seed)
    elif group.framework == "scikit-learn":
        estimator = build_sklearn_model(group.architecture.split(":", 1)[1], seed=model_seed)
        learner = SklearnLearner(estimator, split.num_classes, seed=model_seed)
    else:
        model = build_model(group.architecture, split.input_shape, split.num_classes,
                            seed=model_seed, feature_dim=cfg.strategy.feature_dim
                            if cfg.strategy.features else None)
        learner = TorchLearner(model, lr=group.lr, optimizer=group.optimizer,
                               batch_size=group.batch_size, seed=model_seed,
                               dp=record_dp(cfg, group.batch_size, len(data.train)))
    y_train = data.train.y
    if group.role == "poisoner":      # labels permuted: confidently wrong predictions
        y_train = (np.asarray(y_train) + 1) % split.num_classes
    return FederatedClient(
        learner, data.train.x, y_train, data.test.x, data.test.y, split.proxy_x,
        split.num_classes, global_test=(split.global_test.x, split.global_test.y),
        seed=model_seed,
    )


def planned_private_epochs(cfg: ExperimentConfig) -> int:
    """Private epochs a client trains if it takes part in every round: warm-up, every
    round's local epochs and the final personalisation epochs."""
    r = cfg.recipe
    return (r.warmup_epochs + cfg.num_rounds * r.local_epochs
            + getattr(r, "final_private_epochs", 0))


def planned_prototype_releases(cfg: ExperimentConfig) -> int:
    """Class-prototype releases a client makes if it takes part in every round: one per
    round for the strategies whose clients upload prototypes, else none."""
    return cfg.num_rounds if cfg.strategy.uploads_prototypes else 0


def record_dp(cfg: ExperimentConfig, batch_size: int, num_examples: int) -> DPSGD | None:
    """The DP-SGD settings of a client with ``num_examples`` training records under
    ``[dp] level = "record"`` (else ``None``).

    The noise multiplier is given, or calibrated so that the client's planned private
    steps (:func:`planned_private_epochs` at sampling rate ``batch_size / num_examples``)
    and its planned prototype releases (:func:`planned_prototype_releases`, each at
    ``proto_noise_multiplier``) spend ``target_epsilon`` together; ``max_epsilon``
    (default ``target_epsilon``) stops both.
    """
    dp = cfg.dp
    if not dp.record_level:
        return None
    z = dp.noise_multiplier
    if z is None:
        rate = sample_rate(batch_size, num_examples)
        releases = planned_releases(dp.proto_noise_multiplier, planned_prototype_releases(cfg))
        z = calibrate_noise_multiplier(dp.target_epsilon, dp.delta, rate,
                                       planned_private_epochs(cfg) * steps_per_epoch(rate),
                                       fixed=releases)
    return DPSGD(noise_multiplier=z, max_grad_norm=dp.clip_norm, delta=dp.delta,
                 max_epsilon=dp.budget, proto_noise_multiplier=dp.proto_noise_multiplier,
                 proto_clip_norm=dp.proto_clip_norm)


LOCAL_ONLY_PHASE = "local_only"
"""Phase name of the local-only baseline (clients keep a separate model per phase)."""

SAMPLE_COUNT_PHASE = "sample_count_weighting"
"""Phase name of the sample-count-weighted baseline of a contribution-weighted run."""


def build_contribution_weighting(cfg: ExperimentConfig, audit_only: bool = False
                                 ) -> ContributionWeighting:
    """The ``[contribution]`` weight function, on the split's labeled validation slice.

    Parameters
    ----------
    cfg : ExperimentConfig
        The experiment.
    audit_only : bool (default: False)
        Record contributions but weight by sample counts, whatever
        ``contribution.use_for_weights`` says (the sample-count baseline).
    """
    split, c = build_split(cfg), cfg.contribution
    return ContributionWeighting(
        split.proxy_validation_indices, split.proxy_validation.y,
        consensus=cfg.strategy.consensus(), method=c.method, budget=c.budget, mix=c.mix,
        use_for_weights=c.use_for_weights and not audit_only, decay=c.decay, metric=c.metric,
        seed=cfg.seed,
    )


def without_privacy(cfg: ExperimentConfig) -> ExperimentConfig:
    """The same experiment with ``[dp]`` and ``[paillier]`` switched off (its baselines)."""
    return cfg.with_overrides(**{"dp.enabled": False, "paillier.enabled": False})


def local_only_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """What the local-only baseline runs: no server-side privacy (nothing is shared), but
    record-level DP-SGD stays on, so the baseline trains under the same noise."""
    if cfg.dp.record_level:
        return cfg.with_overrides(**{"paillier.enabled": False})
    return without_privacy(cfg)


def without_attackers(cfg: ExperimentConfig) -> ExperimentConfig:
    """The same federation with every ``poisoner`` honest (the ``clean`` baseline)."""
    raw = cfg.to_dict()
    for group in raw["clients"]:
        if group["role"] == "poisoner":
            group["role"] = ""
    return from_dict(raw)


def attackers_absent(cfg: ExperimentConfig) -> ExperimentConfig:
    """The same federation with every ``poisoner`` ``absent``: enrolled nowhere, so the
    server rejects its replies (the ``attackers_absent`` baseline)."""
    raw = cfg.to_dict()
    for group in raw["clients"]:
        if group["role"] == "poisoner":
            group["role"] = "absent"
    return from_dict(raw)


def without_robustness(cfg: ExperimentConfig) -> ExperimentConfig:
    """The same experiment aggregated by the weighted mean (the ``plain_mean`` baseline)."""
    return cfg.with_overrides(**{"robust.rule": ""})


def without_adaptation(cfg: ExperimentConfig) -> ExperimentConfig:
    """The same experiment with ``[adaptive]`` switched off (its unadapted baseline)."""
    return cfg.with_overrides(**{"adaptive.enabled": False})


def dp_noise_multiplier(cfg: ExperimentConfig) -> float | None:
    """``z`` of the ``[dp]`` section: given, or calibrated to ``target_epsilon``.

    The calibration spends ``target_epsilon`` over ``num_rounds`` releases at ``delta``
    with the strategy's real sampling (every client, or fixed-size cohorts).
    """
    dp = cfg.dp
    if not dp.client_level:
        return None
    if dp.noise_multiplier is not None:
        return float(dp.noise_multiplier)
    population, fraction = cfg.data.num_clients, cfg.strategy.fraction_train
    cohort = expected_cohort(population, fraction)
    return noise_multiplier_for_epsilon(
        dp.target_epsilon, dp.delta, cfg.num_rounds, sampling_rate=cohort / population,
        population_size=population, sampling=sampling_for_fraction(fraction),
        non_negative_payloads=not cfg.strategy.features)


def dp_strategy_options(cfg: ExperimentConfig) -> dict:
    """``privacy`` and ``privacy_budget`` for the strategy of a ``[dp]`` experiment."""
    dp = cfg.dp
    if not dp.client_level:
        return {}
    z = dp_noise_multiplier(cfg)
    if cfg.strategy.features:
        privacy = DpSettings(z, dp.clip_norm, dp.mode, dp.clip_mode, seed=cfg.seed)
    else:
        privacy = PrivateConsensus(z, dp.clip_norm, dp.mode, dp.clip_mode, seed=cfg.seed,
                                   min_margin=dp.min_margin, min_rows=dp.min_rows)
    budget = RoundBudget(cfg.data.num_clients, dp.delta, dp.budget,
                         fraction=cfg.strategy.fraction_train,
                         non_negative_payloads=not cfg.strategy.features)
    return {"privacy": privacy, "privacy_budget": budget}


def paillier_key_files(cfg: ExperimentConfig, out_dir: str | Path, *,
                       resume: bool = False) -> KeyFiles:
    """The Paillier key pair of a ``[paillier]`` experiment, dealt if not there yet.

    The key dealer (this function, outside the server) writes the private key for the
    clients and the public key for the server into ``paillier.key_dir`` (default:
    ``<out_dir>/paillier_keys``); existing files there are reused, except that a new
    (not resumed) threshold run in the default folder gets a fresh key: its decryptors
    decrypt one sum per round and key (:func:`threshold_key_files`).
    """
    key_dir = Path(cfg.paillier.key_dir or Path(out_dir) / "paillier_keys")
    if cfg.paillier.decryption == "threshold":
        return threshold_key_files(cfg, key_dir, reuse=resume or bool(cfg.paillier.key_dir))
    private, public = key_dir / PRIVATE_KEY_FILE, key_dir / PUBLIC_KEY_FILE
    if private.is_file() and public.is_file():
        return KeyFiles(private, public, key_fingerprint(load_public_key(public)).hex())
    return deal_keys(key_dir, cfg.paillier.key_bits)


def threshold_key_files(cfg: ExperimentConfig, key_dir: Path, reuse: bool = True) -> KeyFiles:
    """A threshold cohort's files for the config's clients (ids ``0..n-1``): reused (with
    ``reuse``) if the folder holds them for this roster and ``t``, else dealt.
    ``private_path`` is the folder: each client's mod picks its own share file by its
    ``partition-id``."""
    ids = [str(c) for c in range(cfg.data.num_clients)]
    t = cfg.paillier.threshold or len(ids) // 2 + 1
    public = key_dir / THRESHOLD_PUBLIC_FILE
    if reuse and public.is_file():
        cohort = load_threshold_cohort(public)
        if sorted(cohort.roster) == sorted(ids) and cohort.threshold == t:
            return KeyFiles(key_dir, public, cohort.fingerprint.hex())
    files = deal_threshold_keys(key_dir, ids, t, n_length=cfg.paillier.key_bits)
    return KeyFiles(key_dir, files.public_path, files.fingerprint)


_LOCAL_ONLY = {DistillationRecipe: {"kd_weight": 0.0}, PrototypeRecipe: {"proto_weight": 0.0},
               SharedHeadRecipe: {"use_global_head": False},
               FedDFRecipe: {"use_global_model": False, "kd_weight": 0.0}}
"""What the local-only baseline switches off in each kind of recipe."""


def build_strategy(cfg: ExperimentConfig, local_only: bool = False,
                   sample_count_weighting: bool = False, key_files: KeyFiles | None = None,
                   phase: str | None = None):
    """The server strategy of the config's algorithm and API face (Message API or compat).

    Parameters
    ----------
    cfg : ExperimentConfig
        The experiment.
    local_only : bool (default: False)
        Build the local-only baseline instead: the same recipe with nothing to learn from
        the others (``kd_weight = 0``, ``proto_weight = 0`` or ``use_global_head = false``:
        no head is sent or loaded), phase ``local_only``
        (fresh client models), evaluated every ``cfg.local_only_eval_every`` rounds
        (default: only after the last round); no contributions, DP or encryption.
    sample_count_weighting : bool (default: False)
        Build the sample-count baseline of a contribution-weighted consensus run (same
        proxy requests and contribution audit, sample-count weights), phase
        ``sample_count_weighting``.
    key_files : KeyFiles, optional
        With ``[paillier] enabled``: the dealt keys; the server half is wrapped in a
        :class:`~flhet_strategies.privacy.paillier.secure_sum.SecureSum` holding the
        public key only.
    phase : str, optional
        Phase name instead of the default (``main``, ``local_only`` or
        ``sample_count_weighting``), e.g. for a baseline sharing a federation.

    With ``[dp] enabled`` the server half is wrapped in
    :class:`~flhet_strategies.privacy.dp.mechanism.DifferentialPrivacy`
    (:func:`dp_strategy_options`).
    """
    if local_only:
        recipe = replace(cfg.recipe, **_LOCAL_ONLY[type(cfg.recipe)])
        evaluate_every = cfg.local_only_eval_every or cfg.num_rounds
        phase = phase or LOCAL_ONLY_PHASE
    else:
        recipe, evaluate_every = cfg.recipe, cfg.simulation.eval_every
        phase = phase or (SAMPLE_COUNT_PHASE if sample_count_weighting else "main")
    s = cfg.strategy
    message = cfg.api == "message"
    face = ({"fraction_train": s.fraction_train, "min_available_nodes": cfg.data.num_clients}
            if message else {"num_rounds": cfg.num_rounds, "fraction_fit": s.fraction_train,
                             "min_available_clients": cfg.data.num_clients})
    split = build_split(cfg)
    face.update(evaluate_every=evaluate_every, seed=cfg.seed, phase=phase,
                claims=enrollment(split, cfg.client_roles(),
                                  noisy_histograms=cfg.dp.record_level))
    privacy = {} if local_only else dp_strategy_options(cfg)
    if s.name == "fedproto":
        strategy_type = FedProto if message else FedProtoCompat
        strategy = strategy_type(split.num_classes, s.feature_dim, recipe, s.weighting,
                                 s.feature_bound, **privacy, **face)
    elif s.name == "lgfedavg":
        strategy_type = LGFedAvg if message else LGFedAvgCompat
        strategy = strategy_type(split.num_classes, s.feature_dim, recipe, s.weighting,
                                 s.head_bound, **privacy, **face)
    elif s.name == "fedgh":
        strategy_type = FedGH if message else FedGHCompat
        strategy = strategy_type(split.num_classes, s.feature_dim, recipe,
                                 server_epochs=s.server_epochs, server_lr=s.server_lr,
                                 server_batch_size=s.server_batch_size, **face)
    elif s.name == "feddf":
        strategy_type = FedDF if message else FedDFCompat
        strategy = strategy_type(
            group_constructors(cfg, split), split.proxy_x, split.num_classes,
            split.proxy_validation_indices, validation_labels=split.proxy_validation.y,
            recipe=recipe, distillation=s.distillation(),
            proxy_per_round=s.proxy_per_round or None, **face)
    elif s.name == "fedtgp":
        strategy_type = FedTGP if message else FedTGPCompat
        strategy = strategy_type(split.num_classes, s.feature_dim, recipe,
                                 margin_threshold=s.margin_threshold,
                                 server_epochs=s.server_epochs, server_lr=s.server_lr,
                                 server_batch_size=s.server_batch_size, **face)
    else:
        options = dict(num_proxy=len(split.proxy_x), num_classes=split.num_classes,
                       proxy_per_round=s.proxy_per_round, consensus=s.consensus(),
                       recipe=recipe, **privacy, **face)
        if cfg.contribution.enabled and not local_only:
            options.update(weight_fn=build_contribution_weighting(cfg, sample_count_weighting),
                           always_include=split.proxy_validation_indices)
        if cfg.robust.rule == "validation_filter" and not local_only:
            options["always_include"] = split.proxy_validation_indices
        if cfg.adaptive.enabled and not local_only:
            a = cfg.adaptive
            options["weight_fn"] = AdaptiveWeighting(
                options.get("weight_fn", sample_count_weights), smoothing=a.smoothing,
                power=a.power, min_factor=a.min_factor, temperature=s.temperature)
        strategy = (FedConsensus if message else FedConsensusCompat)(**options)
    if cfg.robust.enabled and not local_only:
        face_type = MessageStrategy if message else CompatStrategy
        if cfg.robust.rule == "validation_filter":
            robust = ValidationFilter(strategy.algorithm, split.proxy_validation_indices,
                                      split.proxy_validation.y, cfg.robust.min_accuracy)
        else:
            robust = RobustAggregation(strategy.algorithm, cfg.robust.rule, cfg.robust.trim)
        strategy = face_type(robust, **strategy.face_settings())
    if cfg.paillier.enabled and not local_only:
        if key_files is None:
            raise ValueError("[paillier] enabled: build_strategy needs the dealt key_files")
        max_examples = cfg.paillier.max_examples or max(len(c.train) for c in split.clients)
        wrapper = SecureConsensus if message else SecureConsensusCompat
        threshold = cfg.paillier.decryption == "threshold"
        key = (load_threshold_cohort if threshold else load_public_key)(key_files.public_path)
        strategy = wrapper(strategy, key, max_examples=max_examples,
                           decryption=cfg.paillier.decryption,
                           decryptors=cfg.paillier.decryptors)
    return strategy


def group_constructors(cfg: ExperimentConfig, split: FederatedSplit) -> dict:
    """FedDF's server models: one constructor per PyTorch architecture of the clients
    (``functools.partial`` of the zoo's ``build_model``: picklable for checkpoints)."""
    return {g.architecture: partial(build_model, g.architecture, split.input_shape,
                                    split.num_classes)
            for g in cfg.client_groups() if g.framework == "pytorch" and g.role != "free_rider"}


def enrollment(split: FederatedSplit, roles: list[str] | None = None,
               noisy_histograms: bool = False) -> ClaimCheck:
    """Claims checked against the partition: every client enrolled with its training size
    (but ``absent`` ones, whose replies are then rejected).

    With ``noisy_histograms`` (DP-SGD clients send their class counts with Gaussian noise
    and withhold small classes) a histogram need not sum to ``num-examples``, so that
    rule is off; ``num-examples`` is still checked against the enrollment.
    """
    roles = roles or [""] * len(split.clients)
    return ClaimCheck(enrolled={str(cid): len(data.train) for cid, data in
                                enumerate(split.clients) if roles[cid] != "absent"},
                      check_histogram=not noisy_histograms)


def contribution_ledger(strategy) -> ContributionLedger | None:
    """The contribution ledger of a strategy built by :func:`build_strategy`, if it keeps one."""
    weight_fn = getattr(unwrap(strategy.algorithm), "weight_fn", None)
    while isinstance(weight_fn, AdaptiveWeighting):
        weight_fn = weight_fn.inner
    return weight_fn.ledger if isinstance(weight_fn, ContributionWeighting) else None


def privacy_wrapper(strategy) -> DifferentialPrivacy | None:
    """The differential-privacy wrapper of a strategy's server half, if any."""
    return find_wrapper(strategy.algorithm, DifferentialPrivacy)


def secure_wrapper(strategy) -> SecureSum | None:
    """The Paillier secure-sum wrapper of a strategy's server half, if any."""
    return find_wrapper(strategy.algorithm, SecureSum)


def _client_for(cfg: ExperimentConfig, context: Context) -> FederatedClient:
    torch.set_num_threads(cfg.simulation.threads_per_client)
    return build_client(cfg, client_id_from_context(context))


def _private_key_path(key_files: KeyFiles | None) -> Path:
    if key_files is None:
        raise ValueError("[paillier] enabled: the client app needs the dealt key_files")
    return key_files.private_path


def client_mods(cfg: ExperimentConfig, key_files: KeyFiles | None = None) -> list:
    """Client mods of the experiment's main run (Message API).

    ``[dp] mode = "distributed"``: :class:`~clients.faces.wrappers.DpNoiseMod` (the server
    sends ``z``, the clip, the cohort size and the sum's layout every round).
    ``[paillier]``: :class:`~clients.faces.wrappers.PaillierMod` with the private key file.
    With both, the Paillier mod comes first (outermost), so the DP mod noises the reply
    before it is encrypted.
    """
    mods: list = []
    if cfg.paillier.enabled:
        mods.append(PaillierMod(_private_key_path(key_files), workers=cfg.paillier.workers))
    if cfg.dp.client_level and cfg.dp.mode == "distributed":
        mods.append(DpNoiseMod())
    return mods


def make_client_app(cfg: ExperimentConfig, key_files: KeyFiles | None = None,
                    checkpoint_dir: str | Path | None = None):
    """The ClientApp for the config's API face (with :func:`client_mods`; on the compat
    face the equivalent ``NumPyClient`` wrappers); with ``checkpoint_dir`` every client
    also writes its state there after each training round (docs/resume.md)."""
    if cfg.api == "message":
        return flhet_client_app(lambda context: _client_for(cfg, context),
                                mods=client_mods(cfg, key_files), checkpoint_dir=checkpoint_dir)
    from flwr.clientapp import ClientApp

    private_key = _private_key_path(key_files) if cfg.paillier.enabled else None

    def client_fn(context: Context):
        client = FlhetNumPyClient(_client_for(cfg, context), client_id_from_context(context),
                                  context, checkpoint_dir=checkpoint_dir)
        if cfg.dp.client_level and cfg.dp.mode == "distributed":
            client = DpNoiseNumPyClient(client)
        if cfg.paillier.enabled:
            client = SecureSumNumPyClient(client, private_key, context=context,
                                          workers=cfg.paillier.workers)
        return client.to_client()

    return ClientApp(client_fn=client_fn)


def backend_config(cfg: ExperimentConfig) -> dict:
    """Ray backend resources for ``run_simulation``."""
    sim = cfg.simulation
    return {"client_resources": {"num_cpus": sim.cpus_per_client, "num_gpus": 0.0},
            "init_args": {"num_cpus": sim.num_cpus, "include_dashboard": False}}
