"""Round protocol: proxy sampling, plans, payload validation, aggregation."""

import numpy as np
import pytest

from flhet_strategies import wire
from flhet_strategies.aggregation.logit_consensus import ConsensusConfig
from flhet_strategies.aggregation.payload import ClientPayload, PayloadError, validate_payload
from flhet_strategies.algorithms.consensus import ConsensusDistillation, RoundPlan
from flhet_strategies.algorithms.recipes import DistillationRecipe
from flhet_strategies.protocol import Instruction, Reply

C = 4


def _payload(cid, n, rng, **changes):
    fields = dict(client_id=str(cid), logits=rng.normal(size=(n, C)).astype(np.float32),
                  num_examples=100, class_counts=np.array([10, 20, 0, 5]))
    fields.update(changes)
    return ClientPayload(**fields)


def _reply(cid, n, rng, **changes):
    """The wire reply carrying ``_payload``'s fields."""
    p = _payload(cid, n, rng, **changes)
    arrays = {wire.LOGITS: p.logits}
    if p.class_counts is not None:
        arrays[wire.CLASS_COUNTS] = p.class_counts
    return Reply(p.client_id, arrays, {wire.NUM_EXAMPLES: p.num_examples})


def _consensus(protocol):
    return protocol.consensus[1]


def test_proxy_indices_are_seeded_per_round_distinct_and_in_range():
    p = ConsensusDistillation(num_proxy=500, num_classes=C, proxy_per_round=100, seed=3)
    a, b = p.proxy_indices(1), p.proxy_indices(2)
    assert len(a) == 100 and len(np.unique(a)) == 100 and a.min() >= 0 and a.max() < 500
    np.testing.assert_array_equal(a, p.proxy_indices(1))
    assert not np.array_equal(a, b)
    q = ConsensusDistillation(num_proxy=500, num_classes=C, proxy_per_round=100, seed=4)
    assert not np.array_equal(a, q.proxy_indices(1))


def test_proxy_per_round_is_capped_by_proxy_size():
    p = ConsensusDistillation(num_proxy=50, num_classes=C, proxy_per_round=2000)
    assert len(p.plan(1).proxy_indices) == 50


def test_first_plan_has_no_consensus_then_carries_previous_round():
    rng = np.random.default_rng(0)
    p = ConsensusDistillation(num_proxy=200, num_classes=C, proxy_per_round=50)
    first = p.plan(1)
    assert first.consensus.shape == (0, C) and len(first.consensus_indices) == 0
    out = p.aggregate(1, [_reply(i, 50, rng) for i in range(3)])
    assert out.accepted == ["0", "1", "2"] and not out.rejected and out.released
    second = p.plan(2)
    np.testing.assert_array_equal(second.consensus_indices, first.proxy_indices)
    np.testing.assert_allclose(second.consensus, p.result_arrays()[wire.CONSENSUS])
    assert second.consensus.shape == (50, C)
    np.testing.assert_allclose(second.consensus.sum(axis=1), 1.0, atol=1e-5)


def test_instructions_carry_the_plan_and_recipe_to_every_node():
    recipe = DistillationRecipe(local_epochs=3, kd_weight=0.2)
    p = ConsensusDistillation(num_proxy=200, num_classes=C, proxy_per_round=20, recipe=recipe)
    out = p.instructions(1, ["5", "9"])
    assert set(out) == {"5", "9"} and all(isinstance(i, Instruction) for i in out.values())
    plan = RoundPlan.from_arrays(1, out["5"].arrays)
    np.testing.assert_array_equal(plan.proxy_indices, p.proxy_indices(1))
    assert DistillationRecipe.from_config(out["9"].config) == recipe


def test_plan_round_trips_through_named_arrays():
    p = ConsensusDistillation(num_proxy=200, num_classes=C, proxy_per_round=20)
    plan = p.plan(4)
    back = RoundPlan.from_arrays(4, plan.to_arrays())
    np.testing.assert_array_equal(back.proxy_indices, plan.proxy_indices)
    assert back.nbytes == plan.nbytes
    with pytest.raises(ValueError, match="missing"):
        RoundPlan.from_arrays(4, {"proxy_indices": plan.proxy_indices})
    with pytest.raises(ValueError, match="does not match"):
        RoundPlan.from_arrays(4, {"proxy_indices": plan.proxy_indices,
                                  "consensus_indices": np.arange(3),
                                  "consensus": np.zeros((2, C))})


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"logits": np.zeros((49, C), np.float32)}, "shape"),
        ({"logits": np.zeros((50, C + 1), np.float32)}, "shape"),
        ({"logits": np.zeros((50, C), np.int64)}, "floating"),
        ({"logits": np.array([["a"] * C] * 50)}, "floating"),
        ({"logits": np.full((50, C), np.nan, np.float32)}, "NaN"),
        ({"logits": np.full((50, C), np.inf, np.float32)}, "NaN/Inf"),
        ({"num_examples": 0}, "positive"),
        ({"num_examples": 2.5}, "integer"),
        ({"class_counts": None}, "class_counts missing"),
        ({"class_counts": np.array([1, 2])}, "class_counts must have shape"),
        ({"class_counts": np.array([1, -2, 0, 0])}, "non-negative"),
    ],
)
def test_validate_payload_rejects_bad_replies(change, reason):
    bad = _payload(0, 50, np.random.default_rng(0), **change)
    with pytest.raises(PayloadError, match=reason):
        validate_payload(bad, num_samples=50, num_classes=C, need_class_counts=True)


