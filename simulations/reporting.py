"""Write and validate experiment results: ``results.json``, ``report.md`` and ``accuracy.png``.

The content of ``results.json`` is described by :data:`RESULTS_SCHEMA`; every writer and
reader here checks it with :func:`validate_results`, so a malformed run fails loudly at the
point it is saved rather than later in a plot. Keys beyond the schema (``contributions``,
``epsilon``, per-client metrics, ...) are allowed and written through unchanged.

Accuracies are fractions in ``[0, 1]`` in the JSON; the report shows them as percentages and
the gap to the local-only baseline in percentage points.
"""

from __future__ import annotations

import io
import json
import math
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from flhet_strategies.faces.checkpoint import write_atomically

from .contribution_report import contribution_markdown

RESULTS_FILENAME: Final = "results.json"
REPORT_FILENAME: Final = "report.md"
PLOT_FILENAME: Final = "accuracy.png"

# A field spec is ``(kind, description)``. ``kind`` is one of the scalar kinds below, a dict
# of required sub-keys (an object; extra sub-keys allowed), or a one-element list holding the
# spec of every item (a list of objects).
#   "text"             non-empty str
#   "client_id"        str or int
#   "positive_int"     int >= 1
#   "count"            int >= 0
#   "fraction"         finite real in [0, 1]
#   "fraction_or_none" as "fraction", or None when the run had no such evaluation
#   "nonneg_number"    finite real >= 0
RESULTS_SCHEMA: Final[dict[str, tuple[Any, str]]] = {
    "strategy": ("text", "Name of the server strategy, e.g. 'fedmd'."),
    "dataset": ("text", "Name of the dataset, e.g. 'fashion-mnist'."),
    "partitioner": (
        {"name": ("text", "flwr-datasets partitioner name, e.g. 'dirichlet'.")},
        "The partitioner: 'name' plus its parameters as further keys (alpha, seed, ...).",
    ),
    "num_clients": ("positive_int", "Number of clients in the federation (= len(clients))."),
    "clients": (
        [
            {
                "id": ("client_id", "Client (partition) id."),
                "architecture": ("text", "Model name, e.g. 'cnn_small' or 'logreg'."),
                "framework": ("text", "'pytorch' or 'scikit-learn'."),
                "num_train": ("count", "Number of local training examples."),
            }
        ],
        "One entry per client.",
    ),
    "history": (
        [
            {
                "round": ("count", "Server round (strictly increasing)."),
                "client_accuracy_mean": (
                    "fraction",
                    "Mean accuracy on each client's own test split.",
                ),
                "client_accuracy_std": ("fraction", "Std of those per-client accuracies."),
                "client_accuracy_min": ("fraction", "Worst client's own-split accuracy."),
                "global_accuracy_mean": (
                    "fraction_or_none",
                    "Mean client accuracy on the global test set (None if not evaluated).",
                ),
                "bytes_up": ("count", "Bytes sent client -> server this round."),
                "bytes_down": ("count", "Bytes sent server -> clients this round."),
                "seconds": ("nonneg_number", "Wall-clock seconds of the round."),
            }
        ],
        "One entry per evaluated round, in round order.",
    ),
    "baselines": (
        {
            "local_only": (
                {
                    "client_accuracy_mean": ("fraction", "Local-only mean own-split accuracy."),
                    "global_accuracy_mean": (
                        "fraction_or_none",
                        "Local-only mean global-test accuracy (None if not evaluated).",
                    ),
                },
                "Every client trains alone on its own data, same run and seeds.",
            )
        },
        "Baselines from the same run; 'local_only' is required.",
    ),
}
"""Required content of ``results.json``: ``key -> (kind, description)``, nested (see above)."""

PARTIAL_SCHEMA: Final[dict[str, tuple[Any, str]]] = {
    **RESULTS_SCHEMA,
    "baselines": ({}, "Baselines finished or running so far (none before they start)."),
}
"""The schema of a run still in progress (``"complete": false``, rewritten every round)."""

_NOT_YET: Final = {"client_accuracy_mean": None, "global_accuracy_mean": None}
"""The local-only row of a run whose baseline has not evaluated yet."""


