"""What remote scanner nodes publish, parsed: three formats in, one kind of reading out.

Pure functions of a topic and a payload; no clock, no state (that is
:mod:`.ingest`). Each parser returns a :class:`Batch` (readings) or a
:class:`Status` (the node's online/offline), or raises :class:`NodeMessageError`
with a ``problem`` from the fixed set :data:`NodeProblem` (a metric label) and a
detailed ``reason`` (attacker-chosen text: debug logs only). The formats are
documented in docs/nodes.md.

- **ours** (``proximity/v1/{store}/nodes/{node}/readings``): a batch of raw
  advertisements, each with its address, RSSI, age and raw AD structures.
- **ESPresense** (``espresense/devices/{id}/{room}``): one reading per message,
  filtered by the node (RSSI smoothed, a distance); the beacon identity is in the
  ``id`` (``iBeacon:<uuid>-<major>-<minor>``, ``altBeacon:…``, ``eddy:<ns>-<instance>``)
  and is rebuilt here as the frame the beacon advertised, so the gateway's own
  decoder and identity rules read it; the device address is in ``mac``.
- **OpenMQTTGateway / Theengs** (``home/{gateway}/BTtoMQTT/{device}``): one
  advertisement per message; the raw ``manufacturerdata`` and ``servicedata`` are
  preferred, the decoded ``uuid``/``major``/``minor`` used only without them.

A reading carries the device address because the gateway needs it (resolvable
private addresses, flood defence); nothing here logs it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID

from proximity.adapters.ble.altbeacon import RADIUS_NETWORKS_COMPANY_ID, AltBeacon, build_altbeacon
from proximity.adapters.ble.eddystone import EDDYSTONE_SERVICE_UUID
from proximity.adapters.ble.ibeacon import APPLE_COMPANY_ID, IBeacon, build_ibeacon

NodeProblem = Literal[
    "oversized",  # the payload is larger than the format allows
    "bad_json",  # not UTF-8 JSON
    "wrong_type",  # a field (or the whole payload) of the wrong JSON type
    "missing_field",  # a required field is absent
    "out_of_range",  # a number outside its range (RSSI, sequence, time, age)
    "bad_hex",  # AD data that is not hex, or longer than an advertisement holds
    "bad_address",  # a device address that is not one
    "too_many_readings",  # a batch with more readings than a batch may hold
    "bad_topic",  # a topic of a known source that does not have the right shape
]
"""Why a node message was refused: a fixed set, fit for a metric label."""

MAX_BATCH_BYTES = 512 * 1024
MAX_MESSAGE_BYTES = 8 * 1024
"""ESPresense and OpenMQTTGateway send one device per message: a few hundred bytes."""
MAX_READINGS = 1024
MAX_AD_BYTES = 255
"""An extended advertisement's data at most; a legacy one holds 31."""
MAX_AGE_S = 3600.0
"""A reading's ``dt`` (seconds before the batch was sent) at most."""
BLUETOOTH_BASE = "-0000-1000-8000-00805f9b34fb"

Source = Literal["ours", "espresense", "omg"]


class NodeMessageError(ValueError):
    """A node message that is not one: ``problem`` to count by, ``reason`` for a person."""

    def __init__(self, problem: NodeProblem, reason: str) -> None:
        super().__init__(f"{problem}: {reason}")
        self.problem: NodeProblem = problem
        self.reason = reason


@dataclass(frozen=True, slots=True)
class NodeReading:
    """One advertisement (or a node's filtered view of a device) as a node reports it."""

    address: str
    """``AA:BB:CC:DD:EE:FF``; for a device a node names without its address, a stable
    static random one derived from that name."""
    rssi: int
    age: float = 0.0
    """Seconds before the message was sent (ours: ``dt``); 0 for the others."""
    manufacturer: dict[int, bytes] = field(default_factory=dict)
    service: dict[str, bytes] = field(default_factory=dict)
    """Service data by full 128-bit UUID string (as bleak gives it)."""
    uuids: tuple[str, ...] = ()
    tx_power: int | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    """The readings of one message; ``seq``/``sent``/``boot`` only in our format."""

    source: Source
    node: str
    readings: tuple[NodeReading, ...]
    seq: int | None = None
    sent: float | None = None
    """The node's Unix time when it sent the batch."""
    boot: str | None = None
    dropped: int = 0
    """Readings the node says it dropped (a full buffer) since it started: a running total."""


