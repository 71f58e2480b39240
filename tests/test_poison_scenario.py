"""The poisoning scenario's pieces: poisoner clients, the [robust] section, its baselines."""

from __future__ import annotations

import numpy as np
import pytest

from flhet_strategies.aggregation.robust import RobustAggregation
from flhet_strategies.aggregation.validation_filter import ValidationFilter
from flhet_strategies.protocol import find_wrapper
from simulations.config import ConfigError, load_config
from simulations.experiment import build_client, build_strategy, without_attackers
from simulations.phases import (
    ABSENT_PHASE,
    CLEAN_PHASE,
    PLAIN_MEAN_PHASE,
    experiment_phases,
    robust_section,
)

POISON = "simulations/configs/fmnist_poison.toml"
TINY = "simulations/configs/digits_tiny.toml"


def test_poisoners_train_on_permuted_labels_and_the_clean_twin_does_not():
    cfg = load_config(TINY)
    raw_roles = cfg.to_dict()
    raw_roles["clients"][1]["role"] = "poisoner"
    from simulations.config import from_dict
    poisoned = from_dict(raw_roles)
    honest, attacker = build_client(cfg, 1), build_client(poisoned, 1)
    np.testing.assert_array_equal(attacker.y_train, (honest.y_train + 1) % 10)
    np.testing.assert_array_equal(attacker.y_test, honest.y_test)   # scored on true labels
    np.testing.assert_array_equal(build_client(without_attackers(poisoned), 1).y_train,
                                  honest.y_train)


def test_the_scenario_runs_the_robust_rule_and_both_twins():
    cfg = load_config(POISON)
    assert cfg.client_roles().count("poisoner") == 2
    phases = {p.name: p for p in experiment_phases(cfg)}
    assert set(phases) == {"main", "local_only", CLEAN_PHASE, PLAIN_MEAN_PHASE, ABSENT_PHASE}
    screen = find_wrapper(build_strategy(cfg).algorithm, ValidationFilter)
    assert screen.min_accuracy == 0.5 and screen.indices.size == cfg.data.proxy_validation_size
    # the labeled slice is in every round's proxy draw
    assert np.isin(screen.indices, screen.innermost.proxy_indices(7)).all()
    median = cfg.with_overrides(**{"robust.rule": "median"})
    assert find_wrapper(build_strategy(median).algorithm, RobustAggregation).rule == "median"
    for name in (CLEAN_PHASE, PLAIN_MEAN_PHASE, ABSENT_PHASE, "local_only"):
        algorithm = phases[name].build().algorithm
        assert find_wrapper(algorithm, RobustAggregation) is None
        assert find_wrapper(algorithm, ValidationFilter) is None
    assert "poisoner" not in phases[CLEAN_PHASE].cfg.client_roles()
    assert phases[PLAIN_MEAN_PHASE].cfg.client_roles() == cfg.client_roles()
    absent = phases[ABSENT_PHASE].cfg.client_roles()
    assert absent == ["absent" if r == "poisoner" else r for r in cfg.client_roles()]


def test_absent_attackers_train_honestly_and_every_reply_of_theirs_is_rejected():
    from flhet_strategies.protocol import Reply
    from simulations.experiment import attackers_absent, build_split, enrollment

    cfg = load_config(POISON)
    attackers = [str(c) for c, role in enumerate(cfg.client_roles()) if role == "poisoner"]
    gone = attackers_absent(cfg)
    split = build_split(gone)
    claims = enrollment(split, gone.client_roles())
    assert sorted(claims.enrolled) == sorted(str(c) for c in range(10) if str(c) not in attackers)
    passed, rejected = claims.screen(1, [
        Reply(c, {}, {"num-examples": len(split.clients[int(c)].train)})
        for c in ("0", attackers[0])])
    assert [r.client_id for r in passed] == ["0"]
    assert rejected == {attackers[0]: f"client id {attackers[0]} did not enroll (8 clients did)"}
    honest = build_client(without_attackers(cfg), int(attackers[0]))
    np.testing.assert_array_equal(build_client(gone, int(attackers[0])).y_train, honest.y_train)


@pytest.mark.parametrize("path, change, message", [
    (POISON, {"dp.enabled": True, "dp.noise_multiplier": 1.0, "strategy.class_vote_weighting":
              False}, "median is not a sum"),
    ("simulations/configs/fmnist_fedtgp.toml", {"robust.rule": "median"}, "weighted-sum"),
    (POISON, {"robust.rule": "mode"}, "rule must be one of"),
    (POISON, {"robust.trim": 0.5}, "trim"),
    (POISON, {"robust.min_accuracy": 1.5}, "min_accuracy"),
    (POISON, {"data.proxy_validation_size": 0}, "proxy_validation_size"),
    ("simulations/configs/fmnist_fedproto.toml", {"robust.rule": "validation_filter"},
     "consensus strategy"),
])
def test_bad_robust_configs_are_refused(path, change, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        load_config(path).with_overrides(**change)


def test_robust_section_compares_the_honest_clients_only():
    cfg = load_config(POISON)
    attackers = [c for c, role in enumerate(cfg.client_roles()) if role == "poisoner"]

    def history(honest: float, attacker: float) -> list[dict]:
        per_client = {str(c): {"client_accuracy": attacker if c in attackers else honest,
                               "global_accuracy": attacker if c in attackers else honest / 2}
                      for c in range(cfg.data.num_clients)}
        return [{"round": 20, "per_client": per_client,
                 "rejected": {str(attackers[0]): "validation filter: ...", "0": "..."},
                 "validation_scores": {str(attackers[0]): 0.1, str(attackers[1]): 0.6,
                                       "0": 0.4}}]

    section = robust_section(cfg, {"main": history(0.9, 0.0), "clean": history(0.8, 0.8)})
    assert section["attackers"] == attackers == [2, 6]
    assert section["honest_final"]["main"] == pytest.approx(
        {"client_accuracy": 0.9, "global_accuracy": 0.45})
    assert section["honest_final"]["clean"]["global_accuracy"] == pytest.approx(0.4)
    assert section["rejected_attackers"] == [1] and section["rejected_honest"] == [1]
    assert section["attacker_scores"] == [{"2": 0.1, "6": 0.6}]
