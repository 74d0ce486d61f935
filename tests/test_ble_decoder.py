"""The BLE decoder: every beacon format to a sighting, telemetry counted, floods refused."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

import pytest
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from hypothesis import given, settings
from hypothesis import strategies as st

from proximity.adapters.base import Advertisement
from proximity.adapters.ble.adapter import BeaconDecoder
from proximity.adapters.ble.altbeacon import RADIUS_NETWORKS_COMPANY_ID, AltBeacon, build_altbeacon
from proximity.adapters.ble.eddystone import (
    EDDYSTONE_SERVICE_UUID,
    EddystoneEid,
    EddystoneTlm,
    EddystoneUid,
    EddystoneUrl,
    build_eddystone,
    build_encrypted_tlm,
)
from proximity.adapters.ble.ibeacon import APPLE_COMPANY_ID, IBeacon, build_ibeacon
from proximity.adapters.ble.rotating import RotatingResolver, rotating_id, window_at
from proximity.adapters.ble.rpa import make_rpa
from proximity.identity.resolver import IdentityResolver
from proximity.readings import BeaconSighting, ShopperSighting
from tests.factories import APP_UUID, KEY, T0

NAMESPACE = bytes.fromhex("edd1ebeac04e5defa017")
SHOPPER_KEY = b"k" * 32
IRK = bytes.fromhex("ec0234a357c8ad05341010a60a397d9b")


def adv(
    *,
    manufacturer: dict[int, bytes] | None = None,
    service: bytes | None = None,
    address: str = "C0:11:22:33:44:55",
    rssi: int = -60,
) -> Advertisement:
    data = AdvertisementData(
        local_name=None,
        manufacturer_data=manufacturer or {},
        service_data={EDDYSTONE_SERVICE_UUID: service} if service is not None else {},
        service_uuids=[],
        tx_power=None,
        rssi=rssi,
        platform_data=(),
    )
    return Advertisement(BLEDevice(address, None, {}), data, "gw-1", T0)


def addr(first: int, n: int) -> str:
    return f"{first:02X}:00:00:00:{n >> 8:02X}:{n & 255:02X}"


def ibeacon(minor: int = 0x8001, uuid: UUID = APP_UUID) -> dict[int, bytes]:
    return {APPLE_COMPANY_ID: build_ibeacon(IBeacon(uuid, 7, minor, -59))}


def test_every_presence_format_becomes_a_sighting() -> None:
    decoder = BeaconDecoder()
    i = decoder.to_sighting(adv(manufacturer=ibeacon()))
    assert isinstance(i, BeaconSighting)
    assert (i.kind, i.uuid, i.major, i.minor, i.rssi) == ("ibeacon", APP_UUID, 7, 0x8001, -60)
    alt = AltBeacon(APP_UUID, 3, 4, -58)
    a = decoder.to_sighting(
        adv(manufacturer={RADIUS_NETWORKS_COMPANY_ID: build_altbeacon(alt)}, address="C0:0:0:0:0:2")
    )
    assert isinstance(a, BeaconSighting)
    assert (a.kind, a.uuid, a.major, a.minor, a.tx_power) == ("altbeacon", APP_UUID, 3, 4, -58)
    instance = bytes(range(6))
    u = decoder.to_sighting(
        adv(service=build_eddystone(EddystoneUid(NAMESPACE, instance, -20)), address="C0:0:0:0:0:3")
    )
    assert isinstance(u, BeaconSighting)
    assert (u.kind, u.uuid.bytes) == ("eddystone_uid", NAMESPACE + instance)
    assert decoder.formats == {"ibeacon": 1, "altbeacon": 1, "eddystone_uid": 1}


def test_an_ibeacon_with_a_battery_byte_is_one_beacon_whatever_the_battery() -> None:
    # Jaalee-style tags: 24 bytes, a battery level after the tx power
    decoder = BeaconDecoder()
    frame = build_ibeacon(IBeacon(APP_UUID, 7, 0x8001, -59))
    for battery in range(20):  # more than max_ids_per_address: one identity, never banned
        s = decoder.to_sighting(adv(manufacturer={APPLE_COMPANY_ID: frame + bytes((battery,))}))
        assert isinstance(s, BeaconSighting)
        assert (s.kind, s.uuid, s.major, s.minor, s.tx_power) == (
            "ibeacon",
            APP_UUID,
            7,
            0x8001,
            -59,
        )
    assert decoder.sightings == 20
    assert not decoder.rejected
    assert not decoder.refused


def test_an_altbeacon_without_its_reserved_byte_is_a_sighting() -> None:
    decoder = BeaconDecoder()
    frame = build_altbeacon(AltBeacon(APP_UUID, 3, 4, -58, 0x7F))
    for payload in (frame[:-1], frame + b"\x01\x02"):
        s = decoder.to_sighting(adv(manufacturer={0x0059: payload}))
        assert isinstance(s, BeaconSighting)
        assert (s.kind, s.uuid, s.major, s.minor, s.tx_power) == ("altbeacon", APP_UUID, 3, 4, -58)
    assert decoder.to_sighting(adv(manufacturer={0x0059: frame[:-2]})) is None
    assert decoder.rejected == {"altbeacon:too_short": 1}


def test_telemetry_is_counted_encrypted_tlm_never_decoded() -> None:
    decoder = BeaconDecoder()
    frames = [
        build_eddystone(EddystoneTlm(3000, 21.5, 100, 2000)),
        build_encrypted_tlm(bytes(12), b"\x01\x02", b"\x03\x04"),
        build_eddystone(EddystoneUrl("https://goo.gl/xyz", -20)),
    ]
    for frame in frames:
        assert decoder.to_sighting(adv(service=frame)) is None
    assert decoder.telemetry == {"tlm": 1, "etlm": 1, "url": 1}
    assert decoder.sightings == 0


def test_malformed_frames_are_rejected_with_a_reason() -> None:
    decoder = BeaconDecoder()
    assert decoder.to_sighting(adv(manufacturer={APPLE_COMPANY_ID: b"\x02\x15\x00"})) is None
    assert decoder.to_sighting(adv(service=b"\x00")) is None
    assert decoder.rejected == {"ibeacon:too_short": 1, "eddystone-uid:wrong_length": 1}
    assert decoder.to_sighting(adv(manufacturer={0x0006: b"\x01\x02"})) is None  # not a beacon
    assert decoder.ignored == 1


def test_rotating_identifiers_resolve_to_registered_shoppers() -> None:
    resolver = RotatingResolver({"s-alice-token": SHOPPER_KEY})
    decoder = BeaconDecoder(rotating=resolver)
    eid = rotating_id(SHOPPER_KEY, window_at(T0))
    s = decoder.to_sighting(adv(service=build_eddystone(EddystoneEid(-20, eid))))
    assert isinstance(s, ShopperSighting)
    assert (s.kind, s.key_id) == ("rotating", "s-alice-token")
    later = rotating_id(SHOPPER_KEY, window_at(T0 + timedelta(hours=2)))  # not this window
    assert decoder.to_sighting(adv(service=build_eddystone(EddystoneEid(-20, later)))) is None
    assert decoder.refused["unknown_rotating_id"] == 1
    people = IdentityResolver([APP_UUID], KEY, consent={"s-alice-token": True})
    shopper = people.resolve(s)
    assert shopper is not None
    assert (shopper.token, shopper.consent, shopper.anonymous) == ("s-alice-token", True, False)


def test_private_addresses_resolve_with_irks_and_never_appear_in_the_sighting() -> None:
    address = make_rpa(IRK, bytes.fromhex("708194"))
    decoder = BeaconDecoder(irks={"s-bob-token": IRK})
    s = decoder.to_sighting(adv(address=address))
    assert isinstance(s, ShopperSighting)
    assert (s.kind, s.key_id) == ("rpa", "s-bob-token")
    assert address.lower() not in s.model_dump_json().lower()
    other = make_rpa(bytes(16), bytes.fromhex("708194"))
    assert decoder.to_sighting(adv(address=other)) is None  # someone else's phone


def test_cart_namespaces_are_anonymous_and_unknown_ones_nobody() -> None:
    people = IdentityResolver([APP_UUID], KEY, anonymous_namespaces=[NAMESPACE])
    decoder = BeaconDecoder()
    cart = decoder.to_sighting(adv(service=build_eddystone(EddystoneUid(NAMESPACE, bytes(6), -20))))
    stranger = decoder.to_sighting(
        adv(service=build_eddystone(EddystoneUid(bytes(10), bytes(6), -20)), address="C0:9:9:9:9:9")
    )
    assert cart is not None
    assert stranger is not None
    shopper = people.resolve(cart)
    assert shopper is not None
    assert shopper.anonymous
    assert people.resolve(stranger) is None


def test_an_address_cycling_identities_is_banned_then_forgiven() -> None:
    now = [0.0]
    decoder = BeaconDecoder(max_ids_per_address=10, monotonic=lambda: now[0])
    got = [decoder.to_sighting(adv(manufacturer=ibeacon(minor=0x8000 | n))) for n in range(15)]
    assert sum(g is not None for g in got) == 10
    assert decoder.refused["too_many_ids"] == 1
    assert decoder.refused["banned_address"] == 4
    # a real shopper on another address is not affected
    assert decoder.to_sighting(adv(manufacturer=ibeacon(), address="C0:AA:AA:AA:AA:AA")) is not None
    now[0] = 3601.0  # the ban lasts an hour
    assert decoder.to_sighting(adv(manufacturer=ibeacon(minor=0x8001))) is not None


def test_a_flood_of_new_identities_is_admitted_at_a_bounded_rate() -> None:
    now = [0.0]
    decoder = BeaconDecoder(new_ids_per_second=10, new_ids_burst=20, monotonic=lambda: now[0])
    known = adv(manufacturer=ibeacon(minor=1), address="C0:00:00:00:00:01")
    assert decoder.to_sighting(known) is not None
    flood = [
        decoder.to_sighting(
            adv(manufacturer=ibeacon(minor=n), address=f"C1:00:00:00:{n >> 8:02x}:{n & 255:02x}")
        )
        for n in range(2, 1002)
    ]
    assert sum(f is not None for f in flood) == 19  # the burst, less the one already used
    assert decoder.refused["admission_limited"] == 981
    assert decoder.to_sighting(known) is not None  # someone already admitted keeps flowing
    now[0] = 1.0
    admitted = [
        decoder.to_sighting(
            adv(manufacturer=ibeacon(minor=n), address=f"C2:00:00:00:{n >> 8:02x}:{n & 255:02x}")
        )
        for n in range(2000, 2100)
    ]
    assert sum(a is not None for a in admitted) == 10  # one second's worth


def validated(sighting: BeaconSighting | ShopperSighting) -> BeaconSighting | ShopperSighting:
    """The same reading through pydantic's validation (what ``trusted`` skips)."""
    return type(sighting).model_validate(dict(sighting))