@dataclass(frozen=True, slots=True)
class Status:
    """A node's liveness message: its ``online`` announcement or its will ``offline``; or a
    heartbeat (ESPresense's telemetry, OpenMQTTGateway's system report), which says only
    that the node is there."""

    source: Source
    node: str
    online: bool
    boot: str | None = None
    dropped: int | None = None
    heartbeat: bool = False


Message = Batch | Status

_COMPANIES = {str(cid): cid for cid in (0x004C, 0x0118, 0x0006, 0x0075)} | {
    f"0x{cid:04x}": cid for cid in (0x004C, 0x0118, 0x0006, 0x0075)
}
"""Company ids nodes send most (Apple, Radius Networks, Microsoft, Samsung), parsed once."""
_MAC = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}")
_MAC12 = re.compile(r"[0-9A-Fa-f]{12}")
_UUID16 = re.compile(r"(?:0x)?([0-9A-Fa-f]{4})")
_UUID32 = re.compile(r"(?:0x)?([0-9A-Fa-f]{8})")
_UUID128 = re.compile(
    r"[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}"
)
_BEACON_ID = re.compile(r"(iBeacon|altBeacon):([0-9A-Fa-f-]{32,36})-(\d{1,5})-(\d{1,5})")
_EDDY_ID = re.compile(r"eddy:([0-9A-Fa-f]{20})-([0-9A-Fa-f]{12})")
_SEGMENT = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def looks_like_address(text: str) -> bool:
    """Whether ``text`` could be a device address (never log or label such a text)."""
    return bool(_MAC.fullmatch(text) or _MAC12.fullmatch(text))


def loggable_name(text: str) -> str | None:
    """``text`` if it is fit for a log line as a node name (a topic level a sender chose:
    short, plain, and not an address), else None."""
    if _SEGMENT.fullmatch(text) and not looks_like_address(text):
        return text
    return None


# -- our format --------------------------------------------------------------------------------


def parse_ours(node: str, kind: str, payload: bytes) -> Message:
    """A message on ``proximity/v1/{store}/nodes/{node}/{kind}`` (``readings``, ``status``)."""
    if kind == "status":
        return _status("ours", node, payload)
    if kind != "readings":
        raise NodeMessageError("bad_topic", f"no such node topic: {kind!r}")
    body = _json_object(payload, MAX_BATCH_BYTES)
    seq = _int(body, "seq", 0, 2**63 - 1)
    sent = _number(body, "sent", 0.0, 1e11)
    boot = _boot(body.get("boot"))
    dropped = _int(body, "dropped", 0, 2**63 - 1, default=0)
    raw = body.get("readings")
    if raw is None:
        raise NodeMessageError("missing_field", "readings")
    if not isinstance(raw, list):
        raise NodeMessageError("wrong_type", "readings is not a list")
    if len(raw) > MAX_READINGS:
        raise NodeMessageError("too_many_readings", f"{len(raw)} > {MAX_READINGS}")
    readings = tuple(_our_reading(item) for item in raw)
    return Batch("ours", node, readings, seq=seq, sent=sent, boot=boot, dropped=dropped)


