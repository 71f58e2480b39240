"""FedAvg through a Paillier secure sum: what clients encrypt and how the sum decodes.

Plaintext FedAvg forms ``g = sum_i w_i x_i / sum_i w_i`` over the clients' model arrays
``x_i`` (``P`` parameters, flattened) with weights ``w_i`` (their number of training
examples, or 1). Both sums are sums over clients, so each client encrypts its share of
both, packed into one vector of ``P + 1`` integers, and the server multiplies
ciphertexts only:

    A_i = v_i * q_i      (P integers),   q_i = round((clip(x_i, -B, B) + B) / step)
    v_i                  (1 integer),    the client's integer weight

with the public clip bound ``B``, ``bits`` quantization bits, ``L = 2**bits - 1`` levels
and ``step = 2 B / L`` (signs need no bit: the offset ``B`` makes every level
non-negative, so sums never borrow and many values share a plaintext, see
:mod:`.packing`). Whoever holds the private key decrypts ``A = sum_i A_i`` and
``V = sum_i v_i`` and computes

    g~ = -B + step * A / V.

The weight is inside the encryption, so the sum decodes on its own: no side channel for
the total weight is needed, and clients that dropped out are simply not in either sum.

Quantization bound
------------------
Let ``g_clip`` be FedAvg of the *clipped* arrays. ``g~`` is a convex combination of the
rounded levels, each within ``step / 2`` of its value, so per entry

    |g~ - g_clip| <= step / 2                   (votes exact: vote_unit == 1)
                   + 2 B k / V                  (only if vote_unit > 1)
                   + B * eps(dtype)             (rounding to the arrays' float dtype)

The second term bounds the shift of the weights when votes are counted in units
``u = ceil(max_examples / (2**vote_bits - 1))`` (``v~ = max(1, round(w / u))``,
``|v~ - w/u| <= 1``; ``k`` summed clients). :class:`ModelSumResult` reports the bound.

Overflow
--------
Values outside ``[-B, B]`` are clipped by the client (it reports how many). A weight
above the public bound ``max_examples`` raises. The packing's padding absorbs the
carries of ``max_summands`` additions; adding more raises (:class:`.CiphertextAggregator`),
and a decrypted slot above what ``k`` honest shares can hold raises
:class:`.SecureSumOverflowError` (:meth:`.SlotPacking.unpack`), as does
:meth:`SecureModelSpec.decode` when a level sum exceeds ``L`` times the weight total.
Nothing wraps silently.

Cost: ``P + 1`` values of ``slot_bits = bitlen(max_summands * (2**value_bits - 1))`` bits,
``value_bits = bitlen(L * (2**vote_bits - 1))``, packed ``2047 // slot_bits`` per
2048-bit ciphertext (512 bytes). 16-bit levels with exact 8-bit weights and 10 clients:
28-bit slots, 73 values per ciphertext, 7.0 bytes per parameter (float32: 4);
uniform weights: 20-bit slots, 102 per ciphertext, 5.0 bytes per parameter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from .errors import SecureSumOverflowError
from .integers import (
    IntegerSumSpec,
    check_int,
    integer_layout,
    mean_from_levels,
    offset_levels,
    round_half_up,
)
from .json_spec import JsonSpec
from .layout import SecureSumLayout

MODEL_WEIGHTINGS = ("sample_count", "uniform")
"""Client weights a secure FedAvg supports: the client's example count, or 1."""

MAX_EXACT_SUM_BITS = 53
"""Integer sums stay exact in float64 up to this many bits."""

MAX_VALUE_BITS = 32
"""Most bits of one weighted level (the packing's fixed-point limit)."""

SPEC_CONFIG_KEY = "secure-fedavg-spec"
"""Config key carrying :meth:`SecureModelSpec.to_json` to the clients."""

ENCRYPTED_SUM_ARRAY = "secure-fedavg-sum"
"""Array holding the encrypted weighted sum the server relays (``uint8``)."""

ENCRYPTED_SHARE_ARRAY = "secure-fedavg-share"
"""Array holding one client's encrypted share (``uint8``)."""

