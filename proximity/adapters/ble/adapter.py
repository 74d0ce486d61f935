"""The BLE adapter: bleak advertisements in, beacon and shopper sightings out.

Formats: iBeacon (Apple manufacturer data), AltBeacon (any company's manufacturer
data starting 0xBEAC), Eddystone (service data 0xFEAA): UID frames are beacon
sightings; EID-style rotating identifiers and resolvable private addresses
(with registered keys) are shopper sightings; TLM, encrypted eTLM and URL
frames are telemetry, counted and not sightings. It decides nothing about
shoppers: frames that are not beacons are ignored; malformed frames are
rejected, counted by ``kind:problem`` (the format and the category of the
:class:`FrameError`, both from fixed sets) and logged at warning level once per
such key. The detailed reason (lengths, byte values) is attacker-chosen text:
it goes only to debug lines, at most one per key every ``REJECTED_DETAIL_EVERY_S``
seconds, so a radio in range cannot grow the counters, the metric labels or the
log without bound.

**Flood defence.** The adapter is the only layer that sees device addresses,
and it never hands them on or logs them. It keeps, per address, the distinct
beacon identities heard from it (bounded, least recently used first): an
address that cycles through more than ``max_ids_per_address`` identities (10,
as Home Assistant's iBeacon integration does) is banned for ``ban_for`` — a
spoofer cannot mint thousands of shoppers from one radio. New identities are
also admitted at a bounded rate (a token bucket, ``new_ids_per_second`` with a
burst), so a flood of spoofed identities from many addresses cannot push real
shoppers out of the tracked set faster than that rate.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Hashable, Mapping
from datetime import timedelta
from uuid import UUID

import structlog

from proximity.adapters.base import Advertisement, BleBackend
from proximity.adapters.ble.altbeacon import BEACON_CODE, parse_altbeacon
from proximity.adapters.ble.eddystone import (
    EDDYSTONE_SERVICE_UUID,
    EddystoneEid,
    EddystoneTlm,
    EddystoneUid,
    EddystoneUrl,
    EncryptedTlm,
    parse_eddystone,
)
from proximity.adapters.ble.ibeacon import APPLE_COMPANY_ID, parse_ibeacon, uuid_of
from proximity.adapters.ble.rotating import RotatingResolver
from proximity.adapters.ble.rpa import is_rpa, resolve_rpa
from proximity.errors import FrameError
from proximity.readings import BeaconSighting, ShopperSighting, Sighting

log = structlog.get_logger(__name__)

MAX_IDS_PER_ADDRESS = 10
BAN_FOR = timedelta(hours=1)
TRACKED_ADDRESSES = 20_000
NEW_IDS_PER_SECOND = 50.0
NEW_IDS_BURST = 200
KNOWN_IDS = 50_000
FRAME_CACHE = 4096
REJECTED_DETAIL_EVERY_S = 60.0
"""At most one debug line with a rejected frame's detailed reason per key in this time."""
"""Distinct iBeacon frames kept parsed; past it the cache starts again (a scan of random
frames costs a parse each, as without it)."""


class _Address:
    __slots__ = ("banned_until", "ids")

    def __init__(self) -> None:
        self.ids: set[Hashable] = set()
        self.banned_until = 0.0


