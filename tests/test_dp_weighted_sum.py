"""The DP wrapper on a weighted sum that is not the consensus: FedProto's prototypes.

FedProto under DP weights a client's class-``c`` prototype by ``w_c = [n_c > 0]``
(``weighting="class_presence"``). These weights are private, so a client contributes the
rows ``[w_c p_c, w_c]`` (one per class, ``C`` rows of ``d + 1`` entries): clipping scales a
prototype and its weight alike, and the noise covers both. With flat clipping the whole
contribution has L2 norm at most ``S``; per row at most ``r``, so ``S = r sqrt(C)``. The
sums (numerators ``sum_i w_ic p_ic`` and denominators ``sum_i w_ic``) then carry
``N(0, (z S)^2)`` per entry: added by the server (central), or as ``n`` shares
``N(0, (z S)^2 / n)`` by the clients (distributed). Prototypes are signed, so the
accountant uses the replace-one sensitivity ``2 S`` (``non_negative_payloads=False``).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from clients.privacy.dp import DpNoiseStep
from clients.privacy.step import StepEnv
from flhet_strategies import wire
from flhet_strategies.algorithms import prototypes
from flhet_strategies.algorithms.prototypes import FedProtoServer
from flhet_strategies.privacy.dp.accounting import PrivacyLedger
from flhet_strategies.privacy.dp.budget import RoundBudget
from flhet_strategies.privacy.dp.mechanism import DifferentialPrivacy
from flhet_strategies.privacy.dp.noise_share import noisy_name, noisy_weight_name
from flhet_strategies.privacy.dp.settings import DpSettings
from flhet_strategies.protocol import Reply
from flhet_strategies.strategies import FedProto, fedproto_algorithm

C, D, N = 6, 8, 4
Z = 0.7
NOISY, NOISY_W = noisy_name(wire.PROTOTYPES), noisy_weight_name(wire.PROTOTYPES)


def _client(i: int) -> tuple[np.ndarray, np.ndarray]:
    """Client ``i``'s prototypes ``(C, D)`` and class counts; it lacks class ``i``."""
    rng = np.random.default_rng(50 + i)
    counts = rng.integers(1, 30, size=C).astype(np.float64)
    counts[i] = 0
    protos = rng.normal(size=(C, D)) * 2
    protos[i] = 0.0
    return protos.astype(np.float32), counts


def _replies(clients=range(N)) -> list[Reply]:
    out = []
    for i in clients:
        protos, counts = _client(i)
        out.append(Reply(str(i), {wire.PROTOTYPES: protos, wire.CLASS_COUNTS: counts},
                         {wire.NUM_EXAMPLES: int(counts.sum())}))
    return out


def _rows(i: int) -> np.ndarray:
    """Client ``i``'s contribution, unclipped: rows ``[w_c p_c, w_c]``, ``w_c = [n_c > 0]``."""
    protos, counts = _client(i)
    w = (counts > 0).astype(np.float64)[:, None]
    return np.hstack([w * protos.astype(np.float64), w])


def _exact_sums(clip_norm: float, clip_mode: str, clients=range(N)):
    """The clipped sums, derived by hand: every client's :func:`_rows` scaled to Frobenius
    norm ``S`` (flat) or each row to ``r`` (per-row), added up."""
    total = np.zeros((C, D + 1))
    for i in clients:
        rows = _rows(i)
        if clip_mode == "flat":
            rows = rows * min(1.0, clip_norm / np.linalg.norm(rows))
        else:
            norms = np.linalg.norm(rows, axis=1, keepdims=True)
            rows = rows * np.minimum(1.0, clip_norm / np.maximum(norms, 1e-300))
        total += rows
    return total[:, :D], total[:, D]


def _bound(clip_norm: float, clip_mode: str) -> float:
    return clip_norm if clip_mode == "flat" else clip_norm * math.sqrt(C)