def _our_reading(item: Any) -> NodeReading:
    # the hot path of the ingest (tens of thousands a second): plain type checks first,
    # the general helpers only for what they are needed for (and to say what is wrong)
    if type(item) is not dict:
        raise NodeMessageError("wrong_type", "a reading is not an object")
    address = item.get("addr")
    if type(address) is not str or len(address) != 17 or not _MAC.fullmatch(address):
        if address is None:
            raise NodeMessageError("missing_field", "addr")
        raise NodeMessageError("bad_address", "addr is not AA:BB:CC:DD:EE:FF")
    rssi = item.get("rssi")
    if type(rssi) is not int or not -127 <= rssi <= 20:
        rssi = _rssi(item, "rssi")
    age = item.get("dt", 0.0)
    if type(age) is not float or not 0.0 <= age <= MAX_AGE_S:
        age = _number(item, "dt", 0.0, MAX_AGE_S, default=0.0)
    tx = item.get("tx")
    if tx is not None:
        tx = _int(item, "tx", -128, 127)
    mfr = item.get("mfr")
    manufacturer = _manufacturer_map(mfr) if mfr is not None else {}
    svc = item.get("svc")
    service = _service_map(svc) if svc is not None else {}
    uuids = item.get("uuids")
    if uuids is not None and (type(uuids) is not list or len(uuids) > 32):
        raise NodeMessageError("wrong_type", "uuids is not a list of at most 32 UUIDs")
    name = item.get("name")
    if name is not None and (type(name) is not str or len(name) > 248):
        raise NodeMessageError("wrong_type", "name is not a text of at most 248 characters")
    return NodeReading(
        address.upper(),
        rssi,
        age,
        manufacturer,
        service,
        tuple(_full_uuid(u) for u in uuids) if uuids else (),
        tx,
        name,
    )


# -- ESPresense --------------------------------------------------------------------------------


def parse_espresense(topic_parts: list[str], payload: bytes) -> Message:
    """``espresense/devices/{id}/{room}`` or ``espresense/rooms/{room}/status``."""
    match topic_parts:
        case ["espresense", "rooms", room, "status"]:
            return _status("espresense", room, payload)
        case ["espresense", "rooms", room, "telemetry"]:
            return _heartbeat("espresense", room, payload)
        case ["espresense", "devices", device_id, room]:
            pass
        case _:
            raise NodeMessageError("bad_topic", "not espresense/devices/{id}/{room}")
    body = _json_object(payload, MAX_MESSAGE_BYTES)
    rssi = _rssi(body, "rssi")
    ident = body.get("id", device_id)
    if not isinstance(ident, str):
        raise NodeMessageError("wrong_type", "id is not a text")
    ref = _optional_number(body, "rssi@1m", -128.0, 127.0)
    ref_rssi = None if ref is None else round(ref)
    mac = body.get("mac")
    if mac is not None:
        if not isinstance(mac, str) or not looks_like_address(mac):
            raise NodeMessageError("bad_address", "mac is not a device address")
        address = _colon_address(mac)
    else:
        address = _derived_address(ident)
    manufacturer: dict[int, bytes] = {}
    service: dict[str, bytes] = {}
    beacon = _BEACON_ID.fullmatch(ident)
    eddy = _EDDY_ID.fullmatch(ident)
    if beacon is not None:
        kind, raw_uuid, major, minor = beacon.groups()
        uuid = _uuid(raw_uuid)
        if uuid is None or int(major) > 0xFFFF or int(minor) > 0xFFFF:
            raise NodeMessageError("out_of_range", "beacon id's UUID, major or minor")
        tx = -59 if ref_rssi is None else ref_rssi
        if kind == "iBeacon":
            manufacturer[APPLE_COMPANY_ID] = build_ibeacon(
                IBeacon(uuid, int(major), int(minor), tx)
            )
        else:
            manufacturer[RADIUS_NETWORKS_COMPANY_ID] = build_altbeacon(
                AltBeacon(uuid, int(major), int(minor), tx)
            )
    elif eddy is not None:
        namespace, instance = eddy.groups()
        tx0 = max(-128, min(127, (-59 if ref_rssi is None else ref_rssi) + 41))
        service[EDDYSTONE_SERVICE_UUID] = (
            bytes((0x00, tx0 & 0xFF)) + bytes.fromhex(namespace + instance) + b"\x00\x00"
        )
    reading = NodeReading(address=address, rssi=rssi, manufacturer=manufacturer, service=service)
    return Batch("espresense", room, (reading,))


# -- OpenMQTTGateway / Theengs -----------------------------------------------------------------


