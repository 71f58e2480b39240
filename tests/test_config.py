"""Experiment configuration: the shipped configs load; mistakes give clear errors."""

import tomllib
from pathlib import Path

import pytest

from simulations.cli import build_parser, main
from simulations.compare_config import load_comparison
from simulations.config import ConfigError, from_dict, load_config
from simulations.experiment import build_strategy, paillier_key_files

CONFIGS = Path(__file__).resolve().parents[1] / "simulations" / "configs"
MAIN = CONFIGS / "fmnist_hetero.toml"
PROTO = CONFIGS / "fmnist_fedproto.toml"


def _raw(**changes):
    raw = {"data": {"dataset": "digits", "num_clients": 2},
           "clients": [{"architecture": "mlp", "count": 1},
                       {"architecture": "sklearn:sgd_logreg", "count": 1}]}
    raw.update(changes)
    return raw


def test_main_config_is_the_heterogeneous_fashion_mnist_job():
    cfg = load_config(MAIN)
    archs = {g.architecture for g in cfg.client_groups()}
    assert cfg.data.dataset == "fashion_mnist" and cfg.data.num_clients == 10
    assert cfg.data.partitioner_spec().to_dict()["alpha"] == 0.1
    assert "vit_tiny" in archs and any(a.startswith("sklearn:") for a in archs)
    assert len(archs) >= 4


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    if "compare" in tomllib.loads(path.read_text()):   # a comparison: every strategy's config
        assert all(c.num_rounds >= 1 for c in load_comparison(path).strategies.values())
        with pytest.raises(ConfigError, match="run it with flhet-sim compare"):
            load_config(path)
    else:
        assert load_config(path).num_rounds >= 1


def test_set_reads_toml_booleans_and_refuses_a_string_for_a_switch():
    """``--set dp.no_dp_baseline=false`` once read the string 'false', which is truthy."""
    args = build_parser().parse_args(
        ["run", "--config", str(PROTO), "--out", "x", "--set", "dp.enabled=true",
         "--set", "dp.no_dp_baseline=false", "--set", "paillier.enabled=False"])
    cfg = load_config(PROTO).with_overrides(**dict(args.overrides))
    assert cfg.dp.enabled is True and cfg.dp.no_dp_baseline is False
    assert cfg.paillier.enabled is False
    with pytest.raises(ConfigError, match=r"\[dp\] enabled must be true or false, got 'yes'"):
        load_config(PROTO).with_overrides(**{"dp.enabled": "yes"})


def test_overrides_replace_top_level_and_section_fields():
    cfg = from_dict(_raw()).with_overrides(num_rounds=3, **{"recipe.kd_weight": 0.2})
    assert cfg.num_rounds == 3 and cfg.recipe.kd_weight == 0.2


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (_raw(clients=[]), "at least one"),
        (_raw(clients=[{"architecture": "mlp", "count": 3}]), "add up to 3"),
        (_raw(api="grpc"), "api must be one of"),
        (_raw(num_rounds=0), "num_rounds"),
        (_raw(data={"dataset": "digits", "num_clients": 2, "alpah": 1}), "unknown key"),
        (_raw(strategy={"mode": "fedavg"}), "mode must be one of"),
        (_raw(recipe={"schedule": "sometimes"}), "schedule"),
        (_raw(colour="blue"), "unknown top-level"),
    ],
)
def test_bad_configs_raise_clear_errors(raw, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        from_dict(raw)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("num_rounds = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_cli_reports_config_errors_with_exit_code_2(tmp_path, capsys):
    assert main(["run", "--config", str(tmp_path / "nope.toml"), "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["bench", "--config", str(MAIN), "--out", str(tmp_path), "--seeds", "a,b"]) == 2


def _switchable_sections():
    """(config, section) for every [dp] / [paillier] section a shipped config leaves off."""
    for path in sorted(CONFIGS.glob("*.toml")):
        raw = tomllib.loads(path.read_text())
        for section in ("dp", "paillier"):
            if section in raw and not raw[section].get("enabled", False):
                yield pytest.param(path, section, id=f"{path.stem}-{section}")


@pytest.mark.parametrize(("path", "section"), list(_switchable_sections()))
def test_switching_on_a_shipped_privacy_section_builds_the_strategy(tmp_path, path, section):
    """``--set dp.enabled=true`` (or ``paillier``) on a shipped config must just work."""
    cfg = load_config(path).with_overrides(**{f"{section}.enabled": True})
    key_files = paillier_key_files(cfg, tmp_path) if cfg.paillier.enabled else None
    strategy = build_strategy(cfg, key_files=key_files)
    assert strategy.privacy_history == [] if section == "dp" else strategy.history == []


def _record(**dp):
    return {"enabled": True, "level": "record", "target_epsilon": 8.0, **dp}


def test_record_level_dp_config_builds_dp_sgd_clients_and_keeps_it_in_the_local_only_run():
    from simulations.experiment import (build_client, dp_strategy_options, local_only_config,
                                        planned_private_epochs)
    from simulations.phases import experiment_phases

    cfg = load_config(CONFIGS / "fmnist_dpsgd.toml")
    assert cfg.dp.record_level and not cfg.dp.client_level
    assert cfg.data.num_clients == 10 and planned_private_epochs(cfg) == 2 + 15 + 2
    small = from_dict(_raw(clients=[{"architecture": "mlp", "count": 2}],
                           data={"dataset": "digits", "num_clients": 2, "proxy_size": 300,
                                 "proxy_validation_size": 100},
                           strategy={"class_vote_weighting": False}, dp=_record()))
    assert dp_strategy_options(small) == {}          # no server-side noise
    learner = build_client(small, 0).learner
    assert learner.dp is not None and learner.dp.max_epsilon == 8.0
    phases = {p.name: p for p in experiment_phases(small)}
    assert phases["local_only"].cfg.dp.record_level       # same DP-SGD settings
    assert not phases["no_dp"].cfg.dp.enabled
    assert local_only_config(small).dp.record_level
    assert build_client(phases["no_dp"].cfg, 0).learner.dp is None


@pytest.mark.parametrize("changes, match", [
    ({}, "scikit-learn|PyTorch"),                                     # a sklearn client
    ({"clients": [{"architecture": "mlp", "count": 2}],
      "strategy": {"class_vote_weighting": True}}, "class_vote_weighting"),
    ({"clients": [{"architecture": "mlp", "count": 2}],       # releases alone: eps > 8
      "strategy": {"name": "fedproto", "feature_dim": 32},
      "dp": _record(proto_noise_multiplier=0.5)}, "prototype releases alone"),
    ({"clients": [{"architecture": "mlp", "count": 2}],
      "strategy": {"class_vote_weighting": False}, "dp": _record(level="sample")}, "level"),
])
def test_record_level_dp_refuses_what_it_does_not_cover(changes, match):
    raw = _raw(dp=_record(), strategy={"class_vote_weighting": False})
    raw.update(changes)
    with pytest.raises(ConfigError, match=match):
        from_dict(raw)


def test_a_non_integer_round_count_is_named():
    """``--set "num_rounds=2 seed=1"`` (one option for two overrides) read num_rounds as
    the string '2 seed=1' and failed with "'<' not supported between str and int"."""
    with pytest.raises(ConfigError, match="num_rounds must be an integer"):
        from_dict(_raw(num_rounds="2 seed=1"))
