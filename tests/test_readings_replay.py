"""Raw BLE readings: recorded as JSON lines without device addresses, replayed as a backend."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim.__main__ import main as sim_main
from firmware_sim.harness import SCENARIO_START, demo_resolver, load_table, run_scenario
from firmware_sim.harness import scenario_crowd as make_scenario_crowd
from firmware_sim.replay import ReadingsTee, replay_in_process
from firmware_sim.scenarios import SCENARIOS
from firmware_sim.store import BUILTIN_STORES, load_store
from proximity.adapters.base import Advertisement, BleBackend
from proximity.adapters.ble.recording import (
    AddressAliases,
    ReadingRecorder,
    alias_address,
    header_line,
    reading_line,
)
from proximity.adapters.ble.replay import (
    Header,
    LineError,
    RecordedReading,
    Rejected,
    ReplayBleBackend,
    parse_line,
    read_recording,
    recording_start,
)
from proximity.adapters.ble.rpa import is_rpa, make_rpa, resolve_rpa
from proximity.clock import VirtualClock
from proximity.config import load_settings
from proximity.errors import ConfigError
from proximity.journey.record import JourneyRecorder
from tests.factories import T0
from tests.strategies import advertisement_fields, garbage_lines, mac_addresses

IBEACON = bytes.fromhex("0215f7826da64fa24e988024bc5b71e0893e00018001c5")


def advertisement(
    address: str = "C4:11:22:33:44:55", seconds: float = 0.0, **data: Any
) -> Advertisement:
    fields: dict[str, Any] = {
        "local_name": None,
        "manufacturer_data": {0x004C: IBEACON},
        "service_data": {},
        "service_uuids": [],
        "tx_power": None,
        "rssi": -60,
    }
    fields.update(data)
    return Advertisement(
        device=BLEDevice(address, None, {}),
        data=AdvertisementData(platform_data=(), **fields),
        scanner="gw-entrance",
        at=T0 + timedelta(seconds=seconds),
    )


class ListBackend(BleBackend):
    def __init__(self, advertisements: list[Advertisement]) -> None:
        self._advertisements = advertisements

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def advertisements(self) -> AsyncIterator[Advertisement]:
        for adv in self._advertisements:
            yield adv


# -- the format ------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(fields=advertisement_fields(), address=mac_addresses, seconds=st.floats(0, 86_400))
def test_a_reading_line_round_trips(fields: dict[str, Any], address: str, seconds: float) -> None:
    adv = advertisement(address, seconds, **fields)
    alias = AddressAliases(b"k" * 32).alias(address)
    parsed = parse_line(reading_line(adv, alias, local_name=True))
    assert isinstance(parsed, RecordedReading)
    back = parsed.advertisement()
    assert back.at == adv.at
    assert back.scanner == adv.scanner
    assert back.device.address == alias_address(alias)
    for name in ("local_name", "manufacturer_data", "service_data", "service_uuids"):
        assert getattr(back.data, name) == getattr(adv.data, name), name
    assert (back.data.rssi, back.data.tx_power) == (adv.data.rssi, adv.data.tx_power)


def test_local_names_are_left_out_unless_asked_for() -> None:
    adv = advertisement(local_name="Alice's iPhone")
    assert "Alice" not in reading_line(adv, "dev-000000000001")
    assert "Alice" in reading_line(adv, "dev-000000000001", local_name=True)


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(garbage_lines | st.just(""), max_size=20))
def test_garbage_never_crashes_the_reader_and_every_line_is_counted(
    lines: list[str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    good = reading_line(advertisement(), "dev-0123456789ab")
    text = [header_line(T0), *lines, good]
    path = tmp_path_factory.mktemp("garbage") / "r.jsonl"
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    items = list(read_recording(path))
    assert len(items) == sum(1 for line in text if line.strip())
    assert isinstance(items[0], Header)
    for item in items:
        assert isinstance(item, Header | RecordedReading | Rejected)
        if isinstance(item, Rejected):
            assert item.reason
            assert 1 <= item.line <= len(text)


@given(text=st.text(max_size=200))
def test_parse_line_raises_only_line_errors(text: str) -> None:
    with contextlib.suppress(LineError):  # anything else would fail the test
        parse_line(text)


def test_lines_after_a_header_of_an_unknown_version_are_rejected(tmp_path: Path) -> None:
    good = reading_line(advertisement(), "dev-0123456789ab")
    future = json.dumps({"format": "proximity.ble-readings", "v": 3, "started": T0.isoformat()})
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join([future, good, header_line(T0), good]) + "\n")
    items = list(read_recording(path))
    assert [type(i).__name__ for i in items] == [
        "Rejected",
        "Rejected",
        "Header",
        "RecordedReading",
    ]
    assert isinstance(items[0], Rejected)
    assert "format version 3 is not supported (this reads 1, 2)" in items[0].reason


def test_a_recording_starts_at_its_first_session(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text("garbage\n" + header_line(T0) + "\n")
    assert recording_start(path) == T0
    with pytest.raises(ConfigError, match="cannot read"):
        recording_start(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("nothing here\n")
    with pytest.raises(ConfigError, match="no readings"):
        recording_start(tmp_path / "empty.jsonl")


# -- addresses --------------------------------------------------------------------------------


@given(addresses=st.lists(mac_addresses, min_size=1, max_size=30))
def test_aliases_keep_address_identity_and_never_show_the_address(addresses: list[str]) -> None:
    aliases = AddressAliases()
    first = {a: aliases.alias(a) for a in addresses}
    assert {a: aliases.alias(a) for a in addresses} == first  # the same address, the same alias
    assert len(set(first.values())) == len(first)  # distinct addresses, distinct aliases
    for address, alias in first.items():
        assert address.replace(":", "").lower() not in alias
        assert not is_rpa(alias_address(alias))  # never mistaken for a resolvable address
    assert AddressAliases().alias(addresses[0]) != first[addresses[0]]  # a session's own key


def test_a_resolvable_address_stays_resolvable_under_a_new_address() -> None:
    irk = bytes(range(16))
    other = bytes(range(16, 32))
    address = make_rpa(irk, bytes.fromhex("4a1b2c"))
    aliases = AddressAliases(irks={"shopper-1": irk, "shopper-2": other})
    alias = aliases.alias(address)
    assert alias.startswith("rpa-")
    replayed = alias_address(alias)
    assert replayed != address
    assert resolve_rpa(replayed, {"shopper-1": irk, "shopper-2": other}) == "shopper-1"
    assert resolve_rpa(replayed, {"shopper-2": other}) is None
    # an RPA of nobody known, and a macOS-style device id, get plain aliases
    assert aliases.alias(make_rpa(bytes(16), bytes.fromhex("4a1b2c"))).startswith("dev-")
    assert aliases.alias("0E4BD3F6-5C1A-4B8B-9C3A-6B6F2E1D7A55").startswith("dev-")


# -- the tee and the replay backend ------------------------------------------------------------


async def test_the_recorder_tees_and_the_replay_drives_a_virtual_clock(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "r.jsonl"
    heard = [advertisement("C4:00:00:00:00:01", t) for t in (0.5, 1.5, 1.5, 4.0)]
    heard.append(advertisement("C4:00:00:00:00:02", 5.0))
    tee = ReadingRecorder(ListBackend(heard), path, VirtualClock(T0))
    async with tee:
        passed = [adv async for adv in tee.advertisements()]
    assert passed == heard
    assert tee.written == 5
    assert path.stat().st_mode & 0o777 == 0o600
    assert "C4:00" not in path.read_text()

    clock = VirtualClock(T0)
    replay = ReplayBleBackend(path, clock, linger=timedelta(seconds=30))
    times = []
    async with replay:
        async for adv in replay.advertisements():
            assert clock.now() == adv.at  # time was driven to the reading
            times.append((adv.at - T0).total_seconds())
            addresses = {adv.device.address}
    assert times == [0.5, 1.5, 1.5, 4.0, 5.0]
    assert addresses
    assert clock.now() == T0 + timedelta(seconds=35)  # then it lingered
    assert (replay.replayed, replay.sessions, replay.rejected) == (5, 1, 0)


async def test_a_failing_disk_stops_the_recording_not_the_radio(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    heard = [advertisement(seconds=t) for t in (1.0, 2.0)]
    tee = ReadingRecorder(ListBackend(heard), tmp_path / "taken", VirtualClock(T0))
    async with tee:
        passed = [adv async for adv in tee.advertisements()]
    assert passed == heard
    assert tee.failed is not None
    assert tee.written == 0


async def test_rejected_lines_are_reported_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    good = reading_line(advertisement(), "dev-0123456789ab")
    path.write_text(f'{header_line(T0)}\n{good}\nnot json\n{{"at": 1}}\n\n{good}\n')
    replay = ReplayBleBackend(path, VirtualClock(T0))
    async with replay:
        played = [adv async for adv in replay.advertisements()]
    assert len(played) == 2
    assert replay.rejected == 2
    assert replay.rejections[0] == f"{path}:3: not JSON"
    assert replay.rejections[1].startswith(f"{path}:4: ")


# -- configuration ------------------------------------------------------------------------------


def test_the_replay_backend_needs_its_file_and_paths_are_relative_to_the_config(
    tmp_path: Path,
) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[ble]\nbackend = "replay"\n')
    with pytest.raises(ConfigError, match=r"c.toml:1:1: ble: .*set ble.replay.file"):
        load_settings(config)
    config.write_text(
        '[ble]\nbackend = "replay"\nrecord = "again.jsonl"\n'
        '[ble.replay]\nfile = "r.jsonl"\nspeed = 0\nlinger = "90s"\n'
    )
    ble = load_settings(config).ble
    assert ble.replay.file == tmp_path / "r.jsonl"
    assert ble.record == tmp_path / "again.jsonl"
    assert (ble.replay.speed, ble.replay.linger) == (0, timedelta(seconds=90))
    config.write_text("[ble.replay]\nspeed = -1\n")
    with pytest.raises(ConfigError, match=r"ble\.replay\.speed"):
        load_settings(config)


# -- acceptance: a recorded run replays to the same journey events -------------------------------

STORE = BUILTIN_STORES / "example.toml"
SIM_ARGS = ["--shoppers", "6", "--duration", "300", "--seed", "11"]


def test_a_recorded_run_replays_to_the_same_journey_events(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readings, journey, replayed = (tmp_path / n for n in ("r.jsonl", "j1.jsonl", "j2.jsonl"))
    assert (
        sim_main(["run", *SIM_ARGS, "--record", str(journey), "--record-readings", str(readings)])
        == 0
    )
    assert "readings to" in capsys.readouterr().out
    assert sim_main(["replay", str(readings), "--record", str(replayed)]) == 0
    out = capsys.readouterr().out
    assert f"replay {readings}: 1 session(s), 6 shoppers" in out
    assert "rejected lines 0" in out
    recorded = journey.read_text().splitlines()
    assert len(recorded) > 20
    assert replayed.read_text().splitlines() == recorded
    # the same seed writes the same recording
    again = tmp_path / "again.jsonl"
    assert sim_main(["run", *SIM_ARGS, "--record-readings", str(again)]) == 0
    assert again.read_bytes() == readings.read_bytes()


async def test_a_recording_holds_no_address_of_the_simulated_devices(tmp_path: Path) -> None:
    store = load_store(STORE)
    scenario = SCENARIOS["sparse"].with_crowd(shoppers=8, arrival_window_s=240)
    clock = VirtualClock(SCENARIO_START)
    tee = ReadingsTee(tmp_path / "r.jsonl", clock, seed=5)
    with JourneyRecorder(tmp_path / "j.jsonl") as journey:
        run = await run_scenario(
            store,
            scenario,
            5,
            load_table(),
            demo_resolver(),
            clock=clock,
            recorder=journey,
            tee=tee,
        )
    text = tee.path.read_text()
    crowd = make_scenario_crowd(store, scenario, 5)
    addresses = {s.phone.address for s in crowd.shoppers.values()}
    assert len(addresses) == 8
    for address in addresses:
        assert address.upper() not in text.upper()
        assert address.replace(":", "").lower() not in text.lower()
    aliases = {json.loads(line)["addr"] for line in text.splitlines()[1:]}
    assert len(aliases) >= len(addresses)  # phones (and any fixed beacons), each its own alias
    # and through the in-process replay, the same events as the run
    replay = await replay_in_process(tee.path, load_table(), demo_resolver())
    assert [e.model_dump_json() for e in replay.events] == [e.model_dump_json() for e in run.events]


def test_proximity_replay_points_a_readings_recording_to_the_simulator(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from proximity.cli.main import main as proximity_main

    path = tmp_path / "r.jsonl"
    path.write_text(
        header_line(T0) + "\n" + reading_line(advertisement(), "dev-0123456789ab") + "\n"
    )
    rules = Path(__file__).resolve().parent.parent / "rules" / "example-store.toml"
    assert proximity_main(["replay", str(path), "--rules", str(rules)]) == 1
    assert "python -m firmware_sim replay" in capsys.readouterr().err


def test_the_simulator_explains_replay_and_record_readings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for command in ("replay", "run"):
        with pytest.raises(SystemExit):
            sim_main([command, "--help"])
        assert "readings" in capsys.readouterr().out
