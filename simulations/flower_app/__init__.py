"""The flhet experiment as a Flower App, run with ``flwr run``.

``simulations/pyproject.toml`` declares the app (:mod:`.server_app`, :mod:`.client_app`);
this module turns its run config (``config``, ``out-dir``, ``num-rounds``,
``overrides``) into an :class:`~simulations.config.ExperimentConfig`, cached per
process. See docs/flower_app.md.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import simulations
from simulations.config import ConfigError, ExperimentConfig, load_config, parse_overrides

APP_DIR = Path(__file__).resolve().parent.parent
"""The app folder: the one holding the app's ``pyproject.toml`` and ``configs/``."""

OUTPUT_BASE_DIR = Path(simulations.__file__).resolve().parent.parent
"""Base of relative ``out-dir`` values: the folder that holds the ``simulations`` package."""

RUN_CONFIG_TYPES: dict[str, type] = {"config": str, "out-dir": str, "num-rounds": int,
                                     "overrides": str}
"""The run-config keys this app reads and their types (all required)."""


@dataclass(frozen=True)
class AppSettings:
    """What one ``flwr run`` of this app does.

    Parameters
    ----------
    experiment : ExperimentConfig
        The experiment, with the run config's overrides applied.
    config_path : Path
        The experiment TOML it was read from (absolute).
    out_dir : Path
        Output folder for results, report and plot (absolute).
    """

    experiment: ExperimentConfig
    config_path: Path
    out_dir: Path


def resolve_config_path(value: str, app_dir: Path = APP_DIR) -> Path:
    """The experiment TOML named by the run config's ``config`` entry.

    Parameters
    ----------
    value : str
        Absolute path, or path relative to ``app_dir``.
    app_dir : Path (default: APP_DIR)
        The app folder.

    Returns
    -------
    Path
        The absolute path of an existing file.

    Raises
    ------
    FileNotFoundError
        If there is no such file; the message lists the configs the app ships.
    """
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = app_dir / path
    path = path.resolve()
    if not path.is_file():
        shipped = sorted(p.relative_to(app_dir).as_posix() for p in app_dir.glob("configs/*.toml"))
        raise FileNotFoundError(
            f"experiment config not found: {path} (run config 'config' = {value!r}; relative "
            f"paths are resolved against the app folder {app_dir}). Configs in the app: "
            f"{', '.join(shipped) or 'none'}. Set it with: flwr run . -c 'config=\"<path>\"'"
        )
    return path


def resolve_out_dir(value: str, base_dir: Path = OUTPUT_BASE_DIR) -> Path:
    """The output folder named by the run config's ``out-dir`` entry (absolute).

    Relative paths are resolved against ``base_dir``, not the working directory.
    """
    if not value.strip():
        raise ConfigError("run config 'out-dir' is empty; give an output folder")
    path = Path(value).expanduser()
    return (path if path.is_absolute() else base_dir / path).resolve()


def _checked(run_config: Mapping[str, object]) -> dict[str, object]:
    values = {}
    for key, kind in RUN_CONFIG_TYPES.items():
        if key not in run_config:
            raise ConfigError(
                f"run config has no {key!r}; the app's pyproject.toml must define "
                f"{sorted(RUN_CONFIG_TYPES)} under [tool.flwr.app.config]"
            )
        value = run_config[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ConfigError(
                f"run config {key!r} must be {kind.__name__}, got {value!r} "
                f"({type(value).__name__})"
            )
        values[key] = value
    if values["num-rounds"] < 0:
        raise ConfigError(f"run config 'num-rounds' must be >= 0 (0 keeps the experiment's), "
                          f"got {values['num-rounds']}")
    return values


@functools.lru_cache(maxsize=8)
def _load(config_path: Path, num_rounds: int, overrides: str) -> ExperimentConfig:
    cfg = load_config(config_path)
    changes = parse_overrides(overrides)
    if num_rounds:
        changes["num_rounds"] = num_rounds
    try:
        return cfg.with_overrides(**changes) if changes else cfg
    except KeyError as err:
        raise ConfigError(f"run config 'overrides': unknown section in {err}; known sections: "
                          f"{sorted(k for k, v in cfg.to_dict().items() if isinstance(v, dict))}"
                          ) from err


def app_settings(run_config: Mapping[str, object]) -> AppSettings:
    """Read this app's run config.

    Parameters
    ----------
    run_config : Mapping
        ``context.run_config`` (see docs/flower_app.md for the keys).

    Returns
    -------
    AppSettings
        The experiment (cached per process), its TOML path and the output folder.

    Raises
    ------
    ConfigError
        If a key is missing or has the wrong type, or the overrides or the experiment
        are invalid.
    FileNotFoundError
        If the experiment TOML does not exist.
    """
    values = _checked(run_config)
    config_path = resolve_config_path(str(values["config"]))
    experiment = _load(config_path, int(values["num-rounds"]), str(values["overrides"]))
    if experiment.paillier.enabled or (experiment.dp.client_level and experiment.dp.mode == "distributed"):
        raise ConfigError(
            "the Flower App runs plain and central-DP experiments; [paillier] and "
            "[dp] mode = \"distributed\" need client mods: run them with `flhet-sim run`")
    return AppSettings(experiment, config_path, resolve_out_dir(str(values["out-dir"])))


def load_experiment(run_config: Mapping[str, object]) -> ExperimentConfig:
    """The :class:`ExperimentConfig` of a run config (see :func:`app_settings`)."""
    return app_settings(run_config).experiment


__all__ = ["APP_DIR", "OUTPUT_BASE_DIR", "RUN_CONFIG_TYPES", "AppSettings", "app_settings",
           "load_experiment", "parse_overrides", "resolve_config_path", "resolve_out_dir"]
