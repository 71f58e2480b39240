"""``flhet-sim compare``: the summary maths against hand-computed values, the [compare]
config, and one real comparison of two strategies in Flower's simulation engine (Ray)."""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path

import pytest
import tomli_w

from flhet_strategies.fairness import jain_index, worst_fraction_mean
from simulations.cli import main
from simulations.compare_config import comparison_from_dict, load_comparison
from simulations.compare_report import render_comparison_markdown
from simulations.compare_summary import (
    comparison_target,
    mean_curve,
    summarize_comparison,
    summarize_strategy,
    twin_margins,
    win_rate,
)
from simulations.config import ConfigError
from simulations.reporting import read_results_json

CONFIGS = Path(__file__).resolve().parents[1] / "simulations" / "configs"


# --- summary maths ----------------------------------------------------------------------

def test_jain_index_and_worst_tenth_by_hand() -> None:
    assert jain_index([1, 1, 1, 1]) == 1.0
    assert jain_index([1, 0, 0, 0]) == 0.25          # (1)^2 / (4 * 1)
    assert jain_index([0.5, 1.0]) == pytest.approx(2.25 / 2.5)   # 1.5^2 / (2 * 1.25)
    twenty = [0.9] * 18 + [0.2, 0.4]
    assert worst_fraction_mean(twenty, 0.1) == pytest.approx(0.3)   # the 2 lowest of 20


def test_win_rate_counts_client_seed_pairs_strictly() -> None:
    runs = [{"0": 0.9, "1": 0.5, "2": 0.7}, {"0": 0.6, "1": 0.8, "2": 0.7}]
    base = [{"0": 0.8, "1": 0.6, "2": 0.7}, {"0": 0.5, "1": 0.9, "2": 0.6}]
    # seed 0: win, loss, tie (no win); seed 1: win, loss, win -> 3 of 6
    assert win_rate(runs, base) == 0.5
    assert win_rate([{"0": 1.0, "9": 1.0}], [{"0": 0.0}]) == 1.0   # only common clients
    assert win_rate([{}], [{}]) is None
    with pytest.raises(ValueError, match="one baseline per seed"):
        win_rate(runs, base[:1])


def test_mean_curve_and_rounds_to_target_including_never() -> None:
    fast = [[{"round": 1, "global_accuracy_mean": 0.5}, {"round": 2, "global_accuracy_mean": 0.8}],
            [{"round": 1, "global_accuracy_mean": 0.7}, {"round": 2, "global_accuracy_mean": 1.0}]]
    assert mean_curve(fast) == [(1, pytest.approx(0.6)), (2, pytest.approx(0.9))]
    rows = {"fast": {"global_accuracy_mean": 0.9, "global_accuracy_curve": [[1, 0.6], [2, 0.9]]},
            "slow": {"global_accuracy_mean": 0.82, "global_accuracy_curve": [[1, 0.3], [2, 0.82]]},
            "never": {"global_accuracy_mean": 0.5, "global_accuracy_curve": [[1, 0.4], [2, 0.5]]}}
    summary = summarize_comparison(rows, 0.9)
    assert summary["target_global_accuracy"] == pytest.approx(0.81)   # 90% of the best, 0.9
    reached = {n: r["rounds_to_target"] for n, r in summary["strategies"].items()}
    assert reached == {"fast": 2, "slow": 2, "never": None}
    assert comparison_target({"a": 0.5, "b": None}, 0.5) == 0.25
    assert comparison_target({"a": None}) is None


def _history(final_client: dict, final_global: dict, up: int) -> list[dict]:
    per_client = {c: {"client_accuracy": final_client[c], "global_accuracy": final_global[c]}
                  for c in final_client}
    mean = lambda d: sum(d.values()) / len(d)   # noqa: E731
    return [{"round": 1, "global_accuracy_mean": 0.1, "bytes_up": 0, "bytes_down": 10},
            {"round": 2, "client_accuracy_mean": mean(final_client),
             "global_accuracy_mean": mean(final_global), "bytes_up": up, "bytes_down": 30,
             "per_client": per_client}]


