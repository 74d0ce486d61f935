"""Device models beyond phones: fixed beacons in the store file, TLM, carts, a full store."""

from __future__ import annotations

import asyncio
import itertools
import random
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from firmware_sim.beacons import CART_UUID, BeaconFirmware, CartBeacon, FixedBeacon
from firmware_sim.crowd import (
    Crowd,
    CrowdParams,
    Phone,
    SimShopper,
    full_store,
    make_crowd,
    scripted_shopper,
)
from firmware_sim.crowd_backend import CrowdBleBackend
from firmware_sim.radio import RadioModel, RadioParams
from firmware_sim.store import Store, StoreError, builtin_store, load_store
from proximity.adapters.base import Advertisement
from proximity.adapters.ble.adapter import BeaconDecoder
from proximity.adapters.ble.eddystone import (
    EDDYSTONE_SERVICE_UUID,
    EddystoneTlm,
    parse_eddystone,
)
from proximity.adapters.ble.ibeacon import uuid_of
from proximity.clock import VirtualClock
from proximity.readings import BeaconSighting
from tests.factories import T0

FLOOR = """\
name = "tiny"
width = 10.0
depth = 8.0
door = [5.0, 0.0]

[zones.front]
circle = { center = [5.0, 2.0], radius = 1.5 }

[[scanners]]
id = "gw-front"
position = [5.0, 2.0]

"""
IB_UUID = "b9407f30-f5f8-466e-aff9-25556b57fe6d"
EVERY_FORMAT = f"""\
[[beacons]]
id = "ib"
format = "ibeacon"
uuid = "{IB_UUID}"
major = 100
minor = 7
position = [4.0, 2.0]

[[beacons]]
id = "alt"
format = "altbeacon"
uuid = "{IB_UUID}"
major = 5
minor = 6
position = [6.0, 2.0]

[[beacons]]
id = "uid"
format = "eddystone-uid"
namespace = "f7826da6bc5b71e0893e"
instance = "00000000ba4e"
position = [5.0, 3.0]
interval = "200ms"
tlm_every = 4
uptime = "2d"

[[beacons]]
id = "url"
format = "eddystone-url"
url = "https://example.com/store"
position = [5.0, 1.0]

[[beacons]]
id = "tlm"
format = "eddystone-tlm"
position = [5.0, 2.5]
"""
QUIET = RadioParams(
    shadowing_db=0.0,
    fading=False,
    body_probability=0.0,
    packet_loss=0.0,
    device_spread_db=0.0,
)


def store_file(tmp_path: Path, beacons: str) -> Path:
    path = tmp_path / "store.toml"
    path.write_text(FLOOR + beacons, encoding="utf-8")
    return path


def crowd_on(
    store: Store, shoppers: list[SimShopper], seed: int = 1, radio: RadioParams | None = None
) -> Crowd:
    model = RadioModel(radio or store.radio, random.Random(f"{seed}:radio"))
    return Crowd(store, shoppers, model, random.Random(f"{seed}:adv"))


def advertisements(crowd: Crowd) -> list[Advertisement]:
    async def collect() -> list[Advertisement]:
        backend = CrowdBleBackend(crowd, VirtualClock(T0))
        async with backend:
            return [a async for a in backend.advertisements()]

    return asyncio.run(collect())


# -- the store file -------------------------------------------------------------------------


def test_every_format_parses(tmp_path: Path) -> None:
    store = load_store(store_file(tmp_path, EVERY_FORMAT))
    assert [b.format for b in store.beacons] == [
        "ibeacon",
        "altbeacon",
        "eddystone-uid",
        "eddystone-url",
        "eddystone-tlm",
    ]
    uid = store.beacons[2]
    assert uid.interval == 0.2
    assert uid.uptime == 2 * 86_400
    assert uid.tlm_period == 4
    assert store.beacons[3].tlm_period == 10  # Eddystone's default interleave
    assert store.beacons[0].tlm_period == 0
    assert store.beacons[4].tlm_period == 1


