"""Public spec of a Paillier secure weighted sum: what clients encode and how sums decode.

Flower-free. For every term of a :class:`~flhet_strategies.aggregation.weighted_sum.SumLayout`
a client quantizes its values within the term's public range ``[lo, hi]``
(``q = round((clip(x, lo, hi) - lo) L / (hi - lo))``, ``L = 2**bits - 1``), weights them
by its integer weights ``v`` (computed by itself from the layout's rule) and encrypts
``A = v q`` and ``v``. The server multiplies ciphertexts; a key holder decrypts
``(sum A, sum v)`` and gets the weighted mean ``lo + (hi - lo) / L * sum A / sum v``.
See docs/weighted_sums.md (the quantization bound) and docs/paillier_packing.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from ...aggregation.weighted_sum import SumLayout, SumTerm, WeightedSums
from .errors import SecureSumOverflowError
from .integers import IntegerSumSpec, check_int, integer_layout, round_half_up
from .json_spec import JsonSpec
from .layout import SecureSumLayout

MAX_EXACT_SUM_BITS = 53
"""Integer sums stay exact in float64 up to this many bits."""

MAX_VALUE_BITS = 32
"""Most bits of one weighted level (the packing's fixed-point limit)."""


def weight_bound(weighting: str, max_examples: int | None) -> int:
    """The public bound on a client's weight under ``weighting``.

    ``max_examples`` (a public bound on any client's example count) for example or
    class counts, its square for ``sample_count_class_counts``, 1 for uniform and
    class-presence weights.

    Raises
    ------
    ValueError
        If the weighting needs ``max_examples`` and it is missing.
    """
    if weighting in ("uniform", "class_presence"):
        return 1
    if max_examples is None:
        raise ValueError(f"weighting {weighting!r} needs max_examples, a public bound on any "
                         "client's number of training examples")
    check_int("max_examples", max_examples, 1)
    return int(max_examples) ** 2 if weighting == "sample_count_class_counts" \
        else int(max_examples)


@dataclass(frozen=True)
class SecureSumSpec(JsonSpec, IntegerSumSpec):
    """Public parameters of one round's secure weighted sum, agreed by server and clients.

    Parameters
    ----------
    sum_layout : SumLayout
        The terms, their ranges and the clients' weighting rule.
    max_summands : int
        Most clients summed in the round (the sampled cohort).
    bits : int (default: 8)
        Quantization bits of a value over its term's range.
    vote_bits : int (default: 16)
        Bits of an integer weight.
    vote_unit : int (default: 1)
        Weights are counted in this unit (1: exact).
    max_weight : int (default: 1)
        The public bound on a client's raw weight; a larger one raises on the client.
    key_fingerprint : str (default: "")
        Hex fingerprint of the public key the clients must encrypt under.
    noise : dict, optional
        Distributed DP inside the sum: ``noise_multiplier``, ``norm_bound`` and
        ``num_clients`` of the shares the values carry (the layout is then the noisy one,
        :func:`flhet_strategies.privacy.dp.noise_share.noisy_layout`).
    """

    sum_layout: SumLayout
    max_summands: int
    bits: int = 8
    vote_bits: int = 16
    vote_unit: int = 1
    max_weight: int = 1
    key_fingerprint: str = ""
    noise: dict | None = field(default=None)

    spec_name = "secure sum"  # names the spec in from_json's errors (no field)

    def __post_init__(self) -> None:
        if isinstance(self.sum_layout, Mapping):
            object.__setattr__(self, "sum_layout", SumLayout.from_dict(self.sum_layout))
        if not isinstance(self.sum_layout, SumLayout):
            raise TypeError(f"sum_layout must be a SumLayout, got "
                            f"{type(self.sum_layout).__name__}")
        for name in ("max_summands", "bits", "vote_bits", "vote_unit", "max_weight"):
            check_int(name, getattr(self, name), 1)
        if not 1 <= self.bits <= 24 or self.vote_bits > 24:
            raise ValueError(f"bits must lie in [1, 24] and vote_bits in [1, 24], got "
                             f"{self.bits} and {self.vote_bits}")
        if self.value_bits > MAX_VALUE_BITS:
            raise ValueError(f"bits={self.bits} and vote_bits={self.vote_bits} give "
                             f"{self.value_bits}-bit weighted values; at most {MAX_VALUE_BITS} "
                             "are supported: lower bits or vote_bits")
        total_bits = (self.max_summands * ((1 << self.value_bits) - 1)).bit_length()
        if total_bits > MAX_EXACT_SUM_BITS:
            raise ValueError(f"a sum of {self.max_summands} {self.value_bits}-bit values needs "
                             f"{total_bits} bits, more than float64 holds exactly; lower the "
                             "bits")
        if self.noise is not None:
            object.__setattr__(self, "noise", dict(self.noise))

    @classmethod
    def for_layout(cls, layout: SumLayout, max_summands: int, *, bits: int = 8,
                   vote_bits: int = 16, max_examples: int | None = None,
                   key_fingerprint: str = "", noise: dict | None = None) -> "SecureSumSpec":
        """The spec of ``layout`` for a round of ``max_summands`` clients.

        Weights are exact when their public bound (:func:`weight_bound`) is below
        ``2**vote_bits``, else counted in units ``ceil(bound / (2**vote_bits - 1))``.
        """
        bound = weight_bound(layout.weighting, max_examples)
        check_int("vote_bits", vote_bits, 1)
        vote_bits = min(int(vote_bits), max(1, bound.bit_length()))
        unit = max(1, -(-bound // ((1 << vote_bits) - 1)))
        return cls(sum_layout=layout, max_summands=int(max_summands), bits=int(bits),
                   vote_bits=vote_bits, vote_unit=unit, max_weight=bound,
                   key_fingerprint=key_fingerprint, noise=noise)

    def with_max_summands(self, max_summands: int) -> "SecureSumSpec":
        """The same spec for a round of ``max_summands`` clients."""
        return replace(self, max_summands=int(max_summands))

    def to_json(self) -> str:
        """The spec as a JSON string (a Flower config value)."""
        import json

        raw = {"sum_layout": self.sum_layout.to_dict(), "max_summands": self.max_summands,
               "bits": self.bits, "vote_bits": self.vote_bits, "vote_unit": self.vote_unit,
               "max_weight": self.max_weight, "key_fingerprint": self.key_fingerprint,
               "noise": self.noise}
        return json.dumps(raw, sort_keys=True)

    # ------------------------------------------------------------------ sizes

    @property
    def levels(self) -> int:
        """``L = 2**bits - 1``: the level of a term's ``hi``."""
        return (1 << self.bits) - 1

    @property
    def max_vote_level(self) -> int:
        """``2**vote_bits - 1``: the largest integer weight."""
        return (1 << self.vote_bits) - 1

    @property
    def value_bits(self) -> int:
        """Bits of one encrypted value (``L`` times the largest weight)."""
        return (self.levels * self.max_vote_level).bit_length()

    @property
    def num_values(self) -> int:
        """Integers per share: every term's weighted levels and weights."""
        return int(sum(t.size + t.weight_size for t in self.sum_layout.terms))

    def term_step(self, term: SumTerm) -> float:
        """Quantization step of ``term``: ``(hi - lo) / L``."""
        return (term.high - term.low) / self.levels

    def check_sum_layout(self, layout: SecureSumLayout) -> None:
        """Raise ``ValueError`` unless ``layout`` is this spec's (for some cohort size)."""
        expected = integer_layout(self.num_values, layout.max_summands, self.value_bits,
                                  layout.plaintext_bits)
        if layout != expected:
            raise ValueError(f"the encrypted sum has layout {layout}; its spec expects {expected}")

    # ------------------------------------------------------------------ client share

    def votes(self, weights: np.ndarray) -> np.ndarray:
        """Integer weights (in units of ``vote_unit``) of raw weights (int64).

        A positive weight keeps at least one unit. Raises ``ValueError`` for weights
        that are not non-negative integers or exceed :attr:`max_weight`.
        """
        w = np.asarray(weights, dtype=np.float64)
        if not np.all(np.isfinite(w)) or np.any(w < 0) or np.any(w != np.round(w)):
            raise ValueError("weights must be non-negative integers")
        if w.size and w.max() > self.max_weight:
            raise ValueError(f"a weight of {int(w.max())} exceeds the public bound "
                             f"{self.max_weight}: this client holds more examples than the "
                             "max_examples the server announced; raise max_examples")
        raw = w.astype(np.int64)
        votes = np.where(raw > 0, np.maximum(1, round_half_up(raw, self.vote_unit)), 0)
        return votes.astype(np.int64)

    def encode(self, values: Mapping[str, np.ndarray],
               weights: Mapping[str, np.ndarray]) -> tuple[np.ndarray, int]:
        """A client's share: ``[v q, v]`` of every term, exact integers in float64.

        Parameters
        ----------
        values : Mapping[str, np.ndarray]
            The client's term values (any float, finite; clipped to the term's range).
        weights : Mapping[str, np.ndarray]
            Its raw weights per term, ``(weight_size,)``.

        Returns
        -------
        tuple[np.ndarray, int]
            ``num_values`` integers for a codec on :meth:`layout`, and how many values
            lay outside their range and were clipped.

        Raises
        ------
        ValueError
            If a value has the wrong shape, is not floating or not finite.
        """
        parts, clipped = [], 0
        for term in self.sum_layout.terms:
            x = np.asarray(values[term.name])
            if not np.issubdtype(x.dtype, np.floating):
                raise ValueError(f"term {term.name!r} must be floating, got dtype {x.dtype}")
            if x.shape != term.shape:
                raise ValueError(f"term {term.name!r} must have shape {term.shape}, got {x.shape}")
            if not np.all(np.isfinite(x)):
                raise ValueError(f"term {term.name!r} holds NaN/Inf values; cannot encrypt it")
            x = x.astype(np.float64)
            clipped += int(np.count_nonzero((x < term.low) | (x > term.high)))
            scaled = (np.clip(x, term.low, term.high) - term.low) * (self.levels
                                                                     / (term.high - term.low))
            levels = np.clip(np.rint(scaled), 0, self.levels)
            votes = self.votes(np.asarray(weights[term.name]).reshape(term.weight_size))
            parts += [(levels * term.broadcast(votes)).ravel(), votes.astype(np.float64)]
        return np.concatenate(parts), clipped

    # ------------------------------------------------------------------ decoding

    def decode(self, sums: np.ndarray, num_summands: int) -> WeightedSums:
        """The weighted sums (in quantized units) of ``num_summands`` decrypted shares.

        ``numerators / denominators`` is the weighted mean of every term, to
        :meth:`error_bound`.

        Raises
        ------
        ValueError
            If the sums have the wrong length or are not non-negative integers.
        SecureSumOverflowError
            If they cannot come from ``num_summands`` honest shares (a weight total above
            the summands times the top weight, a level sum above ``L`` times its weight
            total, uniform weights that do not add up to the summands).
        """
        values = np.asarray(sums, dtype=np.float64)
        if values.shape != (self.num_values,):
            raise ValueError(f"sums must have shape ({self.num_values},), got {values.shape}")
        if not np.all(np.isfinite(values)) or np.any(values < 0) \
                or np.any(values != np.rint(values)):
            raise ValueError("decrypted sums must be non-negative integers")
        check_int("num_summands", num_summands, 1)
        nums, dens, start = {}, {}, 0
        for term in self.sum_layout.terms:
            levels = values[start:start + term.size].reshape(term.shape)
            start += term.size
            votes = values[start:start + term.weight_size]
            start += term.weight_size
            if np.any(votes > num_summands * self.max_vote_level) or (
                    self.sum_layout.public_weights and np.any(votes != num_summands)):
                raise SecureSumOverflowError(
                    f"the decrypted weight totals of {term.name!r} cannot come from "
                    f"{num_summands} shares: a share was malformed")
            if np.any(levels > self.levels * term.broadcast(votes)):
                raise SecureSumOverflowError(
                    f"a decrypted level sum of {term.name!r} exceeds the top level times its "
                    "weight total: a share was out of range or the sum is corrupted")
            nums[term.name] = term.low * term.broadcast(votes) + self.term_step(term) * levels
            dens[term.name] = votes
        return WeightedSums(nums, dens, int(num_summands))

    def error_bound(self, term: SumTerm, num_summands: int,
                    denominators: np.ndarray) -> np.ndarray:
        """Bound per weight slot on ``|decoded mean - weighted mean of the clipped values|``.

        ``step / 2`` (rounding to levels, a convex combination keeps it); with weights in
        units (``vote_unit > 1``) plus ``(hi - lo) k / V`` for ``k`` summands and weight
        total ``V`` (the shift of the weights by rounding them, ``|v - w/u| <= 1``).
        """
        bound = np.full(term.weight_size, self.term_step(term) / 2.0)
        if self.vote_unit > 1:
            den = np.asarray(denominators, dtype=np.float64)
            bound += np.divide((term.high - term.low) * num_summands, den,
                               out=np.full(den.shape, np.inf), where=den > 0)
        return bound


__all__ = ["MAX_EXACT_SUM_BITS", "SecureSumSpec", "weight_bound"]