@settings(max_examples=200)
@given(
    uuid=st.uuids(),
    major=st.integers(0, 0xFFFF),
    minor=st.integers(0, 0xFFFF),
    tx=st.integers(-128, 127),
    rssi=st.integers(-300, 300),
    alt=st.booleans(),
)
def test_decoded_sightings_are_exactly_what_validation_gives(
    uuid: UUID, major: int, minor: int, tx: int, rssi: int, alt: bool
) -> None:
    """The decoder builds sightings without validation (its hot path): every field it
    sets must still be one validation accepts, unchanged, and the same frame heard again
    (a parsed-frame cache) must give the same sighting."""
    manufacturer = (
        {RADIUS_NETWORKS_COMPANY_ID: build_altbeacon(AltBeacon(uuid, major, minor, tx))}
        if alt
        else {APPLE_COMPANY_ID: build_ibeacon(IBeacon(uuid, major, minor, tx))}
    )
    decoder = BeaconDecoder()
    first = decoder.to_sighting(adv(manufacturer=manufacturer, rssi=rssi))
    again = decoder.to_sighting(adv(manufacturer=dict(manufacturer), rssi=rssi))
    assert isinstance(first, BeaconSighting)
    assert first == validated(first) == again
    assert first.model_dump() == validated(first).model_dump()
    assert (first.uuid, first.major, first.minor, first.tx_power) == (uuid, major, minor, tx)
    assert first.rssi == max(-127, min(20, rssi))


