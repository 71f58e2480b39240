"""Instructions and replies in Flower's types, both APIs (the only place they are converted).

Message API: an instruction is a ``RecordDict`` with ArrayRecord ``"arrays"`` and
ConfigRecord ``"config"``; a reply has ArrayRecord ``"arrays"`` and MetricRecord
``"metrics"``. Compat API: arrays travel as ``Parameters`` in the order named by the
config (or reply metric) ``"flhet-arrays"``; an evaluation reply's arrays travel as
``.npy`` bytes in its metrics.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import Parameters, ndarrays_to_parameters, parameters_to_ndarrays

from .. import wire
from ..protocol import Instruction, Reply


def arrays_to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Pack named numpy arrays into an ``ArrayRecord`` (names and shapes preserved: a 0-d
    array stays 0-d, which ``np.ascontiguousarray`` would make 1-d)."""
    record = ArrayRecord()
    for name, value in arrays.items():
        record[name] = Array(np.require(np.asarray(value), requirements="C"))
    return record


def record_to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Unpack an ``ArrayRecord`` into named numpy arrays."""
    return {name: array.numpy() for name, array in record.items()}


def record_nbytes(record: ArrayRecord) -> int:
    """Bytes of serialized array data in a record (communication accounting)."""
    return int(sum(len(array.data) for array in record.values()))


# ---------------------------------------------------------------------- Message API

def instruction_content(instruction: Instruction) -> RecordDict:
    """The ``RecordDict`` of a message carrying ``instruction``."""
    return RecordDict({wire.ARRAYS: arrays_to_record(instruction.arrays),
                       wire.CONFIG: ConfigRecord(dict(instruction.config))})


def instruction_of(message: Message) -> Instruction:
    """The instruction a message carries (missing records: empty)."""
    content = message.content
    arrays = content.array_records.get(wire.ARRAYS)
    config = content.config_records.get(wire.CONFIG)
    return Instruction(record_to_arrays(arrays) if arrays is not None else {},
                       dict(config) if config is not None else {})


def set_instruction(message: Message, instruction: Instruction) -> None:
    """Replace the arrays and config a message carries (a client step's edit)."""
    message.content[wire.ARRAYS] = arrays_to_record(instruction.arrays)
    message.content[wire.CONFIG] = ConfigRecord(dict(instruction.config))


def reply_content(reply: Reply) -> RecordDict:
    """The ``RecordDict`` of a client's reply message."""
    return RecordDict({wire.ARRAYS: arrays_to_record(reply.arrays),
                       wire.METRICS: MetricRecord(dict(reply.metrics))})


def reply_of(message: Message) -> Reply:
    """The reply a message carries, with its client id (``client-id``, else node id)."""
    from .driver import client_id_of

    content = message.content
    arrays = content.array_records.get(wire.ARRAYS)
    metrics = content.metric_records.get(wire.METRICS)
    metrics = dict(metrics) if metrics is not None else {}
    node = str(message.metadata.src_node_id)
    return Reply(client_id_of(metrics, node),
                 record_to_arrays(arrays) if arrays is not None else {}, metrics, node)


# ---------------------------------------------------------------------- compat API

def instruction_parameters(instruction: Instruction) -> tuple[Parameters, dict]:
    """``Parameters`` and config of a compat ``FitIns`` / ``EvaluateIns``."""
    names = list(instruction.arrays)
    config = {**instruction.config, wire.ARRAY_NAMES: wire.join_names(names)}
    return ndarrays_to_parameters([instruction.arrays[n] for n in names]), config


def instruction_from_compat(parameters: Sequence[np.ndarray], config: Mapping) -> Instruction:
    """The instruction of a compat ``fit`` / ``evaluate`` call (a ``NumPyClient`` side).

    Raises
    ------
    ValueError
        If the config names a different number of arrays than arrived.
    """
    names = wire.split_names(config.get(wire.ARRAY_NAMES, ""))
    if len(names) != len(parameters):
        raise ValueError(f"the instruction names {len(names)} arrays {names} but "
                         f"{len(parameters)} arrived: is the server a flhet strategy?")
    clean = {k: v for k, v in config.items() if k != wire.ARRAY_NAMES}
    return Instruction(dict(zip(names, parameters)), clean)


def compat_from_instruction(instruction: Instruction) -> tuple[list[np.ndarray], dict]:
    """An instruction back as a compat ``(parameters, config)`` pair (client steps)."""
    names = list(instruction.arrays)
    return ([instruction.arrays[n] for n in names],
            {**instruction.config, wire.ARRAY_NAMES: wire.join_names(names)})


def reply_to_compat(reply: Reply) -> tuple[list[np.ndarray], dict]:
    """A fit reply's arrays in order and its metrics naming them (``flhet-arrays``)."""
    names = list(reply.arrays)
    return [reply.arrays[n] for n in names], {**reply.metrics,
                                              wire.ARRAY_NAMES: wire.join_names(names)}


def reply_from_compat(arrays: Sequence[np.ndarray], num_examples: int, metrics: Mapping,
                      default_names: Sequence[str] = ()) -> Reply:
    """A compat fit reply as a :class:`Reply` (client id: its ``client-id`` metric, else
    empty).

    The metric ``flhet-arrays`` names the arrays; without it ``default_names`` do
    (clients that predate names), if their number matches, else ``array_0``, ....
    """
    from .driver import client_id_of

    metrics = dict(metrics)
    names = wire.split_names(metrics.pop(wire.ARRAY_NAMES, "")) if wire.ARRAY_NAMES in metrics \
        else None
    if names is None or len(names) != len(arrays):
        names = list(default_names) if len(default_names) == len(arrays) else \
            [f"array_{i}" for i in range(len(arrays))]
    metrics[wire.NUM_EXAMPLES] = num_examples
    return Reply(client_id_of(metrics, ""), dict(zip(names, arrays)), metrics)


def evaluate_metrics_with_arrays(metrics: Mapping, arrays: Mapping[str, np.ndarray]) -> dict:
    """Compat evaluation metrics carrying ``arrays`` as ``.npy`` bytes."""
    out = dict(metrics)
    for name, value in arrays.items():
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(value), allow_pickle=False)
        out[wire.ARRAY_METRIC_PREFIX + name] = buffer.getvalue()
    return out