def parse_omg(topic_parts: list[str], payload: bytes) -> Message:
    """``home/{gateway}/BTtoMQTT/{device}`` or ``home/{gateway}/LWT``."""
    match topic_parts:
        case ["home", gateway, "LWT"]:
            return _status("omg", gateway, payload)
        case ["home", gateway, "SYStoMQTT"]:
            return _heartbeat("omg", gateway, payload)
        case ["home", gateway, "BTtoMQTT", device]:
            pass
        case _:
            raise NodeMessageError("bad_topic", "not home/{gateway}/BTtoMQTT/{device}")
    body = _json_object(payload, MAX_MESSAGE_BYTES)
    rssi = _rssi(body, "rssi")
    address = _omg_address(body, device)
    manufacturer: dict[int, bytes] = {}
    raw_mfr = body.get("manufacturerdata")
    if raw_mfr is not None:
        data = _hex(raw_mfr, "manufacturerdata")
        if len(data) >= 2:
            manufacturer[int.from_bytes(data[:2], "little")] = data[2:]
    service: dict[str, bytes] = {}
    raw_svc = body.get("servicedata")
    if raw_svc is not None:
        svc_uuid = body.get("servicedatauuid")
        if svc_uuid is None:
            raise NodeMessageError("missing_field", "servicedatauuid (with servicedata)")
        service[_full_uuid(svc_uuid)] = _hex(raw_svc, "servicedata")
    tx = _int(body, "txpower", -128, 127, default=None)
    if not manufacturer and "uuid" in body and "major" in body and "minor" in body:
        # decoded only (no raw data published): rebuild the frame the decoder reads
        uuid = _uuid(body["uuid"]) if isinstance(body["uuid"], str) else None
        if uuid is None:
            raise NodeMessageError("wrong_type", "uuid is not a UUID")
        major = _int(body, "major", 0, 0xFFFF)
        minor = _int(body, "minor", 0, 0xFFFF)
        manufacturer[APPLE_COMPANY_ID] = build_ibeacon(
            IBeacon(uuid, major, minor, -59 if tx is None else tx)
        )
    name = body.get("name")
    reading = NodeReading(
        address=address,
        rssi=rssi,
        manufacturer=manufacturer,
        service=service,
        tx_power=tx,
        name=name if isinstance(name, str) and len(name) <= 248 else None,
    )
    return Batch("omg", gateway, (reading,))


def _omg_address(body: dict[str, Any], device: str) -> str:
    """The device address: ``id`` (``mac`` when the gateway names beacons by UUID), else the
    topic's last level when it is one; else one derived from the id."""
    for key in ("id", "mac"):
        value = body.get(key)
        if isinstance(value, str) and looks_like_address(value):
            return _colon_address(value)
    if looks_like_address(device):
        return _colon_address(device)
    ident = body.get("id")
    if ident is None:
        raise NodeMessageError("missing_field", "id")
    if not isinstance(ident, str):
        raise NodeMessageError("wrong_type", "id is not a text")
    return _derived_address(ident)


# -- shared pieces -----------------------------------------------------------------------------


def _status(source: Source, node: str, payload: bytes) -> Status:
    """``online``/``offline`` as text, or a JSON object with ``state`` (ours)."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise NodeMessageError("oversized", f"{len(payload)} bytes")
    text = payload.strip().lower()
    if text in (b"online", b"offline"):
        return Status(source, node, text == b"online")
    body = _json_object(payload, MAX_MESSAGE_BYTES)
    state = body.get("state")
    if state is None:
        raise NodeMessageError("missing_field", "state")
    if state not in ("online", "offline"):
        raise NodeMessageError("wrong_type", "state is not online or offline")
    dropped = _int(body, "dropped", 0, 2**63 - 1, default=None)
    return Status(source, node, state == "online", _boot(body.get("boot")), dropped)


def _heartbeat(source: Source, node: str, payload: bytes) -> Status:
    """A periodic report of the node's own (its content is not needed: only that it came)."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise NodeMessageError("oversized", f"{len(payload)} bytes")
    return Status(source, node, online=True, heartbeat=True)


def _json_object(payload: bytes, limit: int) -> dict[str, Any]:
    if len(payload) > limit:
        raise NodeMessageError("oversized", f"{len(payload)} bytes > {limit}")
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise NodeMessageError("bad_json", "not UTF-8 JSON") from None
    if not isinstance(body, dict):
        raise NodeMessageError("wrong_type", "the payload is not a JSON object")
    return body