@pytest.fixture
def captured(monkeypatch) -> list:
    """Every ``(numerators, denominators, noise_std)`` the wrapper hands FedProto's finish."""
    seen: list = []
    finish = prototypes.PrototypeSumRule.finish

    def recording(layout, sums, context, noise_std=None):
        seen.append((np.array(sums.numerators[wire.PROTOTYPES], dtype=np.float64),
                     np.array(sums.denominators[wire.PROTOTYPES], dtype=np.float64), noise_std))
        return finish(layout, sums, context, noise_std)

    monkeypatch.setattr(prototypes.SUM_RULE, "finish", recording)
    return seen


def _server(settings: DpSettings, **kwargs) -> DifferentialPrivacy:
    return DifferentialPrivacy(FedProtoServer(C, D, weighting="class_presence"), settings,
                               **kwargs)


def _noise(seen: list, exact) -> tuple[np.ndarray, np.ndarray]:
    num = np.stack([s[0] for s in seen]) - exact[0]
    den = np.stack([s[1] for s in seen]) - exact[1]
    return num, den


# ------------------------------------------------------------------------- central


@pytest.mark.parametrize("clip_mode, clip_norm", [("flat", 3.0), ("per-row", 1.5)])
def test_central_noise_on_the_prototype_sums_is_z_times_the_bound(captured, clip_mode,
                                                                   clip_norm) -> None:
    server = _server(DpSettings(Z, clip_norm, "central", clip_mode, seed=11),
                     population_size=N)
    exact = _exact_sums(clip_norm, clip_mode)
    bound = _bound(clip_norm, clip_mode)
    # The clip really acts on every client (else S would not bound a contribution).
    for i in range(N):
        rows = _rows(i)
        assert (np.linalg.norm(rows) if clip_mode == "flat"
                else np.linalg.norm(rows, axis=1).max()) > 1.5 * clip_norm
    draws = 300
    for server_round in range(1, draws + 1):
        outcome = server.aggregate(server_round, _replies())
        assert outcome.released and len(outcome.accepted) == N
    assert all(s[2] == pytest.approx(Z * bound) for s in captured)   # finish is told z S
    num, den = _noise(captured, exact)
    # 300 x 48 numerator and 300 x 6 denominator entries: sample stds within ~0.6% / 1.7%.
    assert np.std(num) == pytest.approx(Z * bound, rel=0.03)
    assert np.std(den) == pytest.approx(Z * bound, rel=0.08)
    assert abs(np.mean(num)) < 4 * Z * bound / math.sqrt(num.size)
    # Draws are independent across rounds, and seeded: the same round draws the same noise.
    assert abs(np.corrcoef(num[0].ravel(), num[1].ravel())[0, 1]) < 0.5
    again = _server(DpSettings(Z, clip_norm, "central", clip_mode, seed=11), population_size=N)
    again.aggregate(1, _replies())
    np.testing.assert_array_equal(captured[-1][0], captured[0][0])


def test_central_release_is_the_per_class_mean_with_vanishing_noise() -> None:
    plain = FedProtoServer(C, D, weighting="class_presence")
    plain.aggregate(1, _replies())
    # S = 100 clips nothing (each contribution has norm < 40); noise std z S = 1e-7.
    assert max(np.linalg.norm(_rows(i)) for i in range(N)) < 100
    server = _server(DpSettings(1e-9, 100.0, "central", "flat", seed=0), population_size=N)
    outcome = server.aggregate(1, _replies())
    protos, mask = server.innermost.prototypes
    expected, expected_mask = plain.prototypes
    assert mask.all() and expected_mask.all()      # every class is held by 3 of the 4
    np.testing.assert_allclose(protos, expected, atol=1e-5)
    # Weights are presence, not counts: the class-0 prototype is the plain mean of 1, 2, 3.
    np.testing.assert_allclose(protos[0], np.mean([_client(i)[0][0] for i in (1, 2, 3)], axis=0),
                               atol=1e-5)
    assert outcome.privacy["released_rows"] == C
    assert set(outcome.weights.values()) == {1 / N}


def test_a_class_whose_noisy_weight_is_too_small_gets_no_prototype() -> None:
    # Only client 0 replies: it lacks class 0, so that class has total weight 0 + noise.
    # Noise std z S = 0.01 on every sum entry: the threshold is max(0.5, 4 z S) = 0.5.
    server = _server(DpSettings(1e-4, 100.0, "central", "flat", seed=0), population_size=N)
    outcome = server.aggregate(1, _replies([0]))
    protos, mask = server.innermost.prototypes
    assert mask.tolist() == [False] + [True] * (C - 1)
    assert not protos[0].any() and outcome.privacy["released_rows"] == C - 1


