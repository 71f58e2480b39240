"""Class prototypes under record-level DP (DP-SGD clients of FedProto, FedTGP, FedGH).

The Gaussian mechanism's release against its stated noise (and a negative control: the
statistical check fails when the client adds no noise), the noiseless release against the
clipped class means, the sensitivity of clipped class sums, the accountant against
Opacus's RDP accountant and the closed form, the budget that stops a client's releases,
what the client halves send, the config's calibration, and a run in the simulation engine.
"""

import math

import numpy as np
import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from sklearn.datasets import load_digits

from clients import algorithms
from clients.algorithms.prototypes import class_prototypes
from clients.algorithms.shared_head import FedGHClient
from clients.federated_client import FederatedClient
from clients.learners import dp_prototypes
from clients.learners.dp_prototypes import (
    PROTOTYPE_SENSITIVITY,
    clipped_class_sums,
    noisy_class_prototypes,
    private_class_prototypes,
    release_noise_multiplier,
    release_threshold,
    releases_epsilon,
)
from clients.learners.dpsgd import DPSGD, RELEASES_KEY, sample_rate, steps_per_epoch
from clients.learners.torch_learner import TorchLearner
from clients.models.zoo import build_model
from flhet_strategies import wire
from flhet_strategies.aggregation.payload import PayloadError
from flhet_strategies.algorithms.prototypes import FedProtoServer
from flhet_strategies.algorithms.recipes import PrototypeRecipe, SharedHeadRecipe
from flhet_strategies.protocol import Instruction
from simulations.config import ConfigError, from_dict

K, DIM = 3, 16


