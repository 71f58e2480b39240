"""Secure FedAvg of model arrays: the generic secure-sum spec with a model layout.

:class:`SecureModelSpec` is a :class:`~.spec.SecureSumSpec` whose terms are a model's
arrays (every value within ``[-clip_bound, clip_bound]``, one scalar weight per client),
with the conveniences the FedAvg wrappers use (names, shapes, dtypes, the weighted mean
as arrays). Encoding, packing bounds and decoding are the generic spec's. See
docs/weighted_sums.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ...aggregation.weighted_sum import SumLayout, SumTerm
from .spec import SecureSumSpec

MODEL_WEIGHTINGS = ("sample_count", "uniform")
"""Client weights a secure FedAvg supports: the client's example count, or 1."""



@dataclass(frozen=True)
class ModelSumResult:
    """A decrypted and decoded secure FedAvg aggregate.

    Parameters
    ----------
    arrays : list of np.ndarray
        The weighted mean of the summed clients' (clipped) arrays, in the spec's order,
        shapes and dtypes.
    total_weight : int
        The sum of the integer weights (in units of ``vote_unit``).
    error_bound : float
        Bound on ``|arrays - FedAvg of the clipped arrays|`` per entry.
    num_summands : int
        Clients in the sum.
    """

    arrays: list[np.ndarray]
    total_weight: int
    error_bound: float
    num_summands: int


@dataclass(frozen=True)
class EncodedShare:
    """A client's share before encryption: ``values`` (exact integers), ``vote`` and
    ``num_clipped`` (values outside ``[-clip_bound, clip_bound]``)."""

    values: np.ndarray
    vote: int
    num_clipped: int


def model_layout(arrays: Mapping[str, np.ndarray] | Sequence[np.ndarray], clip_bound: float,
                 weighting: str = "sample_count") -> SumLayout:
    """The weighted sum of a model's arrays (a sequence is named ``"0"``, ``"1"``, ...).

    Raises
    ------
    ValueError
        For an empty model, a non-floating array (keep integer buffers such as batch-norm
        counters out), a bad ``clip_bound`` or weighting.
    """
    items = list(arrays.items()) if isinstance(arrays, Mapping) else \
        [(str(i), a) for i, a in enumerate(arrays)]
    if not items:
        raise ValueError("the model has no arrays to average")
    bound = float(clip_bound)
    if not (math.isfinite(bound) and bound > 0):
        raise ValueError(f"clip_bound must be positive and finite, got {clip_bound!r}")
    if weighting not in MODEL_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {MODEL_WEIGHTINGS}, got {weighting!r}")
    terms, dtypes = [], []
    for name, array in items:
        array = np.asarray(array)
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"array {name!r} has dtype {array.dtype}: a secure FedAvg averages "
                             "floating arrays only; keep integer buffers (e.g. batch-norm "
                             "counters) out of the model arrays")
        terms.append(SumTerm(str(name), array.shape, None, -bound, bound))
        dtypes.append(array.dtype.str)
    if sum(t.size for t in terms) < 1:
        raise ValueError("the model has no parameters to average")
    return SumLayout("fedavg", tuple(terms), weighting, {"dtypes": dtypes})


