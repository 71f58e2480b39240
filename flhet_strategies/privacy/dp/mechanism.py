"""Client-level differential privacy of any weighted-sum algorithm, as a server-half wrapper.

:class:`DifferentialPrivacy` wraps a server half whose aggregate is a weighted sum
(consensus, prototypes, ...; see :mod:`flhet_strategies.aggregation.weighted_sum`).
Central: the server clips every reply's contribution and noises the sum. Distributed:
the clients do both (``clients.privacy.dp.DpNoiseStep``) and the server only sums. The
algorithm then finishes the noisy sum (post-processing) and Flower's ``RdpAccountant``
accounts the round (:class:`~flhet_strategies.privacy.dp.budget.RoundBudget`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np

from ... import wire
from ...aggregation.payload import PayloadError
from ...aggregation.weighted_sum import SumLayout
from ...algorithms import sum_rule
from ...protocol import (
    Instruction,
    Outcome,
    Reply,
    ServerAlgorithm,
    ServerAlgorithmWrapper,
    client_sort_key,
    mean_metrics,
)
from .budget import RoundBudget
from .gaussian import add_central_noise, realized_noise_multiplier
from .noise_share import (
    clip_rows,
    contribution_rows,
    noisy_layout,
    noisy_name,
    noisy_weight_name,
    split_rows,
    sums_from_noisy,
)
from .settings import DpSettings


def _check_sum_algorithm(inner: ServerAlgorithm) -> None:
    for method in ("sum_layout", "sum_context", "check_reply", "release"):
        if not callable(getattr(inner, method, None)):
            raise TypeError(f"{type(inner).__name__} does not aggregate by a weighted sum (it "
                            f"has no {method}); differential privacy and secure sums need one")


def non_negative(layout: SumLayout) -> bool:
    """Whether every contribution of ``layout`` is entry-wise non-negative."""
    return layout.public_weights and all(term.low >= 0 for term in layout.terms)


class DifferentialPrivacy(ServerAlgorithmWrapper):
    """Client-level DP of a weighted-sum server half, with accounting and a budget.

    Parameters
    ----------
    inner : ServerAlgorithm
        A server half with ``sum_layout``, ``sum_context``, ``check_reply`` and
        ``release`` (e.g. :class:`~flhet_strategies.algorithms.consensus.ConsensusDistillation`).
    settings : DpSettings
        The Gaussian mechanism (noise multiplier, clipping, central or distributed).
    budget : RoundBudget, optional
        The accounting; default: full participation of ``population_size`` clients (or
        fixed-size cohorts for ``fraction`` below 1), delta 1e-5, no epsilon limit.
    population_size : int (default: 2)
        ``N`` for the default budget.
    fraction : float (default: 1.0)
        Sampling fraction for the default budget.

    Notes
    -----
    Weights must be public (uniform: the denominator is the count of summands) or a
    per-class presence the noise covers too (``class_presence``); example counts and
    contribution weights are data-dependent and would change the sensitivity.
    """

    def __init__(self, inner: ServerAlgorithm, settings: DpSettings,
                 budget: RoundBudget | None = None, *, population_size: int = 2,
                 fraction: float = 1.0) -> None:
        super().__init__(inner)
        _check_sum_algorithm(self.innermost)
        if not isinstance(settings, DpSettings):
            raise TypeError(f"settings must be a DpSettings, got {type(settings).__name__}")
        self.settings = settings
        layout = self.layout(1)
        if layout.weighting not in ("uniform", "class_presence"):
            raise ValueError(
                f"differential privacy needs public (uniform) or class-presence weights; the "
                f"algorithm weights by {layout.weighting!r}, which depends on private data "
                "(configure it with uniform weights and without per-class votes)")
        positive = non_negative(layout)
        if budget is None:
            budget = RoundBudget(population_size, fraction=fraction,
                                 non_negative_payloads=positive)
        elif budget.ledger.non_negative_payloads and not positive:
            raise ValueError("the sum's contributions are signed: build its RoundBudget with "
                             "non_negative_payloads=False")
        self.budget = budget
        self._cohorts: dict[int, int] = {}

    @property
    def noise_multiplier(self) -> float:
        """``z``."""
        return float(self.settings.noise_multiplier)

    @property
    def reply_array_names(self) -> tuple[str, ...]:  # type: ignore[override]
        """The inner order (central); the noisy terms in the clients' order (distributed)."""
        if self.settings.mode != "distributed":
            return self.inner.reply_array_names
        layout = self.layout(1)
        return tuple(name for term in layout.terms for name in
                     (noisy_name(term.name),) + (() if layout.public_weights
                                                 else (noisy_weight_name(term.name),)))

    def describe(self) -> list[str]:
        """The mechanism, then the inner lines."""
        s = self.settings
        return [f"Differential privacy ({s.mode}): noise multiplier {s.noise_multiplier}, "
                f"clip {s.clip_norm} ({s.clip_mode}), {self.budget!r}"] + self.inner.describe()

    def layout(self, server_round: int) -> SumLayout:
        """The inner algorithm's weighted sum of ``server_round``."""
        return self.innermost.sum_layout(server_round)

    # ------------------------------------------------------------------ budget

    def plan_rounds(self, num_rounds: int, cohort_size: int | None) -> int:
        """The rounds of ``num_rounds`` that fit in the budget."""
        rounds = self.inner.plan_rounds(num_rounds, cohort_size)
        return self.budget.cap(rounds, self.noise_multiplier, cohort_size)

    def round_allowed(self, server_round: int, cohort_size: int) -> bool:
        """Within the inner algorithm's rounds and the budget."""
        if not self.inner.round_allowed(server_round, cohort_size):
            return False
        if not self.budget.allows(server_round, self.noise_multiplier, cohort_size):
            return False
        self._cohorts[int(server_round)] = int(cohort_size)
        return True

    def record_release(self, server_round: int, noise_multiplier: float) -> dict:
        """Compose one released sum into the budget; the round's privacy entry."""
        return self.budget.record(server_round, noise_multiplier,
                                  self._cohorts.get(int(server_round)))

    # ------------------------------------------------------------------ rounds

    def instructions(self, server_round: int, nodes: Sequence[str]) -> dict[str, Instruction]:
        """The inner instructions; distributed mode adds what each client must add."""
        instructions = self.inner.instructions(server_round, nodes)
        if self.settings.mode == "distributed":
            extra = {**self.settings.client_config(len(nodes)),
                     wire.DP_LAYOUT: json.dumps(self.layout(server_round).to_dict())}
            for instruction in instructions.values():
                instruction.config.update(extra)
        return instructions

    def aggregate(self, server_round: int, replies: Sequence[Reply]) -> Outcome:
        """Clip and noise (central) or sum the noisy shares (distributed); finish; account."""
        layout = self.layout(server_round)
        rule = sum_rule(layout.algorithm)
        names = self._noisy_names(layout)
        totals: dict[str, np.ndarray] = {}
        rejected, accepted = {}, []
        for reply in sorted(replies, key=lambda r: client_sort_key(r.client_id)):
            try:
                parts = self._contribution(server_round, layout, rule, reply, names)
            except (PayloadError, ValueError) as error:
                rejected[reply.client_id] = str(error)
                continue
            for name, value in parts.items():
                totals[name] = totals[name] + value if name in totals else value
            accepted.append(reply.client_id)
        if not accepted:
            return Outcome(rejected=rejected)
        received = len(accepted)
        _, rows = contribution_rows(layout, self._zeros(layout), self._ones(layout))
        bound = self.settings.norm_bound(sum(count for _, _, count, _ in rows.pieces))
        if self.settings.mode == "central":
            rng = None if self.settings.seed is None else \
                np.random.default_rng([self.settings.seed, int(server_round)])
            totals = {name: add_central_noise(totals[name], self.noise_multiplier, bound, rng)
                      for name in sorted(totals)}
            realized = self.noise_multiplier
        else:
            expected = self._cohorts.get(int(server_round), received)
            realized = realized_noise_multiplier(self.noise_multiplier, expected, received)
        sums = sums_from_noisy(layout, totals, received)
        context = self.innermost.sum_context(server_round)
        arrays = rule.finish(layout, sums, context, noise_std=realized * bound)
        self.innermost.release(server_round, arrays)
        privacy = {**self.record_release(server_round, realized),
                   "released_rows": int(rule.released(arrays))}
        return Outcome(accepted=accepted, rejected=rejected,
                       weights={c: 1.0 / received for c in accepted},
                       metrics=mean_metrics(replies, accepted, ("train_loss", "kd_loss")),
                       released=True, privacy=privacy)

    # ------------------------------------------------------------------ helpers

    def _contribution(self, server_round: int, layout: SumLayout, rule, reply: Reply,
                      names: set[str]) -> dict[str, np.ndarray]:
        """A reply's contribution by noisy names (clipped by the server in central mode)."""
        if self.settings.mode == "central":
            self.innermost.check_reply(server_round, reply)
            values = rule.terms(layout, reply.arrays, reply.metrics)
            weights = {t.name: rule_weights(layout, t, reply) for t in layout.terms}
            matrix, rows = contribution_rows(layout, values, weights)
            clipped = clip_rows(matrix, self.settings.clip_norm, self.settings.clip_mode)[0]
            return split_rows(clipped, rows)
        unexpected = set(reply.arrays) - names
        if unexpected:
            raise ValueError(
                f"distributed DP: the reply carries {sorted(unexpected)} besides the noisy "
                f"terms {sorted(names)} (discarded, never aggregated); the client runs no DP "
                "noise step (DpNoiseMod / DpNoiseNumPyClient)")
        shapes = {t.name: t.shape for t in noisy_layout(layout, 1.0, "flat", 1.0, 0.0).terms}
        parts = {}
        for name in sorted(names):
            if name not in reply.arrays:
                raise ValueError(f"distributed DP: the reply has no '{name}' array")
            parts[name] = _finite(reply.arrays[name], shapes[name], name)
        return parts

    def _noisy_names(self, layout: SumLayout) -> set[str]:
        names = {noisy_name(t.name) for t in layout.terms}
        if not layout.public_weights:
            names |= {noisy_weight_name(t.name) for t in layout.terms}
        return names

    @staticmethod
    def _zeros(layout: SumLayout) -> dict[str, np.ndarray]:
        return {t.name: np.zeros(t.shape) for t in layout.terms}

    @staticmethod
    def _ones(layout: SumLayout) -> dict[str, np.ndarray]:
        return {t.name: np.ones(t.weight_size) for t in layout.terms}


def rule_weights(layout: SumLayout, term, reply: Reply) -> np.ndarray:
    """A plaintext reply's weights for ``term`` under the layout's (public) weighting."""
    from ...aggregation.weighted_sum import client_weights

    return client_weights(layout, term, reply.arrays.get(wire.CLASS_COUNTS), reply.num_examples)


def _finite(value: object, shape: tuple[int, ...], name: str) -> np.ndarray:
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.floating) or array.shape != tuple(shape) \
            or not np.all(np.isfinite(array)):
        raise ValueError(f"'{name}' must be finite floats of shape {tuple(shape)}, got "
                         f"{array.dtype} {array.shape}")
    return array.astype(np.float64)


__all__ = ["DifferentialPrivacy", "non_negative"]
