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
without parsing the message. A :class:`FrameError` says what was wrong twice:
``reason``, a detailed text for a person (lengths, byte values, offsets), and
``problem``, its category from a small fixed set, the only one fit to count by
or to log at warning level (a radio in range chooses the bytes, hence the text).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

BleProblem = Literal[
    "too_short",  # fewer bytes than the format's smallest frame
    "wrong_length",  # a length the format does not have
    "not_this_format",  # type, length or beacon code bytes of another format
    "reserved",  # a reserved frame type, or reserved bits or bytes not zero
    "unknown_type",  # a frame type the format does not define
    "unknown_version",  # a version of the frame the parser does not know
    "bad_url",  # an Eddystone-URL scheme or URL byte the encoding does not allow
    "bad_address",  # not a Bluetooth device address
]
"""Why a BLE frame was refused."""

NdefProblem = Literal["empty", "oversize", "malformed", "unencodable"]
"""Why an NDEF message was refused."""

FrameProblem = Literal[BleProblem, NdefProblem]
"""Every category of :class:`FrameError`: a fixed set, fit for a metric label."""

FrameKind = Literal[
    "ibeacon",
    "altbeacon",
    "eddystone",
    "eddystone-uid",
    "eddystone-url",
    "eddystone-tlm",
    "eddystone-etlm",
    "eddystone-eid",
    "ble-address",
    "ndef",
]
"""The format a :class:`FrameError` is about."""


class ProximityError(Exception):
    """Root of every error Proximity raises on purpose."""


class ConfigError(ProximityError):
    """The daemon configuration is invalid."""


class AdapterError(ProximityError):
    """A hardware adapter failed."""


class FrameError(AdapterError):
    """One frame (advertisement, NDEF message, code payload) is malformed.

    ``kind`` and ``problem`` come from fixed sets (count and label by them);
    ``reason`` is the detail, for a person reading one frame.
    """

    def __init__(self, kind: FrameKind, problem: FrameProblem, reason: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind: FrameKind = kind
        self.problem: FrameProblem = problem
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