def test_strategy_row_means_over_seeds_and_win_rates() -> None:
    runs = [_history({"0": 1.0, "1": 0.6}, {"0": 0.5, "1": 0.5}, 100),
            _history({"0": 0.4, "1": 0.8}, {"0": 0.3, "1": 0.3}, 300)]
    local = [_history({"0": 0.9, "1": 0.7}, {"0": 0.2, "1": 0.2}, 0),
             _history({"0": 0.9, "1": 0.7}, {"0": 0.4, "1": 0.4}, 0)]
    row = summarize_strategy(runs, local, [0, 1], [10.0, 20.0])
    assert row["client_accuracy_mean"] == pytest.approx(0.7)    # seed means 0.8 and 0.6
    assert row["client_accuracy_std"] == pytest.approx(0.1)     # population std
    assert row["global_accuracy_mean"] == pytest.approx(0.4)
    assert row["worst10_client_accuracy"] == pytest.approx(0.5)  # mean of 0.6 and 0.4
    # Jain: (1.6^2 / (2 * 1.36) + 1.2^2 / (2 * 0.8)) / 2
    assert row["jain_index"] == pytest.approx((2.56 / 2.72 + 1.44 / 1.6) / 2)
    # client: seed 0 wins on "0", seed 1 on "1" -> 2 of 4; global: seed 0 both, seed 1 none
    assert row["win_rate"] == {"client": 0.5, "global": 0.5}
    assert row["bytes_up_per_round"] == pytest.approx(100.0)     # (50 + 150) / 2
    assert row["bytes_down_per_round"] == pytest.approx(20.0)
    assert row["wall_seconds"] == 15.0 and row["seeds"] == [0, 1]
    assert summarize_strategy(local, None, [0, 1], [1.0, None])["win_rate"] is None
    # the same runs against their own twins: client 0.8 - 0.8 and 0.6 - 0.8, global
    # 0.5 - 0.2 and 0.3 - 0.4, in points, mean over the two seeds
    row["own_twin"] = twin_margins(runs, local)
    assert row["own_twin"]["client_points"] == pytest.approx(-10.0)
    assert row["own_twin"]["global_points"] == pytest.approx(10.0)
    assert row["own_twin"]["win_rate"] == {"client": 0.5, "global": 0.5}
    table = render_comparison_markdown({**summarize_comparison({"s": row}), "seeds": [0, 1]})
    assert "| s | 70.00 ± 10.00 | 40.00 ± 10.00 | 50.00 |" in table
    assert "| 50.0% | 50.0% | 2 |" in table and table.rstrip().count("-10.00 / +10.00") == 1


# --- the [compare] config ---------------------------------------------------------------

def test_fmnist_comparison_gives_every_strategy_its_recipe() -> None:
    comparison = load_comparison(CONFIGS / "fmnist_compare.toml", {"num_rounds": 5})
    assert list(comparison.strategies) == ["fedconsensus", "fedproto", "fedtgp", "lgfedavg",
                                           "fedgh", "feddf"]
    recipes = {n: type(c.recipe).__name__ for n, c in comparison.strategies.items()}
    assert recipes == {"fedconsensus": "DistillationRecipe", "fedproto": "PrototypeRecipe",
                       "fedtgp": "PrototypeRecipe", "lgfedavg": "SharedHeadRecipe",
                       "fedgh": "SharedHeadRecipe", "feddf": "FedDFRecipe"}
    for cfg in comparison.strategies.values():   # one federation, --set everywhere
        assert cfg.num_rounds == 5 and cfg.recipe.warmup_epochs == 2
        assert cfg.clients == comparison.base.clients and cfg.data == comparison.base.data
    assert len({g.architecture for g in comparison.base.clients}) >= 5
    assert comparison.base.data.num_clients == 20
    assert comparison.strategies["feddf"].strategy.proxy_per_round == 0
    assert comparison.strategies["fedconsensus"].recipe.final_private_epochs == 2


def _raw(path: Path = CONFIGS / "digits_compare.toml") -> dict:
    return tomllib.loads(path.read_text())


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(strategies=["fedconsensus", "fedfoo"]), "unknown strategy name.*fedfoo"),
    (lambda c: c.update(strategies=[]), "non-empty list"),
    (lambda c: c["overrides"].update(fedproto={"data": {"num_clients": 3}}),
     r"may set \['strategy', 'recipe'\] only"),
    (lambda c: c["overrides"].update(fedproto={"recipe": {"kd_weight": 1.0}}),
     r"strategy 'fedproto'.*kd_weight"),
    (lambda c: c["overrides"].update(other={}), "not in \\[compare\\] strategies"),
    (lambda c: c.update(target_fraction=0), "target_fraction"),
])
def test_invalid_compare_tables_are_refused(change, message) -> None:
    raw = _raw()
    change(raw["compare"])
    with pytest.raises(ConfigError, match=message):
        comparison_from_dict(raw)


def test_a_set_option_a_strategy_lacks_names_the_strategy() -> None:
    with pytest.raises(ConfigError, match="strategy 'fedproto' with the --set options"):
        comparison_from_dict(_raw(), {"recipe.kd_weight": 0.3})