def _features(counts, dim=DIM, scale=5.0, seed=0):
    """Features whose clipped class means are exactly 0: every row has a negated twin;
    norms around ``scale``, far above a clip of 1, so the clip binds."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts)
    half = scale * rng.normal(size=(len(labels) // 2, dim)) / math.sqrt(dim)
    features = np.empty((len(labels), dim))
    features[0::2], features[1::2] = half, -half
    return features, labels


def _noise_has_std(draws, expected, rel=0.10):
    """Whether the empirical std of ``draws`` lies within ``rel`` of ``expected``."""
    return abs(np.std(draws) / expected - 1.0) <= rel


COUNTS = (100, 400, 1000)


def _errors(z, clip, draws=300, seed=1):
    features, labels = _features(COUNTS)
    rng = np.random.default_rng(seed)
    protos, counts = zip(*(noisy_class_prototypes(features, labels, K, clip, z, rng)
                           for _ in range(draws)))
    return np.stack(protos), np.stack(counts)   # exact clipped means: 0; counts: COUNTS


def test_released_prototypes_carry_gaussian_noise_of_std_z_clip_over_count():
    z, clip = 2.0, 1.0
    protos, counts = _errors(z, clip)
    for c, n in enumerate(COUNTS):
        assert _noise_has_std(protos[:, c], z * clip / n)       # 300 draws x 16 entries
        assert abs(protos[:, c].mean()) < 0.1 * z * clip / n    # centred on the exact mean
        # rounded noisy counts: N(0, z^2) plus rounding's uniform error of variance 1/12
        assert _noise_has_std(counts[:, c] - n, math.sqrt(z ** 2 + 1 / 12))
    # twice the noise multiplier, twice the noise
    assert _noise_has_std(_errors(2 * z, clip)[0][:, 2], 2 * z * clip / COUNTS[2])


def test_the_statistical_check_fails_when_the_client_adds_no_noise(monkeypatch):
    """Negative control: a client that clips but adds no noise is caught."""
    monkeypatch.setattr(dp_prototypes, "gaussian_noise",
                        lambda shape, std, rng=None: np.zeros(shape))
    protos, counts = _errors(2.0, 1.0)
    for c, n in enumerate(COUNTS):
        assert not _noise_has_std(protos[:, c], 2.0 * 1.0 / n)
        assert not _noise_has_std(counts[:, c] - n, math.sqrt(4 + 1 / 12))


def test_half_the_noise_is_caught_too(monkeypatch):
    real = dp_prototypes.gaussian_noise
    monkeypatch.setattr(dp_prototypes, "gaussian_noise",
                        lambda shape, std, rng=None: real(shape, std / 2, rng))
    protos, _ = _errors(2.0, 1.0)
    assert not _noise_has_std(protos[:, 1], 2.0 * 1.0 / COUNTS[1])


def test_without_noise_the_release_is_exactly_the_clipped_class_means():
    rng = np.random.default_rng(3)
    features = rng.normal(size=(50, 4)) * rng.choice([0.1, 10.0], size=(50, 1))
    labels = rng.integers(0, 4, size=50)
    labels[labels == 3] = 0                       # class 3 is absent
    clip = 1.5
    protos, counts = noisy_class_prototypes(features, labels, 4, clip, 0.0)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    clipped = np.where(norms > clip, features * (clip / norms), features)
    expected, exact = class_prototypes(clipped, labels, 4)
    np.testing.assert_array_equal(protos, expected)
    np.testing.assert_array_equal(counts, exact)
    assert counts[3] == 0 and not protos[3].any()
    assert np.all(np.linalg.norm(protos, axis=1) <= clip + 1e-6)


def test_clipping_bounds_what_removing_one_record_changes():
    """The sensitivity claim: one record moves one class sum by at most C and one count
    by 1, so ``(sums / C, counts)`` moves by at most sqrt(2) in L2."""
    rng = np.random.default_rng(4)
    features = rng.normal(size=(40, 8)) * 30.0    # norms ~85: without clipping, ~85
    labels = rng.integers(0, K, size=40)
    clip = 1.0

    def release(keep):
        return clipped_class_sums(features[keep], labels[keep], K, clip)

    sums, counts = release(np.ones(40, bool))
    worst = 0.0
    for i in range(40):
        keep = np.ones(40, bool)
        keep[i] = False
        s, n = release(keep)
        moved_rows = np.flatnonzero(np.abs(sums - s).sum(1) > 0)
        assert moved_rows.tolist() == [labels[i]]
        assert np.linalg.norm(sums - s) <= clip * (1 + 1e-12)
        assert (counts - n).tolist() == np.eye(K, dtype=int)[labels[i]].tolist()
        worst = max(worst, math.hypot(np.linalg.norm(sums - s) / clip, 1.0))
    assert worst == pytest.approx(PROTOTYPE_SENSITIVITY)    # tight: every record is clipped
    assert np.linalg.norm(features, axis=1).min() > 10 * clip
    # Gaussian mechanism of std z (scaled) at sensitivity sqrt(2): RDP alpha * 2 / (2 z^2),
    # which Opacus gives for noise multiplier z / sqrt(2) at sample rate 1
    z, orders = 3.0, np.array([2.0, 8.0, 32.0])
    rdp = rdp_analysis.compute_rdp(q=1.0, noise_multiplier=release_noise_multiplier(z),
                                   steps=1, orders=orders)
    np.testing.assert_allclose(rdp, orders * PROTOTYPE_SENSITIVITY ** 2 / (2 * z ** 2))


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return (data.images / 16.0).astype(np.float32)[:, None], data.target.astype(np.int64)


def _client(digits, dp, n=400, seed=0):
    x, y = digits
    model = build_model("mlp", (1, 8, 8), 10, seed=seed, feature_dim=DIM)
    learner = TorchLearner(model, lr=0.05, batch_size=64, seed=seed, dp=dp)
    return FederatedClient(learner, x[:n], y[:n], x[1500:1600], y[1500:1600], None, 10,
                           seed=seed)


def _fit(client, server_round, local_epochs=1):
    server = FedProtoServer(10, DIM, PrototypeRecipe(local_epochs=local_epochs))
    instruction = server.instructions(server_round, ["0"])["0"]
    config = {**instruction.config, wire.SERVER_ROUND: server_round,
              wire.ALGORITHM: "fedproto"}
    return algorithms.fit(Instruction(instruction.arrays, config), client)


def test_epsilon_after_k_rounds_is_opacus_rdp_of_the_steps_and_the_releases(digits):
    z, zp, delta, k = 1.1, 5.0, 1e-5, 3
    client = _client(digits, DPSGD(z, delta=delta, proto_noise_multiplier=zp))
    for server_round in range(1, k + 1):
        reply = _fit(client, server_round)
    q = sample_rate(64, 400)
    steps = steps_per_epoch(q)
    reference = RDPAccountant()
    reference.history = [(z, q, steps), (zp / math.sqrt(2), 1.0, 1)] * k
    spent = client.learner.privacy_spent()
    assert spent["epsilon"] == pytest.approx(reference.get_epsilon(delta), rel=1e-12)
    assert reply.metrics[wire.RECORD_EPSILON] == spent["epsilon"]
    assert spent["steps"] == k * steps and spent["releases"] == k
    without = RDPAccountant()
    without.history = [(z, q, k * steps)]
    assert spent["epsilon"] > without.get_epsilon(delta) + 0.3   # the releases count
    # the release count survives a save and restore (the ClientApp rebuilds each message)
    state = client.learner.get_state()
    assert state[RELEASES_KEY].tolist() == [k]
    again = _client(digits, DPSGD(z, delta=delta, proto_noise_multiplier=zp), seed=1)
    again.learner.set_state(state)
    assert again.learner.privacy_spent() == spent


def test_releases_alone_match_the_closed_form_and_a_known_value():
    """k releases at z: RDP k * alpha / z^2 per order; epsilon by Opacus's conversion
    (Balle et al. 2020) minimised over its default orders."""
    z, k, delta = 10.0, 30, 1e-5
    alphas = np.array(RDPAccountant.DEFAULT_ALPHAS, dtype=float)
    rdp = k * alphas / z ** 2
    eps = rdp - (np.log(delta) + np.log(alphas)) / (alphas - 1) + np.log((alphas - 1) / alphas)
    assert releases_epsilon(z, k, delta) == pytest.approx(eps.min(), rel=1e-9)
    assert releases_epsilon(z, k, delta) == pytest.approx(3.534, abs=1e-3)
    learner = TorchLearner(build_model("mlp", (1, 8, 8), 10, feature_dim=DIM),
                           dp=DPSGD(1.0, delta=delta, proto_noise_multiplier=z))
    for _ in range(k):
        assert learner.account_release(release_noise_multiplier(z))
    assert learner.privacy_spent()["epsilon"] == pytest.approx(eps.min(), rel=1e-9)
    assert learner.privacy_spent()["steps"] == 0


def test_max_epsilon_stops_the_clients_releases_and_steps(digits):
    budget = 5.0      # rounds 1-3 fit (4.65), round 4 would not (5.46)
    client = _client(digits, DPSGD(2.0, max_epsilon=budget, proto_noise_multiplier=3.0))
    spent, released, steps = [], [], []
    for server_round in range(1, 7):
        reply = _fit(client, server_round, local_epochs=2)
        spent.append(reply.metrics[wire.RECORD_EPSILON])
        released.append(int(reply.arrays[wire.CLASS_COUNTS].sum() > 0))
        steps.append(reply.metrics["dp_steps"])
    assert max(spent) <= budget and spent == sorted(spent)
    assert released[:3] == [1, 1, 1] and released[-1] == 0
    stopped = released.index(0)
    assert all(r == 0 for r in released[stopped:])              # once stopped, stopped
    # the cheaper DP-SGD steps may use what is left, then stop too: nothing more is spent
    assert steps[-1] == 0 and spent[-1] == spent[-2] > budget - 0.1
    assert reply.metrics["dp_budget_exhausted"] == 1.0
    assert not reply.arrays[wire.PROTOTYPES].any()
    with pytest.raises(PayloadError, match="released none"):
        FedProtoServer(10, DIM).check_reply(1, reply)


def test_the_client_halves_send_noisy_prototypes_and_counts_only(digits):
    exact_client = _client(digits, None)
    private = _client(digits, DPSGD(1.0, proto_noise_multiplier=2.0))
    reply = _fit(private, 1)
    assert set(reply.arrays) == {wire.PROTOTYPES, wire.CLASS_COUNTS}
    counts = reply.arrays[wire.CLASS_COUNTS]
    assert counts.dtype == np.int64 and not np.array_equal(counts, private.class_counts)
    assert np.abs(counts - private.class_counts).max() < 5 * 2.0 + 1
    FedProtoServer(10, DIM).check_reply(1, reply)                # integer counts: accepted
    noiseless, _ = noisy_class_prototypes(private.learner.embed(private.x_train),
                                          private.y_train, 10, 1.0, 0.0)
    error = reply.arrays[wire.PROTOTYPES] - noiseless
    held = counts > 0
    assert np.abs(error[held]).max() > 0                          # noise on every release
    assert np.abs(error[held]).max() < 6 * 2.0 / (counts[held].min() - 10)   # of that size
    assert np.array_equal(_fit(exact_client, 1).arrays[wire.CLASS_COUNTS],
                          exact_client.class_counts)            # without DP: exact
    # FedGH's client half sends the same release
    recipe = {**SharedHeadRecipe().to_config(), wire.SERVER_ROUND: 1, wire.ALGORITHM: "fedgh"}
    gh = FedGHClient().fit(Instruction({}, recipe), private)
    assert private.learner.privacy_spent()["releases"] == 2
    assert not np.array_equal(gh.arrays[wire.CLASS_COUNTS], private.class_counts)


def test_release_threshold_withholds_classes_a_client_barely_holds():
    assert release_threshold(0.0) == 1.0 and release_threshold(10.0) == 40.0
    features, labels = _features((2, 500))
    protos, counts = noisy_class_prototypes(features, labels, K, 1.0, 3.0,
                                            np.random.default_rng(0))
    assert counts[0] == 0 and counts[2] == 0 and counts[1] > 0   # 2 and 0 records
    assert not protos[0].any() and not protos[2].any()


def test_private_class_prototypes_needs_a_dp_sgd_learner(digits):
    client = _client(digits, None)
    with pytest.raises(ValueError, match="DP-SGD"):
        private_class_prototypes(client.learner, client.x_train, client.y_train, 10)


def _config(strategy, **dp):
    return {
        "name": f"dp_{strategy}", "seed": 0, "num_rounds": 2, "api": "message",
        "data": {"dataset": "digits", "num_clients": 4, "proxy_size": 100,
                 "proxy_validation_size": 20,
                 "partitioner": {"name": "dirichlet", "alpha": 1.0, "min_partition_size": 60}},
        "strategy": {"name": strategy, "feature_dim": DIM, "server_epochs": 5},
        "recipe": {"local_epochs": 1, "warmup_epochs": 1},
        "dp": {"enabled": True, "level": "record", "target_epsilon": 8.0,
               "no_dp_baseline": False, "proto_noise_multiplier": 3.0, **dp},
        "clients": [{"architecture": "cnn_small", "lr": 0.05, "count": 2},
                    {"architecture": "mlp", "lr": 0.05, "count": 2}],
    }


@pytest.mark.parametrize("strategy", ["fedproto", "fedtgp", "fedgh"])
def test_record_dp_calibrates_the_steps_with_one_release_per_round(strategy):
    from simulations.experiment import planned_private_epochs, record_dp

    cfg = from_dict(_config(strategy))
    dp = record_dp(cfg, 64, 300)
    q = sample_rate(64, 300)
    history = [(dp.noise_multiplier, q, planned_private_epochs(cfg) * steps_per_epoch(q)),
               (3.0 / math.sqrt(2), 1.0, cfg.num_rounds)]
    reference = RDPAccountant()
    reference.history = history
    assert 7.99 <= reference.get_epsilon(1e-5) <= 8.0
    assert (dp.proto_noise_multiplier, dp.proto_clip_norm) == (3.0, 1.0)
    alone = from_dict(_config("fedconsensus") | {
        "recipe": {"local_epochs": 1, "warmup_epochs": 1},
        "strategy": {"class_vote_weighting": False}})
    assert dp.noise_multiplier > record_dp(alone, 64, 300).noise_multiplier


def test_config_refuses_prototype_releases_that_alone_exceed_the_target():
    with pytest.raises(ConfigError, match="releases alone spend epsilon"):
        from_dict(_config("fedproto", proto_noise_multiplier=0.5))
    with pytest.raises(ConfigError, match="proto_clip_norm must be positive"):
        from_dict(_config("fedproto", proto_clip_norm=0.0))


@pytest.mark.integration
def test_fedproto_with_dp_sgd_runs_and_reports_a_growing_epsilon():
    """The main phase alone in Flower's simulation engine (the local-only twin and
    results.json of a record-level run: tests/test_dpsgd_simulation.py)."""
    from flhet_strategies.protocol import unwrap
    from simulations.runner import simulate_strategy

    raw = _config("fedproto")
    raw["clients"] = [{"architecture": "mlp", "lr": 0.05, "count": 4}]
    strategy = simulate_strategy(from_dict(raw))
    history = strategy.history
    assert [h["round"] for h in history] == [1, 2]
    assert all(h["num_failures"] == 0 and not h.get("rejected") for h in history)
    first, last = history[0]["epsilon_per_client"], history[-1]["epsilon_per_client"]
    assert set(first) == set(last) == {"0", "1", "2", "3"}
    assert all(0 < first[c] < last[c] <= 8.0 for c in first)      # grows every round
    assert last[max(last, key=last.get)] == history[-1]["epsilon_max"] > 7.9   # the target
    # the server received every client's (10, 16) prototypes and counts, and released
    assert history[0]["bytes_up"] == 4 * (10 * DIM * 4 + 10 * 8)
    protos, mask = unwrap(strategy.algorithm).prototypes
    assert protos.shape == (10, DIM) and mask.sum() >= 5 and np.abs(protos[mask]).sum() > 0