@pytest.mark.parametrize(
    ("beacon", "line", "message"),
    [
        (
            'id = "a"\nformat = "ibeacon"\nposition = [1.0, 1.0]\n',
            13,
            "beacons.0: ibeacon beacons need uuid",
        ),
        (
            f'id = "a"\nformat = "ibeacon"\nuuid = "{IB_UUID}"\nurl = "https://x.org"\n'
            "position = [1.0, 1.0]\n",
            13,
            "beacons.0: url does not apply to ibeacon beacons (they take major, minor, uuid)",
        ),
        (
            'id = "a"\nformat = "eddystone-uid"\nnamespace = "f7826da6bc5b71e0893e"\n'
            "position = [1.0, 1.0]\n",
            13,
            "beacons.0: eddystone-uid beacons need instance",
        ),
        (
            'id = "a"\nformat = "eddystone-url"\nurl = "https://a-rather-long-name.example.org/"\n'
            "position = [1.0, 1.0]\n",
            13,
            "must be 1 to 17",
        ),
        (
            'id = "a"\nformat = "eddystone-tlm"\nposition = [1.0, 1.0]\ntlm_every = 3\n',
            13,
            "tlm_every applies to eddystone-uid and eddystone-url beacons only",
        ),
        (
            'id = "a"\nformat = "eddystone-tlm"\nnamespace = "f7826da6bc5b71e0893e"\n'
            "position = [1.0, 1.0]\n",
            13,
            "namespace does not apply to eddystone-tlm beacons (they take no identity keys)",
        ),
        (
            'id = "a"\nformat = "bluetooth"\nposition = [1.0, 1.0]\n',
            15,
            "beacons.0.format: Input should be 'ibeacon'",
        ),
        (
            'id = "a"\nformat = "eddystone-tlm"\nposition = [1.0, 1.0]\ninterval = "20s"\n',
            17,
            "beacons.0.interval: Input should be less than or equal to 10.24",
        ),
        (
            'id = "a"\nformat = "eddystone-tlm"\nposition = [12.0, 1.0]\n',
            1,
            "beacon 'a' at (12, 1) is outside the 10 × 8 m floor",
        ),
    ],
)
def test_bad_beacons_are_reported_where_they_are(
    tmp_path: Path, beacon: str, line: int, message: str
) -> None:
    path = store_file(tmp_path, "[[beacons]]\n" + beacon)
    with pytest.raises(StoreError) as caught:
        load_store(path)
    assert message in str(caught.value)
    assert caught.value.line == line, str(caught.value)


def test_a_beacon_id_used_twice_is_refused(tmp_path: Path) -> None:
    twice = '[[beacons]]\nid = "a"\nformat = "eddystone-tlm"\nposition = [1.0, 1.0]\n'
    with pytest.raises(StoreError, match="beacon 'a' is listed twice"):
        load_store(store_file(tmp_path, twice + twice))


def test_the_example_store_has_an_eddystone_beacon_with_tlm() -> None:
    beacons = builtin_store().beacons
    assert len(beacons) >= 2
    assert any(b.format == "eddystone-uid" and b.tlm_period > 1 for b in beacons)


# -- frames ---------------------------------------------------------------------------------


def test_fixed_beacons_frames_decode_with_the_gateways_decoder(tmp_path: Path) -> None:
    store = load_store(store_file(tmp_path, EVERY_FORMAT))
    shopper = scripted_shopper(store, [("front", 20)])
    crowd = crowd_on(store, [shopper], radio=QUIET)
    decoder = BeaconDecoder()
    sightings = [s for a in advertisements(crowd) if (s := decoder.to_sighting(a))]
    assert not decoder.rejected
    assert decoder.telemetry["tlm"] > 0  # the uid beacon's TLM and the TLM-only beacon
    assert decoder.telemetry["url"] > 0
    beacons = {
        (s.kind, s.uuid, s.major, s.minor)
        for s in sightings
        if isinstance(s, BeaconSighting) and s.uuid != shopper.phone.uuid
    }
    uid = uuid_of(bytes.fromhex("f7826da6bc5b71e0893e" + "00000000ba4e"))
    assert beacons == {
        ("ibeacon", UUID(IB_UUID), 100, 7),
        ("altbeacon", UUID(IB_UUID), 5, 6),
        ("eddystone_uid", uid, 0, 0),
    }
    by_kind = {s.kind: s.tx_power for s in sightings if isinstance(s, BeaconSighting)}
    assert by_kind["ibeacon"] == -59
    assert by_kind["eddystone_uid"] == -59 + 41  # Eddystone carries the power at 0 m


