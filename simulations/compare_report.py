"""``comparison.md`` (one table) and ``comparison.png`` (global accuracy per round) of a
comparison (:mod:`simulations.compare`)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

COLUMNS = ("strategy", "client acc. (%)", "global acc. (%)", "worst 10% clients (%)",
           "Jain", "win rate client", "win rate global", "rounds to target",
           "bytes up / round", "bytes down / round", "wall s", "vs own twin (pts)")


def _pm(mean: float | None, std: float | None) -> str:
    return "n/a" if mean is None else f"{100 * mean:.2f} ± {100 * (std or 0.0):.2f}"


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _share(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _twin(margins: Mapping[str, Any] | None) -> str:
    if not margins:
        return "—"
    return " / ".join("n/a" if margins[k] is None else f"{margins[k]:+.2f}"
                      for k in ("client_points", "global_points"))


def render_comparison_markdown(comparison: Mapping[str, Any]) -> str:
    """The comparison as markdown: a header and one row per strategy.

    Parameters
    ----------
    comparison : Mapping
        The ``comparison.json`` content (:func:`~simulations.compare.run_comparison`).

    Returns
    -------
    str
        Accuracies in percent (mean ± population std over seeds), win rates in percent of
        (client, seed) pairs, margins over each strategy's own twins in points, the
        local-only row last.
    """
    target = comparison.get("target_global_accuracy")
    lines = [
        f"# Comparison: {comparison.get('dataset')}, {comparison.get('num_clients')} clients, "
        f"{comparison.get('num_rounds')} rounds, seeds {comparison.get('seeds')}",
        "",
        f"Mean ± std over seeds of the final round. Win rates: share of (client, seed) pairs "
        f"beating local-only (the local-only twin of the `{comparison.get('local_only_from')}` "
        f"runs). Rounds to target: first round whose mean global accuracy reaches "
        f"{100 * comparison['target_fraction']:.0f}% of the best final one "
        f"({_num(None if target is None else 100 * target, '.2f')}%). Last column: client / "
        f"global margin over the strategy's own local-only twins (same models and recipe). "
        f"docs/compare.md.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|---|" + "---:|" * (len(COLUMNS) - 1),
    ]
    for name, row in comparison["strategies"].items():
        wins = row.get("win_rate") or {}
        cells = [name, _pm(row["client_accuracy_mean"], row["client_accuracy_std"]),
                 _pm(row["global_accuracy_mean"], row["global_accuracy_std"]),
                 _num(None if row["worst10_client_accuracy"] is None
                      else 100 * row["worst10_client_accuracy"], ".2f"),
                 _num(row["jain_index"], ".4f"), _share(wins.get("client")),
                 _share(wins.get("global")),
                 "never" if row["rounds_to_target"] is None else str(row["rounds_to_target"]),
                 _num(row["bytes_up_per_round"], ",.0f"), _num(row["bytes_down_per_round"], ",.0f"),
                 _num(row["wall_seconds"], ".0f"), _twin(row.get("own_twin"))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![global accuracy per round](comparison.png)", ""]
    return "\n".join(lines)


def render_comparison_png(comparison: Mapping[str, Any]) -> bytes:
    """PNG bytes: mean global accuracy over seeds per round, one line per strategy.

    A strategy evaluated in one round only (local-only: after the last round) is drawn
    as a dashed horizontal line at that value; the target as a dotted grey line. Uses a
    bare :class:`~matplotlib.figure.Figure` on the Agg canvas (no display, no pyplot).

    Parameters
    ----------
    comparison : Mapping
        The ``comparison.json`` content.
    """
    figure = Figure(figsize=(7.5, 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for index, (name, row) in enumerate(comparison["strategies"].items()):
        curve = row["global_accuracy_curve"]
        color = f"C{index % 10}"
        if len(curve) == 1:
            axes.axhline(100 * curve[0][1], color=color, linestyle="--", label=f"{name} (final)")
        elif curve:
            axes.plot([r for r, _ in curve], [100 * a for _, a in curve], marker=".",
                      color=color, label=name)
    target = comparison.get("target_global_accuracy")
    if target is not None:
        axes.axhline(100 * target, color="grey", linestyle=":", linewidth=1,
                     label=f"target ({100 * comparison['target_fraction']:.0f}% of best)")
    axes.set_xlabel("round")
    axes.set_ylabel("global test accuracy (%), mean over seeds")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    axes.set_title(f"{comparison.get('dataset')}, {comparison.get('num_clients')} clients, "
                   f"seeds {comparison.get('seeds')}")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()
