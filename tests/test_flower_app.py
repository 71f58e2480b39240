"""The Flower App in ``simulations/`` (``flwr run``): its pyproject, components, run config.

The fast tests check the app with Flower's own validators and loaders and the
run-config -> ExperimentConfig path. The integration test runs ``flwr run`` for real
against a SuperLink it starts (and stops) itself, on the two-round digits config.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from io import BytesIO
from pathlib import Path

import httpx
import pytest
import torch
from flwr.app import Context, RecordDict
from flwr.cli.build import build_fab_from_disk
from flwr.cli.config_utils import load_and_validate
from flwr.clientapp import ClientApp
from flwr.common.config import get_fused_config_from_dir
from flwr.serverapp import ServerApp
from flwr.supercore.object_ref import load_app
from hypothesis import given
from hypothesis import strategies as st

from simulations.config import ConfigError, load_config
from simulations.flower_app import (
    APP_DIR,
    OUTPUT_BASE_DIR,
    app_settings,
    parse_overrides,
    resolve_out_dir,
)
from simulations.flower_app.client_app import client_from_context
from flhet_strategies import wire
from simulations.flower_app.server_app import (
    LOCAL_ONLY_PHASE,
    run_experiment_on_grid,
    wait_for_nodes,
)
from simulations.phases import experiment_phases
from simulations.reporting import read_results_json

TINY = "configs/digits_tiny.toml"


def _run_config(**changes) -> dict:
    """The app's default run config (as Flower fuses it), with ``changes``."""
    return get_fused_config_from_dir(APP_DIR, changes)


# --- the app's pyproject and components ---------------------------------------------------


def test_pyproject_is_a_valid_flower_app_that_installs_nothing():
    config, warnings = load_and_validate(APP_DIR / "pyproject.toml")  # imports the modules
    assert warnings == []
    components = config["tool"]["flwr"]["app"]["components"]
    assert components == {"serverapp": "flower_app.server_app:app",
                          "clientapp": "flower_app.client_app:app"}
    # A runtime `uv sync` (on by default for a 1.42 SuperLink) must have nothing to resolve.
    assert config["project"]["dependencies"] == []


def test_components_load_as_flower_apps(monkeypatch):
    # As flwr run loads them: top-level `flower_app` from the app folder. Undo both the
    # sys.path entry and the second copy of the modules afterwards.
    monkeypatch.syspath_prepend(str(APP_DIR))
    before = set(sys.modules)
    try:
        server = load_app("flower_app.server_app:app", ValueError, APP_DIR)
        client = load_app("flower_app.client_app:app", ValueError, APP_DIR)
    finally:
        for name in set(sys.modules) - before:
            if name.split(".")[0] == "flower_app":
                del sys.modules[name]
    assert isinstance(server, ServerApp)
    assert isinstance(client, ClientApp)


def test_fab_holds_the_app_modules_and_every_shipped_config():
    names = set(zipfile.ZipFile(BytesIO(build_fab_from_disk(APP_DIR))).namelist())
    configs = {p.relative_to(APP_DIR).as_posix() for p in APP_DIR.glob("configs/*.toml")}
    modules = {p.relative_to(APP_DIR).as_posix() for p in APP_DIR.glob("flower_app/*.py")}
    assert {"configs/fmnist_hetero.toml", TINY} <= configs
    assert names == {"pyproject.toml", ".info/CONTENT"} | configs | modules


def test_default_run_config_is_the_main_experiment():
    settings = app_settings(_run_config())
    assert settings.config_path == APP_DIR / "configs" / "fmnist_hetero.toml"
    assert settings.experiment == load_config(settings.config_path)
    assert settings.out_dir == OUTPUT_BASE_DIR / "outputs" / "flower_app"


# --- run config -> ExperimentConfig -------------------------------------------------------


def test_run_config_overrides_are_applied():
    settings = app_settings(_run_config(
        config=TINY, **{"num-rounds": 5},
        overrides="data.private_size=600 recipe.kd_weight=0.25 "
                  "'data.partitioner={\"name\": \"iid\"}' name=renamed"))
    cfg = settings.experiment
    assert (cfg.num_rounds, cfg.data.private_size, cfg.recipe.kd_weight) == (5, 600, 0.25)
    assert cfg.data.partitioner == {"name": "iid"} and cfg.name == "renamed"
    # num-rounds = 0 keeps the file's value; untouched fields keep theirs.
    kept = app_settings(_run_config(config=TINY)).experiment
    assert kept.num_rounds == 2 and kept.data.private_size is None


