"""Client recipes: what a server half asks its clients to do each round, sent in the config.

Keys on the wire are the field names with ``-`` for ``_`` (Flower style), e.g.
``"local-epochs"``; unknown keys are ignored when reading.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TypeVar

SCHEDULES = ("joint", "sequential")
INFERENCE_MODES = ("head", "prototype")

_RecipeT = TypeVar("_RecipeT", bound="ConfigRecipe")


class ConfigRecipe:
    """``to_config`` / ``from_config`` for a frozen dataclass recipe (a mixin)."""

    @classmethod
    def from_config(cls: type[_RecipeT], config: Mapping[str, object]) -> _RecipeT:
        """Read the recipe from a Flower config mapping; unknown keys are ignored."""
        kwargs = {}
        for f in fields(cls):  # type: ignore[arg-type]
            key = f.name.replace("_", "-")
            if key in config:
                kwargs[f.name] = type(getattr(cls, f.name))(config[key])
        return cls(**kwargs)

    def to_config(self) -> dict[str, object]:
        """The recipe as Flower config entries (inverse of :meth:`from_config`)."""
        return {f.name.replace("_", "-"): getattr(self, f.name)
                for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class DistillationRecipe(ConfigRecipe):
    """Per-round client recipe of logit-consensus distillation (FedMD / DS-FL).

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


@dataclass(frozen=True)
class PrototypeRecipe(ConfigRecipe):
    """Per-round client recipe of the prototype algorithms (FedProto, FedTGP).

    Parameters
    ----------
    local_epochs : int (default: 1)
        Private epochs per round.
    warmup_epochs : int (default: 0)
        Extra private epochs in round 1, before any global prototype exists.
    proto_weight : float (default: 1.0)
        ``lambda``: weight of the prototype term ``MSE(f(x), p_y)`` (the mean over the
        feature dimensions of the squared distance to the sample's global prototype, as
        in the authors' code); 0 trains on private data alone.
    inference : str (default: "head")
        How the client predicts: ``"head"`` (its classifier head) or ``"prototype"``
        (the nearest global prototype in feature space, the head until one exists).
    """

    local_epochs: int = 1
    warmup_epochs: int = 0
    proto_weight: float = 1.0
    inference: str = "head"

    def __post_init__(self) -> None:
        if min(self.local_epochs, self.warmup_epochs) < 0:
            raise ValueError("epoch counts must be non-negative")
        if not self.proto_weight >= 0:
            raise ValueError(f"proto_weight must be >= 0, got {self.proto_weight}")
        if self.inference not in INFERENCE_MODES:
            raise ValueError(f"inference must be one of {INFERENCE_MODES}, got "
                             f"{self.inference!r}")


@dataclass(frozen=True)
class SharedHeadRecipe(ConfigRecipe):
    """Per-round client recipe of the shared-head algorithms (LG-FedAvg, FedGH).

    Parameters
    ----------
    local_epochs : int (default: 1)
        Private epochs per round (the whole model: body and head).
    warmup_epochs : int (default: 0)
        Extra private epochs in round 1.
    use_global_head : bool (default: True)
        Load the global head before training and score with it; False trains and scores
        the client's own model alone (the local-only baseline: no head exchange).
    """

    local_epochs: int = 1
    warmup_epochs: int = 0
    use_global_head: bool = True

    def __post_init__(self) -> None:
        if min(self.local_epochs, self.warmup_epochs) < 0:
            raise ValueError("epoch counts must be non-negative")


@dataclass(frozen=True)
class FedDFRecipe(ConfigRecipe):
    """Per-round client recipe of FedDF (ensemble distillation of architecture groups).

    Parameters
    ----------
    local_epochs : int (default: 1)
        Private epochs per round (from the group model received).
    warmup_epochs : int (default: 0)
        Extra private epochs in round 1.
    use_global_model : bool (default: True)
        Load the group model before training and score with it; False trains and scores
        the client's own model alone (the local-only baseline).
    kd_weight : float (default: 0.5)
        A predictions-only client (scikit-learn): weight of its distillation term on the
        ensemble's predictions (0: it trains alone).
    kd_temperature : float (default: 1.0)
        Its distillation temperature.
    """

    local_epochs: int = 1
    warmup_epochs: int = 0
    use_global_model: bool = True
    kd_weight: float = 0.5
    kd_temperature: float = 1.0

    def __post_init__(self) -> None:
        if min(self.local_epochs, self.warmup_epochs) < 0:
            raise ValueError("epoch counts must be non-negative")
        if self.kd_weight < 0 or self.kd_temperature <= 0:
            raise ValueError("kd_weight must be >= 0 and kd_temperature > 0")
