"""PrivacyLedger and noise_multiplier_for_epsilon against dp-accounting computed directly."""

from __future__ import annotations

import math

import pytest
from dp_accounting import dp_event
from dp_accounting.privacy_accountant import NeighboringRelation as DpRelation
from dp_accounting.rdp import RdpAccountant as DpRdpAccountant
from flwr.serverapp import GaussianPrivacyEvent, RdpAccountant

from flhet_strategies.privacy.dp.accounting import PrivacyLedger, noise_multiplier_for_epsilon

DELTA = 1e-5


def _direct_epsilon(event: dp_event.DpEvent, count: int,
                    relation: DpRelation = DpRelation.ADD_OR_REMOVE_ONE) -> float:
    """The reference: Google's dp-accounting RDP accountant, no Flower in between."""
    return DpRdpAccountant(neighboring_relation=relation).compose(event, count).get_epsilon(DELTA)


def test_poisson_sampling_matches_dp_accounting_and_the_published_figure() -> None:
    ledger = PrivacyLedger(100, DELTA, "poisson", sampling_rate=0.1)
    epsilon = ledger.projected_epsilon(noise_multiplier=1.0, rounds=100)
    direct = _direct_epsilon(dp_event.PoissonSampledDpEvent(0.1, dp_event.GaussianDpEvent(1.0)),
                             100)
    assert epsilon == pytest.approx(direct, rel=1e-9)
    assert epsilon == pytest.approx(7.90, abs=0.01)


def test_full_participation_composes_round_by_round_to_the_published_figure() -> None:
    ledger = PrivacyLedger(10, DELTA, "full")
    for server_round in range(1, 101):
        entry = ledger.record_round(server_round, noise_multiplier=1.0)
    direct = _direct_epsilon(dp_event.GaussianDpEvent(1.0), 100)
    assert entry.epsilon == pytest.approx(direct, rel=1e-9)
    assert entry.epsilon == pytest.approx(96.1, abs=0.05)
    assert entry.to_history()["delta"] == DELTA and entry.sampling_rate == 1.0
    assert ledger.epsilon == entry.epsilon
    epsilons = [r.epsilon for r in ledger.rounds]
    assert all(a < b for a, b in zip(epsilons, epsilons[1:]))  # every round costs privacy


def test_poisson_rounds_composed_one_at_a_time_equal_one_composition_of_count() -> None:
    ledger = PrivacyLedger(50, DELTA, "poisson", sampling_rate=0.2)
    for server_round in range(1, 4):
        entry = ledger.record_round(server_round, noise_multiplier=1.2)
    direct = _direct_epsilon(dp_event.PoissonSampledDpEvent(0.2, dp_event.GaussianDpEvent(1.2)), 3)
    assert entry.epsilon == pytest.approx(direct, rel=1e-9)
    assert ledger.relation == "add-or-remove-one"


def test_fixed_size_cohorts_use_replace_one_with_the_payload_sensitivity() -> None:
    event = dp_event.SampledWithoutReplacementDpEvent(
        10, 5, dp_event.GaussianDpEvent(3.0 / math.sqrt(2)))
    direct_predictions = _direct_epsilon(event, 2, DpRelation.REPLACE_ONE)
    event = dp_event.SampledWithoutReplacementDpEvent(10, 5, dp_event.GaussianDpEvent(3.0 / 2))
    direct_updates = _direct_epsilon(event, 2, DpRelation.REPLACE_ONE)
    for non_negative, direct in ((True, direct_predictions), (False, direct_updates)):
        ledger = PrivacyLedger(10, DELTA, "fixed-size", non_negative_payloads=non_negative)
        for server_round in range(1, 3):
            entry = ledger.record_round(server_round, noise_multiplier=3.0, cohort_size=5)
        assert ledger.relation == "replace-one"
        assert entry.sampling_rate == 0.5
        assert entry.epsilon == pytest.approx(direct, rel=1e-9)
    assert direct_predictions < direct_updates  # sqrt(2) S < 2 S: less noise needed


def test_a_poisson_rate_off_the_grid_is_accounted_at_the_next_rate_up() -> None:
    ledger = PrivacyLedger(10, DELTA, "poisson", sampling_rate=0.25)
    entry = ledger.record_round(1, noise_multiplier=2.0)
    assert entry.sampling_rate == 0.3
    exact = _direct_epsilon(dp_event.PoissonSampledDpEvent(0.25, dp_event.GaussianDpEvent(2.0)), 1)
    assert entry.epsilon >= exact  # still an upper bound


