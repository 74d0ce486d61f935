"""AltBeacon frames: a pure parser on bytes, and its builder.

AltBeacon (altbeacon.org, spec v1.0) rides in the manufacturer-specific data of
any company id (Radius Networks' 0x0118 is the usual one). bleak hands that
data over with the company id already split off, so the bytes here start at
the beacon code:

    0xBE 0xAC | beacon id (20) | reference RSSI (1, signed) | mfg reserved (1)

The 20-byte beacon id is split the way every AltBeacon scanner splits it:
id1 is a 16-byte UUID, id2 and id3 are 16-bit big-endian numbers.

The parser reads frames as the AltBeacon Android library's layout does
(``m:2-3=beac,i:4-19,i:20-21,i:22-23,p:24-24,d:25-25``): a frame without the
reserved byte (23 bytes) reads it as 0, and bytes past the layout are ignored.
Frames shorter than 23 bytes are refused.
"""

from __future__ import annotations

import struct
from typing import NamedTuple
from uuid import UUID

from proximity.errors import BleProblem, FrameError

RADIUS_NETWORKS_COMPANY_ID = 0x0118
BEACON_CODE = b"\xbe\xac"
FRAME_SIZE = 2 + 20 + 1 + 1
MIN_FRAME_SIZE = FRAME_SIZE - 1
"""A frame without the manufacturer reserved byte, read as 0."""

_BODY = struct.Struct(">16sHHbB")


class AltBeaconError(FrameError):
    """Manufacturer data that is not a well-formed AltBeacon frame."""

    def __init__(self, problem: BleProblem, reason: str) -> None:
        super().__init__("altbeacon", problem, reason)
        self.problem: BleProblem = problem


class AltBeacon(NamedTuple):
    id1: UUID
    id2: int
    id3: int
    reference_rssi: int
    """Average RSSI at 1 m, dBm (the spec says 0 to -127; any signed byte is accepted)."""
    mfg_reserved: int = 0
    """Manufacturer-defined byte, meaningful only together with the company id."""

    @property
    def beacon_id(self) -> bytes:
        """The 20-byte beacon identifier as advertised."""
        return self.id1.bytes + self.id2.to_bytes(2, "big") + self.id3.to_bytes(2, "big")


def parse_altbeacon(data: bytes) -> AltBeacon:
    """Parse manufacturer data (without company id) into an :class:`AltBeacon`.

    A 23-byte frame has no reserved byte (read as 0); bytes after the 24th are
    ignored. Raises :class:`AltBeaconError` (and nothing else) for anything that
    is not a well-formed AltBeacon frame.
    """
    if len(data) < 2:
        raise AltBeaconError(
            "too_short", f"frame too short: {len(data)} bytes, need {MIN_FRAME_SIZE}"
        )
    if data[:2] != BEACON_CODE:
        raise AltBeaconError(
            "not_this_format", f"not an AltBeacon frame: beacon code 0x{data[:2].hex()}"
        )
    if len(data) < MIN_FRAME_SIZE:
        raise AltBeaconError(
            "too_short", f"frame is {len(data)} bytes, expected at least {MIN_FRAME_SIZE}"
        )
    if len(data) < FRAME_SIZE:
        data += b"\x00"  # the reserved byte left off reads as 0
    raw_id1, id2, id3, reference_rssi, reserved = _BODY.unpack_from(data, 2)
    return AltBeacon(UUID(bytes=raw_id1), id2, id3, reference_rssi, reserved)


def build_altbeacon(beacon: AltBeacon) -> bytes:
    """The manufacturer data (without company id) that advertises ``beacon``."""
    if not (0 <= beacon.id2 <= 0xFFFF and 0 <= beacon.id3 <= 0xFFFF):
        raise ValueError("id2 and id3 must fit in 16 bits")
    if not -128 <= beacon.reference_rssi <= 127:
        raise ValueError("reference_rssi must fit in a signed byte")
    if not 0 <= beacon.mfg_reserved <= 0xFF:
        raise ValueError("mfg_reserved must fit in a byte")
    return BEACON_CODE + _BODY.pack(
        beacon.id1.bytes, beacon.id2, beacon.id3, beacon.reference_rssi, beacon.mfg_reserved
    )
