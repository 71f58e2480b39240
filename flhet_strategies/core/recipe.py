"""The client-side recipe of a distillation round, as the server sends it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

SCHEDULES = ("joint", "sequential")


@dataclass(frozen=True)
class DistillationRecipe:
    """Per-round client recipe of distillation, sent by the server in the round's config.

    Keys on the wire are the field names with ``-`` for ``_`` (Flower style), e.g.
    ``"local-epochs"``.

    Parameters
    ----------
    local_epochs : int (default: 1)
        Private epochs per round.
    warmup_epochs : int (default: 2)
        Extra private epochs in round 1, before any consensus exists.
    kd_weight : float (default: 0.5)
        Weight of the distillation term.
    kd_temperature : float (default: 1.0)
        Distillation temperature ``T`` (the loss is ``T^2 * KL``).
    schedule : str (default: "joint")
        ``"joint"``: every private step adds ``kd_weight * KD`` on a proxy batch.
        ``"sequential"``: FedMD's digest-then-revisit, one distillation epoch on the
        consensus, then the private epochs.
    final_private_epochs : int (default: 0)
        Private-only epochs after the last round's reply (personalisation).
    final_lr_scale : float (default: 1.0)
        Learning-rate multiplier of those final epochs (below one is gentler).
    final_round : bool (default: False)
        Set by the server in the last round.
    """

    local_epochs: int = 1
    warmup_epochs: int = 2
    kd_weight: float = 0.5
    kd_temperature: float = 1.0
    schedule: str = "joint"
    final_private_epochs: int = 0
    final_lr_scale: float = 1.0
    final_round: bool = False

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if min(self.local_epochs, self.warmup_epochs, self.final_private_epochs) < 0:
            raise ValueError("epoch counts must be non-negative")
        if self.kd_weight < 0 or self.kd_temperature <= 0 or self.final_lr_scale <= 0:
            raise ValueError("kd_weight must be >= 0, kd_temperature and final_lr_scale > 0")

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> "DistillationRecipe":
        """Read the recipe from a Flower config mapping; unknown keys are ignored."""
        kwargs = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key in config:
                kwargs[f.name] = type(getattr(cls, f.name))(config[key])
        return cls(**kwargs)

    def to_config(self) -> dict[str, object]:
        """The recipe as Flower config entries (inverse of :meth:`from_config`)."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}
