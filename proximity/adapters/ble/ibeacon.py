"""Apple iBeacon frames: a pure parser on bytes, and the builder the simulator uses.

In an advertisement the frame sits in the manufacturer-specific data of company
0x004C (Apple). bleak hands that data over with the company id already split
off, so the bytes here start at the iBeacon type byte:

    0x02 0x15 | proximity UUID (16) | major (2, BE) | minor (2, BE) | tx power (1, signed)

Bytes after the tx power are ignored, as Home Assistant's parser (ibeacon-ble)
ignores them: some tags (Jaalee's, for one) append a battery byte, making the
frame 24 bytes. Shorter frames and other type or length bytes are refused.
"""

from __future__ import annotations

import struct
from typing import NamedTuple
from uuid import UUID

from proximity.errors import FrameError

APPLE_COMPANY_ID = 0x004C
IBEACON_TYPE = 0x02
IBEACON_LENGTH = 0x15
FRAME_SIZE = 2 + IBEACON_LENGTH

_BODY = struct.Struct(">16sHHb")


class IBeacon(NamedTuple):
    uuid: UUID
    major: int
    minor: int
    tx_power: int
    """Calibrated RSSI at 1 m, dBm."""


def parse_ibeacon(data: bytes) -> IBeacon:
    """Parse Apple manufacturer data into an :class:`IBeacon`.

    Bytes after the first :data:`FRAME_SIZE` are ignored. Raises
    :class:`FrameError` (and nothing else) for anything that is not a
    well-formed iBeacon frame.
    """
    if len(data) < 2:
        raise FrameError(
            "ibeacon", "too_short", f"frame too short: {len(data)} bytes, need {FRAME_SIZE}"
        )
    if data[0] != IBEACON_TYPE or data[1] != IBEACON_LENGTH:
        raise FrameError(
            "ibeacon",
            "not_this_format",
            f"not an iBeacon frame: type 0x{data[0]:02x}{data[1]:02x}",
        )
    if len(data) < FRAME_SIZE:
        raise FrameError(
            "ibeacon", "too_short", f"frame is {len(data)} bytes, expected at least {FRAME_SIZE}"
        )
    raw_uuid, major, minor, tx_power = _BODY.unpack_from(data, 2)
    return IBeacon(uuid_of(raw_uuid), major, minor, tx_power)


_UUIDS: dict[bytes, UUID] = {}


def uuid_of(raw: bytes) -> UUID:
    """``UUID(bytes=raw)``, shared: a store hears a handful of beacon UUIDs over and over,
    and building one costs more than parsing the rest of the frame."""
    uuid = _UUIDS.get(raw)
    if uuid is None:
        if len(_UUIDS) >= 1024:  # random UUIDs (a scan of everything): stay bounded
            _UUIDS.clear()
        uuid = _UUIDS[raw] = UUID(bytes=raw)
    return uuid


def build_ibeacon(beacon: IBeacon) -> bytes:
    """The manufacturer data (without company id) that advertises ``beacon``."""
    if not (0 <= beacon.major <= 0xFFFF and 0 <= beacon.minor <= 0xFFFF):
        raise ValueError("major and minor must fit in 16 bits")
    if not -128 <= beacon.tx_power <= 127:
        raise ValueError("tx_power must fit in a signed byte")
    return bytes((IBEACON_TYPE, IBEACON_LENGTH)) + _BODY.pack(
        beacon.uuid.bytes, beacon.major, beacon.minor, beacon.tx_power
    )
