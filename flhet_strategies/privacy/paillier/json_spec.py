"""JSON wire format of the public specs of a secure sum (a Flower config value).

The secure weighted-sum spec (:class:`.spec.SecureSumSpec`, and so the secure FedAvg
spec :class:`.model_updates.SecureModelSpec`) is a frozen dataclass that travels to the
clients as a JSON string; it mixes in :class:`JsonSpec`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TypeVar

_SpecT = TypeVar("_SpecT", bound="JsonSpec")

_MAX_QUOTED = 200
"""Most characters of a bad spec text quoted in an error message."""


class JsonSpec:
    """``to_json`` / ``from_json`` for a dataclass spec.

    A subclass (a dataclass) sets the class attribute ``spec_name`` (without a type
    annotation, so that it is no dataclass field), which names the spec in errors, e.g.
    ``"secure FedAvg"``.
    """

    spec_name = "secure sum"

    def to_json(self) -> str:
        """The spec as a JSON string (a Flower ``ConfigRecord`` value)."""
        return json.dumps(asdict(self), sort_keys=True)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls: type[_SpecT], text: str) -> _SpecT:
        """Rebuild a spec from :meth:`to_json`.

        Parameters
        ----------
        text : str
            What :meth:`to_json` wrote.

        Raises
        ------
        ValueError
            If the text is not a valid spec (the message names the kind of spec).
        """
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict):
                raise TypeError("not a JSON object")
            return cls(**raw)
        except (TypeError, ValueError) as error:
            quoted = str(text)
            if len(quoted) > _MAX_QUOTED:
                quoted = quoted[:_MAX_QUOTED] + "..."
            raise ValueError(f"invalid {cls.spec_name} spec {quoted!r}: {error}") from error


__all__ = ["JsonSpec"]
