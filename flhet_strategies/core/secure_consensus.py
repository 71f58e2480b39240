"""DS-FL logit consensus through a Paillier secure sum: what clients encrypt and decode.

The plaintext rule (:func:`~flhet_strategies.core.consensus.logit_consensus`, mode
``"dsfl"``) forms, for every proxy sample ``s`` and class ``c``,

    mean[s, c] = sum_i W[i, c] p_i[s, c],      W[i, c] = v_ic / sum_j v_jc,

with ``p_i = softmax(logits_i / T)`` and client votes ``v_ic = w_i n_ic`` (per-class vote
weighting; ``w_i`` the client weight, ``n_ic`` its count of class ``c``) or ``v_ic = w_i``
(no class votes), then normalises each row and applies entropy reduction (ERA). Both
the numerator and the denominator are sums over clients, so each client encrypts its
share of both and the server adds ciphertexts only:

    A_i[s, c] = v~_ic * p~_i[s, c]      (m x C integers)
    B_i[c]    = v~_ic                   (C integers)

where ``p~ = round(P p)`` is the ``probability_bits`` quantization of the probability
(``P = 2**probability_bits - 1``, 8 bits by default) and ``v~`` the integer vote. The
client weight is the client's own: its number of training examples (``"sample_count"``,
flhet's default) or 1 (``"uniform"``); contribution weights cannot be used, since they
need the plaintext predictions. After decryption every client computes
``mean~[s, c] = A[s, c] / (P B[c])``, normalises the rows and applies ERA exactly as the
plaintext rule does (:meth:`SecureConsensusSpec.decode`).

Quantization bound
------------------
Votes are integers up to ``V = 2**vote_bits - 1``. A vote is exact when the public bound
on votes (from ``max_examples``, see :meth:`SecureConsensusSpec.for_consensus`) is at
most ``V``; otherwise it is counted in units of ``u = ceil(max_vote / V)``
(``v~ = max(1, round(v / u))`` for ``v > 0``, so a client that holds a class keeps a
vote on it). Then, per class column with ``k`` summed clients,

    |mean~[s, c] - mean[s, c]| <= 1 / (2 P)  +  k / B[c]   (the second term only if u > 1)

``1/(2P)`` is the probability rounding (0.00196 at 8 bits, since mean~ is a convex
combination of rounded probabilities); ``k / B[c]`` bounds the shift of the weights by
vote rounding (``|v~ - v/u| <= 1``, and ``|sum_i e_i (p_i - mean)| <= k`` over the vote
total ``B[c]``, in units ``u``). :class:`SecureConsensusResult` reports the bound per
class. Row normalisation and ERA are then applied to ``mean~`` as to ``mean``.

One deliberate difference: a class that no summed client holds (``B[c] = 0`` with class
votes) gets probability 0 before normalisation, where the plaintext rule falls back to
plain client weights. Whenever every class is held by some summed client, the two rules
agree to the bound above.

What decrypting clients learn: the sums ``A`` and ``B`` of the clients that arrived,
i.e. the consensus and the cohort's total votes per class (with sample-count class
votes, ``sum_i n_i n_ic``); the server learns nothing but ciphertexts. As with any sum,
a client in a cohort of two can subtract its own share. When one client decrypts for the
cohort and seals the consensus for the others (:class:`.GroupSeal`, the default of
:class:`~flhet_strategies.secure_consensus_strategy.SecureConsensus`), it learns exactly
what every client learns.

Distributed differential privacy
--------------------------------
With ``privacy`` (a :class:`.PrivateConsensus` in ``"distributed"`` mode) the slots
hold what :class:`clients.mods.dp_predictions.DpPredictionsMod` (``"probabilities"``
encoding) made of the client's logits: clipped probabilities plus the client's noise
share ``N(0, (z S)^2 / n)``, ``n = max_summands``, ``S`` the payload bound on the
round's ``m`` rows. Such values are signed and unbounded, so they are clipped to the
public bound ``[-B, B]`` with

    B = 1 + k * z S / sqrt(n),      k = DP_BOUND_STDS = 8,

and quantized with the offset encoding of the secure FedAvg
(:func:`.secure_sum.integers.offset_levels`: ``round((x + B) / step)``,
``step = 2 B / P``), so sums never borrow. Weights are uniform and there are no class
votes (each vote slot holds 1, so the decrypted vote total must equal the number of
summands: a check). After decryption, every client divides by the summands, applies
:meth:`.PrivateConsensus.release` (``min_margin``/``min_rows`` filter, simplex, ERA)
exactly as the server does for distributed DP without encryption, and the server,
which sees only ciphertexts, accounts the round with the realized noise multiplier.

Clipping to ``B`` is post-processing of the client's own release, so its local
guarantee (multiplier ``z / sqrt(n)``) holds as is. The guarantee of the *sum*
(multiplier ``z``) assumes unclipped shares: a value leaves ``[-B, B]`` only if its
noise exceeds ``k`` share standard deviations, with probability ``2 Phi(-8) = 1.2e-15``
per value, which adds at most ``n m C * 1.2e-15`` to delta (``5e-12`` for 4 clients,
100 rows, 10 classes). Rounding adds a bounded error of at most ``step / 2 = B / P``
per value and share (``(1 + 8 sigma) / 255``: about 0.03 share standard deviations
``sigma`` at 8 bits once the noise dominates), which the accountant ignores, as for any
fixed-point implementation of the Gaussian mechanism (a rigorous treatment would use a
discrete Gaussian).

Cost: one value per (sample, class) plus ``C`` votes, packed ``2047 // slot_bits`` per
ciphertext, where ``slot_bits`` is the bit length of
``max_summands * (2**value_bits - 1)`` and ``value_bits`` that of ``P * V``.
2000 proxy samples x 10 classes with 10 clients: 275 ciphertexts at 16 vote bits,
236 at 12, and 118 on the 8-bit fast path (uniform weights, no class votes).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import numpy as np

from .consensus import ConsensusConfig, entropy_reduction, softmax
from .dp.gaussian import noise_share_std, realized_noise_multiplier
from .dp.private_consensus import PrivateConsensus
from .secure_sum.errors import SecureSumOverflowError
from .secure_sum.json_spec import JsonSpec
from .secure_sum.layout import SecureSumLayout
from .secure_sum.integers import IntegerSumSpec
from .secure_sum.integers import check_int as _check_int
from .secure_sum.integers import integer_layout, mean_from_levels, offset_levels
from .secure_sum.integers import round_half_up as _round_half_up

SECURE_WEIGHTINGS = ("sample_count", "uniform")
"""Client weights a secure consensus supports (computed by each client from its own data)."""

SPEC_CONFIG_KEY = "secure-consensus-spec"
"""Train-config key carrying :meth:`SecureConsensusSpec.to_json` to the clients."""

ENCRYPTED_CONSENSUS_ARRAY = "encrypted_consensus"
"""Plan array holding the encrypted sum of the previous round (``uint8``)."""

ENCRYPTED_CONTRIBUTION_ARRAY = "encrypted_contribution"
"""Reply array holding a client's encrypted share ``(A_i, B_i)`` (``uint8``)."""

