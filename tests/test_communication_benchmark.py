"""Tests for the pure helpers of benchmarks/communication_benchmark.py."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "communication_benchmark.py"
_SPEC = importlib.util.spec_from_file_location("communication_benchmark", _PATH)
bench = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = bench  # dataclasses resolve their module by name
_SPEC.loader.exec_module(bench)

NPY_HEADER_MAX = 256
"""Generous bound on the npy header Flower's Array adds to each serialized array."""


@settings(max_examples=25, deadline=None)
@given(
    proxy=st.integers(1, 300),
    classes=st.integers(2, 20),
    dtype=st.sampled_from([np.float32, np.float16]),
)
def test_reply_bytes_are_logits_plus_counts_plus_small_overhead(proxy, classes, dtype) -> None:
    sizes = bench.measure_distillation_bytes(classes, proxy, num_proxy=400, logit_dtype=dtype)
    raw_up = proxy * classes * np.dtype(dtype).itemsize + classes * 8
    assert 0 < sizes.up - raw_up <= 2 * NPY_HEADER_MAX
    # Steady state: the plan carries this round's indices, last round's indices and consensus.
    assert sizes.plan_array_bytes == 2 * proxy * 8 + proxy * classes * 4
    assert 0 < sizes.down - sizes.plan_array_bytes <= 3 * NPY_HEADER_MAX


def test_default_round_sizes_and_float16_halving() -> None:
    f32 = bench.measure_distillation_bytes(10, 2000, 10_000, np.float32)
    f16 = bench.measure_distillation_bytes(10, 2000, 10_000, np.float16)
    assert f32.up - f16.up == 2000 * 10 * 2
    assert f32.down == f16.down  # the consensus the server sends stays float32
    assert f32.total == f32.up + f32.down


def test_distillation_round_returns_a_full_consensus_plan() -> None:
    plan, reply = bench.distillation_round(10, 50, 200)
    assert plan.server_round == 2
    assert plan.consensus.shape == (50, 10)
    np.testing.assert_allclose(plan.consensus.sum(axis=1), 1.0, rtol=1e-5)
    assert reply["logits"].shape == (50, 10) and reply["logits"].dtype == np.float32
    assert reply["class_counts"].dtype == np.int64


def test_proxy_per_round_above_proxy_set_is_rejected() -> None:
    with pytest.raises(ValueError, match="exceeds the proxy set size"):
        bench.distillation_round(10, 500, 100)


def test_byte_table_resnet18_moves_far_more_than_its_logits() -> None:
    rows = bench.byte_table(["cnn_small", "resnet18"], (1, 28, 28), 10, 2000, 10_000)
    by_name = {row.architecture: row for row in rows}
    for row in rows:
        assert row.weight_bytes >= 4 * row.parameters  # float32 weights, plus buffers/headers
        assert row.weights_round_bytes == 2 * row.weight_bytes
    resnet, small = by_name["resnet18"], by_name["cnn_small"]
    assert resnet.ratio > 100
    assert resnet.ratio > small.ratio > 1
    table = bench.format_table(rows)
    assert "resnet18" in table and "cnn_small" in table
    assert bench.summary_line("Fashion-MNIST", rows).startswith("Fashion-MNIST: resnet18 moves")


def test_summary_line_needs_rows() -> None:
    with pytest.raises(ValueError, match="at least one row"):
        bench.summary_line("CIFAR-10", [])


@pytest.mark.parametrize(
    ("num_bytes", "text"),
    [(512, "512 B"), (1536, "1.5 KiB"), (3 * 1024**2, "3.0 MiB"), (2 * 1024**3, "2.00 GiB")],
)
def test_format_bytes(num_bytes: int, text: str) -> None:
    assert bench.format_bytes(num_bytes) == text