class BeaconDecoder:
    """Turns one advertisement into a sighting, counting what it could not use."""

    def __init__(
        self,
        *,
        rotating: RotatingResolver[str] | None = None,
        irks: Mapping[str, bytes] | None = None,
        max_ids_per_address: int = MAX_IDS_PER_ADDRESS,
        ban_for: timedelta = BAN_FOR,
        new_ids_per_second: float = NEW_IDS_PER_SECOND,
        new_ids_burst: int = NEW_IDS_BURST,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``rotating``: resolves rotating identifiers of registered shoppers; ``irks``:
        key id -> identity resolving key, for phones advertising private addresses."""
        self._rotating = rotating
        self._irks = dict(irks or {})
        self._max_ids = max_ids_per_address
        self._ban_s = ban_for.total_seconds()
        self._rate = new_ids_per_second
        self._burst = float(new_ids_burst)
        self._tokens = float(new_ids_burst)
        self._refilled = monotonic()
        self._monotonic = monotonic
        self._addresses: OrderedDict[str, _Address] = OrderedDict()
        self._known: OrderedDict[Hashable, None] = OrderedDict()
        self._rpa_cache: OrderedDict[str, str | None] = OrderedDict()
        self._ibeacons: dict[bytes, tuple[UUID, int, int, int, bytes]] = {}
        """Well-formed iBeacon frames already parsed (a phone repeats its frame for the
        whole window of its identifier): the fields and the flood-defence identity."""
        self.advertisements = 0
        self.sightings = 0
        self.ignored = 0
        """Advertisements without any beacon frame (most of what a radio hears)."""
        self.rejected: Counter[str] = Counter()
        """Malformed frames, by ``kind:problem`` (e.g. ``ibeacon:too_short``): a bounded set."""
        self._detailed: dict[str, float] = {}
        """When a rejected frame's reason was last logged, by ``rejected`` key."""
        self.telemetry: Counter[str] = Counter()
        """Frames that are not presence: ``tlm``, ``etlm`` (encrypted, never decoded), ``url``."""
        self.refused: Counter[str] = Counter()
        """Well-formed sightings not passed on: ``banned_address``, ``too_many_ids``,
        ``admission_limited``, ``unknown_rotating_id``."""
        self.formats: Counter[str] = Counter()

    def to_sighting(self, adv: Advertisement) -> Sighting | None:
        """The sighting in one advertisement, or None (counted) if there is none."""
        self.advertisements += 1
        address = adv.device.address
        entry = self._addresses.get(address)
        if entry is not None and entry.banned_until:
            if self._monotonic() < entry.banned_until:
                self.refused["banned_address"] += 1
                return None
            entry.banned_until = 0.0
            entry.ids.clear()
        decoded = self._decode(adv, address)
        if decoded is None:
            return None
        sighting, identity = decoded
        if not self._admit(address, entry, identity):
            return None
        self.sightings += 1
        self.formats[sighting.kind] += 1
        return sighting

    # -- formats --------------------------------------------------------------------------

    def _decode(self, adv: Advertisement, address: str) -> tuple[Sighting, Hashable] | None:
        """The sighting and its identity as raw bytes (cheap to hash: the flood check)."""
        data = adv.data
        rssi = max(-127, min(20, data.rssi))
        manufacturer = data.manufacturer_data
        if manufacturer:
            apple = manufacturer.get(APPLE_COMPANY_ID)
            if apple is not None and apple[:1] == b"\x02":
                frame = self._ibeacons.get(apple)
                if frame is None:
                    try:
                        beacon = parse_ibeacon(apple)
                    except FrameError as exc:
                        self._reject(exc)
                        return None
                    if len(self._ibeacons) >= FRAME_CACHE:
                        self._ibeacons.clear()
                    frame = self._ibeacons[apple] = (*beacon, apple[2:22])
                uuid, major, minor, tx_power, identity = frame
                sighting = BeaconSighting.trusted(
                    at=adv.at,
                    kind="ibeacon",
                    uuid=uuid,
                    major=major,
                    minor=minor,
                    tx_power=tx_power,
                    rssi=rssi,
                    scanner=adv.scanner,
                )
                return sighting, identity
            for payload in manufacturer.values():
                if payload[:2] == BEACON_CODE:
                    try:
                        alt = parse_altbeacon(payload)
                    except FrameError as exc:
                        self._reject(exc)
                        return None
                    sighting = BeaconSighting.trusted(
                        at=adv.at,
                        kind="altbeacon",
                        uuid=alt.id1,
                        major=alt.id2,
                        minor=alt.id3,
                        tx_power=alt.reference_rssi,
                        rssi=rssi,
                        scanner=adv.scanner,
                    )
                    return sighting, payload[2:22]
        service = data.service_data.get(EDDYSTONE_SERVICE_UUID) if data.service_data else None
        if service is not None:
            return self._eddystone(adv, service, rssi)
        if self._irks and is_rpa(address):
            key_id = self._resolve_rpa(address)
            if key_id is not None:
                shopper = ShopperSighting.trusted(
                    at=adv.at,
                    kind="rpa",
                    key_id=key_id,
                    tx_power=-59 if data.tx_power is None else max(-128, min(127, data.tx_power)),
                    rssi=rssi,
                    scanner=adv.scanner,
                )
                return shopper, key_id
        self.ignored += 1
        return None

    def _eddystone(
        self, adv: Advertisement, service: bytes, rssi: int
    ) -> tuple[Sighting, Hashable] | None:
        try:
            frame = parse_eddystone(service)
        except FrameError as exc:
            self._reject(exc)
            return None
        if isinstance(frame, EddystoneUid):
            uid = frame.namespace + frame.instance
            sighting = BeaconSighting.trusted(
                at=adv.at,
                kind="eddystone_uid",
                uuid=uuid_of(uid),
                major=0,
                minor=0,
                tx_power=frame.tx_power,
                rssi=rssi,
                scanner=adv.scanner,
            )
            return sighting, uid
        if isinstance(frame, EddystoneEid):
            key_id = self._rotating.resolve(frame.eid, adv.at) if self._rotating else None
            if key_id is None:
                self.refused["unknown_rotating_id"] += 1
                return None
            shopper = ShopperSighting.trusted(
                at=adv.at,
                kind="rotating",
                key_id=key_id,
                tx_power=frame.tx_power,
                rssi=rssi,
                scanner=adv.scanner,
            )
            return shopper, key_id
        if isinstance(frame, EncryptedTlm):
            self.telemetry["etlm"] += 1
        elif isinstance(frame, EddystoneTlm):
            self.telemetry["tlm"] += 1
        elif isinstance(frame, EddystoneUrl):
            self.telemetry["url"] += 1
        return None

    def _resolve_rpa(self, address: str) -> str | None:
        if address in self._rpa_cache:
            self._rpa_cache.move_to_end(address)
            return self._rpa_cache[address]
        try:
            key_id = resolve_rpa(address, self._irks)
        except FrameError:
            key_id = None
        self._rpa_cache[address] = key_id
        if len(self._rpa_cache) > TRACKED_ADDRESSES:
            self._rpa_cache.popitem(last=False)
        return key_id

    # -- flood defence --------------------------------------------------------------------

    def _admit(self, address: str, entry: _Address | None, identity: Hashable) -> bool:
        if entry is None:
            entry = self._addresses[address] = _Address()
            if len(self._addresses) > TRACKED_ADDRESSES:
                self._addresses.popitem(last=False)
        else:
            self._addresses.move_to_end(address)
        if identity not in entry.ids:
            if len(entry.ids) >= self._max_ids:
                entry.banned_until = self._monotonic() + self._ban_s
                self.refused["too_many_ids"] += 1
                log.warning(
                    "ble_address_banned",
                    identities=len(entry.ids) + 1,
                    ban_s=self._ban_s,
                )
                return False
            entry.ids.add(identity)
        if identity in self._known:
            self._known.move_to_end(identity)
            return True
        if not self._take_token():
            self.refused["admission_limited"] += 1
            if self.refused["admission_limited"] == 1:
                log.warning("ble_new_identities_limited", per_second=self._rate)
            return False
        self._known[identity] = None
        if len(self._known) > KNOWN_IDS:
            self._known.popitem(last=False)
        return True

    def _take_token(self) -> bool:
        now = self._monotonic()
        elapsed = max(0.0, now - self._refilled)  # a wall clock set back gives nothing
        self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        self._refilled = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _reject(self, exc: FrameError) -> None:
        key = f"{exc.kind}:{exc.problem}"
        self.rejected[key] += 1
        if self.rejected[key] == 1:
            log.warning("ble_frame_rejected", kind=exc.kind, problem=exc.problem)
        now = self._monotonic()
        last = self._detailed.get(key)
        if last is None or not 0 <= now - last < REJECTED_DETAIL_EVERY_S:
            self._detailed[key] = now
            log.debug(
                "ble_frame_rejected_detail", kind=exc.kind, problem=exc.problem, reason=exc.reason
            )


class BleAdapter:
    """A BLE backend's advertisements as an async stream of sightings."""

    def __init__(self, backend: BleBackend, decoder: BeaconDecoder | None = None) -> None:
        self.backend = backend
        self.decoder = decoder or BeaconDecoder()

    async def readings(self) -> AsyncIterator[Sighting]:
        async for adv in self.backend.advertisements():
            sighting = self.decoder.to_sighting(adv)
            if sighting is not None:
                yield sighting
