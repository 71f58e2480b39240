"""Split a label array among clients with flwr-datasets partitioners.

``"iid"``, ``"dirichlet"`` and ``"pathological"`` (:class:`PartitionerSpec` holds the
name and the full, effective parameters). Parameters and defaults: docs/data.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PARTITIONER_NAMES = ("iid", "dirichlet", "pathological")
CLASS_ASSIGNMENT_MODES = ("first-deterministic", "random", "deterministic")

# name -> {param: (default or _REQUIRED)}
_REQUIRED = object()
_PARAM_DEFAULTS: dict[str, dict[str, Any]] = {
    "iid": {},
    "dirichlet": {"alpha": _REQUIRED, "min_partition_size": 10, "self_balancing": False},
    "pathological": {
        "num_classes_per_partition": _REQUIRED,
        "class_assignment_mode": "first-deterministic",
    },
}


@dataclass(frozen=True)
class PartitionerSpec:
    """Which flwr-datasets partitioner to use and its parameters.

    Parameters
    ----------
    name : str
        ``"iid"``, ``"dirichlet"`` or ``"pathological"``.
    params : dict
        The partitioner's parameters (see docs/data.md). Missing optional ones are
        filled with their defaults, so ``params`` and :meth:`to_dict` always record the
        full, effective setting.

    Examples
    --------
    >>> PartitionerSpec("dirichlet", {"alpha": 0.1}).to_dict()
    {'name': 'dirichlet', 'alpha': 0.1, 'min_partition_size': 10, 'self_balancing': False}
    """

    name: str
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Validate the name and parameters and fill in defaults."""
        if self.name not in PARTITIONER_NAMES:
            raise ValueError(
                f"Unknown partitioner {self.name!r}; choose one of {', '.join(PARTITIONER_NAMES)}"
            )
        if not isinstance(self.params, Mapping):
            raise TypeError(f"params must be a dict, got {type(self.params).__name__}")
        defaults = _PARAM_DEFAULTS[self.name]
        unknown = sorted(set(self.params) - set(defaults))
        if unknown:
            allowed = ", ".join(defaults) or "none"
            raise ValueError(
                f"Unknown parameter(s) {unknown} for partitioner {self.name!r}; allowed: {allowed}"
            )
        missing = [k for k, v in defaults.items() if v is _REQUIRED and k not in self.params]
        if missing:
            raise ValueError(f"Partitioner {self.name!r} needs parameter(s) {missing}")
        params = {k: self.params.get(k, v) for k, v in defaults.items()}
        object.__setattr__(self, "params", _validated(self.name, params))

    def __hash__(self) -> int:
        """Hash of the name and the (scalar) parameters, so specs can key caches."""
        return hash((self.name, tuple(sorted(self.params.items()))))

    def to_dict(self) -> dict:
        """Return ``{"name": name, **params}``, e.g. for a results file."""
        return {"name": self.name, **self.params}

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> PartitionerSpec:
        """Build a spec from ``{"name": ..., **params}`` (the inverse of :meth:`to_dict`).

        Parameters
        ----------
        config : Mapping
            Must hold ``"name"``; every other key is a partitioner parameter.

        Returns
        -------
        PartitionerSpec
            The validated spec.
        """
        if "name" not in config:
            raise ValueError(f"Partitioner config needs a 'name' key, got keys {sorted(config)}")
        params = {k: v for k, v in config.items() if k != "name"}
        return cls(name=config["name"], params=params)


def _validated(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check value types and ranges; return the params with canonical Python types."""
    out = dict(params)
    if name == "dirichlet":
        alpha = params["alpha"]
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise ValueError(f"dirichlet alpha must be a positive number, got {alpha!r}")
        if not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"dirichlet alpha must be positive and finite, got {alpha}")
        out["alpha"] = float(alpha)
        out["min_partition_size"] = _non_negative_int(
            "min_partition_size", params["min_partition_size"]
        )
        if not isinstance(params["self_balancing"], bool):
            raise ValueError(
                f"self_balancing must be True or False, got {params['self_balancing']!r}"
            )
    elif name == "pathological":
        k = _non_negative_int("num_classes_per_partition", params["num_classes_per_partition"])
        if k < 1:
            raise ValueError("num_classes_per_partition must be at least 1")
        out["num_classes_per_partition"] = k
        mode = params["class_assignment_mode"]
        if mode not in CLASS_ASSIGNMENT_MODES:
            raise ValueError(
                f"class_assignment_mode must be one of {CLASS_ASSIGNMENT_MODES}, got {mode!r}"
            )
    return out


def _non_negative_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{key} must be a non-negative integer, got {value!r}")
    return int(value)


def partition_indices(
    labels: np.ndarray, num_partitions: int, spec: PartitionerSpec, seed: int
) -> list[np.ndarray]:
    """Assign sample positions to ``num_partitions`` clients.

    Parameters
    ----------
    labels : np.ndarray
        Integer class labels, shape ``(N,)``.
    num_partitions : int
        Number of clients, ``1 <= num_partitions <= N``.
    spec : PartitionerSpec
        Which partitioner and its parameters.
    seed : int
        Non-negative seed; the same seed gives the same partitions.

    Returns
    -------
    list[np.ndarray]
        ``num_partitions`` ``int64`` arrays of positions into ``labels``; no position
        appears twice. IID and Dirichlet use every position; the pathological partitioner
        leaves out classes no client was assigned (flwr-datasets warns when it does).
    """
    import datasets
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
    )

    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be a 1-D integer array, got dtype {labels.dtype} shape {labels.shape}"
        )
    if isinstance(num_partitions, bool) or not isinstance(num_partitions, (int, np.integer)):
        raise ValueError(f"num_partitions must be an integer, got {num_partitions!r}")
    if not 1 <= num_partitions <= len(labels):
        raise ValueError(
            f"num_partitions must be between 1 and the number of samples ({len(labels)}), "
            f"got {num_partitions}"
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    num_partitions, seed = int(num_partitions), int(seed)

    table = datasets.Dataset.from_dict(
        {"label": labels.astype(np.int64), "sample_index": np.arange(len(labels), dtype=np.int64)}
    )
    p = spec.params
    if spec.name == "iid":
        table = table.shuffle(seed=seed)
        partitioner = IidPartitioner(num_partitions=num_partitions)
    elif spec.name == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=p["alpha"],
            min_partition_size=p["min_partition_size"],
            self_balancing=p["self_balancing"],
            shuffle=True,
            seed=seed,
        )
    else:
        partitioner = PathologicalPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            num_classes_per_partition=p["num_classes_per_partition"],
            class_assignment_mode=p["class_assignment_mode"],
            shuffle=True,
            seed=seed,
        )
    partitioner.dataset = table
    try:
        return [
            np.asarray(
                partitioner.load_partition(pid).with_format("numpy")["sample_index"][:],
                dtype=np.int64,
            )
            for pid in range(num_partitions)
        ]
    except ValueError as err:
        if spec.name != "dirichlet" or "max number of attempts" not in str(err):
            raise
        raise ValueError(
            f"Dirichlet partitioning (alpha={p['alpha']}) of {len(labels)} samples into "
            f"{num_partitions} clients could not give every client at least "
            f"min_partition_size={p['min_partition_size']} samples in 11 tries. Increase "
            "alpha, lower min_partition_size, use fewer clients or more samples."
        ) from err
