"""Record-level DP-SGD end to end in Flower's simulation engine (Ray), on digits.

``[dp] level = "record"``: every client's epsilon in every history entry (rising each
round, ending at the calibrated target), the local-only baseline under the same DP-SGD,
and no label histogram in the clients' uploads. (Both faces reach the learner through
``clients.algorithms.fit``: tests/test_dpsgd.py.)
"""

import pytest

from clients.learners.dpsgd import sample_rate, steps_per_epoch
from simulations.config import from_dict
from simulations.experiment import build_split, planned_private_epochs
from simulations.runner import run_experiment

pytestmark = pytest.mark.integration


def _config(**extra):
    """Digits, 3 PyTorch clients, 2 rounds, DP-SGD at epsilon 4 (the no-DP twin is off: it is
    tests/test_config.py's)."""
    return from_dict({
        "name": "dpsgd-it", "seed": 0, "num_rounds": 2, "api": "message",
        "data": {"dataset": "digits", "num_clients": 3,
                 "partitioner": {"name": "dirichlet", "alpha": 0.5, "min_partition_size": 60},
                 "proxy_size": 300, "proxy_validation_size": 100},
        "strategy": {"proxy_per_round": 60, "class_vote_weighting": False},
        "recipe": {"warmup_epochs": 1, "local_epochs": 1, "final_private_epochs": 1,
                   "kd_weight": 0.1},
        "dp": {"enabled": True, "level": "record", "target_epsilon": 4.0, "delta": 1e-5,
               "no_dp_baseline": False},
        "clients": [{"architecture": "cnn_small", "count": 1, "lr": 0.05},
                    {"architecture": "mlp", "count": 2, "lr": 0.05}],
        **extra,
    })


def test_dp_sgd_run_reports_each_clients_epsilon_and_spends_the_target(tmp_path):
    cfg = _config()
    results = run_experiment(cfg, tmp_path)

    history = results["history"]
    assert [h["round"] for h in history] == [1, 2]
    first, last = history[0]["epsilon_per_client"], history[-1]["epsilon_per_client"]
    assert set(first) == set(last) == {"0", "1", "2"}
    assert all(0 < first[c] < last[c] for c in first)            # it accumulates
    # The calibration spends the target over the planned epochs, and not more.
    assert all(3.9 <= eps <= 4.0 for eps in last.values())
    assert history[-1]["epsilon_max"] == max(last.values())
    privacy = results["privacy"]
    assert privacy["level"] == "record" and privacy["main"]["epsilon_max"] <= 4.0
    split = build_split(cfg)
    for cid, z in privacy["noise_multiplier_per_client"].items():
        q = sample_rate(64, len(split.clients[int(cid)].train))
        assert z > 0 and planned_private_epochs(cfg) * steps_per_epoch(q) > 0
    # Local-only trains under the same DP-SGD: the same steps, the same epsilon.
    assert privacy["local_only"]["epsilon_per_client"] == pytest.approx(last)
    # Uploads are the logits alone (no label histogram): 60 x 10 float32 per client.
    assert history[0]["bytes_up"] == 3 * 60 * 10 * 4


def test_dp_sgd_clients_inside_a_paillier_secure_sum(tmp_path):
    """Issue 13 item 4: record-level DP composes with the Paillier sum (the encrypted
    predictions are post-processing of DP models; the sum's weights are public counts)."""
    cfg = _config(paillier={"enabled": True, "key_dir": str(tmp_path / "keys")})
    results = run_experiment(cfg, tmp_path / "out")
    history = results["history"]
    assert [h.get("sum_decryption") for h in history] == [None, "delegated"]
    assert all(3.9 <= eps <= 4.0 for eps in history[-1]["epsilon_per_client"].values())
    # Encrypted shares, not 60 x 10 float32 logits, went up.
    assert history[0]["bytes_up"] != 3 * 60 * 10 * 4
    plaintext = results["baselines"]["plaintext"]   # the same DP-SGD clients, in clear
    assert abs(results["final"]["global_accuracy_mean"]
               - plaintext["global_accuracy_mean"]) <= 0.03