class SecureModelSpec(SecureSumSpec):
    """The secure-sum spec of a model's arrays (:func:`model_layout`), for FedAvg."""

    spec_name = "secure FedAvg"

    @classmethod
    def for_arrays(cls, arrays: Mapping[str, np.ndarray] | Sequence[np.ndarray], *,
                   clip_bound: float, bits: int, max_summands: int,
                   weighting: str = "sample_count", max_examples: int | None = None,
                   vote_bits: int = 16, key_fingerprint: str = "") -> "SecureModelSpec":
        """The spec for models shaped like ``arrays`` (names, shapes, dtypes taken from it).

        ``max_examples`` (a public bound on any client's example count) is required with
        sample-count weights; weights are exact below ``2**vote_bits``.
        """
        return cls.for_layout(model_layout(arrays, clip_bound, weighting), max_summands,
                              bits=bits, vote_bits=vote_bits,
                              max_examples=None if weighting == "uniform" else max_examples,
                              key_fingerprint=key_fingerprint)

    @property
    def names(self) -> tuple[str, ...]:
        """Array names, in order."""
        return tuple(t.name for t in self.sum_layout.terms)

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """Array shapes."""
        return tuple(t.shape for t in self.sum_layout.terms)

    @property
    def dtypes(self) -> tuple[str, ...]:
        """Array dtypes."""
        return tuple(self.sum_layout.params["dtypes"])

    @property
    def clip_bound(self) -> float:
        """``B``: every value is clipped to ``[-B, B]``."""
        return self.sum_layout.terms[0].high

    @property
    def weighting(self) -> str:
        """``"sample_count"`` or ``"uniform"``."""
        return self.sum_layout.weighting

    @property
    def num_params(self) -> int:
        """Parameters of the model."""
        return int(sum(t.size for t in self.sum_layout.terms))

    @property
    def step(self) -> float:
        """Quantization step ``2 B / L``."""
        return 2.0 * self.clip_bound / self.levels

    def check_arrays(self, arrays: Mapping[str, np.ndarray] | Sequence[np.ndarray]
                     ) -> list[np.ndarray]:
        """The model's arrays in the spec's order, after checking names and shapes.

        Raises
        ------
        ValueError
            If names, count or shapes differ from the spec.
        """
        if isinstance(arrays, Mapping):
            if set(arrays) != set(self.names):
                raise ValueError(f"the model has arrays {sorted(arrays)}, the spec expects "
                                 f"{sorted(self.names)}")
            ordered = [np.asarray(arrays[name]) for name in self.names]
        else:
            ordered = [np.asarray(array) for array in arrays]
            if len(ordered) != len(self.names):
                raise ValueError(f"the model has {len(ordered)} arrays, the spec expects "
                                 f"{len(self.names)}")
        for name, shape, array in zip(self.names, self.shapes, ordered):
            if array.shape != shape:
                raise ValueError(f"array {name!r} has shape {array.shape}, the spec expects "
                                 f"{shape}")
        return ordered

    def vote(self, weight: float | None) -> int:
        """A client's integer weight (in units of ``vote_unit``; 1 with uniform weights).

        Raises
        ------
        ValueError
            If the weight is not a positive integer or exceeds the public bound.
        """
        if self.weighting == "uniform":
            return 1
        numeric = isinstance(weight, (int, float, np.number)) and not isinstance(weight, bool)
        if not numeric or not math.isfinite(weight) or weight != int(weight) or weight < 1:
            raise ValueError(f"the client weight must be a positive integer, got {weight!r}")
        return int(self.votes(np.array([weight]))[0])

    def encode_model(self, arrays: Mapping[str, np.ndarray] | Sequence[np.ndarray],
                     weight: float | None) -> EncodedShare:
        """A client's share of its model arrays weighted by ``weight`` (its example count).

        Raises
        ------
        ValueError
            If the arrays do not fit the spec, are not floating or hold NaN/Inf.
        """
        vote = self.vote(weight)
        ordered = self.check_arrays(arrays)
        values = {}
        for name, array in zip(self.names, ordered):
            if not np.issubdtype(array.dtype, np.floating):
                raise ValueError(f"array {name!r} must be floating, got dtype {array.dtype}")
            if not np.all(np.isfinite(array)):
                bad = int(np.count_nonzero(~np.isfinite(array)))
                raise ValueError(f"the model holds {bad} NaN or infinite values; cannot "
                                 "encrypt it")
            values[name] = array
        raw_weight = 1 if self.weighting == "uniform" else int(weight)
        encoded, clipped = self.encode(values, {n: np.array([raw_weight]) for n in self.names})
        return EncodedShare(encoded, vote, clipped)

    def decode_model(self, sums: np.ndarray, num_summands: int) -> ModelSumResult:
        """The weighted mean model of ``num_summands`` decrypted shares.

        Raises
        ------
        ValueError, SecureSumOverflowError
            As :meth:`.SecureSumSpec.decode`.
        """
        decoded = self.decode(sums, num_summands)
        arrays = [decoded.mean(term).astype(dtype)
                  for term, dtype in zip(self.sum_layout.terms, self.dtypes)]
        total = int(decoded.denominators[self.names[0]][0])
        return ModelSumResult(arrays, total, self.error_bound_model(num_summands, total),
                              int(num_summands))

    def error_bound_model(self, num_summands: int, total_weight: int) -> float:
        """Bound per entry on ``|decoded - FedAvg of the clipped arrays|``: the generic
        bound plus the rounding to the arrays' float dtype."""
        term = self.sum_layout.terms[0]
        bound = float(self.error_bound(term, num_summands, np.array([total_weight]))[0])
        eps = max(float(np.finfo(np.dtype(d)).eps) for d in self.dtypes)
        return bound + self.clip_bound * eps


__all__ = ["EncodedShare", "MODEL_WEIGHTINGS", "ModelSumResult", "SecureModelSpec", "model_layout"]
