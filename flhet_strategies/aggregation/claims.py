"""Checks on what a reply claims about its sender, before any algorithm weighs it.

Sample counts and label histograms become aggregation weights, and the client id decides
whose reply a weight belongs to: :class:`ClaimCheck` rejects duplicate and unknown ids,
counts above a cap or above what the client enrolled with, and histograms that disagree
with the count, each with a reason that names what was wrong. ``docs/claims.md``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from .. import wire
from ..protocol import Reply, client_sort_key


class ClaimCheck:
    """Screens a round's replies for claims an honest client cannot make.

    Every round, in this order (the first failed rule is the reason):

    1. a client id sent from two or more nodes is rejected for all of them (one client
       is never aggregated twice; the reason names the nodes);
    2. with ``bind_nodes``, an id keeps the node that first sent it; another node
       claiming it later is rejected;
    3. with ``enrolled``, an id that did not enroll is rejected, and so is a
       ``num-examples`` above the count it enrolled with;
    4. a ``num-examples`` above ``max_examples`` is rejected;
    5. a label histogram (``class-counts``), where the reply sends one in the clear,
       must be non-negative integers that sum to ``num-examples``.

    A reply whose ``num-examples`` is not a positive integer is left to the algorithm,
    which rejects it with its own reason. Weights inside a Paillier ciphertext or a DP
    noise share are not visible here (``docs/claims.md``).

    Parameters
    ----------
    max_examples : int, optional
        Server-side cap on a client's claimed training examples.
    enrolled : Mapping[str, int], optional
        Client id -> training examples registered at enrollment (e.g. by the data
        owner's contract, or the partition sizes in a simulation).
    bind_nodes : bool (default: False)
        Bind each client id to the first node that sends it. Leave off where a restarted
        SuperNode gets a new node id (Flower's default without node authentication).
    check_histogram : bool (default: True)
        Apply rule 5.
    """

    def __init__(self, max_examples: int | None = None,
                 enrolled: Mapping[str, int] | None = None, bind_nodes: bool = False,
                 check_histogram: bool = True) -> None:
        if max_examples is not None and (isinstance(max_examples, bool)
                                         or int(max_examples) != max_examples
                                         or max_examples < 1):
            raise ValueError(f"max_examples must be a positive integer, got {max_examples!r}")
        self.max_examples = None if max_examples is None else int(max_examples)
        self.enrolled = None if enrolled is None else {
            str(cid): _enrolled_count(cid, n) for cid, n in enrolled.items()}
        self.bind_nodes = bool(bind_nodes)
        self.check_histogram = bool(check_histogram)
        self._nodes: dict[str, str] = {}

    def screen(self, server_round: int, replies: Sequence[Reply]
               ) -> tuple[list[Reply], dict[str, str]]:
        """The replies that pass, and ``{key: reason}`` for those that do not.

        The key is the client id, or ``"<id> (node <node>)"`` for each sender of a
        duplicated id.
        """
        senders: dict[str, list[Reply]] = defaultdict(list)
        for reply in replies:
            senders[str(reply.client_id)].append(reply)
        passed, rejected = [], {}
        for cid in sorted(senders, key=client_sort_key):
            group = senders[cid]
            if len(group) > 1:
                nodes = ", ".join(sorted(str(r.node_id) for r in group))
                for r in group:
                    rejected[f"{cid} (node {r.node_id})"] = (
                        f"client id {cid} was sent by {len(group)} nodes ({nodes}) this round")
                continue
            reason = self._reason(cid, group[0])
            if reason is None:
                passed.append(group[0])
            else:
                rejected[cid] = reason
        if self.bind_nodes:
            for reply in passed:
                self._nodes.setdefault(str(reply.client_id), str(reply.node_id))
        return passed, rejected

    def _reason(self, cid: str, reply: Reply) -> str | None:
        node = str(reply.node_id)
        if self.bind_nodes and self._nodes.get(cid, node) != node:
            return f"client id {cid} belongs to node {self._nodes[cid]}, not node {node}"
        if self.enrolled is not None and cid not in self.enrolled:
            return f"client id {cid} did not enroll ({len(self.enrolled)} clients did)"
        claimed = _count(reply.num_examples)
        if claimed is None:
            return None  # not a positive integer: the algorithm says why
        if self.enrolled is not None and claimed > self.enrolled[cid]:
            return (f"num-examples {claimed} exceeds the {self.enrolled[cid]} examples "
                    f"client {cid} enrolled with")
        if self.max_examples is not None and claimed > self.max_examples:
            return f"num-examples {claimed} exceeds the cap of {self.max_examples}"
        counts = reply.arrays.get(wire.CLASS_COUNTS)
        if self.check_histogram and counts is not None:
            return _histogram_reason(counts, claimed)
        return None

    def state_dict(self) -> dict:
        """The node bindings (for a checkpoint)."""
        return {"nodes": dict(self._nodes)}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore :meth:`state_dict`."""
        self._nodes = {str(k): str(v) for k, v in dict(state.get("nodes", {})).items()}


def _enrolled_count(cid: object, n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"enrolled count of client {cid} must be a positive integer, got {n!r}")
    return int(n)


def _count(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return None
    if not np.isfinite(value) or int(value) != value or value <= 0:
        return None
    return int(value)


def _histogram_reason(counts: object, claimed: int) -> str | None:
    array = np.asarray(counts)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.number) or array.dtype.kind == "c":
        return f"class-counts must be a 1-D numeric histogram, got shape {array.shape}, " \
               f"dtype {array.dtype}"
    if not np.all(np.isfinite(array)) or np.any(array < 0) or np.any(array != np.round(array)):
        return "class-counts must be non-negative integers"
    total = float(array.sum())
    if total != claimed:
        return f"class-counts sum to {total:.0f} but num-examples is {claimed}"
    return None


__all__ = ["ClaimCheck"]