DECRYPT_FAILED_METRIC = "secure-decrypt-failed"
"""Reply metric set to 1 by a client that could not decrypt the consensus it received."""

SEALED_CONSENSUS_ARRAY = "sealed_consensus"
"""Plan array of a consensus one client decrypted and sealed for the others (``uint8``)."""

DECRYPT_REQUEST_KEY = "secure-decrypt-request"
"""ArrayRecord of a message asking one client to decrypt and seal the sum for the cohort."""

DECRYPT_REPLY_KEY = "secure-decrypt-reply"
"""ArrayRecord of the answer: array :data:`SEALED_CONSENSUS_ARRAY`."""

MAX_EXACT_SUM_BITS = 53
"""Integer sums stay exact in float64 up to this many bits."""

DP_BOUND_STDS = 8.0
"""``k``: noisy values are clipped to ``1 + k`` noise-share standard deviations."""

CLIPPED_METRIC = "secure-clipped-values"
"""Reply metric (distributed DP): noisy values a client clipped to the public bound."""


@dataclass(frozen=True)
class SecureConsensusResult:
    """A decrypted and decoded secure consensus.

    Parameters
    ----------
    consensus : np.ndarray
        float32 soft targets ``(num_samples, num_classes)``, rows sum to one (what the
        plaintext rule returns).
    mean_probabilities : np.ndarray
        float64 vote-weighted mean probabilities before row normalisation.
    vote_totals : np.ndarray
        int64 total integer votes per class, ``B``.
    error_bound : np.ndarray
        float64 bound per class on ``|mean_probabilities - plaintext mean|``.
    num_summands : int
        Clients in the sum.
    released : np.ndarray, optional
        Distributed DP only: boolean mask of the rows the private release kept;
        ``consensus`` then holds NaN in the other rows (see :func:`released_rows`),
        ``mean_probabilities`` is the noisy mean of all rows and ``noise_multiplier``
        the multiplier the sum carries.
    noise_multiplier : float, optional
        Distributed DP only: the realized noise multiplier of the sum.
    """

    consensus: np.ndarray
    mean_probabilities: np.ndarray
    vote_totals: np.ndarray
    error_bound: np.ndarray
    num_summands: int
    released: np.ndarray | None = None
    noise_multiplier: float | None = None