def test_a_class_nobody_holds_is_almost_never_released_from_noise_alone() -> None:
    # Only client 0 replies (it lacks class 0) under z S = 10 >> any real weight: class 0's
    # weight is pure noise. At 4 stds it passes with probability 3e-5 a round (2 stds: 2.3%,
    # about 46 of these 2,000 rounds).
    server = _server(DpSettings(0.1, 100.0, "central", "flat", seed=3), population_size=N)
    released = 0
    for server_round in range(1, 2001):
        server.aggregate(server_round, _replies([0]))
        released += int(server.innermost.prototypes[1][0])
    assert released <= 1


# ------------------------------------------------------------------------- distributed


def _client_round(server: DifferentialPrivacy, server_round: int, steps: list[DpNoiseStep],
                  clients=range(N)) -> list[Reply]:
    """What the sampled clients send: each runs the DP noise step on its reply."""
    nodes = [str(i) for i in range(N)]
    assert server.round_allowed(server_round, N)
    instructions = server.instructions(server_round, nodes)
    out = []
    for i, reply in zip(clients, _replies(clients)):
        instruction = instructions[str(i)]
        before, memo = steps[i].before(instruction, StepEnv(), "train")
        out.append(steps[i].after(before, memo, reply, StepEnv(), "train"))
    return out


@pytest.mark.parametrize("clip_mode, clip_norm", [("flat", 3.0), ("per-row", 1.5)])
def test_distributed_shares_add_up_to_z_times_the_bound(captured, clip_mode, clip_norm) -> None:
    server = _server(DpSettings(Z, clip_norm, "distributed", clip_mode),
                     budget=RoundBudget(N, non_negative_payloads=False))
    bound = _bound(clip_norm, clip_mode)
    config = server.instructions(1, [str(i) for i in range(N)])["0"].config
    assert config[wire.DP_NUM_CLIENTS] == N and config[wire.DP_CLIP_MODE] == clip_mode
    layout = json.loads(config[wire.DP_LAYOUT])
    assert layout["algorithm"] == "fedproto" and layout["weighting"] == "class_presence"
    steps = [DpNoiseStep(rng=np.random.default_rng(300 + i)) for i in range(N)]
    draws = 300
    for server_round in range(1, draws + 1):
        replies = _client_round(server, server_round, steps)
        for reply in replies:   # the reply carries the noisy terms only
            assert set(reply.arrays) == {NOISY, NOISY_W}
            assert reply.metrics[wire.NOISE_STD_METRIC] == pytest.approx(
                Z * bound / math.sqrt(N))
            assert reply.metrics["dp-norm-bound"] == pytest.approx(bound)
        outcome = server.aggregate(server_round, replies)
        assert outcome.released and outcome.privacy["noise_multiplier"] == pytest.approx(Z)
    assert all(s[2] == pytest.approx(Z * bound) for s in captured)
    num, den = _noise(captured, _exact_sums(clip_norm, clip_mode))
    assert np.std(num) == pytest.approx(Z * bound, rel=0.03)
    assert np.std(den) == pytest.approx(Z * bound, rel=0.08)
    assert abs(np.mean(num)) < 4 * Z * bound / math.sqrt(num.size)


def test_distributed_dropouts_leave_less_noise_and_are_accounted(captured) -> None:
    clip_norm = 3.0
    server = _server(DpSettings(Z, clip_norm, "distributed", "flat"),
                     budget=RoundBudget(N, non_negative_payloads=False))
    steps = [DpNoiseStep(rng=np.random.default_rng(700 + i)) for i in range(N)]
    kept = range(N - 1)
    for server_round in range(1, 301):
        outcome = server.aggregate(server_round, _client_round(server, server_round, steps, kept))
        assert outcome.privacy["noise_multiplier"] == pytest.approx(Z * math.sqrt(3 / 4))
    realized = Z * math.sqrt(3 / 4) * clip_norm
    assert captured[0][2] == pytest.approx(realized)
    num, _ = _noise(captured, _exact_sums(clip_norm, "flat", kept))
    assert np.std(num) == pytest.approx(realized, rel=0.03)


