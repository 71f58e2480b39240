"""Server halves of flhet's algorithms (Flower-free), one module per family.

:func:`sum_rule` finds the weighted-sum rule of an algorithm by name, so that a privacy
step on either side (server wrapper or client step) can compute a client's terms and
finish a sum without the algorithm object.
"""

from __future__ import annotations

from importlib import import_module

_SUM_RULES = {
    "consensus": "flhet_strategies.algorithms.consensus",
    "fedproto": "flhet_strategies.algorithms.prototypes",
    "lgfedavg": "flhet_strategies.algorithms.shared_head",
}


def sum_rule(name: str):
    """The weighted-sum rule (``terms``, ``finish``, ``released``) of algorithm ``name``.

    Raises
    ------
    ValueError
        If ``name`` has no weighted-sum rule (the message lists those that do).
    """
    if name not in _SUM_RULES:
        raise ValueError(f"algorithm {name!r} does not aggregate by a weighted sum; those that "
                         f"do: {sorted(_SUM_RULES)}")
    return import_module(_SUM_RULES[name]).SUM_RULE


__all__ = ["sum_rule"]
