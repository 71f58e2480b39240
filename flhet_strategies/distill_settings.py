"""FedDF's server distillation settings (torch-free: configs read their defaults).

Defaults are the authors' code (epfml/federated-learning-public-code, FedDF-code); the
step itself is :func:`flhet_strategies.server_distillation.distill`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DistillSettings:
    """How the server distills each group's model (defaults: the authors' code).

    Parameters
    ----------
    max_steps : int (default: 10000)
        Distillation steps (mini-batches) per group and round; also the cosine period.
    lr : float (default: 1e-3)
        Adam's learning rate.
    batch_size : int (default: 128)
        Proxy inputs per step.
    temperature : float (default: 1.0)
        ``T`` of the KL loss (scaled by ``T^2``).
    eval_every : int (default: 100)
        Steps between validation checks.
    patience : int (default: 1000)
        Stop after this many steps without a better validation score.
    """

    max_steps: int = 10_000
    lr: float = 1e-3
    batch_size: int = 128
    temperature: float = 1.0
    eval_every: int = 100
    patience: int = 1000

    def __post_init__(self) -> None:
        for key in ("max_steps", "batch_size", "eval_every", "patience"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        for key in ("lr", "temperature"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
                raise ValueError(f"{key} must be positive and finite, got {value!r}")


__all__ = ["DistillSettings"]
