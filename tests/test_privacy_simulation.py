"""DP and Paillier experiments end to end in Flower's simulation engine (Ray), small data.

``run_experiment`` with ``[dp]`` / ``[paillier]`` on scikit-learn digits: per-round
epsilon in ``results.json``, a ``max_epsilon`` that stops the run cleanly, distributed
noise shares from the client mod and from its compat wrapper, central DP on the compat
face, and the plaintext baseline of a Paillier run.
"""

import json

import numpy as np
import pytest

from flhet_strategies.privacy.dp.accounting import PrivacyLedger
from simulations.config import ConfigError, from_dict
from simulations.experiment import dp_noise_multiplier
from simulations.runner import run_experiment, simulate_strategy

pytestmark = pytest.mark.integration


def _config(**top):
    raw = {
        "name": "privacy-it", "seed": 0, "num_rounds": 3, "api": "message",
        "data": {"dataset": "digits", "num_clients": 4,
                 "partitioner": {"name": "dirichlet", "alpha": 0.5, "min_partition_size": 40},
                 "proxy_size": 300, "proxy_validation_size": 100},
        "strategy": {"proxy_per_round": 40, "class_vote_weighting": False},
        "recipe": {"warmup_epochs": 1, "local_epochs": 1, "final_private_epochs": 1},
        "clients": [{"architecture": "cnn_small", "count": 2, "lr": 0.05},
                    {"architecture": "mlp", "count": 2, "lr": 0.05}],
    }
    raw.update(top)
    return from_dict(raw)


def test_dp_run_reports_epsilon_every_round_and_stops_at_the_budget(tmp_path):
    ledger = PrivacyLedger(4, 1e-5, "full", non_negative_payloads=True)
    budget = ledger.projected_epsilon(1.0, rounds=2) * 1.001  # two of three rounds fit
    cfg = _config(dp={"enabled": True, "noise_multiplier": 1.0, "max_epsilon": budget})
    results = run_experiment(cfg, tmp_path)

    assert [h["round"] for h in results["history"]] == [1, 2]
    for entry, rounds in zip(results["history"], (1, 2)):
        assert entry["epsilon"] == pytest.approx(ledger.projected_epsilon(1.0, rounds=rounds))
        assert entry["delta"] == 1e-5
    privacy = results["privacy"]
    assert privacy["stopped_at"] == 3 and privacy["rounds_run"] == 2
    assert privacy["min_margin"] == 2.0 and privacy["min_rows"] == 10
    assert privacy["epsilon"] <= budget
    # Stopped cleanly: results, report, server state and ledger are on disk.
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["history"][-1]["epsilon"] == pytest.approx(privacy["epsilon"])
    state = np.load(tmp_path / "server_state.npz")
    assert state["consensus"].shape[1] == 10
    assert json.loads((tmp_path / "privacy_ledger.json").read_text())["rounds"]
    # The same configuration without DP ran its three rounds in the same invocation.
    no_dp = results["baselines"]["no_dp"]
    assert [h["round"] for h in no_dp["history"]] == [1, 2, 3]
    assert "epsilon" not in no_dp["history"][0]


def test_distributed_dp_adds_noise_shares_on_the_clients():
    cfg = _config(num_rounds=2, dp={"enabled": True, "mode": "distributed",
                                    "target_epsilon": 8.0, "min_margin": 0.0})
    strategy = simulate_strategy(cfg)
    z = dp_noise_multiplier(cfg)
    history = strategy.history
    assert [h["round"] for h in history] == [1, 2]
    assert all(h["noise_multiplier"] == pytest.approx(z) for h in history)  # no dropouts
    assert history[-1]["epsilon"] <= 8.0
    assert all(len(h["accepted"]) == 4 for h in history)


def test_distributed_dp_on_the_compat_face_adds_noise_shares_on_the_clients():
    cfg = _config(num_rounds=2, api="compat", dp={"enabled": True, "mode": "distributed",
                                                  "target_epsilon": 8.0, "min_margin": 0.0})
    strategy = simulate_strategy(cfg)
    z = dp_noise_multiplier(cfg)
    history = strategy.history
    # Compat clients that send no array names are read as the noisy terms.
    assert strategy.algorithm.reply_array_names == ("noisy_probabilities",)
    assert [h["round"] for h in history] == [1, 2]
    assert all(h["noise_multiplier"] == pytest.approx(z) for h in history)  # no dropouts
    assert history[-1]["epsilon"] <= 8.0
    assert all(len(h["accepted"]) == 4 for h in history)