@dataclass(frozen=True)
class SecureConsensusSpec(JsonSpec, IntegerSumSpec):
    """Public parameters of a secure consensus round, agreed by the server and the clients.

    The server builds it (:meth:`for_consensus`) and sends it with every train message
    (:meth:`to_json`); clients encode their share with it and decode the sum.

    Parameters
    ----------
    num_samples : int
        Proxy samples per round (``m``).
    num_classes : int
        Classes (``C``).
    max_summands : int
        Most clients summed in the round (the number of clients sampled).
    weighting : str (default: "sample_count")
        Client weight ``w_i``: ``"sample_count"`` (training examples) or ``"uniform"``.
    class_vote_weighting : bool (default: True)
        Votes ``w_i n_ic`` per class (True) or ``w_i`` for every class (False).
    temperature : float (default: 1.0)
        Softmax temperature of the client logits.
    era_temperature : float or None (default: 0.1)
        DS-FL entropy-reduction temperature; ``None`` disables ERA.
    probability_bits : int (default: 8)
        Quantization bits of a probability.
    vote_bits : int (default: 16)
        Bits of an integer vote.
    vote_unit : int (default: 1)
        Votes are counted in this unit (1: exact votes).
    key_fingerprint : str (default: "")
        Hex fingerprint of the public key the clients must encrypt under.
    privacy : PrivateConsensus, optional
        Distributed differential privacy (mode ``"distributed"``; needs uniform
        weights and no class votes): the slots hold signed noisy probabilities (see
        the module). Travels as a JSON object; its ``seed`` is dropped.
    """

    num_samples: int
    num_classes: int
    max_summands: int
    weighting: str = "sample_count"
    class_vote_weighting: bool = True
    temperature: float = 1.0
    era_temperature: float | None = 0.1
    probability_bits: int = 8
    vote_bits: int = 16
    vote_unit: int = 1
    key_fingerprint: str = ""
    privacy: PrivateConsensus | None = None

    spec_name = "secure consensus"  # names the spec in from_json's errors (no field)

    def __post_init__(self) -> None:
        self._check_privacy()
        for name in ("num_samples", "max_summands", "probability_bits", "vote_bits", "vote_unit"):
            _check_int(name, getattr(self, name), 1)
        _check_int("num_classes", self.num_classes, 2)
        if self.weighting not in SECURE_WEIGHTINGS:
            raise ValueError(
                f"weighting must be one of {SECURE_WEIGHTINGS}, got {self.weighting!r}"
            )
        ConsensusConfig("dsfl", self.temperature, self.era_temperature, True)  # validates
        if not 1 <= self.probability_bits <= 16 or not 1 <= self.vote_bits <= 24:
            raise ValueError(
                "probability_bits must lie in [1, 16] and vote_bits in [1, 24], got "
                f"{self.probability_bits} and {self.vote_bits}"
            )
        if self.value_bits > 32:
            raise ValueError(
                f"probability_bits + vote_bits give {self.value_bits}-bit values; at most "
                "32 are supported"
            )
        total_bits = (self.max_summands * ((1 << self.value_bits) - 1)).bit_length()
        if total_bits > MAX_EXACT_SUM_BITS:
            raise ValueError(
                f"a sum of {self.max_summands} {self.value_bits}-bit values needs "
                f"{total_bits} bits, more than float64 holds exactly; lower the bits"
            )

    def _check_privacy(self) -> None:
        privacy = self.privacy
        if privacy is None:
            return
        if isinstance(privacy, dict):   # from JSON
            privacy = PrivateConsensus(**privacy)
        if not isinstance(privacy, PrivateConsensus):
            raise TypeError(f"privacy must be a PrivateConsensus, got {type(privacy).__name__}")
        if privacy.mode != "distributed":
            raise ValueError(
                f"a secure consensus supports distributed DP only, got mode {privacy.mode!r}: "
                "central DP needs the server to see the plaintext sum it noises")
        if self.weighting != "uniform" or self.class_vote_weighting:
            raise ValueError(
                "distributed DP in a secure consensus needs weighting='uniform' and "
                f"class_vote_weighting=False, got {self.weighting!r} and "
                f"{self.class_vote_weighting!r}")
        object.__setattr__(self, "privacy", replace(privacy, seed=None))

    @classmethod
    def for_consensus(
        cls,
        consensus: ConsensusConfig,
        num_samples: int,
        num_classes: int,
        max_summands: int,
        *,
        weighting: str,
        max_examples: int,
        probability_bits: int = 8,
        vote_bits: int = 16,
        key_fingerprint: str = "",
        privacy: PrivateConsensus | None = None,
    ) -> "SecureConsensusSpec":
        """The spec that computes ``consensus`` (a DS-FL rule) through a secure sum.

        Parameters
        ----------
        consensus : ConsensusConfig
            The plaintext rule to reproduce; its mode must be ``"dsfl"``.
        num_samples, num_classes, max_summands : int
            See the class parameters.
        weighting : str
            ``"sample_count"`` or ``"uniform"``.
        max_examples : int
            Public bound on any client's number of training examples. Sets the bound on
            votes: ``max_examples**2`` (sample counts and class votes),
            ``max_examples`` (one of them), 1 (neither), and from it the vote unit.
        probability_bits : int (default: 8)
            Quantization bits of a probability.
        vote_bits : int (default: 16)
            Most bits of an integer vote; fewer are used when the vote bound needs fewer.
        privacy : PrivateConsensus, optional
            Distributed DP (then ``weighting`` must be ``"uniform"``).

        Raises
        ------
        ValueError
            If the mode is not ``"dsfl"`` (FedMD averages unbounded logits) or a bound is
            invalid.
        """
        if consensus.mode != "dsfl":
            raise ValueError(
                f"a secure consensus reproduces the DS-FL rule (mode='dsfl'), got "
                f"mode={consensus.mode!r}: FedMD averages unbounded logits"
            )
        _check_int("max_examples", max_examples, 1)
        if weighting not in SECURE_WEIGHTINGS:
            raise ValueError(f"weighting must be one of {SECURE_WEIGHTINGS}, got {weighting!r}")
        factors = (weighting == "sample_count") + bool(consensus.class_vote_weighting)
        max_vote = int(max_examples) ** factors
        _check_int("vote_bits", vote_bits, 1)
        bits = min(int(vote_bits), max_vote.bit_length())
        unit = max(1, -(-max_vote // ((1 << bits) - 1)))
        return cls(
            num_samples=int(num_samples),
            num_classes=int(num_classes),
            max_summands=int(max_summands),
            weighting=weighting,
            class_vote_weighting=bool(consensus.class_vote_weighting),
            temperature=float(consensus.temperature),
            era_temperature=None if consensus.era_temperature is None
            else float(consensus.era_temperature),
            probability_bits=int(probability_bits),
            vote_bits=bits,
            vote_unit=unit,
            key_fingerprint=key_fingerprint,
            privacy=privacy,
        )

    # ------------------------------------------------------------------ layout

    @property
    def probability_levels(self) -> int:
        """``P = 2**probability_bits - 1``: the quantized probability of 1."""
        return (1 << self.probability_bits) - 1

    @property
    def max_vote_level(self) -> int:
        """``V = 2**vote_bits - 1``: the largest integer vote."""
        return (1 << self.vote_bits) - 1

    @property
    def value_bits(self) -> int:
        """Bits of one encrypted value (``P * V`` at most)."""
        return (self.probability_levels * self.max_vote_level).bit_length()

    @property
    def num_values(self) -> int:
        """Values per client share: ``m * C`` numerators and ``C`` votes."""
        return (self.num_samples + 1) * self.num_classes

    def signed_bound(self, num_samples: int | None = None,
                     max_summands: int | None = None) -> float:
        """``B = 1 + k z S / sqrt(n)``: the public clip bound of a noisy value (DP only).

        Parameters
        ----------
        num_samples, max_summands : int, optional
            Rows ``m`` and cohort ``n`` of the round the values belong to (default:
            this spec's).

        Raises
        ------
        ValueError
            Without ``privacy``.
        """
        if self.privacy is None:
            raise ValueError("signed_bound needs a spec with privacy (distributed DP)")
        rows = self.num_samples if num_samples is None else int(num_samples)
        cohort = self.max_summands if max_summands is None else int(max_summands)
        std = noise_share_std(self.privacy.noise_multiplier, self.privacy.norm_bound(rows),
                              cohort)
        return 1.0 + DP_BOUND_STDS * std

    def check_sum_layout(self, layout: SecureSumLayout, num_samples: int) -> None:
        """Raise ``ValueError`` unless ``layout`` is this spec's layout for ``num_samples``.

        The encrypted sum a client decodes was made in the previous round, whose
        ``num_samples`` and ``max_summands`` may differ from this round's.
        """
        expected = integer_layout((num_samples + 1) * self.num_classes, layout.max_summands,
                                  self.value_bits, layout.plaintext_bits)
        if layout != expected:
            raise ValueError(
                f"the encrypted consensus has layout {layout}; this spec expects {expected} "
                f"for {num_samples} proxy samples"
            )

    # ------------------------------------------------------------------ client share

    def votes(self, class_counts: np.ndarray, num_examples: int) -> np.ndarray:
        """A client's integer votes ``v~_c`` (int64, ``num_classes``).

        Parameters
        ----------
        class_counts : np.ndarray
            The client's label histogram ``(num_classes,)``, non-negative integers.
        num_examples : int
            The client's number of training examples (positive).

        Raises
        ------
        ValueError
            If the inputs are invalid or a vote exceeds the public bound (raise
            ``max_examples``).
        """
        counts = np.asarray(class_counts)
        if counts.shape != (self.num_classes,):
            raise ValueError(
                f"class_counts must have shape ({self.num_classes},), got {counts.shape}"
            )
        if not np.all(np.isfinite(counts)) or np.any(counts < 0) \
                or np.any(counts != np.round(counts)):
            raise ValueError("class_counts must be non-negative integers")
        if isinstance(num_examples, bool) or int(num_examples) != num_examples or num_examples < 1:
            raise ValueError(f"num_examples must be a positive integer, got {num_examples!r}")
        weight = int(num_examples) if self.weighting == "sample_count" else 1
        counts = counts.astype(np.int64)
        raw = weight * (counts if self.class_vote_weighting else np.ones_like(counts))
        votes = np.where(raw > 0, np.maximum(1, _round_half_up(raw, self.vote_unit)), 0)
        if votes.max() > self.max_vote_level:
            raise ValueError(
                f"a vote of {int(raw.max())} exceeds the public bound "
                f"{self.max_vote_level * self.vote_unit}: this client holds more examples "
                "than the max_examples the server announced; raise max_examples"
            )
        return votes.astype(np.int64)

    def encode(self, logits: np.ndarray, class_counts: np.ndarray, num_examples: int) -> np.ndarray:
        """A client's share ``[A_i.ravel(), B_i]`` as exact integers in float64.

        Parameters
        ----------
        logits : np.ndarray
            The client's logits on the round's proxy samples, ``(num_samples, num_classes)``.
        class_counts : np.ndarray
            Its label histogram.
        num_examples : int
            Its number of training examples.

        Returns
        -------
        np.ndarray
            ``num_values`` integers (float64) in ``[0, 2**value_bits - 1]``, for a
            :class:`.SecureSumCodec` built on :meth:`layout`.

        Raises
        ------
        ValueError
            If the logits have the wrong shape or dtype, or hold NaN/Inf.
        """
        z = np.asarray(logits)
        if not np.issubdtype(z.dtype, np.floating):
            raise ValueError(f"logits must be a floating array, got dtype {z.dtype}")
        if z.shape != (self.num_samples, self.num_classes):
            raise ValueError(
                f"logits must have shape ({self.num_samples}, {self.num_classes}), got {z.shape}"
            )
        if not np.all(np.isfinite(z)):
            raise ValueError("logits contain NaN/Inf values")
        votes = self.votes(class_counts, num_examples)
        levels = np.rint(softmax(z, self.temperature) * self.probability_levels)
        shares = levels * votes[None, :].astype(np.float64)
        return np.concatenate([shares.ravel(), votes.astype(np.float64)])

    def encode_noisy(self, noisy: np.ndarray) -> tuple[np.ndarray, int]:
        """A distributed-DP client's share: its noisy probabilities as offset levels.

        Parameters
        ----------
        noisy : np.ndarray
            Clipped probabilities plus the client's noise share,
            ``(num_samples, num_classes)`` (:class:`clients.mods.dp_predictions.DpPredictionsMod`,
            ``"probabilities"`` encoding).

        Returns
        -------
        tuple[np.ndarray, int]
            ``num_values`` integers (float64): the levels of the values clipped to
            ``[-B, B]`` (:meth:`signed_bound`), then a vote of 1 per class; and how many
            values were clipped.

        Raises
        ------
        ValueError
            Without ``privacy``, or if the values have the wrong shape or hold NaN/Inf.
        """
        bound = self.signed_bound()
        values = np.asarray(noisy)
        if not np.issubdtype(values.dtype, np.floating):
            raise ValueError(f"noisy probabilities must be floating, got dtype {values.dtype}")
        if values.shape != (self.num_samples, self.num_classes):
            raise ValueError(f"noisy probabilities must have shape ({self.num_samples}, "
                             f"{self.num_classes}), got {values.shape}")
        if not np.all(np.isfinite(values)):
            raise ValueError("noisy probabilities contain NaN/Inf values")
        levels, num_clipped = offset_levels(values, bound, self.probability_levels)
        return np.concatenate([levels, np.ones(self.num_classes)]), num_clipped

    # ------------------------------------------------------------------ decoding

    def decode(self, sums: np.ndarray, num_summands: int,
               num_expected: int | None = None) -> SecureConsensusResult:
        """Turn the decrypted sum of ``num_summands`` shares into the consensus.

        Parameters
        ----------
        sums : np.ndarray
            Decrypted element-wise sums (from :meth:`.KeyHolder.decrypt_sum`), length
            ``(m + 1) * num_classes`` for the ``m`` proxy samples of the summed round.
        num_summands : int
            Clients in the sum.
        num_expected : int, optional
            Distributed DP: the cohort the summed round split its noise for (the sum's
            ``max_summands``; default: this spec's).

        Returns
        -------
        SecureConsensusResult
            The soft targets, as :func:`.logit_consensus` computes them (or, with
            ``privacy``, as :meth:`.PrivateConsensus.combine` does), and the bound.

        Raises
        ------
        ValueError
            If the sums have the wrong length, are not integers, or do not fit
            ``num_summands`` shares (a numerator above ``P`` times its vote total).
        """
        values = np.asarray(sums, dtype=np.float64)
        classes = self.num_classes
        if values.ndim != 1 or values.size < 2 * classes or values.size % classes:
            raise ValueError(
                f"sums must be 1-D with (samples + 1) * {classes} values, got shape {values.shape}"
            )
        if not np.all(np.isfinite(values)) or np.any(values < 0) \
                or np.any(values != np.rint(values)):
            raise ValueError("decrypted sums must be non-negative integers")
        _check_int("num_summands", num_summands, 1)
        integers = values.astype(np.int64)
        numerators = integers[:-classes].reshape(-1, classes)
        totals = integers[-classes:]
        if self.privacy is not None:
            return self._decode_private(numerators, totals, int(num_summands),
                                        self.max_summands if num_expected is None
                                        else int(num_expected))
        scale = self.probability_levels * totals
        if np.any(numerators > scale[None, :]):
            raise ValueError(
                "a decrypted numerator exceeds probability 1 times its vote total: a share "
                "was malformed or the sum is corrupted"
            )
        mean = np.divide(numerators, scale[None, :], out=np.zeros(numerators.shape),
                         where=scale[None, :] > 0)
        rows = mean.sum(axis=1, keepdims=True)
        normalised = np.divide(mean, rows, out=np.full(mean.shape, 1.0 / classes),
                               where=rows > 0)
        if self.era_temperature is not None:
            target = entropy_reduction(normalised, self.era_temperature)
        else:
            target = normalised
        rounding = 1.0 / (2 * self.probability_levels)
        votes_term = (np.divide(num_summands, totals, out=np.zeros(classes), where=totals > 0)
                      if self.vote_unit > 1 else np.zeros(classes))
        return SecureConsensusResult(
            consensus=target.astype(np.float32),
            mean_probabilities=mean,
            vote_totals=totals,
            error_bound=rounding + votes_term,
            num_summands=int(num_summands),
        )


    def _decode_private(self, level_sums: np.ndarray, totals: np.ndarray, num_summands: int,
                        num_expected: int) -> SecureConsensusResult:
        """Distributed DP: the noisy mean of the summed shares, then the private release."""
        if num_summands > num_expected:
            raise ValueError(f"{num_summands} shares summed, but the round expected at most "
                             f"{num_expected}")
        if np.any(totals != num_summands):
            raise SecureSumOverflowError(
                f"the decrypted vote totals {totals.tolist()} must all equal the "
                f"{num_summands} summands: a share was malformed")
        levels = self.probability_levels
        if np.any(level_sums > levels * num_summands):
            raise SecureSumOverflowError(
                "a decrypted level sum exceeds the top level times the summands: a share "
                "was out of range or the sum is corrupted")
        rows = level_sums.shape[0]
        bound = self.signed_bound(rows, num_expected)
        noisy_mean = mean_from_levels(level_sums, num_summands, bound, levels)
        realized = realized_noise_multiplier(self.privacy.noise_multiplier, num_expected,
                                             num_summands)
        config = ConsensusConfig("dsfl", self.temperature, self.era_temperature, False)
        kept, keep = self.privacy.release(noisy_mean, realized, num_summands, config)
        consensus = np.full((rows, self.num_classes), np.nan, dtype=np.float32)
        consensus[keep] = kept
        return SecureConsensusResult(
            consensus=consensus, mean_probabilities=noisy_mean, vote_totals=totals,
            error_bound=np.full(self.num_classes, bound / levels), num_summands=num_summands,
            released=keep, noise_multiplier=realized)


def released_rows(indices: np.ndarray, consensus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of a decrypted (or unsealed) consensus that were released.

    A distributed-DP consensus marks the rows its private release withheld with NaN
    (:meth:`SecureConsensusSpec.decode`); this drops them, with their indices. Without
    NaN rows it returns its inputs.

    Parameters
    ----------
    indices : np.ndarray
        The proxy indices of the consensus rows.
    consensus : np.ndarray
        ``(len(indices), num_classes)``.
    """
    consensus = np.asarray(consensus)
    indices = np.asarray(indices, dtype=np.int64)
    if consensus.shape[0] != indices.shape[0]:
        raise ValueError(f"{consensus.shape[0]} consensus rows for {indices.shape[0]} indices")
    keep = ~np.all(np.isnan(consensus), axis=1) if consensus.size else \
        np.ones(len(indices), dtype=bool)
    if keep.all():
        return indices, consensus
    return indices[keep], np.ascontiguousarray(consensus[keep])


def consensus_context(key_fingerprint: str, consensus_indices: np.ndarray,
                      num_classes: int) -> bytes:
    """Associated data binding a sealed consensus to its key, proxy indices and shape.

    A sealed consensus only opens for the ``consensus_indices`` it was computed on, so
    it cannot be replayed with other indices.
    """
    indices = np.ascontiguousarray(consensus_indices, dtype=np.int64)
    digest = hashlib.sha256(indices.tobytes()).hexdigest()
    return f"flhet-consensus|{key_fingerprint}|{len(indices)}x{int(num_classes)}|{digest}".encode()


def consensus_from_bytes(data: bytes, num_samples: int, num_classes: int) -> np.ndarray:
    """Rebuild a float32 consensus ``(num_samples, num_classes)`` from its raw bytes.

    Rows that are all NaN (withheld by a distributed-DP release, see
    :func:`released_rows`) are allowed.

    Raises
    ------
    ValueError
        If the size does not match, or the rows are not probability distributions.
    """
    expected = num_samples * num_classes * 4
    if len(data) != expected:
        raise ValueError(f"consensus holds {len(data)} bytes, expected {expected}")
    consensus = np.frombuffer(data, dtype=np.float32).reshape(num_samples, num_classes).copy()
    rows = consensus[~np.all(np.isnan(consensus), axis=1)] if consensus.size else consensus
    if not np.all(np.isfinite(rows)) or np.any(rows < 0) or \
            not np.allclose(rows.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("the consensus rows are not probability distributions")
    return consensus


__all__ = [
    "DECRYPT_FAILED_METRIC",
    "DECRYPT_REPLY_KEY",
    "DECRYPT_REQUEST_KEY",
    "ENCRYPTED_CONSENSUS_ARRAY",
    "ENCRYPTED_CONTRIBUTION_ARRAY",
    "SEALED_CONSENSUS_ARRAY",
    "CLIPPED_METRIC",
    "DP_BOUND_STDS",
    "SECURE_WEIGHTINGS",
    "SPEC_CONFIG_KEY",
    "SecureConsensusResult",
    "SecureConsensusSpec",
    "consensus_context",
    "consensus_from_bytes",
    "integer_layout",
    "released_rows",
]