def test_validate_payload_accepts_float16_and_casts_to_float32():
    ok = _payload(0, 50, np.random.default_rng(0), logits=np.zeros((50, C), np.float16))
    assert validate_payload(ok, 50, C, True).logits.dtype == np.float32


def test_bad_replies_are_rejected_and_the_round_goes_on_with_the_rest():
    rng = np.random.default_rng(1)
    p = ConsensusDistillation(num_proxy=300, num_classes=C, proxy_per_round=60)
    good = [_reply(i, 60, rng) for i in range(3)]
    nan = _reply("nan", 60, rng, logits=np.full((60, C), np.nan, np.float32))
    short = _reply("short", 59, rng)
    out = p.aggregate(1, good + [nan, short])
    assert out.accepted == ["0", "1", "2"]
    assert set(out.rejected) == {"nan", "short"} and "NaN" in out.rejected["nan"]
    # The consensus is exactly the consensus of the good clients alone.
    clean = ConsensusDistillation(num_proxy=300, num_classes=C, proxy_per_round=60)
    clean.aggregate(1, good)
    assert _consensus(p).shape == (60, C)
    np.testing.assert_allclose(_consensus(p), _consensus(clean))
    assert sum(out.weights.values()) == pytest.approx(1.0)


def test_round_with_only_bad_replies_keeps_previous_consensus():
    rng = np.random.default_rng(2)
    p = ConsensusDistillation(num_proxy=300, num_classes=C, proxy_per_round=60)
    p.aggregate(1, [_reply(0, 60, rng)])
    before = p.consensus
    assert before[1].shape == (60, C)
    out = p.aggregate(2, [_reply(1, 3, rng)])
    assert not out.released and not out.accepted and "1" in out.rejected
    np.testing.assert_array_equal(p.consensus[0], before[0])
    np.testing.assert_array_equal(p.consensus[1], before[1])


def test_weight_fn_is_pluggable_and_validated():
    rng = np.random.default_rng(3)
    replies = [_reply(i, 20, rng) for i in range(2)]
    only_first = ConsensusDistillation(
        100, C, 20, ConsensusConfig(class_vote_weighting=False, era_temperature=None),
        weight_fn=lambda ps, r, idx: np.array([1.0, 0.0]))
    only_first.aggregate(1, replies)
    first = replies[0].arrays[wire.LOGITS]
    expected = np.exp(first) / np.exp(first).sum(1, keepdims=True)
    np.testing.assert_allclose(_consensus(only_first), expected, atol=1e-6)
    broken = ConsensusDistillation(100, C, 20, weight_fn=lambda ps, r, idx: np.array([-1.0, 2.0]))
    with pytest.raises(ValueError, match="non-negative"):
        broken.aggregate(1, replies)


def test_recipe_round_trips_through_flower_config():
    recipe = DistillationRecipe(local_epochs=2, kd_weight=0.3, schedule="sequential",
                                final_round=True)
    config = recipe.to_config()
    assert config["kd-weight"] == 0.3 and config["final-round"] is True
    assert DistillationRecipe.from_config({**config, "unrelated": 1}) == recipe
    with pytest.raises(ValueError, match="schedule"):
        DistillationRecipe(schedule="alternating")


def test_always_include_indices_are_in_every_round_and_passed_to_weight_fn():
    seen = []

    def record(payloads, server_round, proxy_indices):
        seen.append(proxy_indices)
        return np.ones(len(payloads))

    fixed = np.array([3, 7, 11])
    p = ConsensusDistillation(200, C, 20, weight_fn=record, always_include=fixed)
    for r in (1, 2, 3):
        idx = p.proxy_indices(r)
        assert len(idx) == 20 and len(np.unique(idx)) == 20 and set(fixed) <= set(idx)
    rng = np.random.default_rng(5)
    p.aggregate(2, [_reply(0, 20, rng)])
    np.testing.assert_array_equal(seen[0], p.proxy_indices(2))
    with pytest.raises(ValueError, match="more than proxy_per_round"):
        ConsensusDistillation(200, C, 2, always_include=fixed)
    with pytest.raises(ValueError, match="must lie in"):
        ConsensusDistillation(200, C, 20, always_include=np.array([500]))