def _tlm(frames: list[tuple[float, bytes]]) -> list[EddystoneTlm]:
    out = []
    for _, data in frames:
        frame = parse_eddystone(data)
        if isinstance(frame, EddystoneTlm):
            out.append(frame)
    return out


def test_tlm_counters_advance() -> None:
    config = FixedBeacon.model_validate(
        {
            "id": "uid",
            "format": "eddystone-uid",
            "namespace": "f7826da6bc5b71e0893e",
            "instance": "00000000ba4e",
            "position": (1.0, 1.0),
            "interval": 0.5,
            "tlm_every": 5,
            "uptime": 3600.0,
            "battery_drain_mv_per_day": 500.0,
        }
    )
    beacon = BeaconFirmware(config)
    frames = [(t * 0.5, beacon.advertise(t * 0.5)[1]) for t in range(4000)]
    tlm = _tlm(frames)
    assert len(tlm) == 4000 // 5
    assert all(b.adv_count > a.adv_count for a, b in itertools.pairwise(tlm))
    assert all(b.uptime_tenths > a.uptime_tenths for a, b in itertools.pairwise(tlm))
    assert tlm[0].adv_count == 3600 / 0.5 + 5  # counted since power-up, an hour before
    assert tlm[0].uptime_tenths == 36_000 + 20  # the 5th frame, 2 s into the run
    batteries = [t.battery_mv or 0 for t in tlm]
    assert batteries == sorted(batteries, reverse=True)
    assert batteries[0] > batteries[-1]
    temperatures = {t.temperature for t in tlm}
    assert len(temperatures) > 1
    assert all(t is not None and 19.4 <= t <= 22.6 for t in temperatures)


def test_tlm_counters_advance_in_the_crowds_air(tmp_path: Path) -> None:
    store = load_store(store_file(tmp_path, EVERY_FORMAT))
    crowd = crowd_on(store, [scripted_shopper(store, [("front", 60)])], radio=QUIET)
    sent: dict[float, bytes] = {}
    for heard in crowd.heard():
        if isinstance(heard.source, BeaconFirmware) and heard.source.config.id == "uid":
            assert heard.frame[0] == EDDYSTONE_SERVICE_UUID
            sent[heard.t] = heard.frame[1]
    tlm = _tlm(sorted(sent.items()))
    assert len(tlm) > 10
    assert all(b.adv_count > a.adv_count for a, b in itertools.pairwise(tlm))
    assert all(b.uptime_tenths > a.uptime_tenths for a, b in itertools.pairwise(tlm))
    assert max(sent) < crowd.end  # beacons stop once the last shopper has left


# -- carts ----------------------------------------------------------------------------------


def test_carts_do_not_change_the_crowd() -> None:
    store = builtin_store()
    plain = make_crowd(store, CrowdParams(shoppers=30), random.Random(4))
    carts = make_crowd(store, CrowdParams(shoppers=30, cart_share=0.5), random.Random(4))
    assert [(s.phone, s.itinerary) for s in plain] == [(s.phone, s.itinerary) for s in carts]
    with_cart = [s for s in carts if s.cart is not None]
    assert 5 < len(with_cart) < 25
    assert all(s.cart is not None and s.cart.owner == s.phone.index for s in with_cart)
    keys = {s.cart.beacon_key for s in with_cart if s.cart is not None}
    assert len(keys) == len(with_cart)
    assert all(uuid == CART_UUID for uuid, _, _ in keys)


