"""Tests for simulations.reporting: results.json validation/writing, report.md, accuracy.png."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from matplotlib.image import imread

from simulations.reporting import (
    RESULTS_SCHEMA,
    final_margins,
    read_results_json,
    validate_results,
    write_report,
    write_results_json,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_results(num_rounds: int = 4) -> dict[str, Any]:
    """A synthetic but schema-complete results dict with an extra key."""
    history = []
    for r in range(1, num_rounds + 1):
        history.append(
            {
                "round": r,
                "client_accuracy_mean": 0.60 + 0.05 * r,
                "client_accuracy_std": 0.04,
                "client_accuracy_min": 0.50 + 0.05 * r,
                "global_accuracy_mean": 0.40 + 0.05 * r,
                "bytes_up": 1000 * r,
                "bytes_down": 2_500_000,
                "seconds": 1.25 * r,
            }
        )
    return {
        "strategy": "fedmd",
        "dataset": "fashion-mnist",
        "partitioner": {"name": "dirichlet", "alpha": 0.5, "seed": 42},
        "num_clients": 3,
        "clients": [
            {"id": 0, "architecture": "cnn_small", "framework": "pytorch", "num_train": 1200},
            {"id": 1, "architecture": "vit_tiny", "framework": "pytorch", "num_train": 800},
            {"id": 2, "architecture": "logreg", "framework": "scikit-learn", "num_train": 450},
        ],
        "history": history,
        "baselines": {"local_only": {"client_accuracy_mean": 0.70, "global_accuracy_mean": 0.625}},
        "contributions": {"0": 0.5, "1": 0.3, "2": 0.2},
    }


def _rounds_table_rows(markdown: str) -> list[str]:
    section = markdown.split("## Rounds", 1)[1]
    table = [line for line in section.splitlines() if line.startswith("|")]
    return table[2:]  # drop the header and the alignment row


def test_write_report_writes_markdown_and_png(tmp_path: Path) -> None:
    results = make_results(num_rounds=4)
    original = copy.deepcopy(results)
    report_path, plot_path = write_report(results, tmp_path / "run")
    assert results == original  # not modified
    assert report_path == tmp_path / "run" / "report.md"
    assert plot_path == tmp_path / "run" / "accuracy.png"

    markdown = report_path.read_text()
    for text in ("fedmd", "fashion-mnist", "dirichlet (alpha=0.5, seed=42)", "Clients: 3"):
        assert text in markdown
    rows = _rounds_table_rows(markdown)
    assert len(rows) == 4
    assert rows[0].startswith("| 1 | 65.00 ± 4.00 | 55.00 | 45.00 | 1000 B | 2.38 MiB |")
    assert rows[-1].split("|")[-2].strip() == "5.00"  # seconds of round 4
    for client in results["clients"]:
        assert f"| {client['id']} | {client['architecture']} | {client['framework']} |" in markdown
    assert "accuracy.png" in markdown

    data = plot_path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 10_000
    pixels = imread(plot_path)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 20


def test_margins_are_final_round_minus_local_only_in_points(tmp_path: Path) -> None:
    results = make_results(num_rounds=4)  # final: client 0.80, global 0.60
    margins = final_margins(results)
    assert margins["client_accuracy_mean"] == pytest.approx(10.0)
    assert margins["global_accuracy_mean"] == pytest.approx(-2.5)
    report_path, _ = write_report(results, tmp_path)
    summary = report_path.read_text().split("## vs local-only", 1)[1].split("## Clients", 1)[0]
    assert "| 70.00 | 80.00 | +10.00 |" in summary
    assert "| 62.50 | 60.00 | -2.50 |" in summary


def test_missing_global_accuracy_is_reported_as_not_available(tmp_path: Path) -> None:
    results = make_results(num_rounds=2)
    for entry in results["history"]:
        entry["global_accuracy_mean"] = None
    assert final_margins(results)["global_accuracy_mean"] is None
    report_path, plot_path = write_report(results, tmp_path)
    assert "n/a" in report_path.read_text()
    assert plot_path.read_bytes().startswith(PNG_MAGIC)


def test_single_round_report(tmp_path: Path) -> None:
    report_path, plot_path = write_report(make_results(num_rounds=1), tmp_path)
    assert len(_rounds_table_rows(report_path.read_text())) == 1
    assert plot_path.read_bytes().startswith(PNG_MAGIC)


def test_empty_history_cannot_be_reported(tmp_path: Path) -> None:
    results = make_results()
    results["history"] = []
    validate_results(results)  # a checkpoint before round 1 is valid
    with pytest.raises(ValueError, match="history is empty"):
        write_report(results, tmp_path)


def test_results_json_round_trip_preserves_extra_keys(tmp_path: Path) -> None:
    results = make_results()
    results["epsilon"] = np.float32(2.5)  # numpy scalars are written as numbers
    results["history"][0]["bytes_up"] = np.int64(1000)
    results["history"][0]["per_client"] = {"0": {"client_accuracy": 0.7}}
    path = write_results_json(results, tmp_path / "nested" / "out")
    assert path.name == "results.json"
    text = path.read_text()
    assert text.startswith('{\n  "strategy"')  # indent=2
    loaded = json.loads(text)
    assert loaded["contributions"] == results["contributions"]
    assert loaded["epsilon"] == 2.5
    assert loaded["history"][0]["per_client"] == {"0": {"client_accuracy": 0.7}}
    assert read_results_json(path.parent) == loaded
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temp file left


def test_rewrite_replaces_the_previous_file(tmp_path: Path) -> None:
    write_results_json(make_results(num_rounds=2), tmp_path)
    write_results_json(make_results(num_rounds=3), tmp_path)
    assert len(read_results_json(tmp_path / "results.json")["history"]) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    path = write_results_json(make_results(num_rounds=2), tmp_path)
    before = path.read_text()
    bad = make_results(num_rounds=3)
    bad["extra"] = object()
    with pytest.raises(ValueError, match="strict JSON"):
        write_results_json(bad, tmp_path)
    bad["extra"] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        write_results_json(bad, tmp_path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


DELETE = object()


def _set_by_path(results: dict[str, Any], path: str, value: Any) -> None:
    """Set (or delete, for ``DELETE``) the value at a path like ``history[1].round``."""
    steps: list[str | int] = []
    for part in path.split("."):
        name, *indices = part.replace("]", "").split("[")
        steps += [name, *map(int, indices)]
    parent = results
    for step in steps[:-1]:
        parent = parent[step]
    if value is DELETE:
        del parent[steps[-1]]
    else:
        parent[steps[-1]] = value


@pytest.mark.parametrize(
    ("bad_key", "value"),
    [
        ("history[1].client_accuracy_mean", 1.5),
        ("history[0].global_accuracy_mean", float("nan")),
        ("history[2].client_accuracy_min", 85.0),
        ("baselines.local_only.client_accuracy_mean", -0.1),
        ("baselines.local_only.global_accuracy_mean", DELETE),
        ("baselines.local_only", DELETE),
        ("strategy", DELETE),
        ("dataset", ""),
        ("partitioner.name", DELETE),
        ("num_clients", 3.0),
        ("num_clients", 4),  # disagrees with len(clients)
        ("clients[2].framework", DELETE),
        ("clients[0].num_train", -1),
        ("history", {"round": 1}),
        ("history[3].seconds", DELETE),
        ("history[0].bytes_up", 10.5),
        ("history[0].round", True),
        ("history[2].round", 1),  # not after round 2
        ("history[0].client_accuracy_min", 0.99),  # above the mean
    ],
)
def test_bad_results_raise_value_error_naming_the_key(
    tmp_path: Path, bad_key: str, value: Any
) -> None:
    results = make_results()
    _set_by_path(results, bad_key, value)
    for write in (write_results_json, write_report):
        with pytest.raises(ValueError) as error:
            write(results, tmp_path)
        assert bad_key in str(error.value)
    assert list(tmp_path.iterdir()) == []


@given(value=st.floats(allow_nan=True, allow_infinity=True))
def test_accuracy_is_accepted_exactly_when_it_is_a_finite_fraction(value: float) -> None:
    results = make_results(num_rounds=1)
    results["history"][0]["global_accuracy_mean"] = value
    if math.isfinite(value) and 0.0 <= value <= 1.0:
        validate_results(results)
    else:
        with pytest.raises(ValueError, match=r"history\[0\]\.global_accuracy_mean"):
            validate_results(results)


def test_schema_constant_documents_every_required_key() -> None:
    assert set(RESULTS_SCHEMA) == {
        "strategy", "dataset", "partitioner", "num_clients", "clients", "history", "baselines",
    }
    history_fields = RESULTS_SCHEMA["history"][0][0]
    assert set(history_fields) == {
        "round", "client_accuracy_mean", "client_accuracy_std", "client_accuracy_min",
        "global_accuracy_mean", "bytes_up", "bytes_down", "seconds",
    }
    descriptions = [description for _, description in history_fields.values()]
    assert all(isinstance(text, str) and text for text in descriptions)


def test_read_results_json_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="No results file"):
        read_results_json(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_results_json(tmp_path / "results.json")