CLIPPED_METRIC = "secure-clipped-values"
"""Reply metric: how many of the client's values were clipped to ``[-B, B]``."""

ENCRYPTED_FLAG_KEY = "secure-fedavg-encrypted"
"""Config key (compat API): True when the parameters sent are the encrypted sum."""

ARRAYS_KEY_CONFIG = "secure-fedavg-arrays-key"
"""Config key (Message API): the ArrayRecord key the model travels under."""

WEIGHT_KEY_CONFIG = "secure-fedavg-weight-key"
"""Config key (Message API): the MetricRecord key holding a client's weight."""


@dataclass(frozen=True)
class ModelSumResult:
    """A decrypted and decoded secure FedAvg aggregate.

    Parameters
    ----------
    arrays : list of np.ndarray
        The weighted mean of the summed clients' (clipped) arrays, in the spec's order,
        shapes and dtypes.
    total_weight : int
        ``V``, the sum of the integer weights (in units of ``vote_unit``).
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
    """A client's share before encryption.

    Parameters
    ----------
    values : np.ndarray
        ``num_values`` exact integers (float64): ``v * q`` for every parameter, then ``v``.
    vote : int
        The integer weight ``v``.
    num_clipped : int
        Values that were outside ``[-clip_bound, clip_bound]`` and were clipped.
    """

    values: np.ndarray
    vote: int
    num_clipped: int


@dataclass(frozen=True)
class SecureModelSpec(JsonSpec, IntegerSumSpec):
    """Public parameters of a secure FedAvg round, agreed by the server and the clients.

    The server builds it (:meth:`for_arrays`) and sends it with every message
    (:meth:`to_json`); clients encode their share with it and decode the sum.

    Parameters
    ----------
    names : tuple of str
        Array names, in order (an ``ArrayRecord``'s keys, or ``"0"``, ``"1"``, ... for
        a list of arrays).
    shapes : tuple of tuple of int
        Array shapes.
    dtypes : tuple of str
        Array dtypes (floating).
    clip_bound : float
        ``B``: every value is clipped to ``[-B, B]`` before quantization.
    bits : int
        Quantization bits of a value (``L = 2**bits - 1`` levels over ``[-B, B]``).
    max_summands : int
        Most clients summed in the round.
    weighting : str (default: "sample_count")
        Client weight: its number of training examples, or ``"uniform"`` (1).
    vote_bits : int (default: 1)
        Bits of an integer weight.
    vote_unit : int (default: 1)
        Weights are counted in this unit (1: exact).
    key_fingerprint : str (default: "")
        Hex fingerprint of the public key the clients must encrypt under.
    max_examples : int, optional
        The public bound on a client's weight (sample-count weighting); a larger weight
        raises.
    """

    names: tuple
    shapes: tuple
    dtypes: tuple
    clip_bound: float
    bits: int
    max_summands: int
    weighting: str = "sample_count"
    vote_bits: int = 1
    vote_unit: int = 1
    key_fingerprint: str = ""
    max_examples: int | None = None

    spec_name = "secure FedAvg"  # names the spec in from_json's errors (no field)

    def __post_init__(self) -> None:
        names = tuple(str(name) for name in self.names)
        shapes = tuple(tuple(int(d) for d in shape) for shape in self.shapes)
        dtypes = tuple(np.dtype(d).str for d in self.dtypes)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "shapes", shapes)
        object.__setattr__(self, "dtypes", dtypes)
        if not names or not len(names) == len(shapes) == len(dtypes):
            raise ValueError(
                f"names, shapes and dtypes must be non-empty and of equal length, got "
                f"{len(names)}, {len(shapes)} and {len(dtypes)}")
        if len(set(names)) != len(names):
            raise ValueError(f"array names must be unique, got {list(names)}")
        if any(d < 0 for shape in shapes for d in shape):
            raise ValueError(f"shapes must be non-negative, got {list(shapes)}")
        for name, dtype in zip(names, dtypes):
            if not np.issubdtype(np.dtype(dtype), np.floating):
                raise ValueError(
                    f"array {name!r} has dtype {np.dtype(dtype)}: a secure FedAvg averages "
                    "floating arrays only; keep integer buffers (e.g. batch-norm counters) "
                    "out of the model arrays")
        if self.num_params < 1:
            raise ValueError("the model has no parameters to average")
        bound = float(self.clip_bound)
        if not (math.isfinite(bound) and bound > 0):
            raise ValueError(f"clip_bound must be positive and finite, got {self.clip_bound!r}")
        object.__setattr__(self, "clip_bound", bound)
        for name in ("bits", "max_summands", "vote_bits", "vote_unit"):
            check_int(name, getattr(self, name), 1)
        if self.max_examples is not None:
            check_int("max_examples", self.max_examples, 1)
        if self.weighting not in MODEL_WEIGHTINGS:
            raise ValueError(
                f"weighting must be one of {MODEL_WEIGHTINGS}, got {self.weighting!r}")
        if self.value_bits > MAX_VALUE_BITS:
            raise ValueError(
                f"bits={self.bits} and vote_bits={self.vote_bits} give "
                f"{self.value_bits}-bit weighted values; at most {MAX_VALUE_BITS} are "
                "supported: lower bits or vote_bits")
        total_bits = (self.max_summands * ((1 << self.value_bits) - 1)).bit_length()
        if total_bits > MAX_EXACT_SUM_BITS:
            raise ValueError(
                f"a sum of {self.max_summands} {self.value_bits}-bit values needs "
                f"{total_bits} bits, more than float64 holds exactly; lower the bits")

    @classmethod
    def for_arrays(
        cls,
        arrays: Mapping[str, np.ndarray] | Sequence[np.ndarray],
        *,
        clip_bound: float,
        bits: int,
        max_summands: int,
        weighting: str = "sample_count",
        max_examples: int | None = None,
        vote_bits: int = 16,
        key_fingerprint: str = "",
    ) -> "SecureModelSpec":
        """The spec for models shaped like ``arrays``.

        Parameters
        ----------
        arrays : Mapping[str, np.ndarray] or Sequence[np.ndarray]
            A model (e.g. the initial one): names, shapes and dtypes are taken from it;
            a sequence is named ``"0"``, ``"1"``, ...
        clip_bound, bits, max_summands, weighting : see the class parameters.
        max_examples : int, optional
            Public bound on any client's weight (number of training examples); needed
            for ``weighting="sample_count"``. Weights are exact when
            ``max_examples < 2**vote_bits``, else counted in units.
        vote_bits : int (default: 16)
            Most bits of an integer weight; fewer are used when ``max_examples`` needs
            fewer.

        Raises
        ------
        ValueError
            If a setting is invalid or ``max_examples`` is missing.
        """
        names, shapes, dtypes = _structure(arrays)
        if weighting not in MODEL_WEIGHTINGS:
            raise ValueError(f"weighting must be one of {MODEL_WEIGHTINGS}, got {weighting!r}")
        if weighting == "uniform":
            vote_bits, unit, max_examples = 1, 1, None
        else:
            if max_examples is None:
                raise ValueError(
                    "weighting='sample_count' needs max_examples, a public bound on any "
                    "client's number of training examples")
            check_int("max_examples", max_examples, 1)
            check_int("vote_bits", vote_bits, 1)
            vote_bits = min(int(vote_bits), int(max_examples).bit_length())
            unit = max(1, -(-int(max_examples) // ((1 << vote_bits) - 1)))
        return cls(names=names, shapes=shapes, dtypes=dtypes, clip_bound=clip_bound,
                   bits=bits, max_summands=max_summands, weighting=weighting,
                   vote_bits=vote_bits, vote_unit=unit, key_fingerprint=key_fingerprint,
                   max_examples=None if max_examples is None else int(max_examples))

    def with_max_summands(self, max_summands: int) -> "SecureModelSpec":
        """The same spec for a round of ``max_summands`` clients."""
        return replace(self, max_summands=max_summands)

    # ------------------------------------------------------------------ layout

    @property
    def num_params(self) -> int:
        """``P``: parameters of the model."""
        return int(sum(math.prod(shape) for shape in self.shapes))

    @property
    def num_values(self) -> int:
        """Values per share: ``P`` weighted levels and the weight."""
        return self.num_params + 1

    @property
    def levels(self) -> int:
        """``L = 2**bits - 1``: the level of ``+clip_bound``."""
        return (1 << self.bits) - 1

    @property
    def step(self) -> float:
        """Quantization step ``2 B / L``."""
        return 2.0 * self.clip_bound / self.levels

    @property
    def max_vote_level(self) -> int:
        """``2**vote_bits - 1``: the largest integer weight."""
        return (1 << self.vote_bits) - 1

    @property
    def value_bits(self) -> int:
        """Bits of one encrypted value (``L`` times the largest weight)."""
        return (self.levels * self.max_vote_level).bit_length()

    def check_sum_layout(self, layout: SecureSumLayout) -> None:
        """Raise ``ValueError`` unless ``layout`` is this spec's layout for some cohort size.

        The encrypted sum a client decodes was made in the previous round, whose
        ``max_summands`` may differ from this round's.
        """
        expected = integer_layout(self.num_values, layout.max_summands, self.value_bits,
                                  layout.plaintext_bits)
        if layout != expected:
            raise ValueError(
                f"the encrypted model sum has layout {layout}; this spec expects {expected}")

    # ------------------------------------------------------------------ client share

    def check_arrays(self, arrays: Mapping[str, np.ndarray] | Sequence[np.ndarray]
                     ) -> list[np.ndarray]:
        """The model's arrays in the spec's order, after checking names and shapes.

        Parameters
        ----------
        arrays : Mapping[str, np.ndarray] or Sequence[np.ndarray]
            By name (a mapping) or by position (a sequence).

        Raises
        ------
        ValueError
            If names, count or shapes differ from the spec.
        """
        if isinstance(arrays, Mapping):
            if set(arrays) != set(self.names):
                raise ValueError(
                    f"the model has arrays {sorted(arrays)}, the spec expects "
                    f"{sorted(self.names)}")
            ordered = [np.asarray(arrays[name]) for name in self.names]
        else:
            ordered = [np.asarray(array) for array in arrays]
            if len(ordered) != len(self.names):
                raise ValueError(
                    f"the model has {len(ordered)} arrays, the spec expects {len(self.names)}")
        for name, shape, array in zip(self.names, self.shapes, ordered):
            if array.shape != shape:
                raise ValueError(
                    f"array {name!r} has shape {array.shape}, the spec expects {shape}")
        return ordered

    def vote(self, weight: float | None) -> int:
        """A client's integer weight ``v`` (in units of ``vote_unit``).

        Parameters
        ----------
        weight : int or None
            Its number of training examples (positive); ignored (may be None) when the
            weighting is uniform.

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
        limit = self.max_examples or self.max_vote_level * self.vote_unit
        vote = max(1, int(round_half_up(int(weight), self.vote_unit)))
        if weight > limit or vote > self.max_vote_level:
            raise ValueError(
                f"a weight of {int(weight)} exceeds the public bound {limit}: this client "
                "holds more examples than the max_examples the server announced; raise "
                "max_examples")
        return vote

    def encode(self, arrays: Mapping[str, np.ndarray] | Sequence[np.ndarray],
               weight: float | None) -> EncodedShare:
        """A client's share ``[v * q, v]`` as exact integers in float64.

        Parameters
        ----------
        arrays : Mapping[str, np.ndarray] or Sequence[np.ndarray]
            The client's model arrays (see :meth:`check_arrays`).
        weight : int or None
            Its number of training examples (see :meth:`vote`).

        Returns
        -------
        EncodedShare
            ``num_values`` integers in ``[0, 2**value_bits - 1]`` for a
            :class:`.SecureSumCodec` built on :meth:`layout`, and the clip count.

        Raises
        ------
        ValueError
            If the arrays do not fit the spec, are not floating, or hold NaN/Inf.
        """
        ordered = self.check_arrays(arrays)
        for name, array in zip(self.names, ordered):
            if not np.issubdtype(array.dtype, np.floating):
                raise ValueError(f"array {name!r} must be floating, got dtype {array.dtype}")
        flat = np.concatenate([a.astype(np.float64, copy=False).ravel() for a in ordered])
        if not np.all(np.isfinite(flat)):
            bad = int(np.count_nonzero(~np.isfinite(flat)))
            raise ValueError(f"the model holds {bad} NaN or infinite values; cannot encrypt it")
        vote = self.vote(weight)
        levels, num_clipped = offset_levels(flat, self.clip_bound, self.levels)
        values = np.concatenate([levels * float(vote), [float(vote)]])
        return EncodedShare(values=values, vote=vote, num_clipped=num_clipped)

    # ------------------------------------------------------------------ decoding

    def decode(self, sums: np.ndarray, num_summands: int) -> ModelSumResult:
        """Turn the decrypted sum of ``num_summands`` shares into the weighted mean model.

        Parameters
        ----------
        sums : np.ndarray
            Decrypted element-wise sums (from :meth:`.KeyHolder.decrypt_sum`), length
            ``num_values``.
        num_summands : int
            Clients in the sum.

        Returns
        -------
        ModelSumResult
            The arrays (FedAvg of the clipped client arrays, to ``error_bound``).

        Raises
        ------
        ValueError
            If the sums have the wrong length or are not non-negative integers.
        SecureSumOverflowError
            If the sums cannot come from ``num_summands`` honest shares (a weight total
            below the count, or a level sum above ``L`` times the weight total).
        """
        values = np.asarray(sums, dtype=np.float64)
        if values.shape != (self.num_values,):
            raise ValueError(
                f"sums must have shape ({self.num_values},), got {values.shape}")
        if not np.all(np.isfinite(values)) or np.any(values < 0) \
                or np.any(values != np.rint(values)):
            raise ValueError("decrypted sums must be non-negative integers")
        check_int("num_summands", num_summands, 1)
        total = values[-1]
        if not num_summands <= total <= num_summands * self.max_vote_level:
            raise SecureSumOverflowError(
                f"the decrypted weight total {int(total)} cannot come from {num_summands} "
                f"weights in [1, {self.max_vote_level}]: a share was malformed")
        level_sums = values[:-1]
        if np.any(level_sums > self.levels * total):
            raise SecureSumOverflowError(
                "a decrypted level sum exceeds the top level times the weight total: a "
                "share was out of range or the sum is corrupted")
        flat = mean_from_levels(level_sums, total, self.clip_bound, self.levels)
        arrays, offset = [], 0
        for shape, dtype in zip(self.shapes, self.dtypes):
            size = math.prod(shape)
            arrays.append(flat[offset:offset + size].reshape(shape).astype(dtype))
            offset += size
        return ModelSumResult(arrays=arrays, total_weight=int(total),
                              error_bound=self.error_bound(num_summands, int(total)),
                              num_summands=int(num_summands))

    def error_bound(self, num_summands: int, total_weight: int) -> float:
        """Bound per entry on ``|decoded - FedAvg of the clipped arrays|`` (see the module)."""
        bound = self.step / 2.0
        if self.vote_unit > 1:
            bound += 2.0 * self.clip_bound * num_summands / total_weight
        eps = max(float(np.finfo(np.dtype(d)).eps) for d in self.dtypes)
        return bound + self.clip_bound * eps


def _structure(arrays: Mapping[str, np.ndarray] | Sequence[np.ndarray]
               ) -> tuple[tuple, tuple, tuple]:
    if isinstance(arrays, Mapping):
        items = [(str(name), np.asarray(array)) for name, array in arrays.items()]
    else:
        items = [(str(i), np.asarray(array)) for i, array in enumerate(arrays)]
    return (tuple(name for name, _ in items), tuple(a.shape for _, a in items),
            tuple(a.dtype.str for _, a in items))


__all__ = [
    "ARRAYS_KEY_CONFIG",
    "CLIPPED_METRIC",
    "ENCRYPTED_FLAG_KEY",
    "ENCRYPTED_SHARE_ARRAY",
    "ENCRYPTED_SUM_ARRAY",
    "MODEL_WEIGHTINGS",
    "SPEC_CONFIG_KEY",
    "EncodedShare",
    "ModelSumResult",
    "SecureModelSpec",
    "WEIGHT_KEY_CONFIG",
]
