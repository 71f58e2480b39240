"""Report the clients' contributions and the run's fairness: ``contributions.png`` and a
``report.md`` section.

Both read the ``contributions`` (per-round and cumulative Shapley values, see
:class:`~flhet_strategies.weighting.contribution.ledger.ContributionLedger`) and ``fairness``
entries of ``results.json`` and the ``role`` of each client.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

CONTRIBUTIONS_PLOT_FILENAME: Final = "contributions.png"

ROLE_COLORS: Final = {"": "tab:blue", "free_rider": "tab:red", "label_noise": "tab:orange",
                      "twin": "tab:green"}
"""Bar colour of each client role (honest clients: ``""``)."""

__all__ = ["CONTRIBUTIONS_PLOT_FILENAME", "contribution_markdown", "render_contributions_png",
           "write_contributions_png"]


def _roles(results: Mapping[str, Any]) -> dict[str, str]:
    return {str(c["id"]): c.get("role") or "" for c in results.get("clients", [])}


def _ordered_ids(total: Mapping[str, float]) -> list[str]:
    return sorted(total, key=lambda c: (0, int(c), "") if c.isdigit() else (1, 0, c))


def render_contributions_png(results: Mapping[str, Any]) -> bytes:
    """PNG bytes: cumulative contribution per client (bars) and per-round values (lines).

    Parameters
    ----------
    results : Mapping
        Results with ``contributions`` (``total`` and ``rounds``) and ``clients``.

    Returns
    -------
    bytes
        The PNG image; bars are coloured by client role (:data:`ROLE_COLORS`).

    Raises
    ------
    ValueError
        If ``results`` has no ``contributions`` or they hold no client.
    """
    contributions = results.get("contributions")
    if not contributions or not contributions.get("total"):
        raise ValueError("results have no contributions to plot; enable [contribution]")
    total = {str(k): float(v) for k, v in contributions["total"].items()}
    roles = _roles(results)
    ids = _ordered_ids(total)

    figure = Figure(figsize=(11.0, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    bars, lines = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
    colors = [ROLE_COLORS.get(roles.get(c, ""), "tab:gray") for c in ids]
    bars.bar(range(len(ids)), [total[c] for c in ids], color=colors)
    bars.axhline(0.0, color="black", linewidth=0.8)
    bars.set_xticks(range(len(ids)), ids)
    bars.set_xlabel("client")
    bars.set_ylabel("cumulative Shapley value")
    bars.set_title("cumulative contribution (sum over rounds)")
    present = [role for role in ROLE_COLORS if role in set(roles.values())]
    bars.legend(handles=[Patch(color=ROLE_COLORS[r], label=r or "honest") for r in present],
                fontsize="small", loc="best")

    rounds = contributions.get("rounds", [])
    for c, color in zip(ids, colors):
        points = [(r["round"], r["values"][c]) for r in rounds if c in r["values"]]
        if points:
            x, y = np.array(points, dtype=float).T
            role = roles.get(c, "")
            lines.plot(x, y, marker=".", color=color, alpha=0.9 if role else 0.45,
                       linewidth=2.0 if role else 1.0, label=f"{c} {role}".strip())
    lines.axhline(0.0, color="black", linewidth=0.8)
    round_numbers = sorted({r["round"] for r in rounds})
    if 0 < len(round_numbers) <= 12:
        lines.set_xticks(round_numbers)
        lines.set_xlim(round_numbers[0] - 0.5, round_numbers[-1] + 0.5)
    else:
        lines.xaxis.set_major_locator(MaxNLocator(integer=True))
    lines.set_xlabel("round")
    lines.set_ylabel("Shapley value in the round")
    lines.set_title("per-round contribution")
    lines.legend(fontsize="x-small", ncol=2, loc="best")
    for axes in (bars, lines):
        axes.grid(alpha=0.3, axis="y")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def write_contributions_png(results: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> Path:
    """Write :func:`render_contributions_png` to ``out_dir/contributions.png``.

    Parameters
    ----------
    results : Mapping
        Results with ``contributions``.
    out_dir : str or os.PathLike
        Output folder; created if missing.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    path = Path(out_dir) / CONTRIBUTIONS_PLOT_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(render_contributions_png(results))
    return path


def _number(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def contribution_markdown(results: Mapping[str, Any]) -> list[str]:
    """``report.md`` lines on fairness and contributions (empty if the results have neither).

    Parameters
    ----------
    results : Mapping
        Results, possibly with ``fairness``, ``contributions`` and
        ``baselines.sample_count_weighting``.

    Returns
    -------
    list[str]
        Markdown lines: a fairness table (final round), the contribution-weighting
        gain over sample-count weighting, and per-client cumulative contributions
        with roles, followed by the ``contributions.png`` image.
    """
    lines: list[str] = []
    fairness = results.get("fairness") or {}
    table = [(key, fairness[key]) for key in ("client_accuracy", "global_accuracy")
             if key in fairness]
    if table:
        lines += ["", "## Fairness (final round)", "",
                  "| accuracy | mean | std | min | worst 10% mean | Jain's index |",
                  "|---|---:|---:|---:|---:|---:|"]
        for key, f in table:
            lines.append(f"| {key.replace('_', ' ')} | {_number(f['mean'])} | {_number(f['std'])} "
                         f"| {_number(f['min'])} | {_number(f['worst_10pct_mean'])} "
                         f"| {_number(f['jain_index'])} |")
        for key, corr in fairness.get("contribution_vs_gain", {}).items():
            lines.append(f"\nContribution vs. {key.replace('_', ' ')} gain over local-only "
                         f"({corr['num_clients']} clients): Pearson {_number(corr['pearson'], 3)}, "
                         f"Spearman {_number(corr['spearman'], 3)}.")
    sample_count = results.get("baselines", {}).get("sample_count_weighting")
    if sample_count:
        gain = sample_count["contribution_weighting_gain"]
        lines.append(f"\nContribution weighting vs. sample-count weighting (same run): "
                     f"client accuracy {_number(gain['client_accuracy_points'], 2)} points, "
                     f"global accuracy {_number(gain['global_accuracy_points'], 2)} points.")
    contributions = results.get("contributions")
    if contributions and contributions.get("total"):
        roles = _roles(results)
        total = contributions["total"]
        lines += ["", "## Contributions (cumulative Shapley value over rounds)", "",
                  "| client | role | cumulative value |", "|---|---|---:|"]
        for c in _ordered_ids({str(k): v for k, v in total.items()}):
            lines.append(f"| {c} | {roles.get(c) or '-'} | {float(total[c]):+.4f} |")
        lines += ["", f"![contributions]({CONTRIBUTIONS_PLOT_FILENAME})"]
    return lines
