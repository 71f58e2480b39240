"""The README's own-app example runs as a newcomer would run it, in the simulation engine."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "own_app.py"


@pytest.mark.integration
def test_own_app_example_runs_the_federation_and_its_local_only_twin() -> None:
    env = {**os.environ, "FLHET_EXAMPLE_ROUNDS": "3"}
    out = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True,
                         env=env, timeout=900, check=True).stdout
    found = dict(re.findall(r"^(main|local_only): client accuracy ([0-9.]+)", out, re.M))
    assert set(found) == {"main", "local_only"}, out[-2000:]
    assert all(0.3 < float(v) <= 1.0 for v in found.values())


def test_readme_shows_the_example_verbatim() -> None:
    readme = (EXAMPLE.parent.parent / "README.md").read_text()
    body = EXAMPLE.read_text()
    start = body.index("import os")
    assert body[start:].strip() in readme, "README's own-app example differs from examples/own_app.py"