def _number(
    body: dict[str, Any], key: str, low: float, high: float, default: float | None = None
) -> float:
    value = _optional_number(body, key, low, high)
    if value is None:
        if default is None:
            raise NodeMessageError("missing_field", key)
        return default
    return value


def _optional_number(body: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise NodeMessageError("wrong_type", f"{key} is not a number")
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise NodeMessageError("out_of_range", f"{key} is not in {low:g}..{high:g}")
    return number


def _int(body: dict[str, Any], key: str, low: int, high: int, default: Any = ...) -> Any:
    value = body.get(key)
    if value is None:
        if default is ...:
            raise NodeMessageError("missing_field", key)
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise NodeMessageError("wrong_type", f"{key} is not an integer")
    if not low <= value <= high:
        raise NodeMessageError("out_of_range", f"{key} is not in {low}..{high}")
    return value


def _rssi(body: dict[str, Any], key: str) -> int:
    """RSSI in dBm, rounded (ESPresense may send a smoothed fraction), -127..20."""
    return round(_number(body, key, -127.0, 20.0))


def _boot(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str) or len(str(value)) > 64:
        raise NodeMessageError("wrong_type", "boot is not an integer or a short text")
    return str(value)


def _hex(value: Any, key: str) -> bytes:
    if type(value) is not str:
        raise NodeMessageError("wrong_type", f"{key} is not a hex text")
    # isalnum: no whitespace, which fromhex would skip; fromhex refuses the rest
    if len(value) > 2 * MAX_AD_BYTES or (value and not value.isalnum()):
        raise NodeMessageError("bad_hex", f"{key} is not hex of at most {MAX_AD_BYTES} bytes")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise NodeMessageError("bad_hex", f"{key} is not hex") from None


def _manufacturer_map(value: Any) -> dict[int, bytes]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > 16:
        raise NodeMessageError("wrong_type", "mfr is not an object of at most 16 entries")
    out: dict[int, bytes] = {}
    for key, raw in value.items():
        company = _COMPANIES.get(key)
        if company is None:
            try:
                company = int(key, 0)
            except ValueError:
                raise NodeMessageError("wrong_type", "a company id is not a number") from None
        if not 0 <= company <= 0xFFFF:
            raise NodeMessageError("out_of_range", "a company id is not in 0..0xffff")
        out[company] = _hex(raw, "mfr")
    return out


def _service_map(value: Any) -> dict[str, bytes]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > 16:
        raise NodeMessageError("wrong_type", "svc is not an object of at most 16 entries")
    return {_full_uuid(key): _hex(raw, "svc") for key, raw in value.items()}


def _full_uuid(value: Any) -> str:
    """A 16-, 32- or 128-bit service UUID (``feaa``, ``0xfeaa``, full) as bleak writes it."""
    if not isinstance(value, str):
        raise NodeMessageError("wrong_type", "a service UUID is not a text")
    short = _UUID16.fullmatch(value)
    if short is not None:
        return f"0000{short.group(1).lower()}{BLUETOOTH_BASE}"
    medium = _UUID32.fullmatch(value)
    if medium is not None:
        return f"{medium.group(1).lower()}{BLUETOOTH_BASE}"
    uuid = _uuid(value)
    if uuid is None:
        raise NodeMessageError("wrong_type", "a service UUID is not a UUID")
    return str(uuid)


def _uuid(text: str) -> UUID | None:
    if not _UUID128.fullmatch(text):
        return None
    return UUID(text.replace("-", ""))


def _colon_address(text: str) -> str:
    plain = text.replace(":", "").upper()
    return ":".join(plain[i : i + 2] for i in range(0, 12, 2))


def _derived_address(ident: str) -> str:
    """A static random address (top bits 0b11) standing for a device a node names only by
    an id: stable, so the flood defence counts the id's identities under one address, and
    never a resolvable private address."""
    raw = bytearray(hashlib.sha256(b"proximity node id\x00" + ident.encode()).digest()[:6])
    raw[0] |= 0xC0
    return ":".join(f"{byte:02X}" for byte in raw)
