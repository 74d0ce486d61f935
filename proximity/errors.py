"""The exception tree of Proximity.

    ProximityError
     ├── ConfigError            the daemon configuration is invalid
     ├── AdapterError           a hardware adapter failed
     │    └── FrameError        one advertisement, NDEF message or payload is malformed
     ├── RuleError              one problem in a rule file, with its position
     │    └── RuleFileError     every problem found in one load (carries RuleError items)
     └── DeliveryError          the MQTT side failed
          ├── BrokerUnavailable can't connect, or the connection dropped
          └── PublishTimeout    no PUBACK in time

Every error carries its data as attributes so callers can report and count it
without parsing the message.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class ProximityError(Exception):
    """Root of every error Proximity raises on purpose."""


class ConfigError(ProximityError):
    """The daemon configuration is invalid."""


class AdapterError(ProximityError):
    """A hardware adapter failed."""


class FrameError(AdapterError):
    """One frame (advertisement, NDEF message, code payload) is malformed."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason


class RuleError(ProximityError):
    """One problem in a rule file, located as ``path:line:column``."""

    def __init__(self, path: Path | str, line: int, column: int, message: str) -> None:
        super().__init__(f"{path}:{line}:{column}: {message}")
        self.path = Path(path)
        self.line = line
        self.column = column
        self.message = message


class RuleFileError(RuleError):
    """Every problem found while loading rule files; the first one is the headline."""

    def __init__(self, errors: Sequence[RuleError]) -> None:
        if not errors:
            raise ValueError("RuleFileError needs at least one error")
        first = errors[0]
        super().__init__(first.path, first.line, first.column, first.message)
        self.errors: tuple[RuleError, ...] = tuple(errors)

    def __str__(self) -> str:
        return "\n".join(f"{e.path}:{e.line}:{e.column}: {e.message}" for e in self.errors)


class DeliveryError(ProximityError):
    """The MQTT side failed."""


class BrokerUnavailable(DeliveryError):
    """The broker could not be reached, or the connection dropped."""


class PublishTimeout(DeliveryError):
    """The broker did not acknowledge a publish in time."""
