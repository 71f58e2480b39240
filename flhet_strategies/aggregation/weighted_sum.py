"""Aggregation as a weighted sum ``(sum_i w_i x_i, sum_i w_i)``, the shape DP and Paillier act on.

Flower-free. A :class:`SumLayout` says what one client contributes: named terms ``x_i``
(a probability matrix, class prototypes, model arrays) and the rule a client uses to
weight them itself (its example count, its class counts, ...). Plain aggregation,
central and distributed differential privacy and the Paillier secure sum all produce
the same :class:`WeightedSums`, which the algorithm then finishes (normalises,
sharpens, filters). See ``docs/weighted_sums.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

WEIGHTINGS = ("uniform", "sample_count", "class_counts", "sample_count_class_counts",
              "class_presence")
"""How a client weights its own contribution (so it can do so inside an encryption):
1; its number of examples ``n``; its class counts ``n_c``; ``n * n_c``; ``[n_c > 0]``."""

CLASS_WEIGHTINGS = ("class_counts", "sample_count_class_counts", "class_presence")
"""Weightings with one weight per class (the term's ``weight_axis`` runs over classes)."""


@dataclass(frozen=True)
class SumTerm:
    """One named array every client contributes to a weighted sum.

    Parameters
    ----------
    name : str
        The term's name (e.g. ``"probabilities"``, ``"prototypes"``, a model array).
    shape : tuple of int
        The array's shape.
    weight_axis : int, optional
        The axis a client's weight vector runs along (per-class weights); ``None``: one
        scalar weight for the whole term.
    low, high : float (default: 0, 1)
        Public range of a value (a secure sum quantizes within it, clipping outside).
    """

    name: str
    shape: tuple[int, ...]
    weight_axis: int | None = None
    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a term needs a non-empty name, got {self.name!r}")
        shape = tuple(int(d) for d in self.shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"term {self.name!r}: shape must be non-negative, got {shape}")
        object.__setattr__(self, "shape", shape)
        if self.weight_axis is not None:
            if isinstance(self.weight_axis, bool) or not 0 <= int(self.weight_axis) < len(shape):
                raise ValueError(f"term {self.name!r}: weight_axis {self.weight_axis!r} is not an "
                                 f"axis of shape {shape}")
            object.__setattr__(self, "weight_axis", int(self.weight_axis))
        low, high = float(self.low), float(self.high)
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"term {self.name!r}: need finite low < high, got {low}, {high}")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    @property
    def size(self) -> int:
        """Values in the term."""
        return int(math.prod(self.shape))

    @property
    def weight_size(self) -> int:
        """Weights a client sends for the term (1 for a scalar weight)."""
        return 1 if self.weight_axis is None else self.shape[self.weight_axis]

    def broadcast(self, weights: np.ndarray) -> np.ndarray:
        """``weights`` (``(weight_size,)``) shaped to multiply the term's values."""
        weights = np.asarray(weights, dtype=np.float64).reshape(self.weight_size)
        if self.weight_axis is None:
            return weights.reshape((1,) * len(self.shape))
        shape = [1] * len(self.shape)
        shape[self.weight_axis] = self.weight_size
        return weights.reshape(shape)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"name": self.name, "shape": list(self.shape), "weight_axis": self.weight_axis,
                "low": self.low, "high": self.high}


@dataclass(frozen=True)
class SumLayout:
    """What every client contributes to one round's weighted sum, and how it weights it.

    Parameters
    ----------
    algorithm : str
        The algorithm whose finishing rule turns the sum into its aggregate
        (:func:`flhet_strategies.algorithms.sum_rule`).
    terms : tuple of SumTerm
        The contributed arrays.
    weighting : str (default: "sample_count")
        One of :data:`WEIGHTINGS`.
    params : dict
        The algorithm's public finishing parameters (temperatures, filters), JSON-able.
    """

    algorithm: str
    terms: tuple[SumTerm, ...]
    weighting: str = "sample_count"
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        terms = tuple(t if isinstance(t, SumTerm) else SumTerm(**t) for t in self.terms)
        if not terms:
            raise ValueError("a weighted sum needs at least one term")
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise ValueError(f"term names must be unique, got {names}")
        object.__setattr__(self, "terms", terms)
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.weighting in CLASS_WEIGHTINGS and any(t.weight_axis is None for t in terms):
            raise ValueError(f"weighting {self.weighting!r} gives one weight per class: every "
                             "term needs a weight_axis over the classes")
        object.__setattr__(self, "params", dict(self.params))

    def __hash__(self) -> int:
        return hash((self.algorithm, self.terms, self.weighting))

    def term(self, name: str) -> SumTerm:
        """The term called ``name``."""
        for term in self.terms:
            if term.name == name:
                return term
        raise KeyError(f"no term {name!r} in the layout (terms: {[t.name for t in self.terms]})")

    @property
    def public_weights(self) -> bool:
        """Whether the denominators are public (uniform weights: the count of summands)."""
        return self.weighting == "uniform"

    def to_dict(self) -> dict:
        """JSON-ready form (inverse of :meth:`from_dict`)."""
        return {"algorithm": self.algorithm, "terms": [t.to_dict() for t in self.terms],
                "weighting": self.weighting, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, raw: Mapping) -> "SumLayout":
        """Rebuild a layout from :meth:`to_dict`."""
        return cls(algorithm=str(raw["algorithm"]),
                   terms=tuple(SumTerm(**t) for t in raw["terms"]),
                   weighting=str(raw.get("weighting", "sample_count")),
                   params=dict(raw.get("params", {})))


