"""The protocol's pieces: weighted sums against hand-computed values, the round driver
(rounds, final round, refusals, per-node instructions, evaluation tasks) and the compat
wire format of named arrays."""

from __future__ import annotations

import numpy as np
import pytest

from flhet_strategies import wire
from flhet_strategies.aggregation.weighted_sum import (
    SumLayout,
    SumTerm,
    client_weights,
    weighted_sums,
)
from flhet_strategies.faces.driver import RoundDriver
from flhet_strategies.faces.records import (
    instruction_from_compat,
    instruction_parameters,
    reply_from_compat,
)
from flhet_strategies.protocol import Instruction, Outcome, Reply, ServerAlgorithm
from flwr.common import parameters_to_ndarrays


def test_weighted_sums_and_means_match_hand_computed_values() -> None:
    term = SumTerm("p", (2, 3), weight_axis=1)
    layout = SumLayout("x", (term,), "class_counts")
    a, b = np.array([[0.2, 0.4, 0.4], [1.0, 0.0, 0.0]]), np.array([[0.6, 0.0, 0.4],
                                                                   [0.0, 1.0, 0.0]])
    wa = client_weights(layout, term, np.array([3, 0, 1]), 4)
    wb = client_weights(layout, term, np.array([1, 2, 1]), 4)
    sums = weighted_sums(layout, [({"p": a}, {"p": wa}), ({"p": b}, {"p": wb})])
    np.testing.assert_allclose(sums.denominators["p"], [4, 2, 2])
    mean = sums.mean(term)
    np.testing.assert_allclose(mean[:, 0], (3 * a[:, 0] + b[:, 0]) / 4)
    np.testing.assert_allclose(mean[:, 1], b[:, 1])          # only b holds class 1
    np.testing.assert_allclose(mean[:, 2], (a[:, 2] + b[:, 2]) / 2)
    empty = weighted_sums(layout, [({"p": a}, {"p": np.zeros(3)})])
    assert np.isnan(empty.mean(term)).all()                  # no weight: no mean


@pytest.mark.parametrize("rule, expected", [
    ("uniform", [1, 1, 1]), ("sample_count", [7, 7, 7]), ("class_counts", [2, 0, 5]),
    ("sample_count_class_counts", [14, 0, 35]), ("class_presence", [1, 0, 1]),
])
def test_client_weights_follow_the_layout_rule(rule: str, expected: list) -> None:
    term = SumTerm("p", (4, 3), weight_axis=1)
    layout = SumLayout("x", (term,), rule)
    np.testing.assert_array_equal(client_weights(layout, term, np.array([2, 0, 5]), 7), expected)


def test_layouts_refuse_what_cannot_be_summed_and_travel_as_dicts() -> None:
    with pytest.raises(ValueError, match="weight_axis"):
        SumLayout("x", (SumTerm("p", (3,)),), "class_counts")
    with pytest.raises(ValueError, match="low < high"):
        SumTerm("p", (3,), low=1.0, high=1.0)
    with pytest.raises(ValueError, match="unique"):
        SumLayout("x", (SumTerm("p", (1,)), SumTerm("p", (2,))))
    layout = SumLayout("x", (SumTerm("p", (2, 3), 0, -2.0, 2.0),), "class_presence", {"t": 1})
    assert SumLayout.from_dict(layout.to_dict()) == layout


class Scripted(ServerAlgorithm):
    """A server half that gives every node its own instruction and remembers the replies."""

    name = "scripted"

    def __init__(self, allow_until: int = 99) -> None:
        self.allow_until, self.seen = allow_until, []

    def round_allowed(self, server_round: int, cohort_size: int) -> bool:
        return server_round <= self.allow_until

    def instructions(self, server_round, nodes):
        return {n: Instruction({"who": np.array([i])}, {"k": i}) for i, n in enumerate(nodes)}

    def aggregate(self, server_round, replies):
        self.seen.append([r.client_id for r in replies])
        return Outcome(accepted=[r.client_id for r in replies], released=True)


