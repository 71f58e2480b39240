"""Bytes per round: full model weights (FedAvg) vs logit-consensus distillation.

For every zoo architecture on Fashion-MNIST and CIFAR-10 shapes, prints the serialized
Flower bytes one client moves per round under each, and their ratio; nothing is trained.
Run ``python benchmarks/communication_benchmark.py``. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord
from torch import nn

from clients.models.zoo import ARCHITECTURES, build_model, count_parameters
from flhet_strategies import wire
from flhet_strategies.algorithms.consensus import ConsensusDistillation, RoundPlan
from flhet_strategies.faces.records import arrays_to_record, record_nbytes
from flhet_strategies.protocol import Reply

DATASET_SHAPES: dict[str, tuple[tuple[int, int, int], int]] = {
    "Fashion-MNIST": ((1, 28, 28), 10),
    "CIFAR-10": ((3, 32, 32), 10),
}
"""Dataset name -> (input shape ``(C, H, W)``, number of classes)."""

LOGIT_DTYPES: dict[str, type[np.floating]] = {"float32": np.float32, "float16": np.float16}
"""Wire dtypes the benchmark can send logits in."""


@dataclass(frozen=True)
class DistillationBytes:
    """Serialized bytes one client moves per distillation round.

    Parameters
    ----------
    up : int
        Bytes of the reply ``ArrayRecord`` (``logits`` + ``class_counts``).
    down : int
        Bytes of the round-plan ``ArrayRecord`` (proxy indices + previous consensus).
    plan_array_bytes : int
        ``RoundPlan.nbytes``: the plan's raw array data, without serialization overhead.
    """

    up: int
    down: int
    plan_array_bytes: int

    @property
    def total(self) -> int:
        """Bytes up plus down."""
        return self.up + self.down


@dataclass(frozen=True)
class ByteRow:
    """One architecture's per-client, per-round traffic under FedAvg and distillation.

    Parameters
    ----------
    architecture : str
        Model zoo name.
    parameters : int
        Number of model parameters (``count_parameters``; buffers excluded).
    weight_bytes : int
        Serialized bytes of the full weights in one direction.
    distillation : DistillationBytes
        Serialized distillation bytes of one client and round.
    """

    architecture: str
    parameters: int
    weight_bytes: int
    distillation: DistillationBytes

    @property
    def weights_round_bytes(self) -> int:
        """FedAvg bytes per client and round: weights down plus weights up."""
        return 2 * self.weight_bytes

    @property
    def ratio(self) -> float:
        """How many times more bytes FedAvg moves than distillation."""
        return self.weights_round_bytes / self.distillation.total


def _first_round_replies(
    protocol: ConsensusDistillation, logit_dtype: type[np.floating], num_clients: int, seed: int
) -> list[Reply]:
    """Random but valid client replies to round 1 of ``protocol``."""
    rng = np.random.default_rng(seed)
    shape = (protocol.proxy_per_round, protocol.num_classes)
    replies = []
    for cid in range(num_clients):
        logits = rng.normal(size=shape).astype(logit_dtype)
        num_examples = int(rng.integers(100, 1000))
        counts = rng.integers(1, 100, size=protocol.num_classes).astype(np.int64)
        replies.append(Reply(str(cid), {wire.LOGITS: logits, wire.CLASS_COUNTS: counts},
                             {wire.NUM_EXAMPLES: num_examples}))
    return replies


def distillation_round(
    num_classes: int,
    proxy_per_round: int,
    num_proxy: int,
    logit_dtype: type[np.floating] = np.float32,
    num_clients: int = 3,
    seed: int = 0,
) -> tuple[RoundPlan, dict[str, np.ndarray]]:
    """Run the real protocol for one round and return the next plan and a client reply.

    A :class:`ConsensusDistillation` aggregates ``num_clients`` random valid replies for
    round 1, so the plan of round 2 carries a full consensus (the steady-state download).

    Parameters
    ----------
    num_classes : int
        Number of classes.
    proxy_per_round : int
        Proxy samples per round; must not exceed ``num_proxy``.
    num_proxy : int
        Size of the public proxy set.
    logit_dtype : numpy floating type (default: np.float32)
        Dtype the client sends its logits in.
    num_clients : int (default: 3)
        Number of replies aggregated in round 1.
    seed : int (default: 0)
        Seed of the random replies and of the proxy sampler.

    Returns
    -------
    tuple of RoundPlan and dict
        The round-2 plan and the arrays of one round-2 client reply
        (``logits`` of shape ``(proxy_per_round, num_classes)``, ``class_counts`` int64).

    Raises
    ------
    ValueError
        If ``proxy_per_round > num_proxy``, or if the protocol rejects the replies.
    """
    if proxy_per_round > num_proxy:
        raise ValueError(
            f"proxy_per_round ({proxy_per_round}) exceeds the proxy set size ({num_proxy}); "
            "raise num_proxy or lower proxy_per_round"
        )
    protocol = ConsensusDistillation(num_proxy, num_classes, proxy_per_round, seed=seed)
    outcome = protocol.aggregate(1, _first_round_replies(protocol, logit_dtype, num_clients, seed))
    if not outcome.released or outcome.rejected:
        raise ValueError(f"the protocol rejected the benchmark payloads: {outcome.rejected}")
    reply = _first_round_replies(protocol, logit_dtype, 1, seed + 1)[0]
    return protocol.plan(2), dict(reply.arrays)


def measure_distillation_bytes(
    num_classes: int,
    proxy_per_round: int,
    num_proxy: int,
    logit_dtype: type[np.floating] = np.float32,
) -> DistillationBytes:
    """Serialized Flower bytes of one client's distillation round (see docs/benchmarks.md).

    Parameters
    ----------
    num_classes, proxy_per_round, num_proxy, logit_dtype
        As in :func:`distillation_round`.

    Returns
    -------
    DistillationBytes
        Up/down bytes of the ``ArrayRecord`` s and the plan's raw ``nbytes``.
    """
    plan, reply = distillation_round(num_classes, proxy_per_round, num_proxy, logit_dtype)
    return DistillationBytes(
        up=record_nbytes(arrays_to_record(reply)),
        down=record_nbytes(arrays_to_record(plan.to_arrays())),
        plan_array_bytes=plan.nbytes,
    )


def weight_record_bytes(model: nn.Module) -> int:
    """Serialized bytes of ``ArrayRecord(model.state_dict())`` (one direction of FedAvg)."""
    return record_nbytes(ArrayRecord(model.state_dict()))


def byte_table(
    architectures: Sequence[str],
    input_shape: tuple[int, int, int],
    num_classes: int,
    proxy_per_round: int,
    num_proxy: int,
    logit_dtype: type[np.floating] = np.float32,
) -> list[ByteRow]:
    """Per-client, per-round bytes of every architecture for one dataset shape.

    Parameters
    ----------
    architectures : Sequence[str]
        Names from :data:`clients.models.zoo.ARCHITECTURES`.
    input_shape : tuple of int
        ``(C, H, W)`` of one image.
    num_classes : int
        Number of classes.
    proxy_per_round, num_proxy, logit_dtype
        As in :func:`distillation_round`.

    Returns
    -------
    list of ByteRow
        One row per architecture, in the given order.
    """
    distillation = measure_distillation_bytes(num_classes, proxy_per_round, num_proxy, logit_dtype)
    rows = []
    for name in architectures:
        model = build_model(name, input_shape, num_classes)
        parameters, weight_bytes = count_parameters(model), weight_record_bytes(model)
        rows.append(ByteRow(name, parameters, weight_bytes, distillation))
    return rows


def format_bytes(num_bytes: float) -> str:
    """Human-readable size with binary units, e.g. ``1.5 MiB``."""
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.2f} GiB"


def format_table(rows: Sequence[ByteRow]) -> str:
    """Render rows as an aligned text table (one line per architecture)."""
    header = ("architecture", "params", "weights up+down", "distill up", "distill down",
              "distill total", "weights/distill")
    lines = [
        (r.architecture, f"{r.parameters:,}", format_bytes(r.weights_round_bytes),
         format_bytes(r.distillation.up), format_bytes(r.distillation.down),
         format_bytes(r.distillation.total), f"{r.ratio:,.1f}x")
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]

    def render(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )

    rule = "-" * len(render(header))
    return "\n".join([render(header), rule, *(render(line) for line in lines)])


def summary_line(dataset: str, rows: Sequence[ByteRow]) -> str:
    """One sentence naming the largest and smallest weights/distillation ratio."""
    if not rows:
        raise ValueError("summary_line needs at least one row")
    largest = max(rows, key=lambda r: r.ratio)
    smallest = min(rows, key=lambda r: r.ratio)
    return (
        f"{dataset}: {largest.architecture} moves {largest.ratio:,.0f}x more bytes per round "
        f"than its distillation payload ({format_bytes(largest.weights_round_bytes)} vs "
        f"{format_bytes(largest.distillation.total)}); smallest gap: "
        f"{smallest.architecture}, {smallest.ratio:,.1f}x."
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Parse arguments, measure both dataset shapes, print tables and summaries."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proxy-per-round", type=int, default=2000,
                        help="proxy samples per round (default: 2000)")
    parser.add_argument("--num-proxy", type=int, default=10_000,
                        help="size of the public proxy set (default: 10000)")
    parser.add_argument("--logits-dtype", choices=tuple(LOGIT_DTYPES), default="float32",
                        help="dtype the clients send logits in (default: float32)")
    args = parser.parse_args(argv)
    if args.proxy_per_round < 1 or args.proxy_per_round > args.num_proxy:
        parser.error(f"--proxy-per-round must be in [1, --num-proxy={args.num_proxy}], "
                     f"got {args.proxy_per_round}")
    dtype = LOGIT_DTYPES[args.logits_dtype]
    print(f"Per client and round; proxy_per_round={args.proxy_per_round}, "
          f"logits {args.logits_dtype}; serialized Flower ArrayRecord bytes.")
    summaries = []
    for dataset, (shape, num_classes) in DATASET_SHAPES.items():
        rows = byte_table(ARCHITECTURES, shape, num_classes, args.proxy_per_round,
                          args.num_proxy, dtype)
        print(f"\n{dataset} ({'x'.join(map(str, shape))}, {num_classes} classes)")
        print(format_table(rows))
        dist = rows[0].distillation
        print(f"RoundPlan.nbytes = {dist.plan_array_bytes:,} B; its ArrayRecord = {dist.down:,} B "
              f"(serialization overhead {dist.down - dist.plan_array_bytes} B)")
        halves = {name: measure_distillation_bytes(num_classes, args.proxy_per_round,
                                                   args.num_proxy, d).up
                  for name, d in LOGIT_DTYPES.items()}
        print(f"Reply up: float32 logits {halves['float32']:,} B, float16 logits "
              f"{halves['float16']:,} B ({halves['float16'] / halves['float32']:.3f}x)")
        summaries.append(summary_line(dataset, rows))
    print()
    print("\n".join(summaries))


if __name__ == "__main__":
    main()