def validate_results(results: Mapping[str, Any]) -> None:
    """Check ``results`` against :data:`RESULTS_SCHEMA` and basic consistency.

    Besides the per-field checks: ``len(clients) == num_clients``, history rounds strictly
    increase, and ``client_accuracy_min <= client_accuracy_mean`` in every round. Results
    of a run in progress (``"complete": false``) follow :data:`PARTIAL_SCHEMA`.

    Parameters
    ----------
    results : Mapping
        The results dictionary (the content of ``results.json``). Extra keys are allowed.

    Raises
    ------
    ValueError
        Naming the first bad key by its path, e.g. ``history[2].client_accuracy_mean``.
    """
    schema = PARTIAL_SCHEMA if results.get("complete") is False else RESULTS_SCHEMA
    _check_object(results, schema, "results")
    if len(results["clients"]) != results["num_clients"]:
        raise ValueError(
            f"num_clients is {results['num_clients']} but clients lists "
            f"{len(results['clients'])} entries; they must agree."
        )
    previous_round = -1
    for index, entry in enumerate(results["history"]):
        if entry["round"] <= previous_round:
            raise ValueError(
                f"history[{index}].round is {entry['round']}, not after the previous round "
                f"{previous_round}; history must be in strictly increasing round order."
            )
        previous_round = entry["round"]
        if entry["client_accuracy_min"] > entry["client_accuracy_mean"] + 1e-9:
            raise ValueError(
                f"history[{index}].client_accuracy_min ({entry['client_accuracy_min']}) exceeds "
                f"client_accuracy_mean ({entry['client_accuracy_mean']}); are the keys swapped?"
            )


def write_results_json(results: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> Path:
    """Validate ``results`` and write it atomically to ``out_dir/results.json``.

    The file is written to a temporary file in ``out_dir`` and moved into place with
    ``os.replace``, so readers never see a half-written file, even when the run rewrites
    it after every round. numpy scalars and arrays are written as plain numbers and lists.

    Parameters
    ----------
    results : Mapping
        The results dictionary; see :data:`RESULTS_SCHEMA`. Extra keys are preserved.
    out_dir : str or os.PathLike
        Output folder; created if missing.

    Returns
    -------
    pathlib.Path
        Path of the written ``results.json``.

    Raises
    ------
    ValueError
        If ``results`` breaks the schema (the message names the key), or holds a value JSON
        cannot represent (NaN or infinity outside the validated keys, unknown objects).
    """
    validate_results(results)
    try:
        text = json.dumps(results, indent=2, allow_nan=False, default=_to_json_builtin)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"results cannot be written as strict JSON ({error}); store NaN/infinity as None "
            "and objects as numbers, strings, lists or dicts."
        ) from error
    return write_atomically(Path(out_dir) / RESULTS_FILENAME, (text + "\n").encode("utf-8"))


def read_results_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a ``results.json`` file (or the one inside a folder).

    Parameters
    ----------
    path : str or os.PathLike
        The JSON file, or the output folder that holds ``results.json``.

    Returns
    -------
    dict
        The validated results.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file is not valid JSON or breaks :data:`RESULTS_SCHEMA`.
    """
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"No results file at {path}; run an experiment first.")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    validate_results(results)
    return results


def write_report(results: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``report.md`` (tables) and ``accuracy.png`` (accuracy per round) to ``out_dir``.

    ``report.md`` holds a header (strategy, dataset, partitioner, number of clients), the
    clients table, a "vs local-only" summary with the final-round margins in percentage
    points, and one table row per history entry. ``accuracy.png`` plots the client mean
    (with a +-1 std band) and the global mean per round, and the local-only baselines as
    dashed horizontal lines of the same colours.

    Parameters
    ----------
    results : Mapping
        The results dictionary; see :data:`RESULTS_SCHEMA`. It is not modified.
    out_dir : str or os.PathLike
        Output folder; created if missing.

    Returns
    -------
    tuple of pathlib.Path
        ``(report_md_path, accuracy_png_path)``.

    Raises
    ------
    ValueError
        If ``results`` breaks the schema or its history is empty.
    """
    validate_results(results)
    if not results["history"]:
        raise ValueError("results.history is empty: there is no round to report yet.")
    out = Path(out_dir)
    report = write_atomically(out / REPORT_FILENAME, render_markdown(results).encode("utf-8"))
    plot = write_atomically(out / PLOT_FILENAME, render_accuracy_png(results))
    return report, plot