# --- a real comparison ------------------------------------------------------------------

def _two_strategy_config(tmp_path: Path, strategies: list[str]) -> Path:
    raw = _raw()
    raw["compare"]["strategies"] = strategies
    raw["compare"]["overrides"] = {k: v for k, v in raw["compare"]["overrides"].items()
                                   if k in strategies}
    path = tmp_path / "compare.toml"
    path.write_bytes(tomli_w.dumps(raw).encode())
    return path


@pytest.mark.integration
def test_compare_runs_two_strategies_and_reuses_finished_runs(tmp_path, capsys) -> None:
    config, out = _two_strategy_config(tmp_path, ["fedconsensus", "fedproto"]), tmp_path / "out"
    # one simulated client at a time: on 2 shared cores the second actor's start costs more
    # than it saves
    argv = ["compare", "--config", str(config), "--out", str(out), "--seeds", "0",
            "--set", "simulation.num_cpus=1", "--set", "num_rounds=2"]
    assert main(argv) == 0
    comparison = json.loads((out / "comparison.json").read_text())
    rows = comparison["strategies"]
    assert list(rows) == ["fedconsensus", "fedproto", "local_only"]
    keys = {"client_accuracy_mean", "client_accuracy_std", "global_accuracy_mean",
            "global_accuracy_std", "rounds_to_target", "bytes_up_per_round",
            "bytes_down_per_round", "wall_seconds", "seeds", "worst10_client_accuracy",
            "jain_index", "win_rate"}
    for name in ("fedconsensus", "fedproto"):
        row = rows[name]
        assert keys <= set(row) and row["seeds"] == [0]
        results = read_results_json(out / name / "seed0")
        assert results["complete"] and results["strategy"].startswith(name)
        final = results["final"]
        assert row["client_accuracy_mean"] == pytest.approx(final["client_accuracy_mean"])
        assert row["global_accuracy_mean"] == pytest.approx(final["global_accuracy_mean"])
        assert row["client_accuracy_std"] == 0.0 and 0.25 <= row["jain_index"] <= 1.0
        assert set(row["win_rate"]) == {"client", "global"}
        assert row["bytes_up_per_round"] > 0 and row["wall_seconds"] > 0
        assert [r for r, _ in row["global_accuracy_curve"]] == [1, 2]
    first = read_results_json(out / "fedconsensus" / "seed0")
    own = rows["fedconsensus"]["own_twin"]      # the first strategy's twin is local_only
    assert own["client_points"] == pytest.approx(first["margins"]["client_accuracy_points"])
    assert own["win_rate"] == rows["fedconsensus"]["win_rate"]
    local = first["baselines"]["local_only"]
    assert rows["local_only"]["client_accuracy_mean"] == pytest.approx(
        local["client_accuracy_mean"])
    assert comparison["local_only_from"] == "fedconsensus"
    assert (out / "comparison.png").stat().st_size > 1000
    assert "| fedproto |" in (out / "comparison.md").read_text()
    assert "strategy 2/2 (fedproto), seed 1/1" in capsys.readouterr().err

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/seed0/results.json")}
    started = time.perf_counter()
    assert main(argv) == 0                                   # every run reused: no federation
    assert time.perf_counter() - started < 10
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    again = json.loads((out / "comparison.json").read_text())["strategies"]
    assert again["fedproto"] == rows["fedproto"]
    assert "reused the finished run" in capsys.readouterr().err

    # an interrupted run is resumed from its checkpoint: here both its phases had ended,
    # so no federation starts and the same figures come back
    path = out / "fedproto" / "seed0" / "results.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "complete": False}))
    started = time.perf_counter()
    assert main(argv) == 0
    assert time.perf_counter() - started < 10
    assert "resuming the interrupted run" in capsys.readouterr().err
    assert read_results_json(path)["complete"]
    again = json.loads((out / "comparison.json").read_text())["strategies"]
    assert again["fedproto"] == rows["fedproto"]

    # another configuration in the same folder is refused, not silently mixed in
    assert main(argv[:-1] + ["recipe.local_epochs=2"]) == 2
    assert "another configuration" in capsys.readouterr().err


def test_a_bad_strategy_name_exits_with_status_2(tmp_path, capsys) -> None:
    config = _two_strategy_config(tmp_path, ["fedconsensus", "fedmagic"])
    assert main(["compare", "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "unknown strategy name(s) ['fedmagic']" in err and "fedproto" in err
    assert not (tmp_path / "out").exists()