def test_a_cart_moves_with_its_shopper() -> None:
    store = builtin_store().model_copy(update={"beacons": []})
    shopper = scripted_shopper(store, [("coffee", 40), ("bakery", 40)])
    cart = CartBeacon.numbered(0, shopper.phone.index, "C0:00:00:00:00:01")
    crowd = crowd_on(store, [SimShopper(shopper.phone, shopper.itinerary, cart)], radio=QUIET)
    strongest: dict[float, tuple[int, str]] = {}
    times = []
    for heard in crowd.heard():
        if isinstance(heard.source, CartBeacon):
            times.append(heard.t)
            best = strongest.get(heard.t)
            if best is None or heard.rssi > best[0]:
                strongest[heard.t] = (heard.rssi, heard.scanner)
    itinerary = shopper.itinerary
    assert itinerary.arrive <= min(times)
    assert max(times) < itinerary.leave
    for t, (_, scanner) in strongest.items():
        where = itinerary.position(t)
        zone = store.zone_at(where)
        if zone in ("coffee", "bakery"):
            assert scanner == f"gw-{zone}"
    assert {s for _, s in strongest.values()} >= {"gw-coffee", "gw-bakery"}


def test_carts_are_heard_as_beacons_of_their_own() -> None:
    store = builtin_store().model_copy(update={"beacons": []})
    shoppers = make_crowd(
        store, CrowdParams(shoppers=4, arrival_window_s=10, cart_share=1.0), random.Random(2)
    )
    decoder = BeaconDecoder()
    sightings = [decoder.to_sighting(a) for a in advertisements(crowd_on(store, shoppers))]
    carts = {
        (s.major, s.minor)
        for s in sightings
        if isinstance(s, BeaconSighting) and s.uuid == CART_UUID
    }
    assert carts == {(1, n) for n in range(1, 5)}


# -- determinism ------------------------------------------------------------------------------


def _air(crowd: Crowd) -> list[tuple[Any, ...]]:
    return [(h.t, h.source.address, h.scanner, h.rssi, h.frame) for h in crowd.heard()]


def _shoppers(store: Store, seed: int) -> list[SimShopper]:
    params = CrowdParams(shoppers=12, arrival_window_s=120, cart_share=0.5)
    return make_crowd(store, params, random.Random(seed))


def test_the_same_seed_gives_the_same_advertisements() -> None:
    store = builtin_store()
    first = _air(crowd_on(store, _shoppers(store, 3), seed=5))
    assert first == _air(crowd_on(store, _shoppers(store, 3), seed=5))
    assert first != _air(crowd_on(store, _shoppers(store, 3), seed=6))
    sources = {h.source.__class__ for h in crowd_on(store, _shoppers(store, 3), seed=5).heard()}
    assert sources == {Phone, CartBeacon, BeaconFirmware}


def test_beacons_and_carts_leave_the_phones_numbers_alone() -> None:
    store = builtin_store()
    bare = store.model_copy(update={"beacons": []})
    shoppers = _shoppers(store, 3)
    no_carts = [SimShopper(s.phone, s.itinerary) for s in shoppers]

    def phones(crowd: Crowd) -> list[tuple[Any, ...]]:
        return [
            (h.t, h.source.index, h.scanner, h.rssi)
            for h in crowd.heard()
            if isinstance(h.source, Phone)
        ]

    assert phones(crowd_on(store, shoppers)) == phones(crowd_on(bare, no_carts))


# -- a full store -----------------------------------------------------------------------------


def test_a_full_store_has_every_shopper_on_the_floor_throughout() -> None:
    store = builtin_store()
    shoppers = full_store(store, CrowdParams(shoppers=50), random.Random(1), seconds=30.0)
    assert len(shoppers) == 50
    for shopper in shoppers:
        assert shopper.itinerary.arrive == 0.0
        assert shopper.itinerary.leave == pytest.approx(30.0)
        assert all(shopper.itinerary.position(t / 2) is not None for t in range(60))
    zones = {store.zone_at(s.itinerary.position(0.0)) for s in shoppers}
    assert len(zones) > 2  # spread over the store, not queued at the door
    again = full_store(store, CrowdParams(shoppers=50), random.Random(1), seconds=30.0)
    assert [s.itinerary for s in again] == [s.itinerary for s in shoppers]