def client_weights(layout: SumLayout, term: SumTerm, class_counts: np.ndarray | None,
                   num_examples: int | None) -> np.ndarray:
    """The weight vector (``(term.weight_size,)``, float64) a client gives its term.

    Parameters
    ----------
    layout : SumLayout
        Its ``weighting`` says how.
    term : SumTerm
        The term.
    class_counts : np.ndarray, optional
        The client's label histogram (needed by the class weightings).
    num_examples : int, optional
        Its number of training examples (needed by the sample-count weightings).

    Raises
    ------
    ValueError
        If what the weighting needs is missing or malformed.
    """
    rule = layout.weighting
    if rule == "uniform":
        return np.ones(term.weight_size)
    n = None
    if rule in ("sample_count", "sample_count_class_counts"):
        if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer, float)) \
                or int(num_examples) != num_examples or num_examples < 1:
            raise ValueError(f"weighting {rule!r} needs a positive integer example count, "
                             f"got {num_examples!r}")
        n = float(num_examples)
    if rule == "sample_count":
        return np.full(term.weight_size, n)
    counts = np.asarray(class_counts if class_counts is not None else [], dtype=np.float64)
    if counts.shape != (term.weight_size,) or not np.all(np.isfinite(counts)) \
            or np.any(counts < 0):
        raise ValueError(f"weighting {rule!r} needs the client's class counts, "
                         f"{term.weight_size} non-negative values; got shape {counts.shape}")
    if rule == "class_counts":
        return counts
    if rule == "class_presence":
        return (counts > 0).astype(np.float64)
    return n * counts


@dataclass
class WeightedSums:
    """The numerators ``sum_i w_i x_i`` and denominators ``sum_i w_i`` of every term.

    Parameters
    ----------
    numerators : dict[str, np.ndarray]
        Per term, of the term's shape.
    denominators : dict[str, np.ndarray]
        Per term, ``(weight_size,)``.
    count : int
        Contributions in the sum.
    """

    numerators: dict[str, np.ndarray]
    denominators: dict[str, np.ndarray]
    count: int

    def mean(self, term: SumTerm) -> np.ndarray:
        """``numerator / denominator`` (float64), NaN where the denominator is not positive."""
        num = np.asarray(self.numerators[term.name], dtype=np.float64).reshape(term.shape)
        den = term.broadcast(self.denominators[term.name])
        den = np.broadcast_to(den, num.shape)
        out = np.full(num.shape, np.nan)
        np.divide(num, den, out=out, where=den > 0)
        return out


def weighted_sums(layout: SumLayout,
                  contributions: Sequence[tuple[Mapping[str, np.ndarray],
                                                Mapping[str, np.ndarray]]]) -> WeightedSums:
    """Add up ``(values, weights)`` contributions, in the given (stable) order.

    Parameters
    ----------
    layout : SumLayout
        The terms.
    contributions : sequence of (values, weights)
        Per client: ``values[term]`` of the term's shape, ``weights[term]`` of
        ``(weight_size,)``.
    """
    nums = {t.name: np.zeros(t.shape) for t in layout.terms}
    dens = {t.name: np.zeros(t.weight_size) for t in layout.terms}
    for values, weights in contributions:
        for term in layout.terms:
            w = np.asarray(weights[term.name], dtype=np.float64).reshape(term.weight_size)
            nums[term.name] += term.broadcast(w) * np.asarray(values[term.name], dtype=np.float64)
            dens[term.name] += w
    return WeightedSums(nums, dens, len(contributions))


__all__ = ["CLASS_WEIGHTINGS", "SumLayout", "SumTerm", "WEIGHTINGS", "WeightedSums",
           "client_weights", "weighted_sums"]
