"""Run-time switchable faults for ``POST /v1/charges`` (never for lookups)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Final

MAX_LATENCY_MS: Final = 600_000  # ten minutes: anything longer is a typo, not a drill
RATE_FIELDS: Final = ("error_rate", "timeout_rate", "drop_response_rate")


class InvalidFaults(ValueError):
    """A fault setting that is not acceptable; the message names the field and the rule."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class FaultSettings:
    latency_ms: float = 0.0
    error_rate: float = 0.0
    timeout_rate: float = 0.0
    drop_response_rate: float = 0.0

    def as_json(self) -> dict[str, float]:
        data: dict[str, float] = asdict(self)
        if float(self.latency_ms).is_integer():
            data["latency_ms"] = int(self.latency_ms)  # 50, not 50.0: it reads back the way drills write it
        return data

    @property
    def active(self) -> bool:
        return self != FaultSettings()

    def updated(self, data: object) -> FaultSettings:
        """A copy with the fields in ``data`` (a JSON object) changed; raises ``InvalidFaults``."""
        if not isinstance(data, Mapping):
            raise InvalidFaults("", "The body must be a JSON object.")
        known = {f.name for f in fields(self)}
        changes: dict[str, float] = {}
        for name, value in data.items():
            if name not in known:
                raise InvalidFaults(str(name), f"Unknown fault {name!r}; known: {', '.join(sorted(known))}.")
            # bool is an int subclass, but `true` is never a meaningful rate or latency.
            if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
                raise InvalidFaults(name, f"{name} must be a number.")
            if name == "latency_ms":
                if not 0 <= value <= MAX_LATENCY_MS:
                    raise InvalidFaults(name, f"latency_ms must be between 0 and {MAX_LATENCY_MS}.")
            elif not 0.0 <= value <= 1.0:
                raise InvalidFaults(name, f"{name} must be between 0 and 1.")
            changes[name] = float(value)
        return replace(self, **changes)


class FaultInjector:
    """Holds the current settings, draws the random outcomes and counts what it injected."""

    def __init__(self, settings: FaultSettings, rng: random.Random) -> None:
        self.settings = settings
        self._rng = rng
        self.injected: dict[str, int] = {"error": 0, "timeout": 0, "drop": 0}

    def roll(self, rate: float) -> bool:
        # Draw only when the fault is on, so a seeded run's sequence does not depend on disabled faults.
        return rate > 0.0 and self._rng.random() < rate

    def stats(self) -> dict[str, Any]:
        return dict(self.injected)