def test_driver_sends_per_node_instructions_and_marks_the_final_round() -> None:
    driver = RoundDriver(Scripted(), min_available=2, phase="p", seed=1)
    assert driver.plan(3) == 3
    first = driver.train(1, ["a", "b"], {"extra": 5})
    assert [i.config["k"] for i in first.values()] == [0, 1]
    assert first["a"].config[wire.PHASE] == "p" and first["a"].config["extra"] == 5
    assert first["a"].config[wire.ALGORITHM] == "scripted"
    assert not first["a"].config[wire.FINAL_ROUND]
    assert driver.train(3, ["a", "b"])["b"].config[wire.FINAL_ROUND]
    assert driver.train(4, ["a", "b"]) == {} and driver.is_refused(4)
    assert driver.aggregate_train(4, [Reply("a")], 0) == (None, {})


def test_driver_refuses_a_round_the_algorithm_refuses_and_evaluates_the_last() -> None:
    driver = RoundDriver(Scripted(allow_until=1), evaluate_every=5)
    driver.plan(3)
    assert driver.train(1, ["a"]) and driver.train(2, ["a"]) == {}
    assert not driver.should_evaluate(1) and not driver.should_evaluate(2)
    assert driver.should_evaluate(3)
    outcome, metrics = driver.aggregate_train(1, [Reply("a", {"x": np.zeros(3)})], 1)
    assert metrics["num-accepted"] == 1 and metrics["num-rejected"] == 1
    assert driver.history.rounds[0]["bytes_up"] == 24


def test_driver_reports_progress_with_an_eta_from_the_mean_round(monkeypatch) -> None:
    clock = iter([100.0, 130.0])   # round 1 starts at 100 s; round 3 ends at 130 s
    monkeypatch.setattr("flhet_strategies.faces.driver._clock", lambda: next(clock))
    driver = RoundDriver(Scripted(), phase="main")
    assert driver.progress(1) == "[main] round 1"          # before planning or training
    driver.plan(10)
    driver.train(1, ["a"])
    assert driver.progress(3) == "[main] round 3/10, 30 s elapsed, ETA 70 s"


class Tasked(Scripted):
    """Asks one node for a task after every round (as the secure sum's decryption)."""

    def evaluate_instructions(self, server_round, nodes):
        out = {n: Instruction() for n in nodes}
        out[nodes[0]] = Instruction(config={"task": True})
        return out


def test_a_round_without_evaluation_still_sends_the_algorithms_task() -> None:
    driver = RoundDriver(Tasked(), evaluate_every=10)
    driver.plan(5)
    driver.train(1, ["a", "b"])
    tasks = driver.evaluate(1, [])
    assert list(tasks) == ["a"] and tasks["a"].config[wire.EVALUATE] is False
    driver.train(5, ["a", "b"])
    everyone = driver.evaluate(5, ["a", "b"])
    assert set(everyone) == {"a", "b"} and everyone["b"].config[wire.EVALUATE] is True


def test_compat_arrays_travel_in_the_order_their_names_say() -> None:
    instruction = Instruction({"b": np.arange(3), "a": np.ones((2, 2))}, {"x": 1})
    parameters, config = instruction_parameters(instruction)
    back = instruction_from_compat(parameters_to_ndarrays(parameters), config)
    assert list(back.arrays) == ["b", "a"] and back.config == {"x": 1}
    np.testing.assert_array_equal(back.arrays["a"], np.ones((2, 2)))
    with pytest.raises(ValueError, match="names 2 arrays"):
        instruction_from_compat([np.zeros(1)], config)
    named = reply_from_compat([np.zeros(2), np.ones(1)], 9,
                              {wire.ARRAY_NAMES: "logits,class_counts", "m": 1.0})
    assert list(named.arrays) == ["logits", "class_counts"] and named.num_examples == 9
    legacy = reply_from_compat([np.zeros(2), np.ones(1)], 9, {}, ("logits", "class_counts"))
    assert list(legacy.arrays) == ["logits", "class_counts"]
    unknown = reply_from_compat([np.zeros(2)], 9, {}, ("logits", "class_counts"))
    assert list(unknown.arrays) == ["array_0"]
