"""Keep a client's model and state between rounds in the Flower ``Context``, and on disk.

Simulated and deployed ClientApps may be rebuilt for every message, so the model and
the client half's state live in ``context.state`` (a ``RecordDict`` Flower keeps per
node), one entry per phase. With a checkpoint folder they are also written to disk after
every training round, so a restarted node resumes (docs/resume.md). Nothing here travels
to the server.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context

from flhet_strategies.faces.checkpoint import CheckpointError, write_atomically

from flhet_strategies.faces.records import arrays_to_record, record_to_arrays

from ..federated_client import FederatedClient

STATE_KEY = "flhet-learner"
"""Prefix of the learner's ArrayRecord key in ``context.state`` (one per phase)."""

ALGORITHM_STATE_KEY = "flhet-state"
"""Prefix of the client half's state (e.g. the last global prototypes), one per phase."""


ROUND_KEY = "flhet-round"
"""Prefix of the round after which the in-memory state was saved, one per phase."""

CHECKPOINT_DIR_KEY = "checkpoint-dir"
"""Node-config key of the folder a node writes its state to after every training round."""

KEEP_ROUNDS = 2
"""Saved rounds kept per client and phase (the last, and the one a resumed round redoes
from)."""


def _key(prefix: str, phase: str) -> str:
    return f"{prefix}:{phase}"


def checkpoint_dir(context: Context | None, default: str | Path | None = None) -> Path | None:
    """The node's checkpoint folder: the node config ``checkpoint-dir``, else ``default``."""
    if context is not None and context.node_config.get(CHECKPOINT_DIR_KEY):
        return Path(str(context.node_config[CHECKPOINT_DIR_KEY]))
    return None if default is None else Path(default)


def restore_for(client: FederatedClient, context: Context | None, instruction, *,
                training: bool, directory: Path | None) -> bool:
    """:func:`restore_client` for ``instruction``'s phase and round: a training round
    ``r`` starts from the state after ``r - 1``, an evaluation of ``r`` scores ``r``'s."""
    round_ = instruction.server_round
    return restore_client(client, context, instruction.phase, directory=directory,
                          up_to_round=round_ - 1 if training else round_)


def save_for(client: FederatedClient, context: Context | None, instruction, *,
             directory: Path | None) -> None:
    """:func:`save_client` after training ``instruction``'s round."""
    save_client(client, context, instruction.phase, directory=directory,
                server_round=instruction.server_round)


def restore_client(client: FederatedClient, context: Context | None, phase: str = "main", *,
                   directory: str | Path | None = None, up_to_round: int | None = None) -> bool:
    """Load the client's saved model and state for ``phase``; return whether found.

    ``context.state`` (this process's latest state) unless it was saved after a round
    later than ``up_to_round``, as when a restarted server redoes a round the node had
    trained; then, with a ``directory``, the newest state saved on disk after a round
    ``<= up_to_round`` (training round ``r`` restores round ``r - 1``, an evaluation of
    round ``r`` round ``r``); a newer state is better than none.
    """
    memory = context is not None and _key(STATE_KEY, phase) in context.state.array_records
    if memory and _memory_round(context, phase) <= (up_to_round if up_to_round is not None
                                                    else float("inf")):
        return _restore_memory(client, context, phase)
    saved = {} if directory is None else _saved_rounds(Path(directory), phase,
                                                       client_key(context))
    usable = [r for r in saved if up_to_round is None or r <= up_to_round]
    if usable:
        learner, client.state = _read(saved[usable[-1]])
        client.learner.set_state(learner)
        return True
    return _restore_memory(client, context, phase) if memory else False


def _restore_memory(client: FederatedClient, context: Context, phase: str) -> bool:
    records = context.state.array_records
    client.learner.set_state(record_to_arrays(records[_key(STATE_KEY, phase)]))
    saved = records.get(_key(ALGORITHM_STATE_KEY, phase))
    client.state = record_to_arrays(saved) if saved is not None else {}
    return True


def _memory_round(context: Context, phase: str) -> float:
    saved = context.state.config_records.get(_key(ROUND_KEY, phase))
    return float("-inf") if saved is None else int(saved["round"])


def save_client(client: FederatedClient, context: Context | None, phase: str = "main", *,
                directory: str | Path | None = None, server_round: int | None = None) -> None:
    """Store the client's model and state for ``phase`` in ``context.state``; with a
    ``directory`` and ``server_round`` also on disk (atomically, the last
    :data:`KEEP_ROUNDS` rounds kept)."""
    learner, state = client.learner.get_state(), client.state
    if context is not None:
        context.state[_key(STATE_KEY, phase)] = arrays_to_record(learner)
        context.state[_key(ALGORITHM_STATE_KEY, phase)] = arrays_to_record(state)
        if server_round is not None:
            context.state[_key(ROUND_KEY, phase)] = ConfigRecord({"round": int(server_round)})
    if directory is None or server_round is None:
        return
    folder, cid = Path(directory) / phase, client_key(context)
    write_atomically(folder / f"client-{cid}.r{int(server_round):06d}.npz",
                     _pack(learner, state))
    saved = _saved_rounds(Path(directory), phase, cid)
    for old in sorted(saved)[:-KEEP_ROUNDS]:
        saved[old].unlink(missing_ok=True)


def client_key(context: Context | None) -> str:
    """The name a node's files carry: its partition id, else its node id."""
    return "0" if context is None else str(client_id_from_context(context))


def _saved_rounds(directory: Path, phase: str, cid: str) -> dict[int, Path]:
    pattern = re.compile(rf"client-{re.escape(cid)}\.r(\d+)\.npz$")
    folder = directory / phase
    found = {}
    if folder.is_dir():
        for path in folder.iterdir():
            match = pattern.match(path.name)
            if match:
                found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def _pack(learner: dict, state: dict) -> bytes:
    names = [f"learner/{k}" for k in learner] + [f"state/{k}" for k in state]
    values = [np.asarray(v) for v in list(learner.values()) + list(state.values())]
    buffer = io.BytesIO()
    np.savez(buffer, __names__=np.array(names, dtype=str),
             **{f"a{i}": v for i, v in enumerate(values)})
    return buffer.getvalue()


def _read(path: Path) -> tuple[dict, dict]:
    try:
        with np.load(path, allow_pickle=False) as data:
            names = [str(n) for n in data["__names__"]]
            arrays = {name: data[f"a{i}"] for i, name in enumerate(names)}
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{path} is not a readable client checkpoint: {err}") from err
    learner = {n.split("/", 1)[1]: v for n, v in arrays.items() if n.startswith("learner/")}
    state = {n.split("/", 1)[1]: v for n, v in arrays.items() if n.startswith("state/")}
    return learner, state


def client_id_from_context(context: Context) -> int:
    """The simulation's ``partition-id`` if set, else the node id."""
    node_config = context.node_config
    if "partition-id" in node_config:
        return int(node_config["partition-id"])
    return int(context.node_id)


__all__ = ["CHECKPOINT_DIR_KEY", "checkpoint_dir", "client_id_from_context", "client_key",
           "restore_client", "restore_for", "save_client", "save_for"]