def arrays_from_evaluate_metrics(metrics: Mapping) -> tuple[dict[str, np.ndarray], dict]:
    """Split compat evaluation metrics into the arrays they carry and the plain metrics.

    A value that does not load as ``.npy`` is dropped (logged by the caller's checks).
    """
    arrays, plain = {}, {}
    for key, value in metrics.items():
        if isinstance(key, str) and key.startswith(wire.ARRAY_METRIC_PREFIX):
            try:
                arrays[key[len(wire.ARRAY_METRIC_PREFIX):]] = np.load(
                    io.BytesIO(bytes(value)), allow_pickle=False)
            except (ValueError, OSError, EOFError, TypeError):
                continue
        else:
            plain[key] = value
    return arrays, plain


def parameters_arrays(parameters: Parameters) -> list[np.ndarray]:
    """The ndarrays of compat ``Parameters`` (``[]`` when they do not deserialize)."""
    try:
        return parameters_to_ndarrays(parameters)
    except (ValueError, OSError, EOFError):
        return []


__all__ = [
    "arrays_from_evaluate_metrics",
    "arrays_to_record",
    "compat_from_instruction",
    "evaluate_metrics_with_arrays",
    "instruction_content",
    "instruction_from_compat",
    "instruction_of",
    "instruction_parameters",
    "parameters_arrays",
    "record_nbytes",
    "record_to_arrays",
    "reply_content",
    "reply_from_compat",
    "reply_of",
    "reply_to_compat",
    "set_instruction",
]
