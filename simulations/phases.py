"""The runs an experiment consists of, and its results from the finished runs.

An experiment is the configured strategy plus the baselines its config asks for, each a
*phase* with its own name (sent as ``flhet-phase``): :func:`experiment_phases` lists
them, :func:`results_from_phases` turns the finished strategies into the
``results.json`` content. The phase table: docs/experiments.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flhet_strategies.protocol import unwrap

from .config import ExperimentConfig
from .convergence import accuracy_series, compare
from .results import assemble_results
from .experiment import (
    LOCAL_ONLY_PHASE,
    SAMPLE_COUNT_PHASE,
    build_split,
    build_strategy,
    contribution_ledger,
    local_only_config,
    planned_private_epochs,
    planned_prototype_releases,
    privacy_wrapper,
    record_dp,
    secure_wrapper,
    without_adaptation,
    attackers_absent,
    without_attackers,
    without_privacy,
    without_robustness,
)

MAIN_PHASE = "main"
NO_DP_PHASE = "no_dp"
PLAINTEXT_PHASE = "plaintext"
UNADAPTED_PHASE = "unadapted"
CLEAN_PHASE = "clean"
PLAIN_MEAN_PHASE = "plain_mean"
ABSENT_PHASE = "attackers_absent"
BASELINE_PHASES = (NO_DP_PHASE, PLAINTEXT_PHASE, UNADAPTED_PHASE, CLEAN_PHASE,
                   PLAIN_MEAN_PHASE, ABSENT_PHASE)
"""Baselines reported as ``baselines.<phase>`` with ``gain_points``."""


@dataclass(frozen=True)
class Phase:
    """One run of an experiment.

    Parameters
    ----------
    name : str
        Phase name (also the ``baselines`` key of a baseline).
    cfg : ExperimentConfig
        The configuration it runs (baselines of private runs: without privacy).
    local_only : bool
        The local-only baseline.
    sample_count_weighting : bool
        The sample-count baseline of a contribution-weighted run.
    """

    name: str
    cfg: ExperimentConfig
    local_only: bool = False
    sample_count_weighting: bool = False

    def build(self, key_files=None):
        """The phase's strategy (:func:`~simulations.experiment.build_strategy`)."""
        return build_strategy(self.cfg, self.local_only, self.sample_count_weighting,
                              key_files, phase=self.name)

    @property
    def label(self) -> str:
        """Log line naming the phase."""
        return {MAIN_PHASE: "the configured strategy",
                LOCAL_ONLY_PHASE: "local-only baseline: same clients and epochs, kd_weight=0",
                SAMPLE_COUNT_PHASE: "sample-count baseline: same strategy, sample-count weights",
                NO_DP_PHASE: "no-DP baseline: the same configuration without DP",
                PLAINTEXT_PHASE: "plaintext baseline: the same configuration without encryption",
                UNADAPTED_PHASE: "unadapted baseline: the same configuration, fixed weights",
                CLEAN_PHASE: "clean baseline: the same federation, every poisoner honest",
                PLAIN_MEAN_PHASE: "plain-mean baseline: the attackers, the weighted mean",
                ABSENT_PHASE: "attackers-absent baseline: their replies rejected, the "
                              "weighted mean",
                }[self.name]


def experiment_phases(cfg: ExperimentConfig) -> list[Phase]:
    """The phases ``cfg`` asks for, main run first (see docs/experiments.md)."""
    plain = without_privacy(cfg)
    phases = [Phase(MAIN_PHASE, cfg),
              Phase(LOCAL_ONLY_PHASE, local_only_config(cfg), local_only=True)]
    c = cfg.contribution
    if c.enabled and c.use_for_weights and c.sample_count_baseline:
        phases.append(Phase(SAMPLE_COUNT_PHASE, cfg, sample_count_weighting=True))
    if cfg.dp.enabled and cfg.dp.no_dp_baseline:   # either level
        phases.append(Phase(NO_DP_PHASE, plain))
    if cfg.paillier.enabled and cfg.paillier.plaintext_baseline:
        # the same configuration without encryption (distributed DP, if any, stays on)
        phases.append(Phase(PLAINTEXT_PHASE, cfg.with_overrides(**{"paillier.enabled": False})))
    if cfg.adaptive.enabled and cfg.adaptive.unadapted_baseline:
        phases.append(Phase(UNADAPTED_PHASE, without_adaptation(cfg)))
    if cfg.robust.enabled and cfg.robust.clean_baseline:
        phases.append(Phase(CLEAN_PHASE, without_robustness(without_attackers(cfg))))
    if cfg.robust.enabled and cfg.robust.plain_mean_baseline:
        phases.append(Phase(PLAIN_MEAN_PHASE, without_robustness(cfg)))
    if cfg.robust.enabled and cfg.robust.absent_baseline:
        phases.append(Phase(ABSENT_PHASE, without_robustness(attackers_absent(cfg))))
    return phases


