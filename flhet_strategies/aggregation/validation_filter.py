"""Drop prediction payloads that fail the server's labeled validation slice.

The server holds a small labeled slice of the proxy set (a root dataset, as in FLTrust,
Cao et al., NDSS'21, https://arxiv.org/abs/2012.13995) that is part of every round's
proxy draw. Each client's accuracy on it is weighted by its influence on each row's class: its
share ``n_ic / sum_j n_jc`` of the class's votes (its class histogram against the
round's; equal weights without histograms). A client below ``min_accuracy`` is rejected
for the round; the others are aggregated by the wrapped algorithm as usual, and the
slice's rows are withheld from the released consensus, so no client ever distills on
them (they stay held out, and an attacker cannot learn them from the targets).
``docs/robust_aggregation.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .. import wire
from ..protocol import Outcome, Reply, ServerAlgorithm, ServerAlgorithmWrapper
from .payload import ClientPayload, PayloadError


class ValidationFilter(ServerAlgorithmWrapper):
    """A prediction-sharing server half whose replies are screened on labeled proxy rows.

    Parameters
    ----------
    inner : ServerAlgorithm
        A consensus server half (``proxy_indices(round)``, ``logits`` replies) whose
        ``always_include`` holds ``indices``.
    indices : np.ndarray
        Proxy indices of the labeled validation slice.
    labels : np.ndarray
        Their labels, same length.
    min_accuracy : float (default: 0.5)
        Least influence-weighted accuracy on the slice.
    min_rows : int (default: 10)
        Fewer rows of classes the client votes for: it is not scored (kept).
    """

    def __init__(self, inner: ServerAlgorithm, indices: np.ndarray, labels: np.ndarray,
                 min_accuracy: float = 0.5, min_rows: int = 10) -> None:
        super().__init__(inner)
        if not all(callable(getattr(self.innermost, m, None))
                   for m in ("proxy_indices", "check_reply")):
            raise TypeError(f"{type(self.innermost).__name__} shares no proxy predictions; "
                            "the validation filter scores predictions")
        self.indices = np.asarray(indices, dtype=np.int64).ravel()
        self.labels = np.asarray(labels, dtype=np.int64).ravel()
        if self.indices.size == 0 or self.indices.shape != self.labels.shape:
            raise ValueError(f"need a non-empty validation slice with one label per index, got "
                             f"{self.indices.size} indices and {self.labels.size} labels")
        num_classes = self.innermost.num_classes
        if self.labels.min() < 0 or self.labels.max() >= num_classes:
            raise ValueError(f"validation labels must lie in [0, {num_classes})")
        if not 0.0 <= min_accuracy <= 1.0:
            raise ValueError(f"min_accuracy must lie in [0, 1], got {min_accuracy!r}")
        self.min_accuracy, self.min_rows = float(min_accuracy), int(min_rows)

    def describe(self) -> list[str]:
        """The filter, then the inner lines."""
        return [f"Validation filter: influence-weighted accuracy >= {self.min_accuracy:g} on "
                f"{self.indices.size} labeled proxy rows"] \
            + self.inner.describe()

    def score(self, server_round: int, reply: Reply,
              class_totals: np.ndarray | None = None) -> float | None:
        """Influence-weighted accuracy of ``reply`` on the slice (None: not scorable).

        ``class_totals``: the round's summed class histograms (default: the reply's own,
        i.e. weights by its class distribution).
        """
        rows = self._slice_rows(server_round)
        payload = self._payload(server_round, reply)
        return None if payload is None else self._accuracy(rows, payload, class_totals)

    def aggregate(self, server_round: int, replies: Sequence[Reply]) -> Outcome:
        """Reject the replies that fail the slice; the inner algorithm takes the rest."""
        rows = self._slice_rows(server_round)
        payloads = [self._payload(server_round, reply) for reply in replies]
        histograms = [p.class_counts for p in payloads
                      if p is not None and p.class_counts is not None]
        totals = np.sum(histograms, axis=0) if histograms else None
        kept, rejected, scores = [], {}, {}
        for reply, payload in zip(replies, payloads):
            accuracy = None if payload is None else self._accuracy(rows, payload, totals)
            if accuracy is not None:
                scores[reply.client_id] = accuracy
            if accuracy is not None and accuracy < self.min_accuracy:
                rejected[reply.client_id] = (
                    f"validation filter: accuracy {accuracy:.3f} on the labeled proxy rows, "
                    f"weighted by its share of each class's votes, below "
                    f"{self.min_accuracy:g}")
            else:
                kept.append(reply)
        outcome = self.inner.aggregate(server_round, kept) if kept else Outcome()
        if outcome.released:  # the slice stays held out: no targets on its rows
            arrays = self.innermost.result_arrays()
            keep = ~np.isin(arrays[wire.CONSENSUS_INDICES], self.indices)
            self.innermost.release(server_round, {
                wire.CONSENSUS_INDICES: arrays[wire.CONSENSUS_INDICES][keep],
                wire.CONSENSUS: arrays[wire.CONSENSUS][keep]})
        outcome.rejected = {**rejected, **outcome.rejected}
        outcome.history = {**outcome.history, "validation_scores": scores}
        return outcome

    def _slice_rows(self, server_round: int) -> np.ndarray:
        """Rows of the slice in the round's (sorted) proxy draw."""
        drawn = self.innermost.proxy_indices(server_round)
        if not np.isin(self.indices, drawn).all():
            raise ValueError("the validation slice is not in the round's proxy draw: build "
                             "the algorithm with always_include=<the slice's indices>")
        return np.searchsorted(drawn, self.indices)

    def _payload(self, server_round: int, reply: Reply) -> ClientPayload | None:
        """The reply validated by the algorithm; None if malformed (the algorithm then
        rejects it with its own reason)."""
        try:
            return self.innermost.check_reply(server_round, reply)
        except (PayloadError, ValueError):
            return None

    def _accuracy(self, rows: np.ndarray, payload: ClientPayload,
                  class_totals: np.ndarray | None) -> float | None:
        influence = np.ones(payload.logits.shape[1])
        counts = payload.class_counts
        if counts is not None:
            totals = counts if class_totals is None else np.asarray(class_totals, np.float64)
            influence = np.divide(counts, totals, out=np.zeros(len(counts)), where=totals > 0)
        weights = influence[self.labels]
        if np.count_nonzero(weights) < self.min_rows:
            return None
        correct = np.argmax(payload.logits[rows], axis=1) == self.labels
        return float(np.sum(weights * correct) / np.sum(weights))


__all__ = ["ValidationFilter"]
