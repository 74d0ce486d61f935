"""Beacon firmware: fixed store beacons and cart/basket beacons, one small responder each.

A shopper's phone is not the only thing a gateway hears. A store also has

- **fixed beacons** (declared in the store file's ``[[beacons]]``, see
  :mod:`firmware_sim.store`): iBeacon, AltBeacon, Eddystone-UID or -URL on a
  shelf or a wall, each advertising its own frame at its own interval. Eddystone
  beacons interleave telemetry (TLM) frames, as real ones do (Eddystone's
  protocol specification: "TLM frames ... interleaved with the identifying
  frame"), whose counters advance: the advertising-PDU count, the time since
  power-up, a slowly draining battery and a daily temperature swing.
  ``eddystone-tlm`` is a beacon that sends telemetry only (a sensor tag).
- **cart and basket beacons** (:class:`CartBeacon`): an iBeacon under
  :data:`CART_UUID` that a shopper picks up at the door and pushes around, so it
  moves with them. To the gateway it is anonymous presence until a cart code and
  the shopper's check-in code are scanned at one reader (``identity``
  ``anonymous_uuids`` in the daemon config, and :mod:`proximity.journey.acts`).

Each device answers one question, :meth:`~BeaconFirmware.advertise` "what do you
send at ``t``?", with a :data:`Frame`; the crowd decides when, and the radio model
who hears it. Frames are built with Proximity's own builders
(:mod:`proximity.adapters.ble.ibeacon`, ``altbeacon``, ``eddystone``), so what
the simulator sends is exactly what the gateway's decoder parses; identity frames
are built once per beacon, only TLM frames are built per advertisement.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Self
from uuid import UUID

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from proximity.adapters.ble.altbeacon import RADIUS_NETWORKS_COMPANY_ID, AltBeacon, build_altbeacon
from proximity.adapters.ble.eddystone import (
    EDDYSTONE_SERVICE_UUID,
    EddystoneTlm,
    EddystoneUid,
    EddystoneUrl,
    build_eddystone,
    encode_url,
)
from proximity.adapters.ble.ibeacon import APPLE_COMPANY_ID, IBeacon, build_ibeacon
from proximity.engine.durations import parse_duration

Frame = tuple[int | str, bytes]
"""One advertisement's payload: (company id, manufacturer data) or (service UUID, service data)."""

CART_UUID = UUID("c0a27000-5117-4e2a-9b1d-000000ca2700")
"""The proximity UUID the simulator's cart and basket beacons advertise under (list it in
the daemon config's ``identity.anonymous_uuids`` to see carts as anonymous presence)."""
CART_HEIGHT = 0.9
"""Metres above the floor: a beacon under a cart's handle or in a basket."""
EDDYSTONE_0M_OFFSET = 41
"""Eddystone frames carry the power at 0 m: the power at 1 m plus 41 dB (the specification's
rule of thumb for the loss over the first metre)."""
ADV_DELAY_S = 0.01
"""Each advertising event is delayed by a random 0-10 ms (Bluetooth Core, Vol 6 Part B
4.4.2.2.1 advDelay), so two beacons on one interval do not collide forever."""
TLM_EVERY = 10
"""Eddystone beacons send every 10th frame as TLM unless told otherwise."""
TEMPERATURE_SWING = 1.5
"""Degrees Celsius either side of a beacon's temperature over a day."""


def _seconds_or_zero(value: Any) -> Any:
    if isinstance(value, str):
        return parse_duration(value).total_seconds()
    return value


Uptime = Annotated[float, BeforeValidator(_seconds_or_zero), Field(ge=0)]
AdvInterval = Annotated[float, BeforeValidator(_seconds_or_zero), Field(ge=0.02, le=10.24)]
"""An advertising interval: 20 ms to 10.24 s (Bluetooth Core, Vol 6 Part B 4.4.2.2.1)."""


class BeaconFormat(StrEnum):
    IBEACON = "ibeacon"
    ALTBEACON = "altbeacon"
    EDDYSTONE_UID = "eddystone-uid"
    EDDYSTONE_URL = "eddystone-url"
    EDDYSTONE_TLM = "eddystone-tlm"

    @property
    def eddystone(self) -> bool:
        return self.value.startswith("eddystone")