def final_margins(results: Mapping[str, Any]) -> dict[str, float | None]:
    """Final-round accuracy minus the local-only baseline, in percentage points.

    Parameters
    ----------
    results : Mapping
        Validated results with a non-empty history.

    Returns
    -------
    dict
        ``{"client_accuracy_mean": points, "global_accuracy_mean": points}``; a value is
        ``None`` when the run or the baseline has no such accuracy.
    """
    final = results["history"][-1]
    local = results["baselines"].get("local_only", _NOT_YET)
    margins: dict[str, float | None] = {}
    for key in ("client_accuracy_mean", "global_accuracy_mean"):
        if final[key] is None or local[key] is None:
            margins[key] = None
        else:
            margins[key] = 100.0 * (float(final[key]) - float(local[key]))
    return margins


def render_markdown(results: Mapping[str, Any]) -> str:
    """The text of ``report.md`` for validated ``results`` with a non-empty history.

    Parameters
    ----------
    results : Mapping
        Validated results.

    Returns
    -------
    str
        Markdown text.
    """
    partitioner = results["partitioner"]
    params = ", ".join(f"{k}={v}" for k, v in partitioner.items() if k != "name")
    partitioner_text = partitioner["name"] + (f" ({params})" if params else "")
    history = results["history"]
    final = history[-1]
    local = results["baselines"].get("local_only", _NOT_YET)
    margins = final_margins(results)

    lines = [
        f"# {_cell(results['strategy'])} on {_cell(results['dataset'])}",
        "",
        f"- Strategy: `{results['strategy']}`",
        f"- Dataset: `{results['dataset']}`",
        f"- Partitioner: {_cell(partitioner_text)}",
        f"- Clients: {results['num_clients']}",
        f"- Rounds reported: {len(history)} (last: round {final['round']})",
        f"- Communication, all rounds: {_format_bytes(sum(h['bytes_up'] for h in history))} up, "
        f"{_format_bytes(sum(h['bytes_down'] for h in history))} down",
        *([f"- **In progress**: phase `{results.get('running_phase')}` running; this "
           "report is rewritten after every round"] if results.get("complete") is False
          else []),
        "",
        "## vs local-only",
        "",
        "Accuracy in %; margin = final round minus local-only, in percentage points.",
        "",
        f"| metric | local-only | final (round {final['round']}) | margin (points) |",
        "|---|---:|---:|---:|",
    ]
    for key, label in (
        ("client_accuracy_mean", "client accuracy (own test split, mean)"),
        ("global_accuracy_mean", "global accuracy (global test set, mean)"),
    ):
        lines.append(
            f"| {label} | {_percent(local[key])} | {_percent(final[key])} | "
            f"{_points(margins[key])} |"
        )
    lines += [
        "",
        "## Clients",
        "",
        "| id | architecture | framework | num_train |",
        "|---|---|---|---:|",
    ]
    for client in results["clients"]:
        lines.append(
            f"| {_cell(client['id'])} | {_cell(client['architecture'])} | "
            f"{_cell(client['framework'])} | {client['num_train']} |"
        )
    lines += [
        "",
        "## Rounds",
        "",
        "| round | client acc. mean ± std (%) | client acc. min (%) | global acc. mean (%) "
        "| bytes up | bytes down | seconds |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in history:
        lines.append(
            f"| {entry['round']} "
            f"| {_percent(entry['client_accuracy_mean'])} ± "
            f"{_percent(entry['client_accuracy_std'])} "
            f"| {_percent(entry['client_accuracy_min'])} "
            f"| {_percent(entry['global_accuracy_mean'])} "
            f"| {_format_bytes(entry['bytes_up'])} | {_format_bytes(entry['bytes_down'])} "
            f"| {float(entry['seconds']):.2f} |"
        )
    lines += ["", f"![accuracy per round]({PLOT_FILENAME})"]
    lines += contribution_markdown(results) + [""]  # fairness and contributions, if any
    return "\n".join(lines)


def render_accuracy_png(results: Mapping[str, Any]) -> bytes:
    """PNG bytes of the accuracy-per-round plot for validated ``results``.

    Uses a bare :class:`matplotlib.figure.Figure` on the Agg canvas, so it needs no display
    and leaves pyplot's global state and backend alone.

    Parameters
    ----------
    results : Mapping
        Validated results with a non-empty history.

    Returns
    -------
    bytes
        The PNG image.
    """
    history = results["history"]
    local = results["baselines"].get("local_only", _NOT_YET)
    rounds = np.array([h["round"] for h in history], dtype=float)
    client_mean = 100.0 * np.array([h["client_accuracy_mean"] for h in history], dtype=float)
    client_std = 100.0 * np.array([h["client_accuracy_std"] for h in history], dtype=float)
    global_values = [h["global_accuracy_mean"] for h in history]
    global_mean = 100.0 * np.array(
        [np.nan if value is None else value for value in global_values], dtype=float
    )

    figure = Figure(figsize=(7.0, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    client_color, global_color = "tab:blue", "tab:orange"
    axes.plot(rounds, client_mean, marker="o", color=client_color, label="client mean (own split)")
    axes.fill_between(
        rounds,
        np.clip(client_mean - client_std, 0, 100),
        np.clip(client_mean + client_std, 0, 100),
        color=client_color,
        alpha=0.15,
        label="client ± 1 std",
    )
    if not np.all(np.isnan(global_mean)):
        axes.plot(rounds, global_mean, marker="s", color=global_color, label="global test set mean")
    for key, color, label in (
        ("client_accuracy_mean", client_color, "local-only, client mean"),
        ("global_accuracy_mean", global_color, "local-only, global mean"),
    ):
        if local[key] is not None:
            axes.axhline(
                100.0 * local[key], color=color, linestyle="--", linewidth=1.2, label=label
            )
    axes.set_xlabel("round")
    axes.set_ylabel("accuracy (%)")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    low, high = axes.get_ylim()
    axes.set_ylim(max(low, 0.0), min(high, 100.0))
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    axes.set_title(
        f"{results['strategy']} on {results['dataset']} "
        f"({results['partitioner']['name']}, {results['num_clients']} clients)"
    )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


# --- validation helpers -------------------------------------------------------------------


def _check_object(value: Any, fields: Mapping[str, tuple[Any, str]], path: str) -> None:
    if not isinstance(value, Mapping):
        raise ValueError(f"{path} must be a dict, got {type(value).__name__}.")
    for key, (kind, description) in fields.items():
        key_path = key if path == "results" else f"{path}.{key}"
        if key not in value:
            raise ValueError(f"{key_path} is missing (required: {description})")
        _check_value(value[key], kind, key_path, description)


def _check_value(value: Any, kind: Any, path: str, description: str) -> None:
    if isinstance(kind, dict):
        _check_object(value, kind, path)
        return
    if isinstance(kind, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{path} must be a list, got {type(value).__name__}.")
        for index, item in enumerate(value):
            _check_object(item, kind[0], f"{path}[{index}]")
        return
    if kind == "fraction_or_none" and value is None:
        return
    if not _SCALAR_CHECKS[kind](value):
        raise ValueError(f"{path} must be {_SCALAR_WORDS[kind]}, got {value!r} ({description})")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_finite_real(value: Any) -> bool:
    return (
        isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    )


_SCALAR_CHECKS: Final = {
    "text": lambda v: isinstance(v, str) and v.strip() != "",
    "client_id": lambda v: isinstance(v, str) or _is_int(v),
    "positive_int": lambda v: _is_int(v) and v >= 1,
    "count": lambda v: _is_int(v) and v >= 0,
    "fraction": lambda v: _is_finite_real(v) and 0.0 <= v <= 1.0,
    "fraction_or_none": lambda v: _is_finite_real(v) and 0.0 <= v <= 1.0,
    "nonneg_number": lambda v: _is_finite_real(v) and v >= 0.0,
}
_SCALAR_WORDS: Final = {
    "text": "a non-empty string",
    "client_id": "a string or an integer",
    "positive_int": "an integer >= 1",
    "count": "an integer >= 0",
    "fraction": "a finite fraction in [0, 1] (not a percentage)",
    "fraction_or_none": "a finite fraction in [0, 1] (not a percentage) or None",
    "nonneg_number": "a finite number >= 0",
}


# --- formatting and file helpers ----------------------------------------------------------


def _to_json_builtin(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _cell(value: Any) -> str:
    """Text safe inside a markdown table cell."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _percent(fraction: float | None) -> str:
    return "n/a" if fraction is None else f"{100.0 * float(fraction):.2f}"


def _points(points: float | None) -> str:
    return "n/a" if points is None else f"{points:+.2f}"


def _format_bytes(count: int) -> str:
    if count < 1024:
        return f"{int(count)} B"
    value = float(count)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024.0
        if value < 1024.0:
            break
    return f"{value:.2f} {unit}"