def test_absolute_config_path_and_out_dir(tmp_path):
    config = tmp_path / "mine.toml"
    shutil.copy(APP_DIR / TINY, config)
    settings = app_settings(_run_config(config=str(config), **{"out-dir": str(tmp_path / "o")}))
    assert settings.config_path == config and settings.out_dir == tmp_path / "o"
    assert resolve_out_dir("a/b", base_dir=tmp_path) == tmp_path / "a" / "b"


def test_missing_config_names_the_resolved_path_and_the_shipped_configs():
    with pytest.raises(FileNotFoundError) as err:
        app_settings(_run_config(config="configs/nope.toml"))
    message = str(err.value)
    assert str(APP_DIR / "configs" / "nope.toml") in message
    assert TINY in message and "fmnist_hetero.toml" in message


@pytest.mark.parametrize("changes, words", [
    ({"num-rounds": "2"}, "'num-rounds' must be int"),
    ({"num-rounds": True}, "'num-rounds' must be int"),
    ({"num-rounds": -1}, ">= 0"),
    ({"out-dir": "  "}, "'out-dir' is empty"),
    ({"overrides": "num_rounds"}, "not KEY=VALUE"),
    ({"overrides": "name='unclosed"}, "overrides"),
    ({"overrides": "recipe.kd_wieght=0.3"}, "unknown key"),
    ({"overrides": "nosuchsection.x=1"}, "unknown section"),
    ({"overrides": "num_rounds=0"}, "num_rounds must be at least 1"),
])
def test_bad_run_config_gives_a_clear_error(changes, words):
    with pytest.raises(ConfigError, match=words):
        app_settings(_run_config(config=TINY, **changes))


def test_missing_run_config_key_is_an_error():
    run_config = _run_config()
    del run_config["overrides"]
    with pytest.raises(ConfigError, match="no 'overrides'"):
        app_settings(run_config)


_KEYS = st.from_regex(r"[a-z][a-z_]{0,8}(\.[a-z][a-z_]{0,8})?", fullmatch=True)
_VALUES = st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
                    st.text(alphabet="abc xyz_-", min_size=1, max_size=8))


@given(st.dictionaries(_KEYS, _VALUES, max_size=5))
def test_parse_overrides_round_trips_python_literals(changes):
    text = " ".join(f'"{key}={value!r}"' for key, value in changes.items())
    assert parse_overrides(text) == changes


# --- components' behaviour ----------------------------------------------------------------


def test_client_factory_builds_the_partitions_client_from_the_run_config():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 3}, state=RecordDict(),
                      run_config=_run_config(config=TINY))
    try:
        client = client_from_context(context)
        assert torch.get_num_threads() == 1  # simulation.threads_per_client
    finally:
        torch.set_num_threads(threads)
    assert type(client.learner).__name__ == "SklearnLearner"  # group 4: sklearn:sgd_logreg
    with pytest.raises(ValueError, match="out of range"):
        client_from_context(Context(run_id=1, node_id=8, node_config={"partition-id": 4},
                                    state=RecordDict(), run_config=_run_config(config=TINY)))


def test_local_only_phase_is_a_separate_run_without_distillation():
    cfg = app_settings(_run_config(config=TINY, **{"num-rounds": 3})).experiment
    phases = experiment_phases(cfg)
    assert [p.name for p in phases] == ["main", LOCAL_ONLY_PHASE]
    main = phases[0].build().driver.train(1, ["0"], {})["0"].config
    base = phases[1].build()
    assert base.driver.plan(cfg.num_rounds) == 3
    config = base.driver.train(1, ["0"], {})["0"].config
    assert (main[wire.PHASE], main["kd-weight"]) == ("main", 0.5)
    assert (config[wire.PHASE], config["kd-weight"]) == (LOCAL_ONLY_PHASE, 0.0)
    assert config["local-epochs"] == main["local-epochs"]
    assert [r for r in (1, 2, 3) if base.driver.should_evaluate(r)] == [3]


def test_every_baseline_the_config_asks_for_is_a_phase_of_its_own():
    cfg = app_settings(_run_config(config=TINY, overrides=(
        "dp.enabled=True dp.noise_multiplier=1.0 strategy.class_vote_weighting=False"))).experiment
    phases = {p.name: p for p in experiment_phases(cfg)}
    assert list(phases) == ["main", LOCAL_ONLY_PHASE, "no_dp"]
    assert phases["main"].build().budget is not None
    no_dp = phases["no_dp"].build()
    assert no_dp.budget is None
    assert no_dp.driver.train(1, ["0"], {})["0"].config[wire.PHASE] == "no_dp"