# Which identity keys each format takes; any other identity key given is an error.
_IDENTITY_KEYS = frozenset({"uuid", "major", "minor", "namespace", "instance", "url"})
_KEYS: dict[BeaconFormat, frozenset[str]] = {
    BeaconFormat.IBEACON: frozenset({"uuid", "major", "minor"}),
    BeaconFormat.ALTBEACON: frozenset({"uuid", "major", "minor"}),
    BeaconFormat.EDDYSTONE_UID: frozenset({"namespace", "instance"}),
    BeaconFormat.EDDYSTONE_URL: frozenset({"url"}),
    BeaconFormat.EDDYSTONE_TLM: frozenset(),
}
_REQUIRED: dict[BeaconFormat, tuple[str, ...]] = {
    BeaconFormat.IBEACON: ("uuid",),
    BeaconFormat.ALTBEACON: ("uuid",),
    BeaconFormat.EDDYSTONE_UID: ("namespace", "instance"),
    BeaconFormat.EDDYSTONE_URL: ("url",),
    BeaconFormat.EDDYSTONE_TLM: (),
}


class FixedBeacon(BaseModel):
    """A beacon fixed in the store (one ``[[beacons]]`` table of a store file)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    """A name for people and tests; the beacon's address is derived from it."""
    format: BeaconFormat
    position: tuple[float, float]
    height: float = Field(default=1.5, ge=0, le=20)
    """Metres above the floor (shelf-edge beacons sit at 1-2 m)."""
    uuid: UUID | None = None
    """iBeacon proximity UUID, AltBeacon id1."""
    major: int = Field(default=0, ge=0, le=0xFFFF)
    minor: int = Field(default=0, ge=0, le=0xFFFF)
    namespace: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{20}$")
    """Eddystone-UID namespace, 20 hex digits."""
    instance: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{12}$")
    """Eddystone-UID instance, 12 hex digits."""
    url: str | None = None
    """Eddystone-URL: at most 17 bytes once encoded (scheme and .com/ etc. take one byte)."""
    interval: AdvInterval = 1.0
    tx_power: int = Field(default=-59, ge=-100, le=20)
    """Calibrated power at 1 m, dBm; Eddystone frames carry it as power at 0 m (+41)."""
    tlm_every: int | None = Field(default=None, ge=2, le=1000)
    """Eddystone-UID/-URL: every Nth frame is a TLM frame (default 10)."""
    battery_mv: int = Field(default=3000, ge=1, le=0xFFFF)
    """Eddystone TLM: the battery voltage at the start of the run."""
    battery_drain_mv_per_day: float = Field(default=2.0, ge=0, le=1000)
    temperature: float = Field(default=21.0, gt=-100, lt=100)
    """Eddystone TLM: the mean temperature, °C (it swings ±1.5 °C over a day)."""
    uptime: Uptime = 0.0
    """How long the beacon has been powered when the run starts (seconds or "3d")."""

    @model_validator(mode="after")
    def _fits_format(self) -> Self:
        fmt = self.format
        given = self.model_fields_set & _IDENTITY_KEYS
        wrong = sorted(given - _KEYS[fmt])
        if wrong:
            takes = ", ".join(sorted(_KEYS[fmt])) or "no identity keys"
            raise ValueError(
                f"{', '.join(wrong)} does not apply to {fmt} beacons (they take {takes})"
            )
        missing = [key for key in _REQUIRED[fmt] if getattr(self, key) is None]
        if missing:
            raise ValueError(f"{fmt} beacons need {' and '.join(missing)}")
        if self.tlm_every is not None and fmt not in (
            BeaconFormat.EDDYSTONE_UID,
            BeaconFormat.EDDYSTONE_URL,
        ):
            raise ValueError("tlm_every applies to eddystone-uid and eddystone-url beacons only")
        if self.url is not None:
            encode_url(self.url)  # ValueError says what is wrong with it
        return self

    @property
    def tlm_period(self) -> int:
        """Every how many frames one is TLM: 1 for telemetry-only, 0 for none."""
        if self.format is BeaconFormat.EDDYSTONE_TLM:
            return 1
        if self.format.eddystone:
            return self.tlm_every or TLM_EVERY
        return 0

    def identity_frame(self) -> Frame | None:
        """The frame that identifies the beacon (None: a telemetry-only beacon)."""
        match self.format:
            case BeaconFormat.IBEACON:
                assert self.uuid is not None
                frame = IBeacon(self.uuid, self.major, self.minor, self.tx_power)
                return APPLE_COMPANY_ID, build_ibeacon(frame)
            case BeaconFormat.ALTBEACON:
                assert self.uuid is not None
                alt = AltBeacon(self.uuid, self.major, self.minor, self.tx_power)
                return RADIUS_NETWORKS_COMPANY_ID, build_altbeacon(alt)
            case BeaconFormat.EDDYSTONE_UID:
                assert self.namespace is not None
                assert self.instance is not None
                uid = EddystoneUid(
                    bytes.fromhex(self.namespace),
                    bytes.fromhex(self.instance),
                    self.tx_power + EDDYSTONE_0M_OFFSET,
                )
                return EDDYSTONE_SERVICE_UUID, build_eddystone(uid)
            case BeaconFormat.EDDYSTONE_URL:
                assert self.url is not None
                url = EddystoneUrl(self.url, self.tx_power + EDDYSTONE_0M_OFFSET)
                return EDDYSTONE_SERVICE_UUID, build_eddystone(url)
            case BeaconFormat.EDDYSTONE_TLM:
                return None


