"""``flhet-sim run --resume`` after a SIGKILL ends with the uninterrupted run's figures.

Real processes: the CLI runs Flower's simulation engine (Ray) in its own process group,
which is killed with SIGKILL once ``results.json`` shows two finished rounds; the resumed
run must end with the same history, round by round and client by client, as a run that
was never killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CONFIG = "simulations/configs/digits_tiny.toml"
ROUNDS = 5
KEYS = ("round", "client_accuracy_mean", "global_accuracy_mean", "per_client", "bytes_up")
"""Compared per round (not ``seconds``: wall time differs between runs)."""


def _command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "simulations.cli", "run", "--config", CONFIG, "--out",
            str(out), "--set", f"num_rounds={ROUNDS}", *extra]


def _rows(results: dict) -> list[dict]:
    return [{k: row[k] for k in KEYS} for row in results["history"]]


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def test_killed_run_resumes_to_the_uninterrupted_figures(tmp_path):
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    killed = tmp_path / "killed"
    process = subprocess.Popen(_command(killed), cwd=root, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, seen = time.monotonic() + 600, None
    try:
        while time.monotonic() < deadline and process.poll() is None:
            seen = _read(killed / "results.json")
            if seen is not None and len(seen["history"]) >= 2:
                break
            time.sleep(0.1)
    finally:
        os.killpg(process.pid, signal.SIGKILL)   # the CLI, Ray and its workers
        process.wait()
    assert seen is not None and seen["complete"] is False, "the run ended before the kill"
    assert (killed / "checkpoint" / "main.pkl").is_file()

    resumed = subprocess.run(_command(killed, "--resume"), cwd=root, env=env,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming main after round" in resumed.stderr or "finished before" in resumed.stderr
    unbroken = subprocess.run(_command(tmp_path / "unbroken"), cwd=root, env=env,
                              capture_output=True, text=True, timeout=900)
    assert unbroken.returncode == 0, unbroken.stderr[-3000:]

    after, reference = _read(killed / "results.json"), _read(tmp_path / "unbroken" /
                                                             "results.json")
    assert after["complete"] is True
    assert [r["round"] for r in after["history"]] == list(range(1, ROUNDS + 1))
    assert _rows(after) == _rows(reference)
    assert _rows(after["baselines"]["local_only"]) == _rows(reference["baselines"]["local_only"])