def results_from_phases(cfg: ExperimentConfig, finished: dict[str, tuple[object, float]],
                        wall_seconds: float, key_files=None) -> dict:
    """``results.json`` content from the finished phases.

    Parameters
    ----------
    cfg : ExperimentConfig
        The experiment.
    finished : dict[str, tuple[strategy, float]]
        Phase name -> (strategy after its run, seconds the phase took).
    wall_seconds : float
        Wall-clock seconds of all phases.
    key_files : KeyFiles, optional
        The Paillier keys of a ``[paillier]`` run.
    """
    main, main_seconds = finished[MAIN_PHASE]
    sample = finished.get(SAMPLE_COUNT_PHASE, (None, 0.0))[0]
    baselines = {name: finished[name][0].history for name in BASELINE_PHASES
                 if name in finished}
    sections = {}
    if cfg.dp.client_level:
        sections["privacy"] = privacy_section(cfg, main)
    elif cfg.dp.record_level:
        local = finished.get(LOCAL_ONLY_PHASE, (None, 0.0))[0]
        sections["privacy"] = record_privacy_section(
            cfg, main.history, None if local is None else local.history)
    if cfg.paillier.enabled:
        plain, plain_seconds = finished.get(PLAINTEXT_PHASE, (None, None))
        sections["paillier"] = paillier_section(
            key_files, main.history, main_seconds,
            None if plain is None else plain.history, plain_seconds)
        sections["paillier"]["decryption"] = cfg.paillier.decryption
    if UNADAPTED_PHASE in finished:
        sections["adaptive"] = adaptive_section(cfg, main, finished[UNADAPTED_PHASE][0])
    if cfg.robust.enabled:
        sections["robust"] = robust_section(cfg, {name: finished[name][0].history for name in
                                                  (MAIN_PHASE, CLEAN_PHASE, PLAIN_MEAN_PHASE,
                                                   ABSENT_PHASE)
                                                  if name in finished})
    local = finished.get(LOCAL_ONLY_PHASE, (None, 0.0))[0]
    return assemble_results(
        cfg, main.history, None if local is None else local.history, wall_seconds,
        contributions=_ledger_dict(main),
        sample_count=None if sample is None else sample.history,
        sample_count_contributions=None if sample is None else _ledger_dict(sample),
        baselines=baselines, sections=sections,
    )


def _ledger_dict(strategy) -> dict | None:
    ledger = contribution_ledger(strategy)
    return None if ledger is None else ledger.to_dict()


def privacy_section(cfg: ExperimentConfig, strategy) -> dict:
    """``results.json`` ``privacy``: mechanism, noise, budget, epsilon spent, rounds run."""
    dp = privacy_wrapper(strategy)
    budget = dp.budget
    release = ({} if cfg.strategy.features   # the consensus's confident-row filter
               else {"min_margin": cfg.dp.min_margin, "min_rows": cfg.dp.min_rows})
    return {
        "mode": cfg.dp.mode, "noise_multiplier": dp.noise_multiplier,
        "clip_norm": cfg.dp.clip_norm, "clip_mode": cfg.dp.clip_mode, **release,
        "released_rows": [e.get("released_rows") for e in strategy.history if "epsilon" in e],
        "sampling": budget.sampling, "delta": budget.target_delta,
        "target_epsilon": cfg.dp.target_epsilon, "max_epsilon": budget.max_epsilon,
        "epsilon": budget.epsilon, "rounds_run": len(budget.history),
        "rounds_requested": cfg.num_rounds, "stopped_at": budget.stopped_at,
        "accountant": "flwr.serverapp.RdpAccountant (client-level, add-or-remove-one "
                      "for full participation, replace-one for fixed-size cohorts)",
    }


def record_privacy_section(cfg: ExperimentConfig, history: list[dict],
                           local_only: list[dict] | None) -> dict:
    """``results.json`` ``privacy`` of a ``[dp] level = "record"`` run: the DP-SGD settings,
    each client's final epsilon and the epsilon per round (main run and local-only)."""
    def final(entries: list[dict] | None) -> dict:
        spent = [e for e in entries or [] if "epsilon_per_client" in e]
        if not spent:
            return {}
        return {"epsilon_per_client": spent[-1]["epsilon_per_client"],
                "epsilon_max": spent[-1]["epsilon_max"],
                "epsilon_mean": spent[-1]["epsilon_mean"],
                "epsilon_max_per_round": [e["epsilon_max"] for e in spent]}

    dp, split = cfg.dp, build_split(cfg)
    prototypes = {} if not cfg.strategy.uploads_prototypes else {
        "prototype_release": "Gaussian mechanism (features clipped to proto_clip_norm, "
                             "noise on class sums and counts, accounted as "
                             "proto_noise_multiplier / sqrt(2) at sample rate 1)",
        "proto_noise_multiplier": dp.proto_noise_multiplier,
        "proto_clip_norm": dp.proto_clip_norm,
        "planned_prototype_releases": planned_prototype_releases(cfg)}
    noise = {str(cid): record_dp(cfg, group.batch_size, len(split.clients[cid].train))
             for cid, group in enumerate(cfg.client_groups()) if group.framework == "pytorch"}
    return {"level": "record", "mechanism": "DP-SGD (Opacus: Poisson sampling, per-sample "
            "clipping, Gaussian noise)", "clip_norm": dp.clip_norm, "delta": dp.delta,
            "target_epsilon": dp.target_epsilon,
            "noise_multiplier_per_client": {c: d.noise_multiplier for c, d in noise.items()},
            "max_epsilon": dp.budget, "planned_private_epochs": planned_private_epochs(cfg),
            **prototypes,
            "accountant": "opacus.accountants.RDPAccountant (record-level, add-or-remove-one, "
                          "per client)",
            "main": final(history), "local_only": final(local_only)}


