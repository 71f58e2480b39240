"""A comparison file: one shared federation, and every strategy's config derived from it.

It is an experiment TOML (the federation every strategy shares: rounds, seed, ``[data]``,
``[[clients]]``, ``[simulation]``, and the base ``[strategy]`` and ``[recipe]``) plus a
``[compare]`` table naming the strategies and what each changes (docs/compare.md)::

    [compare]
    strategies = ["fedconsensus", "fedproto"]
    [compare.overrides.fedproto]
    recipe = { proto_weight = 1.0 }

A strategy's config is the base with ``strategy.name`` set, its ``strategy`` overrides
merged in and its ``[recipe]`` rebuilt for its recipe class: the fields that class shares
with the base recipe (``local_epochs``, ``warmup_epochs``, ...) carry over, its
``recipe`` overrides come on top.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

from .config import STRATEGIES, ConfigError, ExperimentConfig, from_dict, read_toml

COMPARE_KEYS = ("strategies", "overrides", "target_fraction")
"""Keys of the ``[compare]`` table."""

OVERRIDE_SECTIONS = ("strategy", "recipe")
"""What a ``[compare.overrides.<name>]`` table may set: the federation stays shared."""


@dataclass(frozen=True)
class Comparison:
    """The strategies of a comparison, each with its full experiment config.

    Parameters
    ----------
    base : ExperimentConfig
        The shared federation (the file without ``[compare]``, ``--set`` applied).
    strategies : dict[str, ExperimentConfig]
        Strategy name -> its config, in the ``[compare] strategies`` order.
    target_fraction : float
        Rounds to target count the rounds to this share of the best final global
        accuracy of the comparison.
    """

    base: ExperimentConfig
    strategies: dict[str, ExperimentConfig]
    target_fraction: float = 0.9


def load_comparison(path: str | Path, overrides: dict | None = None) -> Comparison:
    """Read a comparison TOML file.

    Parameters
    ----------
    path : str or Path
        The file (e.g. ``simulations/configs/fmnist_compare.toml``).
    overrides : dict, optional
        ``flhet-sim --set`` entries (``key -> value``), applied to every strategy's
        config after its own overrides.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ConfigError
        If the TOML is malformed, ``[compare]`` is missing or invalid, or a strategy's
        config is.
    """
    return comparison_from_dict(read_toml(path), overrides)


def comparison_from_dict(raw: dict, overrides: dict | None = None) -> Comparison:
    """Build and validate a :class:`Comparison` from a plain dict (see :func:`load_comparison`)."""
    raw = dict(raw)
    table = raw.pop("compare", None)
    if not isinstance(table, dict):
        raise ConfigError("a comparison config needs a [compare] table with "
                          f"strategies = [...] (any of {STRATEGIES})")
    unknown = set(table) - set(COMPARE_KEYS)
    if unknown:
        raise ConfigError(f"unknown key(s) in [compare]: {sorted(unknown)}; known: "
                          f"{list(COMPARE_KEYS)}")
    names = _strategy_names(table.get("strategies"))
    per_strategy = table.get("overrides", {})
    stray = set(per_strategy) - set(names)
    if stray:
        raise ConfigError(f"[compare.overrides] names strategies not in [compare] strategies: "
                          f"{sorted(stray)}")
    fraction = table.get("target_fraction", 0.9)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
            or not 0.0 < fraction <= 1.0:
        raise ConfigError(f"[compare] target_fraction must lie in (0, 1], got {fraction!r}")
    base = from_dict(raw)
    configs = {}
    for name in names:
        cfg = strategy_config(base, name, per_strategy.get(name, {}))
        try:
            configs[name] = cfg.with_overrides(**overrides) if overrides else cfg
        except ConfigError as err:
            raise ConfigError(f"strategy {name!r} with the --set options: {err}") from err
    if overrides:
        base = base.with_overrides(**overrides)
    return Comparison(base, configs, float(fraction))


def strategy_config(base: ExperimentConfig, name: str, override: dict) -> ExperimentConfig:
    """One strategy's config: the shared federation with that strategy and its overrides.

    Parameters
    ----------
    base : ExperimentConfig
        The shared federation.
    name : str
        A strategy name (:data:`~simulations.config.STRATEGIES`).
    override : dict
        Its ``[compare.overrides.<name>]`` table: ``strategy`` and ``recipe`` entries.

    Raises
    ------
    ConfigError
        If the override sets anything else, or the resulting config is invalid.
    """
    where = f"[compare.overrides.{name}]"
    if not isinstance(override, dict):
        raise ConfigError(f"{where} must be a table")
    extra = set(override) - set(OVERRIDE_SECTIONS)
    if extra:
        raise ConfigError(f"{where} may set {list(OVERRIDE_SECTIONS)} only, got {sorted(extra)}: "
                          "the federation (data, clients, rounds, seed) is shared by every "
                          "strategy")
    changes = {"strategy": dict(override.get("strategy", {})),
               "recipe": dict(override.get("recipe", {}))}
    if "name" in changes["strategy"]:
        raise ConfigError(f"{where} strategy.name: the table's name sets it")
    try:
        strategy = replace(base.strategy, **changes["strategy"], name=name)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where} strategy: {err}") from err
    raw = base.to_dict()
    shared = {f.name for f in fields(strategy.recipe_type)}
    raw["name"] = f"{base.name}_{name}"
    raw["strategy"] = {**raw["strategy"], **changes["strategy"], "name": name}
    raw["recipe"] = {**{k: v for k, v in raw["recipe"].items() if k in shared},
                     **changes["recipe"]}
    try:
        return from_dict(raw)
    except ConfigError as err:
        raise ConfigError(f"strategy {name!r}: {err}") from err


def _strategy_names(names: object) -> list[str]:
    if not isinstance(names, list) or not names:
        raise ConfigError(f"[compare] strategies must be a non-empty list of strategy names "
                          f"(any of {STRATEGIES}), got {names!r}")
    bad = [n for n in names if n not in STRATEGIES]
    if bad:
        raise ConfigError(f"[compare] strategies: unknown strategy name(s) {bad}; known: "
                          f"{list(STRATEGIES)} (local-only needs no entry: every run trains it)")
    if len(set(names)) != len(names):
        raise ConfigError(f"[compare] strategies lists a strategy twice: {names}")
    return list(names)