def test_budget_check_stops_before_the_round_that_would_exceed_it() -> None:
    z = 4.0
    per_round = [_direct_epsilon(dp_event.GaussianDpEvent(z), t) for t in (3, 4)]
    budget = (per_round[0] + per_round[1]) / 2
    ledger = PrivacyLedger(20, DELTA, "full", max_epsilon=budget)
    flower = RdpAccountant(ledger.config)   # Flower's own projection, as a cross-check
    event = GaussianPrivacyEvent(z, 20, 20)
    played = 0
    for server_round in range(1, 11):
        assert ledger.would_exceed(z) == flower.would_exceed(event)
        if ledger.would_exceed(z):
            break
        ledger.record_round(server_round, z)
        flower.compose(event)
        played += 1
    assert played == 3
    assert PrivacyLedger(20, DELTA, "full", max_epsilon=budget).rounds_within_budget(z, 10) == 3
    assert ledger.epsilon <= budget < ledger.projected_epsilon(z)
    assert len(ledger.rounds) == 3  # the checks composed nothing
    assert not PrivacyLedger(20, DELTA, "full").would_exceed(100.0)  # no budget, no stop


def test_projection_merges_identical_rounds_without_changing_epsilon() -> None:
    ledger = PrivacyLedger(100, DELTA, "poisson", sampling_rate=0.1, max_epsilon=50.0)
    ledger.record_round(1, 1.0)
    ledger.record_round(2, 1.0)
    ledger.record_round(3, 2.0)
    flower = RdpAccountant(ledger.config)
    for z in (1.0, 1.0, 2.0, 2.0):
        flower.compose(GaussianPrivacyEvent(z, 10, 100))
    assert ledger.projected_epsilon(2.0) == pytest.approx(flower.get_epsilon(DELTA), rel=1e-9)


def test_state_round_trip_restores_epsilon() -> None:
    ledger = PrivacyLedger(10, DELTA, "poisson", sampling_rate=0.5)
    ledger.record_round(1, 2.0)
    ledger.record_round(2, 3.0)
    restored = PrivacyLedger(10, DELTA, "poisson", sampling_rate=0.5)
    restored.load_state_dict(ledger.state_dict())
    assert restored.rounds == ledger.rounds
    assert restored.projected_epsilon(2.0) == pytest.approx(ledger.projected_epsilon(2.0))


def test_ledger_rejects_inconsistent_sampling_settings() -> None:
    with pytest.raises(ValueError, match="sampling_rate"):
        PrivacyLedger(10, DELTA, "poisson")
    with pytest.raises(ValueError, match="only used with sampling='poisson'"):
        PrivacyLedger(10, DELTA, "full", sampling_rate=0.5)
    with pytest.raises(ValueError, match="sampling must be one of"):
        PrivacyLedger(10, DELTA, "uniform")
    with pytest.raises(ValueError, match="cohort_size"):
        PrivacyLedger(10, DELTA, "fixed-size").record_round(1, 1.0)
    with pytest.raises(ValueError, match="cohort_size must be in"):
        PrivacyLedger(10, DELTA, "fixed-size").record_round(1, 1.0, cohort_size=11)
    with pytest.raises(ValueError, match="target_delta"):
        PrivacyLedger(10, 1.5, "full")


@pytest.mark.parametrize("target, rounds, rate", [(5.0, 100, 0.1), (8.0, 30, 1.0)])
def test_noise_multiplier_helper_round_trips(target: float, rounds: int, rate: float) -> None:
    z = noise_multiplier_for_epsilon(target, DELTA, rounds, sampling_rate=rate)
    ledger = PrivacyLedger(10, DELTA, "poisson" if rate < 1 else "full",
                           sampling_rate=rate if rate < 1 else None)
    assert ledger.projected_epsilon(z, rounds=rounds) <= target
    assert ledger.projected_epsilon(z * (1 - 3e-3), rounds=rounds) > target


def test_noise_multiplier_helper_recovers_the_published_setting() -> None:
    z = noise_multiplier_for_epsilon(7.9039, DELTA, 100, sampling_rate=0.1)
    assert z == pytest.approx(1.0, abs=2e-3)


def test_noise_multiplier_helper_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="target_epsilon"):
        noise_multiplier_for_epsilon(0.0, DELTA, 10)
    with pytest.raises(ValueError, match="rounds"):
        noise_multiplier_for_epsilon(1.0, DELTA, 0)
    with pytest.raises(ValueError, match="sampling_rate"):
        noise_multiplier_for_epsilon(1.0, DELTA, 10, sampling_rate=1.5)
    with pytest.raises(ValueError, match="population_size"):
        noise_multiplier_for_epsilon(1.0, DELTA, 10, sampling_rate=0.5, sampling="fixed-size")