def test_distributed_mode_refuses_replies_without_noise_shares() -> None:
    server = _server(DpSettings(Z, 3.0, "distributed", "flat"),
                     budget=RoundBudget(N, non_negative_payloads=False))
    assert server.round_allowed(1, N)
    plain = _replies()                       # prototypes and class counts in clear
    outcome = server.aggregate(1, plain)
    assert not outcome.released and not outcome.accepted
    assert set(outcome.rejected) == {str(i) for i in range(N)}
    assert all("noise step" in reason for reason in outcome.rejected.values())
    # A share without its noisy weights is not a contribution either.
    steps = [DpNoiseStep(rng=np.random.default_rng(i)) for i in range(N)]
    shares = _client_round(server, 1, steps)
    del shares[0].arrays[NOISY_W]
    shares[1].arrays[wire.CLASS_COUNTS] = np.ones(C)   # an exact histogram besides the shares
    outcome = server.aggregate(1, shares)
    assert set(outcome.rejected) == {"0", "1"} and outcome.accepted == ["2", "3"]
    assert NOISY_W in outcome.rejected["0"] and "class_counts" in outcome.rejected["1"]
    assert len(server.budget.history) == 1   # only the release of round 1 is accounted


# ------------------------------------------------------------------------- accounting


@pytest.mark.parametrize("mode", ["central", "distributed"])
def test_epsilon_per_round_is_the_accountants_for_signed_payloads(mode) -> None:
    population, cohort = 8, 4
    server = _server(DpSettings(1.1, 3.0, mode, "flat", seed=0), population_size=population,
                     fraction=0.5)
    assert server.budget.sampling == "fixed-size"
    assert not server.budget.ledger.non_negative_payloads
    ledger = PrivacyLedger(population, 1e-5, "fixed-size", non_negative_payloads=False)
    positive = PrivacyLedger(population, 1e-5, "fixed-size", non_negative_payloads=True)
    steps = [DpNoiseStep(rng=np.random.default_rng(i)) for i in range(N)]
    for server_round in (1, 2, 3):
        assert server.round_allowed(server_round, cohort)
        replies = _client_round(server, server_round, steps) if mode == "distributed" \
            else _replies()
        outcome = server.aggregate(server_round, replies)
        expected = ledger.record_round(server_round, 1.1, cohort).epsilon
        assert outcome.privacy["epsilon"] == pytest.approx(expected, rel=1e-9)
        assert server.budget.history[-1]["epsilon"] == outcome.privacy["epsilon"]
        # The replace-one sensitivity of signed prototypes is 2 S, not sqrt(2) S.
        assert outcome.privacy["epsilon"] > positive.record_round(server_round, 1.1,
                                                                  cohort).epsilon
    assert server.budget.ledger.rounds[0].accounted_noise_multiplier == pytest.approx(1.1 / 2)


def test_a_budget_for_non_negative_payloads_and_private_weights_are_refused() -> None:
    with pytest.raises(ValueError, match="signed"):
        _server(DpSettings(1.0), budget=RoundBudget(N, non_negative_payloads=True))
    with pytest.raises(ValueError, match="class-presence"):
        DifferentialPrivacy(FedProtoServer(C, D, weighting="class_counts"), DpSettings(1.0))
    with pytest.raises(ValueError, match="class_presence"):
        fedproto_algorithm(C, D, weighting="class_counts", privacy=DpSettings(1.0))
    algorithm = fedproto_algorithm(C, D, privacy=DpSettings(1.0, mode="distributed"))
    assert isinstance(algorithm, DifferentialPrivacy)
    assert algorithm.innermost.weighting == "class_presence"
    assert algorithm.reply_array_names == (NOISY, NOISY_W)
    strategy = FedProto(C, D, privacy=DpSettings(1.0), min_available_nodes=N)
    assert strategy.budget.population_size == N and strategy.epsilon == 0.0