class _Nodes:
    """The one Grid method wait_for_nodes uses."""

    def __init__(self, count: int) -> None:
        self.count = count

    def get_node_ids(self) -> list[int]:
        return list(range(100, 100 + self.count))


def test_compat_face_is_refused_before_anything_runs():
    settings = app_settings(_run_config(config=TINY, overrides="api='compat'"))
    with pytest.raises(ConfigError, match="Message API"):
        run_experiment_on_grid(_Nodes(4), settings)


def test_wait_for_nodes_requires_exactly_the_experiments_clients():
    assert wait_for_nodes(_Nodes(4), 4, timeout=0.0) == [100, 101, 102, 103]
    with pytest.raises(ConfigError, match="num-supernodes=4"):
        wait_for_nodes(_Nodes(2), 4, timeout=0.05, poll=0.01)
    with pytest.raises(ConfigError, match="has 5 nodes"):
        wait_for_nodes(_Nodes(5), 4, timeout=0.0)


# --- flwr run, for real -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _start_superlink(tmp_path: Path, attempts: int = 3):
    """Start a local simulation SuperLink on fresh ports; retry if a port was taken meanwhile.

    Returns the process, its HTTP port and the environment for ``flwr run``.
    """
    log_file = tmp_path / "superlink.log"
    for _ in range(attempts):
        http_port, control_port = _free_port(), _free_port()
        # The SuperLink starts `flower-superexec` from PATH: the venv's bin must be on it
        # even when the tests run as `.venv/bin/python -m pytest` without activation.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        env = {**os.environ, "PATH": path, "FLWR_HOME": str(tmp_path / "flwr-home"),
               "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
               "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
               "FLWR_DISABLE_UPDATE_CHECK": "1",
               "UV_OFFLINE": "1"}  # the runtime `uv sync` (left on) must not need an index
        superlink = subprocess.Popen(
            [_bin("flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
             "--control-api-address", f"127.0.0.1:{control_port}", "--host", "127.0.0.1",
             "--port", str(http_port), "--log-file", str(log_file)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and superlink.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{http_port}/health", timeout=1).is_success:
                    return superlink, http_port, env
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        superlink.terminate()
        superlink.wait(timeout=30)
    raise AssertionError(f"SuperLink did not start in {attempts} attempts:\n{log_file.read_text()}")


@pytest.mark.integration
def test_flwr_run_writes_results_of_both_phases(tmp_path):
    """``flwr run`` on the tiny digits config: 2 rounds, local-only baseline, outputs."""
    # The SuperLink `flwr run` would start for the `local` connection, started here so
    # that the test owns the process and stops it.
    superlink, http_port, env = _start_superlink(tmp_path)
    out = tmp_path / "out"
    try:
        run = subprocess.run(
            [_bin("flwr"), "run", str(APP_DIR), "--stream", "--federation-config",
             "num-supernodes=4 client-resources-num-cpus=1 init-args-num-cpus=2",
             "--run-config", f'config="{TINY}" out-dir="{out}"'],
            env=env, capture_output=True, text=True, timeout=300)
        log = run.stdout + run.stderr
        assert f"127.0.0.1:{http_port}" in log  # used the SuperLink started above
        assert (out / "results.json").is_file(), log[-4000:]
    finally:
        superlink.terminate()
        try:
            superlink.wait(timeout=30)
        except subprocess.TimeoutExpired:
            superlink.kill()
            superlink.wait()
    results = read_results_json(out)
    assert [h["round"] for h in results["history"]] == [1, 2]
    assert results["num_clients"] == 4 and results["num_rounds"] == 2
    assert results["config"]["name"] == "digits_tiny"
    assert {c["architecture"] for c in results["clients"]} == {
        "cnn_small", "mlp", "vit_tiny", "sklearn:sgd_logreg"}
    assert 0.0 <= results["baselines"]["local_only"]["client_accuracy_mean"] <= 1.0
    # The baseline is a separate phase: evaluated only after its last round.
    assert [h["round"] for h in results["baselines"]["local_only"]["history"]] == [2]
    assert (out / "report.md").is_file() and (out / "accuracy.png").stat().st_size > 0
