"""The round logic both Flower faces share: sampling, round plan, history, evaluation.

:class:`RoundDriver` drives any :class:`~flhet_strategies.protocol.ServerAlgorithm`
in plain Python objects (node ids, :class:`Instruction`, :class:`Reply`); the
Message-API and compat faces only move those in and out of Flower's types.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from logging import INFO
from pathlib import Path

import numpy as np
from flwr.common.logger import log

from .. import wire
from ..aggregation.claims import ClaimCheck
from ..evaluation import record_privacy_summary
from ..history import RoundHistory
from ..protocol import Instruction, Outcome, Reply, ServerAlgorithm, client_sort_key
from .checkpoint import load_checkpoint, save_checkpoint

_clock = time.perf_counter
"""The clock of the progress line (a name, so tests can set it)."""


def sample_fraction(items: Sequence, fraction: float, seed: int, server_round: int) -> list:
    """A seeded random ``fraction`` of ``items`` (at least one), reproducible per round.

    Parameters
    ----------
    items : Sequence
        Candidates in a stable order (e.g. sorted node ids).
    fraction : float
        Share to sample, in ``(0, 1]``; 1 returns all items in order.
    seed : int
        Seed of the experiment.
    server_round : int
        The round, mixed into the seed.
    """
    if not items:
        return []
    if fraction >= 1.0:
        return list(items)
    size = expected_cohort(len(items), fraction)
    rng = np.random.default_rng([int(seed), int(server_round), 7])
    picked = np.sort(rng.choice(len(items), size=size, replace=False))
    return [items[i] for i in picked]


def expected_cohort(population: int, fraction: float) -> int:
    """Cohort size :func:`sample_fraction` draws from ``population`` clients."""
    return int(population) if fraction >= 1.0 else max(int(population * fraction), 1)


def client_id_of(metrics: Mapping[str, object], node_id: int | str) -> str:
    """The client's self-reported ``client-id`` if present, else its Flower node id."""
    value = metrics.get(wire.CLIENT_ID)
    return str(int(value)) if isinstance(value, (int, float)) else str(node_id)


