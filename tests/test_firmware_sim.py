import random
from pathlib import Path

import pytest
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from firmware_sim.ble import SimulatedBleBackend
from firmware_sim.walk import Leg, builtin_walk, hear, load_walk
from proximity.adapters.base import Advertisement
from proximity.adapters.ble.adapter import BeaconDecoder, BleAdapter
from proximity.adapters.ble.ibeacon import APPLE_COMPANY_ID
from proximity.clock import VirtualClock
from tests.factories import T0, at


def test_the_same_seed_gives_the_same_walk() -> None:
    walk = builtin_walk()
    a = list(hear(walk, random.Random(3)))
    b = list(hear(walk, random.Random(3)))
    c = list(hear(walk, random.Random(4)))
    assert a == b
    assert a != c


def test_the_scanner_of_the_current_leg_hears_the_phone_loudest() -> None:
    walk = builtin_walk().model_copy(update={"legs": [Leg(scanner="gw-coffee", duration=30)]})
    heard = list(hear(walk, random.Random(1)))
    coffee = [h.rssi for h in heard if h.scanner == "gw-coffee"]
    others = [h.rssi for h in heard if h.scanner != "gw-coffee"]
    assert len(coffee) >= 25
    assert sum(coffee) / len(coffee) > sum(others) / max(1, len(others)) + 20


def test_nothing_is_heard_outside() -> None:
    walk = builtin_walk().model_copy(update={"legs": [Leg(scanner=None, duration=60)]})
    assert list(hear(walk, random.Random(1))) == []


async def test_the_backend_speaks_bleak_and_drives_a_virtual_clock() -> None:
    clock = VirtualClock(T0)
    walk = builtin_walk()
    backend = SimulatedBleBackend(walk, clock, random.Random(7))
    seen: list[Advertisement] = []
    async with backend:
        async for adv in backend.advertisements():
            seen.append(adv)
    assert seen
    assert all(isinstance(a.device, BLEDevice) for a in seen)
    assert all(isinstance(a.data, AdvertisementData) for a in seen)
    assert all(APPLE_COMPANY_ID in a.data.manufacturer_data for a in seen)
    assert [a.at for a in seen] == sorted(a.at for a in seen)
    assert clock.now() == at(walk.duration)


async def test_the_adapter_turns_the_walk_into_sightings() -> None:
    backend = SimulatedBleBackend(builtin_walk(), VirtualClock(T0), random.Random(7))
    adapter = BleAdapter(backend)
    async with backend:
        sightings = [s async for s in adapter.readings()]
    phone = builtin_walk().phone
    assert sightings
    assert {(s.uuid, s.major, s.minor) for s in sightings} == {
        (phone.uuid, phone.major, phone.minor)
    }
    assert adapter.decoder.sightings == len(sightings)


def test_malformed_and_foreign_frames_are_counted_not_raised() -> None:
    backend = SimulatedBleBackend(builtin_walk(), VirtualClock(T0), random.Random(7))
    decoder = BeaconDecoder()
    good = backend.advertisement_data(-60)
    truncated = good._replace(
        manufacturer_data={APPLE_COMPANY_ID: good.manufacturer_data[APPLE_COMPANY_ID][:-3]}
    )
    foreign = good._replace(manufacturer_data={0x0059: b"\x01\x02"})
    for data in (good, truncated, truncated, foreign):
        decoder.to_sighting(Advertisement(backend.device, data, "gw-coffee", T0))
    assert decoder.sightings == 1
    assert sum(decoder.rejected.values()) == 2
    assert decoder.ignored == 1


def test_a_broken_walk_file_is_reported_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "walk.toml"
    path.write_text('name = "x"\nscanners = []\n')
    with pytest.raises(ValueError, match=r"walk\.toml: invalid walk"):
        load_walk(path)