def test_central_dp_on_the_compat_face():
    cfg = _config(num_rounds=2, api="compat", dp={"enabled": True, "noise_multiplier": 2.0})
    history = simulate_strategy(cfg).history
    ledger = PrivacyLedger(4, 1e-5, "full", non_negative_payloads=True)
    assert [h["epsilon"] for h in history] == pytest.approx(
        [ledger.projected_epsilon(2.0, rounds=r) for r in (1, 2)])


@pytest.mark.parametrize("api", ["message", "compat"])
def test_paillier_run_carries_its_plaintext_baseline(tmp_path, api):
    cfg = _config(num_rounds=2, strategy={"proxy_per_round": 40}, api=api,
                  paillier={"enabled": True, "key_dir": str(tmp_path / "keys")})
    results = run_experiment(cfg, tmp_path / "out")
    assert [h["num_failures"] for h in results["history"]] == [0, 0]   # four shares a round
    plaintext = results["baselines"]["plaintext"]
    assert abs(results["final"]["global_accuracy_mean"]
               - plaintext["global_accuracy_mean"]) <= 0.03
    section = results["paillier"]
    assert section["round_time_ratio"] > 0 and section["bytes_up_ratio"] > 0
    assert (tmp_path / "keys" / "paillier_public.bin").is_file()
    # The server never held the consensus in plaintext: its saved state holds no array.
    state = np.load(tmp_path / "out" / "server_state.npz")
    assert state.files == []


@pytest.mark.parametrize("api", ["message", "compat"])
def test_threshold_paillier_run_decrypts_with_t_of_n_key_shares(tmp_path, api):
    """No client holds the private key: 3 of the 4 clients' partials decrypt each sum."""
    cfg = _config(num_rounds=2, strategy={"proxy_per_round": 40}, api=api,
                  paillier={"enabled": True, "key_dir": str(tmp_path / "keys"),
                            "decryption": "threshold"})
    results = run_experiment(cfg, tmp_path / "out")
    history = results["history"]
    assert [h["num_failures"] for h in history] == [0, 0]
    assert [h.get("sum_decryption") for h in history] == [None, "threshold"]
    files = sorted(p.name for p in (tmp_path / "keys").iterdir())
    keys = [f for f in files if not f.endswith(".decryptions.json")]
    assert keys == ["paillier_share_0.json", "paillier_share_1.json", "paillier_share_2.json",
                    "paillier_share_3.json", "paillier_threshold_public.json"]
    # every decryptor (t + 1 = 4 of them) logged the one sum it decrypted in round 1
    assert len(files) - len(keys) == 4
    plaintext = results["baselines"]["plaintext"]   # decrypted sums reached the clients
    assert abs(results["final"]["global_accuracy_mean"]
               - plaintext["global_accuracy_mean"]) <= 0.03
    assert results["paillier"]["decryption"] == "threshold"
    assert np.load(tmp_path / "out" / "server_state.npz").files == []


@pytest.mark.parametrize("changes, match", [
    ({"dp": {"enabled": True, "target_epsilon": 8.0}, "strategy": {"class_vote_weighting": True}},
     "class_vote_weighting"),
    ({"dp": {"enabled": True}}, "exactly one"),
    ({"dp": {"enabled": True, "noise_multiplier": 1.0, "mode": "central"}, "api": "compat",
      "paillier": {"enabled": True}}, "distributed"),
    ({"dp": {"enabled": True, "noise_multiplier": 1.0, "mode": "central"}, "api": "message",
      "paillier": {"enabled": True}}, "central DP needs the server"),
    ({"paillier": {"enabled": True, "key_bits": 1024}}, "2048"),
    ({"paillier": {"enabled": True, "decryption": "threshold", "threshold": 5}},
     "threshold = 5 exceeds the 4 clients"),
    ({"paillier": {"enabled": True, "threshold": 3}}, 'decryption = "threshold"'),
    ({"dp": {"enabled": True, "noise_multiplier": 1.0},
      "contribution": {"enabled": True}}, "contribution"),
])
def test_privacy_configs_that_cannot_work_are_refused(changes, match):
    with pytest.raises(ConfigError, match=match):
        _config(**changes)


@pytest.mark.parametrize("api", ["message", "compat"])
def test_distributed_dp_inside_paillier_is_accepted_on_both_faces(api):
    """Once refused on the compat face (its Paillier client added no noise shares); now
    ``SecureSumNumPyClient(DpNoiseNumPyClient(...))`` noises before it encrypts, as the
    Message-API mods do (rounds: tests/test_dp_paillier.py)."""
    cfg = _config(api=api, dp={"enabled": True, "noise_multiplier": 1.0, "mode": "distributed"},
                  paillier={"enabled": True})
    assert cfg.api == api and cfg.dp.mode == "distributed" and cfg.paillier.enabled
