"""The protocol every flhet algorithm speaks: a server half and a client half.

Flower-free. A server half turns each round into one :class:`Instruction` per node and
the nodes' :class:`Reply` s into an :class:`Outcome`; a client half answers an
instruction with a reply. The generic faces (``flhet_strategies.faces`` on the server,
``clients.faces`` on the client) move these through Flower's Message API or compat API.
See ``docs/architecture.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import wire

ConfigValue = int | float | str | bool | bytes
"""A value an instruction's config may hold (what both Flower APIs can carry)."""


def _nbytes(arrays: Mapping[str, np.ndarray]) -> int:
    return int(sum(np.asarray(a).nbytes for a in arrays.values()))


@dataclass
class Instruction:
    """What a server half asks of one node in one round.

    Parameters
    ----------
    arrays : dict[str, np.ndarray]
        Named arrays (a consensus, prototypes, a model, an encrypted sum, ...).
    config : dict[str, ConfigValue]
        Scalars and strings: the recipe, the round, the phase, the algorithm's name.
    """

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    config: dict[str, ConfigValue] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes of array data (what the node downloads)."""
        return _nbytes(self.arrays)

    @property
    def server_round(self) -> int:
        """The round (``server-round`` in the config; 0 if absent)."""
        return int(self.config.get(wire.SERVER_ROUND, 0))

    @property
    def phase(self) -> str:
        """The run this instruction belongs to."""
        return str(self.config.get(wire.PHASE, "main"))

    def copy(self) -> "Instruction":
        """A shallow copy with fresh dicts (arrays are not copied)."""
        return Instruction(dict(self.arrays), dict(self.config))


@dataclass
class Reply:
    """What one node answered.

    Parameters
    ----------
    client_id : str
        The client's self-reported ``client-id``, else its node id.
    arrays : dict[str, np.ndarray]
        Named reply arrays, untrusted until the server half validates them.
    metrics : dict[str, Any]
        Reply metrics, including ``num-examples``.
    node_id : str
        The Flower node (message source) it came from.
    """

    client_id: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    node_id: str = ""

    @property
    def nbytes(self) -> int:
        """Bytes of array data (what the node uploaded); 0 for malformed arrays."""
        try:
            return _nbytes(self.arrays)
        except Exception:  # noqa: BLE001 - a malformed reply still counts as traffic 0
            return 0

    @property
    def num_examples(self) -> Any:
        """The reported ``num-examples`` (unvalidated; 0 if absent)."""
        return self.metrics.get(wire.NUM_EXAMPLES, 0)


@dataclass
class Outcome:
    """What a server half made of one round's replies.

    Parameters
    ----------
    accepted : list[str]
        Client ids whose replies entered the aggregate.
    rejected : dict[str, str]
        Client id -> why its reply was refused.
    weights : dict[str, float]
        Normalised aggregation weight of each accepted client.
    metrics : dict[str, float]
        Round metrics (e.g. mean training losses of the accepted clients).
    released : bool
        Whether a new aggregate was formed (False: the previous one stays).
    privacy : dict[str, Any]
        The round's privacy entry (``epsilon``, ``delta``, ...), empty without DP.
    history : dict[str, Any]
        Extra entries for the round's history (e.g. how a sum was decrypted).
    """

    accepted: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    released: bool = False
    privacy: dict[str, Any] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)


def client_sort_key(client_id: object) -> tuple:
    """Sort key for client ids: numeric ids in numeric order, then the others.

    Aggregating in a fixed client order (not arrival order) makes every floating-point
    sum, and so every run, reproducible.
    """
    text = str(client_id)
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def mean_metrics(replies: Sequence[Reply], accepted: Sequence[str],
                 keys: Sequence[str]) -> dict[str, float]:
    """Mean of each of ``keys`` over the accepted replies that report it."""
    chosen = set(accepted)
    out = {}
    for key in keys:
        values = [float(r.metrics[key]) for r in replies
                  if r.client_id in chosen and isinstance(r.metrics.get(key), (int, float))]
        if values:
            out[key] = float(np.mean(values))
    return out


class ServerAlgorithm:
    """Base of every server half: what the generic faces call, with neutral defaults.

    A subclass sets :attr:`name` (the client half that answers, sent as
    ``flhet-algorithm``) and implements :meth:`instructions` and :meth:`aggregate`.
    The faces add the round, phase, algorithm name and ``final-round`` to every
    instruction's config, sample the nodes, keep the history and run the evaluation.
    """

    name = "algorithm"
    """Name of the client half (``flhet-algorithm``)."""

    reply_array_names: tuple[str, ...] = ()
    """Order of a reply's arrays for compat clients that send no names."""

    num_rounds: int | None = None
    """Total rounds of the run, set by the face before the first round."""

    def plan_rounds(self, num_rounds: int, cohort_size: int | None) -> int:
        """How many of ``num_rounds`` rounds to run (a privacy budget may cap them).

        Parameters
        ----------
        num_rounds : int
            Rounds the run was asked for.
        cohort_size : int, optional
            Expected clients per round.
        """
        return int(num_rounds)

    def round_allowed(self, server_round: int, cohort_size: int) -> bool:
        """Whether ``server_round`` may run with ``cohort_size`` sampled clients."""
        return True

    def instructions(self, server_round: int, nodes: Sequence[str]) -> dict[str, Instruction]:
        """One instruction per sampled node (per-node: groups may get different models).

        Parameters
        ----------
        server_round : int
            The round (1-based).
        nodes : Sequence[str]
            The sampled nodes, in a stable order.
        """
        raise NotImplementedError

    def aggregate(self, server_round: int, replies: Sequence[Reply]) -> Outcome:
        """Validate the round's replies and form the next aggregate.

        Parameters
        ----------
        server_round : int
            The round the replies answer.
        replies : Sequence[Reply]
            The successful replies (untrusted), in arrival order.
        """
        raise NotImplementedError

    def evaluate_instructions(self, server_round: int,
                              nodes: Sequence[str]) -> dict[str, Instruction]:
        """Evaluation requests (default: an empty instruction per node)."""
        return {node: Instruction() for node in nodes}

    def aggregate_evaluate(self, server_round: int, replies: Sequence[Reply]) -> list[Reply]:
        """Take what is the algorithm's from the evaluation replies; return the rest."""
        return list(replies)

    def result_arrays(self) -> dict[str, np.ndarray]:
        """What the server holds after the last aggregation (a Flower ``Result``'s arrays)."""
        return {}

    def describe(self) -> list[str]:
        """Lines for a strategy's ``summary``."""
        return [type(self).__name__]

    def state_dict(self) -> dict[str, Any]:
        """The algorithm's state (arrays and scalars) for a checkpoint."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state made by :meth:`state_dict`."""


