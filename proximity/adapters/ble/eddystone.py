"""Eddystone frames: pure parsers on bytes, and their builders.

Every Eddystone frame is the service data of the 16-bit service UUID 0xFEAA
(google/eddystone, protocol-specification.md). bleak keys service data by the
full 128-bit UUID string, :data:`EDDYSTONE_SERVICE_UUID`; the bytes here start
at the frame type. The high nibble of that byte names the frame, the low
nibble is reserved and must be zero. Multi-byte values are big-endian.

    UID  0x00 | tx power at 0 m | namespace (10) | instance (6) | RFU (2, zero; may be left off)
    URL  0x10 | tx power at 0 m | scheme prefix | encoded URL (1-17)
    TLM  0x20 | 0x00 | battery mV (2) | temperature 8.8 (2) | adv count (4) | uptime 0.1 s (4)
    eTLM 0x20 | 0x01 | encrypted TLM (12) | salt (2) | MIC (2)
    EID  0x30 | tx power at 0 m | ephemeral id (8)

Encrypted TLM is recognised, never decoded: decrypting it needs the beacon's
identity key, and the gateway has none. The parser reports only its length
and whether the salt and MIC are there, so the frames can be counted.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Literal, NamedTuple

from proximity.errors import BleProblem, FrameError

EDDYSTONE_UUID16 = 0xFEAA
EDDYSTONE_SERVICE_UUID = "0000feaa-0000-1000-8000-00805f9b34fb"


class FrameType(IntEnum):
    UID = 0x00
    URL = 0x10
    TLM = 0x20
    EID = 0x30


RESERVED_FRAME_TYPE = 0x40

URL_SCHEMES: tuple[str, ...] = ("http://www.", "https://www.", "http://", "https://")
"""The scheme prefix byte is an index into this table."""

URL_EXPANSIONS: tuple[str, ...] = (
    ".com/",
    ".org/",
    ".edu/",
    ".net/",
    ".info/",
    ".biz/",
    ".gov/",
    ".com",
    ".org",
    ".edu",
    ".net",
    ".info",
    ".biz",
    ".gov",
)
"""Byte values 0x00-0x0D of the encoded URL stand for these texts."""

URL_MAX_ENCODED = 17
URL_FIRST_CHAR = 0x21
"""Encoded URLs carry the graphic printable US-ASCII characters 0x21-0x7E."""
URL_LAST_CHAR = 0x7E

TLM_PLAIN_VERSION = 0x00
TLM_ENCRYPTED_VERSION = 0x01
TEMPERATURE_NOT_SUPPORTED = 0x8000
ETLM_CIPHERTEXT_SIZE = 12
ETLM_SIZE = 2 + ETLM_CIPHERTEXT_SIZE + 2 + 2

UID_SIZE = 20
UID_SIZE_WITHOUT_RFU = 18
URL_MIN_SIZE = 3 + 1
TLM_SIZE = 14
EID_SIZE = 10

_UID = struct.Struct(">Bb10s6s")
_TLM = struct.Struct(">BBHhII")
_EID = struct.Struct(">Bb8s")

# longest scheme and expansion first: of two encodings as short, the one with longer texts
_SCHEMES_BY_LENGTH = sorted(enumerate(URL_SCHEMES), key=lambda item: -len(item[1]))
_EXPANSIONS_BY_LENGTH = sorted(enumerate(URL_EXPANSIONS), key=lambda item: -len(item[1]))

EddystoneKind = Literal[
    "eddystone",
    "eddystone-uid",
    "eddystone-url",
    "eddystone-tlm",
    "eddystone-etlm",
    "eddystone-eid",
]


class EddystoneError(FrameError):
    """Service data that is not a well-formed Eddystone frame."""

    def __init__(self, problem: BleProblem, reason: str, kind: EddystoneKind = "eddystone") -> None:
        super().__init__(kind, problem, reason)
        self.problem: BleProblem = problem


class EddystoneUid(NamedTuple):
    namespace: bytes
    """10 bytes."""
    instance: bytes
    """6 bytes."""
    tx_power: int
    """Calibrated power at 0 m, dBm."""
    with_rfu: bool = True
    """The two reserved bytes were sent (older beacons leave them off)."""


class EddystoneUrl(NamedTuple):
    url: str
    tx_power: int
    """Calibrated power at 0 m, dBm."""


class EddystoneTlm(NamedTuple):
    """Plain (version 0) telemetry."""

    battery_mv: int | None
    """Battery voltage in mV; None when the beacon does not measure it (sent as 0)."""
    temperature: float | None
    """Degrees Celsius in steps of 1/256; None when not supported (sent as 0x8000)."""
    adv_count: int
    """Advertising PDUs sent since power-up or reboot."""
    uptime_tenths: int
    """Time since power-up or reboot, in 0.1 s."""

    @property
    def uptime_s(self) -> float:
        return self.uptime_tenths / 10


class EncryptedTlm(NamedTuple):
    """Encrypted (version 1) telemetry: recognised and counted, never decoded."""

    length: int
    has_salt: bool
    has_mic: bool


class EddystoneEid(NamedTuple):
    tx_power: int
    """Calibrated power at 0 m, dBm."""
    eid: bytes
    """The 8-byte ephemeral identifier."""


EddystoneFrame = EddystoneUid | EddystoneUrl | EddystoneTlm | EncryptedTlm | EddystoneEid
BuildableFrame = EddystoneUid | EddystoneUrl | EddystoneTlm | EddystoneEid


# -- parsing ---------------------------------------------------------------------------------


def parse_eddystone(data: bytes) -> EddystoneFrame:
    """Parse Eddystone service data (the bytes of UUID 0xFEAA) into a frame.

    Raises :class:`EddystoneError` (and nothing else) for anything that is not a
    well-formed Eddystone frame.
    """
    if not data:
        raise EddystoneError("too_short", "empty service data")
    frame_type = data[0]
    if frame_type & 0x0F:
        raise EddystoneError("reserved", f"reserved low bits set in frame type 0x{frame_type:02x}")
    match frame_type:
        case FrameType.UID:
            return _parse_uid(data)
        case FrameType.URL:
            return _parse_url(data)
        case FrameType.TLM:
            return _parse_tlm(data)
        case FrameType.EID:
            return _parse_eid(data)
        case _ if frame_type == RESERVED_FRAME_TYPE:
            raise EddystoneError("reserved", "reserved frame type 0x40")
        case _:
            raise EddystoneError("unknown_type", f"unknown frame type 0x{frame_type:02x}")


def _parse_uid(data: bytes) -> EddystoneUid:
    if len(data) not in (UID_SIZE, UID_SIZE_WITHOUT_RFU):
        raise EddystoneError(
            "wrong_length",
            f"frame is {len(data)} bytes, expected {UID_SIZE} (or {UID_SIZE_WITHOUT_RFU})",
            "eddystone-uid",
        )
    _, tx_power, namespace, instance = _UID.unpack_from(data)
    with_rfu = len(data) == UID_SIZE
    if with_rfu and data[18:20] != b"\x00\x00":
        raise EddystoneError("reserved", "reserved bytes must be zero", "eddystone-uid")
    return EddystoneUid(namespace, instance, tx_power, with_rfu)


def _parse_url(data: bytes) -> EddystoneUrl:
    if len(data) < URL_MIN_SIZE:
        raise EddystoneError(
            "too_short", f"frame too short: {len(data)} bytes, need {URL_MIN_SIZE}", "eddystone-url"
        )
    tx_power = int.from_bytes(data[1:2], "big", signed=True)
    return EddystoneUrl(decode_url(data[2:]), tx_power)


def _parse_tlm(data: bytes) -> EddystoneTlm | EncryptedTlm:
    if len(data) < 2:
        raise EddystoneError("too_short", "frame too short: no TLM version", "eddystone-tlm")
    match data[1]:
        case 0x00:
            return _parse_plain_tlm(data)
        case 0x01:
            return _parse_encrypted_tlm(data)
        case version:
            raise EddystoneError(
                "unknown_version", f"unknown TLM version 0x{version:02x}", "eddystone-tlm"
            )


def _parse_plain_tlm(data: bytes) -> EddystoneTlm:
    if len(data) != TLM_SIZE:
        raise EddystoneError(
            "wrong_length", f"frame is {len(data)} bytes, expected {TLM_SIZE}", "eddystone-tlm"
        )
    _, _, battery, temperature, adv_count, uptime = _TLM.unpack(data)
    return EddystoneTlm(
        battery_mv=battery or None,
        temperature=None if temperature == -0x8000 else temperature / 256,
        adv_count=adv_count,
        uptime_tenths=uptime,
    )


def _parse_encrypted_tlm(data: bytes) -> EncryptedTlm:
    # the ciphertext must be whole; salt and MIC are reported by presence, and a frame
    # cut inside one of them is corrupt
    if len(data) not in (ETLM_SIZE - 4, ETLM_SIZE - 2, ETLM_SIZE):
        raise EddystoneError(
            "wrong_length",
            f"encrypted TLM is {len(data)} bytes, expected {ETLM_SIZE}",
            "eddystone-etlm",
        )
    return EncryptedTlm(
        length=len(data), has_salt=len(data) >= ETLM_SIZE - 2, has_mic=len(data) == ETLM_SIZE
    )


def _parse_eid(data: bytes) -> EddystoneEid:
    if len(data) != EID_SIZE:
        raise EddystoneError(
            "wrong_length", f"frame is {len(data)} bytes, expected {EID_SIZE}", "eddystone-eid"
        )
    _, tx_power, eid = _EID.unpack(data)
    return EddystoneEid(tx_power, eid)


def decode_url(encoded: bytes) -> str:
    """The URL in a scheme prefix byte followed by an encoded URL.

    The inverse of :func:`encode_url`: every URL this returns, that builds.
    """
    if not encoded:
        raise EddystoneError("too_short", "no URL scheme prefix", "eddystone-url")
    scheme = encoded[0]
    if scheme >= len(URL_SCHEMES):
        raise EddystoneError(
            "bad_url", f"unknown URL scheme prefix 0x{scheme:02x}", "eddystone-url"
        )
    body = encoded[1:]
    if not 1 <= len(body) <= URL_MAX_ENCODED:
        raise EddystoneError(
            "too_short" if not body else "wrong_length",
            f"encoded URL is {len(body)} bytes, expected 1 to {URL_MAX_ENCODED}",
            "eddystone-url",
        )
    parts = [URL_SCHEMES[scheme]]
    for offset, byte in enumerate(body, start=3):
        if byte < len(URL_EXPANSIONS):
            parts.append(URL_EXPANSIONS[byte])
        elif URL_FIRST_CHAR <= byte <= URL_LAST_CHAR:
            parts.append(chr(byte))
        elif byte <= 0x20:
            raise EddystoneError(
                "bad_url", f"reserved URL code 0x{byte:02x} at offset {offset}", "eddystone-url"
            )
        else:
            raise EddystoneError(
                "bad_url",
                f"byte 0x{byte:02x} at offset {offset} is not a printable US-ASCII character",
                "eddystone-url",
            )
    return "".join(parts)


# -- building --------------------------------------------------------------------------------


def build_eddystone(frame: BuildableFrame) -> bytes:
    """The service data (UUID 0xFEAA) that advertises ``frame``.

    Encrypted TLM cannot be rebuilt from what the parser keeps of it; see
    :func:`build_encrypted_tlm`.
    """
    match frame:
        case EddystoneUid(namespace, instance, tx_power, with_rfu):
            if len(namespace) != 10 or len(instance) != 6:
                raise ValueError("namespace must be 10 bytes and instance 6 bytes")
            uid = _UID.pack(FrameType.UID, _tx(tx_power), namespace, instance)
            return uid + b"\x00\x00" if with_rfu else uid
        case EddystoneUrl(url, tx_power):
            return bytes((FrameType.URL, _tx(tx_power) & 0xFF)) + encode_url(url)
        case EddystoneTlm(battery_mv, temperature, adv_count, uptime_tenths):
            return _TLM.pack(
                FrameType.TLM,
                TLM_PLAIN_VERSION,
                _battery(battery_mv),
                _temperature(temperature),
                _u32(adv_count, "adv_count"),
                _u32(uptime_tenths, "uptime_tenths"),
            )
        case EddystoneEid(tx_power, eid):
            if len(eid) != 8:
                raise ValueError("eid must be 8 bytes")
            return _EID.pack(FrameType.EID, _tx(tx_power), eid)


def build_encrypted_tlm(ciphertext: bytes, salt: bytes, mic: bytes) -> bytes:
    """An eTLM frame from its already-encrypted parts (for the simulator and tests)."""
    if len(ciphertext) != ETLM_CIPHERTEXT_SIZE or len(salt) != 2 or len(mic) != 2:
        raise ValueError("ciphertext must be 12 bytes, salt and mic 2 bytes each")
    return bytes((FrameType.TLM, TLM_ENCRYPTED_VERSION)) + ciphertext + salt + mic


def encode_url(url: str) -> bytes:
    """A URL as a scheme prefix byte followed by the shortest encoded URL.

    The grammar is :func:`decode_url`'s: a scheme from :data:`URL_SCHEMES`, then
    1 to 17 bytes, each an expansion code or a printable character. Every
    scheme the URL starts with is tried (``http://www.`` is also ``http://``
    followed by ``www.``) and the body is encoded in the fewest bytes, so a URL
    is refused exactly when no frame decodes to it.

    Raises ValueError when the URL has no known scheme, holds a character the
    encoding cannot carry, or encodes to no byte or more than 17.
    """
    best: bytes | None = None
    for code, scheme in _SCHEMES_BY_LENGTH:  # longest first: it wins a tie
        if url.startswith(scheme):
            body = _encode_url_body(url[len(scheme) :])
            if body and (best is None or len(body) < len(best) - 1):
                best = bytes((code,)) + body
    if best is None and not any(url.startswith(scheme) for scheme in URL_SCHEMES):
        raise ValueError(f"URL must start with one of {', '.join(URL_SCHEMES)}")
    size = 0 if best is None else len(best) - 1
    if best is None or size > URL_MAX_ENCODED:
        raise ValueError(f"URL encodes to {size} bytes, must be 1 to {URL_MAX_ENCODED}")
    return best


def _encode_url_body(body: str) -> bytes:
    """The fewest bytes (expansion codes and characters) that decode to ``body``."""
    for char in body:
        if not URL_FIRST_CHAR <= ord(char) <= URL_LAST_CHAR:
            raise ValueError(f"character {char!r} cannot be sent in an Eddystone URL")
    # from the end: size[i] bytes encode body[i:], starting with step[i] = (byte, characters)
    size = [0] * (len(body) + 1)
    step: list[tuple[int, int]] = [(0, 0)] * len(body)
    for i in range(len(body) - 1, -1, -1):
        # of choices as short, the first: an expansion before a character, longer ones first
        size[i], step[i] = min(
            (
                *(
                    (size[i + len(text)] + 1, (code, len(text)))
                    for code, text in _EXPANSIONS_BY_LENGTH
                    if body.startswith(text, i)
                ),
                (size[i + 1] + 1, (ord(body[i]), 1)),
            ),
            key=lambda choice: choice[0],
        )
    encoded = bytearray()
    i = 0
    while i < len(body):
        byte, advance = step[i]
        encoded.append(byte)
        i += advance
    return bytes(encoded)


def _tx(tx_power: int) -> int:
    if not -128 <= tx_power <= 127:
        raise ValueError("tx_power must fit in a signed byte")
    return tx_power


def _battery(battery_mv: int | None) -> int:
    if battery_mv is None:
        return 0
    if not 1 <= battery_mv <= 0xFFFF:
        raise ValueError("battery_mv must be 1 to 65535 (None when not measured)")
    return battery_mv


def _temperature(temperature: float | None) -> int:
    if temperature is None:
        return -0x8000
    raw = round(temperature * 256)
    if not -0x7FFF <= raw <= 0x7FFF:
        raise ValueError("temperature must be above -128 °C and below 128 °C")
    return raw


def _u32(value: int, name: str) -> int:
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{name} must fit in 32 bits")
    return value
