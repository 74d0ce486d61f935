"""Rejected BLE frames are counted, labelled and logged by a bounded key, whatever the radio sends.

Anyone in radio range chooses the bytes of an advertisement. A rejected frame's
detailed reason (lengths, byte values, offsets) is therefore attacker-chosen
text: counted by it, a flood of random frames would mint a metric series and a
warning line per distinct text. The decoder counts by ``kind:problem``, both
from fixed sets, and writes the detail only to rate-limited debug lines.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import TypeVar, get_args

import structlog
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from proximity.adapters.base import Advertisement
from proximity.adapters.ble.adapter import REJECTED_DETAIL_EVERY_S, BeaconDecoder
from proximity.adapters.ble.altbeacon import parse_altbeacon
from proximity.adapters.ble.eddystone import EDDYSTONE_SERVICE_UUID, decode_url, parse_eddystone
from proximity.adapters.ble.ibeacon import APPLE_COMPANY_ID, parse_ibeacon
from proximity.adapters.ble.rpa import address_bytes
from proximity.clock import VirtualClock
from proximity.config import Settings
from proximity.daemon import Daemon
from proximity.errors import BleProblem, FrameError, FrameKind
from proximity.metrics import Metrics
from proximity.wiring import build_runtime
from tests.factories import T0
from tests.test_daemon import RecordingSink

BLE_KINDS = [kind for kind in get_args(FrameKind) if kind != "ndef"]
BLE_PROBLEMS = get_args(BleProblem)
REJECTED_KEYS = {f"{kind}:{problem}" for kind in BLE_KINDS for problem in BLE_PROBLEMS}
"""Every key a rejected BLE frame can be counted by: a fixed set."""

T = TypeVar("T")


# -- every parser raises a problem from the fixed set ------------------------------------------


def _prefixed(prefix: bytes) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=30).map(prefix.__add__)


frames_of_any_kind = st.one_of(
    st.binary(max_size=32),
    _prefixed(b"\x02"),
    _prefixed(b"\x02\x15"),
    _prefixed(b"\xbe\xac"),
    *(_prefixed(bytes((t,))) for t in (0x00, 0x10, 0x20, 0x30, 0x40, 0x50)),
    _prefixed(b"\x20\x00"),
    _prefixed(b"\x20\x01"),
)
parsers: list[Callable[[bytes], object]] = [
    parse_ibeacon,
    parse_altbeacon,
    parse_eddystone,
    decode_url,
    address_bytes,
]


def _refusal(parse: Callable[[T], object], data: T) -> FrameError | None:
    try:
        parse(data)
    except FrameError as exc:
        return exc
    return None


@given(frames_of_any_kind, st.sampled_from(parsers))
def test_every_frame_error_has_a_kind_and_problem_from_the_fixed_sets(
    data: bytes, parse: Callable[[bytes], object]
) -> None:
    error = _refusal(parse, data)
    if error is not None:
        assert error.kind in BLE_KINDS
        assert error.problem in BLE_PROBLEMS
        assert error.reason  # the detail is still there, for a person reading one frame


@given(st.text(max_size=24))
def test_a_text_that_is_not_an_address_is_a_bad_address(text: str) -> None:
    error = _refusal(address_bytes, text)
    if error is not None:
        assert (error.kind, error.problem) == ("ble-address", "bad_address")


# -- a flood of random frames ------------------------------------------------------------------


def _random_frames(seed: int, count: int) -> Iterator[tuple[dict[int, bytes], bytes | None]]:
    """Manufacturer data and Eddystone service data a random transmitter might send."""
    rng = random.Random(seed)

    def tail(longest: int) -> bytes:
        return rng.randbytes(rng.randint(0, longest))

    for _ in range(count):
        match rng.randrange(5):
            case 0:  # Apple data starting 0x02, often the iBeacon type and length
                second = 0x15 if rng.random() < 0.7 else rng.randrange(256)
                yield {APPLE_COMPANY_ID: bytes((0x02, second)) + tail(30)}, None
            case 1:  # the AltBeacon code under any company, any length
                yield {rng.randrange(0x10000): b"\xbe\xac" + tail(30)}, None
            case 2:  # Eddystone service data: a frame type, then anything
                frame_type = rng.choice([0x00, 0x10, 0x20, 0x30, 0x40, rng.randrange(256)])
                yield {}, bytes((frame_type,)) + tail(24)
            case 3:  # an Eddystone-URL with any scheme and bytes
                yield {}, bytes((0x10, rng.randrange(256), rng.randrange(6))) + tail(20)
            case _:  # junk
                yield {rng.randrange(0x10000): tail(30)}, tail(30) if rng.random() < 0.5 else None


def _advertisements(seed: int, count: int, clock: list[float]) -> Iterator[Advertisement]:
    rng = random.Random(seed + 1)
    for manufacturer, service in _random_frames(seed, count):
        clock[0] += 0.001  # a thousand advertisements a second
        data = AdvertisementData(
            local_name=None,
            manufacturer_data=manufacturer,
            service_data={EDDYSTONE_SERVICE_UUID: service} if service is not None else {},
            service_uuids=[],
            tx_power=None,
            rssi=-60,
            platform_data=(),
        )
        address = ":".join(f"{b:02X}" for b in rng.randbytes(6))  # the spoofer changes address
        yield Advertisement(BLEDevice(address, None, {}), data, "gw-1", T0)


def test_a_flood_of_random_frames_leaves_counters_and_logs_bounded() -> None:
    clock = [0.0]
    decoder = BeaconDecoder(monotonic=lambda: clock[0])
    with structlog.testing.capture_logs() as logs:
        for adv in _advertisements(seed=7, count=100_000, clock=clock):
            decoder.to_sighting(adv)
    rejected = sum(decoder.rejected.values())
    assert rejected > 50_000  # the flood was mostly malformed frames, and they were counted
    assert set(decoder.rejected) <= REJECTED_KEYS
    assert len(decoder.rejected) <= len(REJECTED_KEYS)
    warnings = [e for e in logs if e["event"] == "ble_frame_rejected"]
    assert len(warnings) == len(decoder.rejected)  # once per key
    assert all("reason" not in e for e in warnings)
    details = [e for e in logs if e["event"] == "ble_frame_rejected_detail"]
    assert all(e["log_level"] == "debug" and e["reason"] for e in details)
    # 100 s of flood: at most one detail line per key per REJECTED_DETAIL_EVERY_S
    per_key = clock[0] // REJECTED_DETAIL_EVERY_S + 1
    assert len(details) <= len(decoder.rejected) * per_key
    assert len(logs) < 200


def test_the_detail_of_a_rejected_frame_is_logged_again_only_after_a_while() -> None:
    clock = [0.0]
    decoder = BeaconDecoder(monotonic=lambda: clock[0])
    cut = {APPLE_COMPANY_ID: b"\x02\x15" + bytes(10)}
    with structlog.testing.capture_logs() as logs:
        for step in range(0, 200):
            clock[0] = step * 0.5  # 100 s
            decoder.to_sighting(_adv(cut))
    assert decoder.rejected == {"ibeacon:too_short": 200}
    details = [e for e in logs if e["event"] == "ble_frame_rejected_detail"]
    assert len(details) == 2  # at 0 s and at 60 s
    assert all(e["reason"].startswith("frame is 12 bytes, expected") for e in details)
    assert [e["event"] for e in logs].count("ble_frame_rejected") == 1


def _adv(manufacturer: dict[int, bytes]) -> Advertisement:
    data = AdvertisementData(
        local_name=None,
        manufacturer_data=manufacturer,
        service_data={},
        service_uuids=[],
        tx_power=None,
        rssi=-60,
        platform_data=(),
    )
    return Advertisement(BLEDevice("C0:11:22:33:44:55", None, {}), data, "gw-1", T0)


def test_the_metrics_label_rejected_frames_by_the_bounded_key_only() -> None:
    clock = VirtualClock(T0)
    runtime = build_runtime(Settings(), clock)
    daemon = Daemon(runtime.adapter, runtime.pipeline, RecordingSink(), clock)
    metrics = Metrics()
    metrics.watch(daemon, None)
    decoder = daemon.adapter.decoder
    fake = [0.0]
    for adv in _advertisements(seed=11, count=20_000, clock=fake):
        decoder.to_sighting(adv)
    reasons = {
        sample.labels["reason"]
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
        if sample.name == "proximity_readings_total"
        and sample.labels["adapter"] == "ble"
        and sample.labels["outcome"] == "rejected"
    }
    assert reasons  # the flood was rejected, and shows
    assert reasons <= REJECTED_KEYS
    assert len(reasons) <= len(REJECTED_KEYS)