def test_shopper_sightings_built_without_validation_are_valid_too() -> None:
    key = SHOPPER_KEY
    resolver = RotatingResolver({"shopper-1": key})
    decoder = BeaconDecoder(rotating=resolver, irks={"shopper-2": IRK})
    eid = rotating_id(key, window_at(T0))
    rotating = decoder.to_sighting(adv(service=build_eddystone(EddystoneEid(-30, eid))))
    rpa = decoder.to_sighting(adv(address=make_rpa(IRK, bytes.fromhex("708194")), rssi=-70))
    for sighting in (rotating, rpa):
        assert isinstance(sighting, ShopperSighting)
        assert sighting == validated(sighting)


def test_a_reading_built_without_validation_still_needs_a_time_zone_and_a_scanner() -> None:
    good = {"kind": "ibeacon", "uuid": APP_UUID, "major": 1, "minor": 2, "tx_power": -59}
    trusted = BeaconSighting.trusted(at=T0, scanner="gw-1", rssi=-60, **good)
    assert trusted == BeaconSighting(at=T0, scanner="gw-1", rssi=-60, **good)
    with pytest.raises(ValueError, match="not a valid BeaconSighting"):
        BeaconSighting.trusted(at=T0.replace(tzinfo=None), scanner="gw-1", rssi=-60, **good)
    with pytest.raises(ValueError, match="not a valid BeaconSighting"):
        BeaconSighting.trusted(at=T0, scanner="", rssi=-60, **good)