class ServerAlgorithmWrapper(ServerAlgorithm):
    """A server half around another one (privacy, secure sums): delegates by default.

    Parameters
    ----------
    inner : ServerAlgorithm
        The wrapped algorithm.
    """

    def __init__(self, inner: ServerAlgorithm) -> None:
        if not isinstance(inner, ServerAlgorithm):
            raise TypeError(f"expected a ServerAlgorithm, got {type(inner).__name__}")
        self.inner = inner

    @property
    def name(self) -> str:  # type: ignore[override]
        """The inner algorithm's name (the client half does not change)."""
        return self.inner.name

    @property
    def reply_array_names(self) -> tuple[str, ...]:  # type: ignore[override]
        """The inner algorithm's reply array order."""
        return self.inner.reply_array_names

    @property
    def num_rounds(self) -> int | None:  # type: ignore[override]
        """Total rounds (shared with the inner algorithm)."""
        return self.inner.num_rounds

    @num_rounds.setter
    def num_rounds(self, value: int | None) -> None:
        self.inner.num_rounds = value

    @property
    def innermost(self) -> ServerAlgorithm:
        """The algorithm inside every wrapper."""
        inner = self.inner
        while isinstance(inner, ServerAlgorithmWrapper):
            inner = inner.inner
        return inner

    def plan_rounds(self, num_rounds: int, cohort_size: int | None) -> int:
        """Delegate."""
        return self.inner.plan_rounds(num_rounds, cohort_size)

    def round_allowed(self, server_round: int, cohort_size: int) -> bool:
        """Delegate."""
        return self.inner.round_allowed(server_round, cohort_size)

    def instructions(self, server_round: int, nodes: Sequence[str]) -> dict[str, Instruction]:
        """Delegate."""
        return self.inner.instructions(server_round, nodes)

    def aggregate(self, server_round: int, replies: Sequence[Reply]) -> Outcome:
        """Delegate."""
        return self.inner.aggregate(server_round, replies)

    def evaluate_instructions(self, server_round: int,
                              nodes: Sequence[str]) -> dict[str, Instruction]:
        """Delegate."""
        return self.inner.evaluate_instructions(server_round, nodes)

    def aggregate_evaluate(self, server_round: int, replies: Sequence[Reply]) -> list[Reply]:
        """Delegate."""
        return self.inner.aggregate_evaluate(server_round, replies)

    def result_arrays(self) -> dict[str, np.ndarray]:
        """Delegate."""
        return self.inner.result_arrays()

    def describe(self) -> list[str]:
        """The wrapper's name, then the inner lines."""
        return [type(self).__name__] + self.inner.describe()

    def state_dict(self) -> dict[str, Any]:
        """The inner state under ``inner``."""
        return {"inner": self.inner.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the inner state."""
        self.inner.load_state_dict(state.get("inner", {}))


def unwrap(algorithm: ServerAlgorithm) -> ServerAlgorithm:
    """The algorithm inside any wrappers."""
    if isinstance(algorithm, ServerAlgorithmWrapper):
        return algorithm.innermost
    return algorithm


def wrapper_chain(algorithm: ServerAlgorithm) -> list[ServerAlgorithm]:
    """``algorithm`` and every algorithm inside it, outermost first."""
    chain = [algorithm]
    while isinstance(chain[-1], ServerAlgorithmWrapper):
        chain.append(chain[-1].inner)
    return chain


def find_wrapper(algorithm: ServerAlgorithm, kind: type) -> Any:
    """The first wrapper of type ``kind`` around ``algorithm`` (itself included), else None."""
    return next((a for a in wrapper_chain(algorithm) if isinstance(a, kind)), None)




class ClientAlgorithm:
    """Base of every client half: answers an instruction with a reply, Flower-free.

    A subclass sets :attr:`name` (the server half's ``flhet-algorithm``) and implements
    :meth:`fit`; :meth:`evaluate` scores the client's deployed predictor. The client
    faces restore the client's model and state before and save them after each call,
    and add ``client-id`` and ``num-examples``.
    """

    name = "algorithm"

    def fit(self, instruction: Instruction, client: Any) -> Reply:
        """Train as the instruction says; reply with what the server half aggregates.

        Parameters
        ----------
        instruction : Instruction
            The round's arrays and config.
        client : clients.federated_client.FederatedClient
            The learner, its data and its state.
        """
        raise NotImplementedError

    def evaluate(self, instruction: Instruction, client: Any) -> dict[str, float]:
        """Accuracy on the client's own test split and the global test set."""
        return client.evaluate()


__all__ = [
    "ClientAlgorithm",
    "ConfigValue",
    "Instruction",
    "Outcome",
    "Reply",
    "ServerAlgorithm",
    "ServerAlgorithmWrapper",
    "client_sort_key",
    "find_wrapper",
    "mean_metrics",
    "unwrap",
    "wrapper_chain",
]