def device_address(name: str) -> str:
    """A stable random static address for a fixed device (the two top bits set)."""
    octets = bytearray(hashlib.sha256(b"firmware_sim:" + name.encode()).digest()[:6])
    octets[0] |= 0xC0
    return ":".join(f"{b:02X}" for b in octets)


class BeaconFirmware:
    """A fixed beacon powered on: its identity frame, and TLM counters that advance.

    ``adv_count`` counts every frame sent since power-up (the beacon was powered
    ``uptime`` seconds before second 0 at its interval), as Eddystone's ADV_CNT does.
    """

    def __init__(self, config: FixedBeacon) -> None:
        self.config = config
        self.address = device_address(config.id)
        self.interval_s = config.interval
        self.sent = math.floor(config.uptime / config.interval)
        self._identity = config.identity_frame()
        self._tlm_period = config.tlm_period
        self._drain_per_s = config.battery_drain_mv_per_day / 86_400

    def advertise(self, t: float) -> Frame:
        """The frame sent at ``t`` seconds into the run (counted)."""
        self.sent += 1
        if self._identity is not None and (self._tlm_period == 0 or self.sent % self._tlm_period):
            return self._identity
        return EDDYSTONE_SERVICE_UUID, build_eddystone(self.telemetry(t))

    def telemetry(self, t: float) -> EddystoneTlm:
        """What the beacon measures at ``t``: uptime and ADV_CNT advance, the battery
        drains, the temperature follows the day."""
        c = self.config
        up = c.uptime + t
        battery = max(1, round(c.battery_mv - self._drain_per_s * up))
        temperature = c.temperature + TEMPERATURE_SWING * math.sin(2 * math.pi * up / 86_400)
        return EddystoneTlm(
            battery_mv=battery,
            temperature=round(temperature * 256) / 256,
            adv_count=self.sent & 0xFFFFFFFF,
            uptime_tenths=int(up * 10) & 0xFFFFFFFF,
        )


@dataclass(frozen=True, slots=True)
class CartBeacon:
    """A cart or basket beacon, taken by shopper ``owner`` (a phone index) at the door."""

    number: int
    """0-based, in the order shoppers took their carts."""
    owner: int
    address: str
    major: int
    minor: int
    tx_power: int = -59
    interval_s: float = 1.0
    jitter: float = 0.1
    uuid: UUID = CART_UUID
    frame: Frame = field(init=False, compare=False, repr=False)

    @classmethod
    def numbered(cls, number: int, owner: int, address: str, **kwargs: Any) -> CartBeacon:
        """Cart ``number`` of the store's fleet: major 1 + number // 65535, minor from 1."""
        return cls(number, owner, address, 1 + number // 0xFFFF, 1 + number % 0xFFFF, **kwargs)

    def __post_init__(self) -> None:
        beacon = IBeacon(self.uuid, self.major, self.minor, self.tx_power)
        object.__setattr__(self, "frame", (APPLE_COMPANY_ID, build_ibeacon(beacon)))

    @property
    def beacon_key(self) -> tuple[UUID, int, int]:
        """How the gateway keys this beacon (what a cart code names, see ``cart_subject``)."""
        return self.uuid, self.major, self.minor