def robust_section(cfg: ExperimentConfig, histories: dict[str, list[dict]]) -> dict:
    """``results.json`` ``robust``: the rule, the attackers, and the honest clients' final
    mean accuracies in the robust run and its ``clean`` / ``plain_mean`` twins."""
    roles = cfg.client_roles()
    honest = [str(cid) for cid, role in enumerate(roles) if role != "poisoner"]
    attackers = [str(cid) for cid, role in enumerate(roles) if role == "poisoner"]
    runs = {}
    for name, history in histories.items():
        evaluated = [e for e in history if e.get("per_client")]
        if not evaluated:
            continue
        final = evaluated[-1]["per_client"]
        runs[name] = {key: _mean([final[c].get(key) for c in honest if c in final])
                      for key in ("client_accuracy", "global_accuracy")}
    rejected = [e.get("rejected", {}) for e in histories.get("main", [])]
    return {"rule": cfg.robust.rule, "trim": cfg.robust.trim,
            "attackers": [int(c) for c in attackers],
            "honest_final": runs,
            # per round of the robust run: how many attackers and honest clients it rejected
            "rejected_attackers": [sum(c in r for c in attackers) for r in rejected],
            "rejected_honest": [sum(c in r for c in honest) for r in rejected],
            # the validation filter's score of every attacker, per round (if it ran)
            "attacker_scores": [{c: e["validation_scores"][c] for c in attackers
                                 if c in e["validation_scores"]}
                                for e in histories.get("main", []) if "validation_scores" in e]}


def _mean(values: list) -> float | None:
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else None


def adaptive_section(cfg: ExperimentConfig, adaptive, unadapted) -> dict:
    """``results.json`` ``adaptive``: rounds to the target accuracy, adapted vs unadapted.

    The target is ``adaptive.target_fraction`` of the unadapted run's final global
    accuracy (:func:`simulations.convergence.compare`); also the mean accuracy over
    rounds and the final aggregation factors of the rule.
    """
    comparison = compare(accuracy_series(unadapted.history), accuracy_series(adaptive.history),
                         cfg.adaptive.target_fraction)
    weight_fn = unwrap(adaptive.algorithm).weight_fn
    last = weight_fn.history[-1] if weight_fn.history else {}
    return {**comparison, "target_fraction": cfg.adaptive.target_fraction,
            "final_factors": last.get("factors", {})}


def _mean_round_seconds(history: list[dict]) -> float:
    seconds = [e["seconds"] for e in history if e.get("seconds")]
    return float(sum(seconds) / len(seconds)) if seconds else float("nan")


def paillier_section(key_files, history: list[dict], seconds: float,
                     plaintext: list[dict] | None, plaintext_seconds: float | None) -> dict:
    """``results.json`` ``paillier``: key fingerprint, round time and traffic vs plaintext."""
    section = {"public_key_fingerprint": key_files.fingerprint,
               "round_seconds_mean": _mean_round_seconds(history),
               "federation_seconds": seconds,
               "bytes_up": sum(e.get("bytes_up", 0) for e in history)}
    if plaintext is not None:
        plain_bytes = sum(e.get("bytes_up", 0) for e in plaintext)
        section.update(
            plaintext_round_seconds_mean=_mean_round_seconds(plaintext),
            plaintext_federation_seconds=plaintext_seconds,
            round_time_ratio=section["round_seconds_mean"] / _mean_round_seconds(plaintext),
            federation_time_ratio=seconds / plaintext_seconds,
            bytes_up_ratio=section["bytes_up"] / plain_bytes if plain_bytes else None)
    return section


def save_server_state(strategy, out: Path) -> Path:
    """Write the server's final state to ``out/server_state.npz`` (the server half's
    ``state_dict``: the last consensus or global prototypes; under Paillier empty, the
    server never sees them) and, with DP, the privacy ledger (``privacy_ledger.json``)."""
    state = {k: np.asarray(v) for k, v in unwrap(strategy.algorithm).state_dict().items()}
    if secure_wrapper(strategy) is not None:
        state = {}
    path = out / "server_state.npz"
    np.savez_compressed(path, **state)
    dp = privacy_wrapper(strategy)
    if dp is not None:
        (out / "privacy_ledger.json").write_text(
            json.dumps(dp.budget.ledger.state_dict(), indent=1, default=str))
    return path