class RoundDriver:
    """Round plan, sampling, history and evaluation around one server half.

    Parameters
    ----------
    algorithm : ServerAlgorithm
        The server half (possibly wrapped in privacy or secure-sum wrappers).
    fraction_train : float (default: 1.0)
        Fraction of connected nodes sampled for training each round.
    fraction_evaluate : float (default: 1.0)
        Fraction of connected nodes sampled for evaluation.
    min_available : int (default: 2)
        Nodes to wait for before sampling.
    evaluate_every : int (default: 1)
        Clients evaluate every this many rounds (and always after the last one).
    seed : int (default: 0)
        Seed of the node sampler.
    phase : str (default: "main")
        Sent as ``flhet-phase``; clients keep one model per phase.
    num_rounds : int, optional
        Total rounds, when known before the run (compat API).
    claims : ClaimCheck, optional
        Screens every training reply's client id, example count and label histogram
        before the algorithm sees it (default: ``ClaimCheck()``: duplicate ids and
        histograms that disagree with the count are rejected).
    checkpoint : str or Path, optional
        File the whole driver is written to, atomically, after every finished round
        (:meth:`resume` reads it back; see docs/resume.md).
    on_round_end : Callable[[RoundDriver, int], None], optional
        Called after every finished round (after its checkpoint), e.g. to rewrite a
        results file; not saved in the checkpoint.
    """

    def __init__(self, algorithm: ServerAlgorithm, *, fraction_train: float = 1.0,
                 fraction_evaluate: float = 1.0, min_available: int = 2,
                 evaluate_every: int = 1, seed: int = 0, phase: str = "main",
                 num_rounds: int | None = None, claims: ClaimCheck | None = None,
                 checkpoint: str | Path | None = None,
                 on_round_end: Callable[[RoundDriver, int], None] | None = None) -> None:
        if not isinstance(algorithm, ServerAlgorithm):
            raise TypeError(f"algorithm must be a ServerAlgorithm, got {type(algorithm).__name__}")
        if not 0.0 < fraction_train <= 1.0 or not 0.0 <= fraction_evaluate <= 1.0:
            raise ValueError("fraction_train must be in (0, 1], fraction_evaluate in [0, 1]; got "
                             f"{fraction_train} and {fraction_evaluate}")
        if isinstance(min_available, bool) or int(min_available) != min_available \
                or min_available < 1:
            raise ValueError(f"min_available must be a positive integer, got {min_available!r}")
        if evaluate_every < 1:
            raise ValueError(f"evaluate_every must be at least 1, got {evaluate_every}")
        if num_rounds is not None and num_rounds < 1:
            raise ValueError(f"num_rounds must be at least 1, got {num_rounds}")
        if claims is not None and not isinstance(claims, ClaimCheck):
            raise TypeError(f"claims must be a ClaimCheck, got {type(claims).__name__}")
        self.algorithm = algorithm
        self.claims = ClaimCheck() if claims is None else claims
        self.fraction_train = float(fraction_train)
        self.fraction_evaluate = float(fraction_evaluate)
        self.min_available = int(min_available)
        self.evaluate_every = int(evaluate_every)
        self.seed = int(seed)
        self.phase = str(phase)
        self.history = RoundHistory()
        self._requested_rounds = num_rounds
        self._planned = False
        self._refused: set[int] = set()
        self._cohorts: dict[int, int] = {}
        self._train_nodes: dict[int, list[str]] = {}
        self._first_round: tuple[int, float] | None = None
        self.num_rounds = num_rounds
        algorithm.num_rounds = num_rounds
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.on_round_end = on_round_end
        self.offset = 0
        """Rounds finished before this process started (0 unless resumed)."""
        self._ended: set[int] = set()

    # ------------------------------------------------------------------ resume

    @classmethod
    def resume(cls, path: str | Path, on_round_end=None) -> RoundDriver:
        """The driver saved at ``path``, set to continue after its last finished round.

        The faces count Flower's rounds from 1 again: :meth:`absolute` adds the rounds
        already finished, so sampling, history and the ``final-round`` flag continue
        where the checkpointed run stopped.
        """
        driver = load_checkpoint(path)
        if not isinstance(driver, cls):
            raise TypeError(f"{path} holds a {type(driver).__name__}, not a {cls.__name__}")
        driver.offset = max(driver._ended, default=0)
        driver.checkpoint = Path(path)
        driver.on_round_end = on_round_end
        return driver

    def absolute(self, server_round: int) -> int:
        """The run's round number of Flower's ``server_round`` (which restarts at 1)."""
        return int(server_round) + self.offset

    @property
    def remaining_rounds(self) -> int | None:
        """Rounds still to run (``None`` while the number of rounds is unknown)."""
        return None if self.num_rounds is None else max(self.num_rounds - self.offset, 0)

    def end_round(self, server_round: int) -> None:
        """Mark ``server_round`` finished: write the checkpoint, call ``on_round_end``.

        The driver calls it once per round, after the evaluation (or after training in
        a round without one); refused rounds are not finished rounds.
        """
        server_round = int(server_round)
        if server_round in self._ended or self.is_refused(server_round):
            return
        self._ended.add(server_round)
        if self.checkpoint is not None:
            save_checkpoint(self, self.checkpoint)
        if self.on_round_end is not None:
            self.on_round_end(self, server_round)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(on_round_end=None, _first_round=None, _train_nodes={})
        return state

    # ------------------------------------------------------------------ plan

    @property
    def expected_cohort(self) -> int:
        """Clients a training round samples once ``min_available`` are connected."""
        return expected_cohort(self.min_available, self.fraction_train)

    def plan(self, num_rounds: int | None = None, cohort_size: int | None = None) -> int:
        """Fix the number of rounds before the first (a privacy budget may cap it).

        Parameters
        ----------
        num_rounds : int, optional
            Rounds asked for (default: the constructor's ``num_rounds``).
        cohort_size : int, optional
            Expected clients per round (default: :attr:`expected_cohort`).

        Returns
        -------
        int
            The rounds to run; the last of them carries ``final-round``.
        """
        requested = self._requested_rounds if num_rounds is None else int(num_rounds)
        if requested is None:
            raise ValueError("the number of rounds is unknown: give num_rounds")
        cohort = self.expected_cohort if cohort_size is None else int(cohort_size)
        rounds = self.algorithm.plan_rounds(requested, cohort)
        self.num_rounds = rounds
        self.algorithm.num_rounds = rounds
        self._planned = True
        return rounds

    @property
    def planned(self) -> bool:
        """Whether :meth:`plan` ran."""
        return self._planned

    def sample(self, nodes: Sequence, fraction: float, server_round: int) -> list:
        """The seeded share ``fraction`` of ``nodes`` (in the given, stable order)."""
        return sample_fraction(list(nodes), fraction, self.seed, server_round)

    def is_refused(self, server_round: int) -> bool:
        """Whether ``server_round`` was refused (past the rounds or the privacy budget)."""
        return int(server_round) in self._refused

    def cohort_size(self, server_round: int) -> int | None:
        """Clients sampled for training in ``server_round``."""
        return self._cohorts.get(int(server_round))

    # ------------------------------------------------------------------ training

    def train(self, server_round: int, nodes: Sequence[str],
              extra_config: Mapping[str, object] | None = None) -> dict[str, Instruction]:
        """Instructions for the sampled ``nodes``; none when the round is refused.

        ``extra_config`` (e.g. a user's ``train_config``) overrides the algorithm's
        config entries; the round, phase, algorithm and ``final-round`` are set last.
        """
        server_round = int(server_round)
        self._cohorts[server_round] = len(nodes)
        within = self.num_rounds is None or server_round <= self.num_rounds
        if not nodes or not within or not self.algorithm.round_allowed(server_round, len(nodes)):
            self._refused.add(server_round)
            return {}
        self._train_nodes = {server_round: list(nodes)}
        if self._first_round is None:
            self._first_round = (server_round, _clock())
        instructions = self.algorithm.instructions(server_round, list(nodes))
        final = self.num_rounds is not None and server_round >= self.num_rounds
        for instruction in instructions.values():
            instruction.config.update(dict(extra_config or {}))
            instruction.config.update({wire.SERVER_ROUND: server_round, wire.PHASE: self.phase,
                                       wire.ALGORITHM: self.algorithm.name,
                                       wire.FINAL_ROUND: bool(final)})
        self.history.start_round(server_round,
                                 sum(i.nbytes for i in instructions.values()))
        log(INFO, "configure_train: round %s, %s nodes", server_round, len(instructions))
        return instructions

    def aggregate_train(self, server_round: int, replies: Sequence[Reply],
                        failures: int) -> tuple[Outcome | None, dict[str, float]]:
        """Aggregate the round's replies; return the outcome and the round metrics.

        Replies whose claims fail :attr:`claims` are rejected before the algorithm
        aggregates the others. A sampled node with neither a reply nor a failure (the
        Message API's grid returns only what arrived within the round timeout) counts
        as a failure. Returns ``(None, {})`` for a refused round.
        """
        if self.is_refused(server_round):
            return None, {}
        failures += self._missing_replies(server_round, replies, failures)
        passed, refused = self.claims.screen(server_round, list(replies))
        outcome = self.algorithm.aggregate(server_round, passed)
        outcome.rejected = {**refused, **outcome.rejected}
        bytes_up = sum(reply.nbytes for reply in replies)
        self.history.record_train(server_round, outcome, failures, bytes_up)
        spent = record_privacy_summary({r.client_id: r.metrics for r in replies})
        self.history.entry(server_round).update(spent)
        log(INFO, "%s: %s accepted, %s rejected, %s failed", self.progress(server_round),
            len(outcome.accepted), len(outcome.rejected), failures)
        metrics: dict[str, float] = {
            "num-accepted": float(len(outcome.accepted)),
            "num-rejected": float(len(outcome.rejected) + failures),
            **{k: float(v) for k, v in outcome.metrics.items()},
        }
        for key in ("epsilon", "delta"):
            if key in outcome.privacy:
                metrics[key] = float(outcome.privacy[key])
        if spent:
            metrics["record-epsilon-max"] = spent["epsilon_max"]
        return outcome, metrics

    def _missing_replies(self, server_round: int, replies: Sequence[Reply],
                         failures: int) -> int:
        """Sampled nodes the round heard nothing from (logged).

        By count, not by sender: the error reply for a dead node comes from the
        SuperLink, not from that node.
        """
        sampled = self._train_nodes.get(int(server_round), [])
        missing = max(0, len(sampled) - len(replies) - failures)
        if missing:
            silent = sorted(set(sampled) - {r.node_id for r in replies}, key=client_sort_key)
            log(INFO, "round %s: %s node(s) failed: no reply within the round timeout (among "
                "nodes %s)", server_round, missing, ", ".join(silent))
        return missing

    def progress(self, server_round: int) -> str:
        """``"[phase] round i/N, 42 s elapsed, ETA 380 s"`` (the ETA from the mean round)."""
        label = f"[{self.phase}] round {server_round}"
        if self.num_rounds is None or self._first_round is None:
            return label
        first, started = self._first_round
        elapsed = _clock() - started
        done = server_round - first + 1
        eta = elapsed / max(done, 1) * max(self.num_rounds - server_round, 0)
        return f"{label}/{self.num_rounds}, {elapsed:.0f} s elapsed, ETA {eta:.0f} s"

    # ------------------------------------------------------------------ evaluation

    def should_evaluate(self, server_round: int) -> bool:
        """Whether clients evaluate after ``server_round``."""
        if self.is_refused(server_round):
            return False
        if self.num_rounds is not None and server_round > self.num_rounds:
            return False
        last = self.num_rounds is not None and server_round >= self.num_rounds
        return last or server_round % self.evaluate_every == 0

    def evaluate(self, server_round: int, nodes: Sequence[str],
                 extra_config: Mapping[str, object] | None = None) -> dict[str, Instruction]:
        """Evaluation instructions for ``nodes`` (the algorithm may add tasks).

        In a round without evaluation the algorithm may still give the round's training
        nodes a task (e.g. decrypt a sum for the next cohort); those nodes get
        ``flhet-evaluate = False``: they run the task and score nothing.
        """
        evaluating = self.fraction_evaluate > 0 and self.should_evaluate(server_round)
        if self.is_refused(server_round):
            return {}
        candidates = list(nodes) if evaluating else self._train_nodes.get(int(server_round), [])
        instructions = self.algorithm.evaluate_instructions(server_round, candidates)
        if not evaluating:
            instructions = {node: ins for node, ins in instructions.items()
                            if ins.arrays or set(ins.config) - {wire.EVALUATE}}
        for instruction in instructions.values():
            instruction.config.update(dict(extra_config or {}))
            instruction.config.update({wire.SERVER_ROUND: int(server_round),
                                       wire.PHASE: self.phase,
                                       wire.ALGORITHM: self.algorithm.name,
                                       wire.EVALUATE: bool(evaluating)})
        self.history.add_bytes(server_round,
                               bytes_down=sum(i.nbytes for i in instructions.values()))
        if not instructions:
            self.end_round(server_round)
        return instructions

    def aggregate_evaluate(self, server_round: int, replies: Sequence[Reply]) -> dict[str, float]:
        """Summarise per-client accuracies into round metrics (flat, scalar)."""
        replies = self.algorithm.aggregate_evaluate(server_round, list(replies))
        per_client = {r.client_id: {k: float(v) for k, v in r.metrics.items()
                                    if isinstance(v, (int, float)) and not isinstance(v, bool)}
                      for r in replies if wire.CLIENT_ACCURACY in r.metrics}
        summary = self.history.record_evaluate(server_round, per_client)
        self.history.entry(server_round).update(record_privacy_summary(per_client))
        if summary is None:
            self.end_round(server_round)
            return {}
        entry = self.history.entry(server_round)
        glob = summary["global_accuracy_mean"]
        log(INFO, "round %s: client accuracy %.4f (min %.4f), global accuracy %s, "
            "%.1f KiB up, %.1f KiB down, %.1f s", server_round, summary["client_accuracy_mean"],
            summary["client_accuracy_min"], "n/a" if glob is None else f"{glob:.4f}",
            entry["bytes_up"] / 1024, entry["bytes_down"] / 1024, entry["seconds"])
        self.end_round(server_round)
        return {k: v for k, v in summary.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}


__all__ = ["RoundDriver", "client_id_of", "expected_cohort", "sample_fraction"]
