from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proximity.adapters.ble.ibeacon import IBeacon, build_ibeacon, parse_ibeacon
from proximity.errors import FrameError

# Apple's "Getting Started with iBeacon" layout: 0x02 0x15, UUID, major, minor, measured power.
SPEC_FRAME = bytes.fromhex("0215e2c56db5dffb48d2b060d0f5a71096e000010002c5")


def test_parses_the_specification_example() -> None:
    beacon = parse_ibeacon(SPEC_FRAME)
    assert beacon == IBeacon(UUID("e2c56db5-dffb-48d2-b060-d0f5a71096e0"), 1, 2, -59)


@pytest.mark.parametrize(
    ("frame", "reason", "problem"),
    [
        (b"", "too short", "too_short"),
        (SPEC_FRAME[:-1], "expected at least 23", "too_short"),
        (SPEC_FRAME[:2], "expected at least 23", "too_short"),
        (b"\x03\x15" + SPEC_FRAME[2:], "not an iBeacon", "not_this_format"),
        (b"\x02\x14" + SPEC_FRAME[2:], "not an iBeacon", "not_this_format"),
        (b"\x02\x16" + SPEC_FRAME[2:] + b"\x00", "not an iBeacon", "not_this_format"),
    ],
)
def test_rejects_malformed_frames_with_a_reason(frame: bytes, reason: str, problem: str) -> None:
    with pytest.raises(FrameError, match=reason) as info:
        parse_ibeacon(frame)
    assert (info.value.kind, info.value.problem) == ("ibeacon", problem)


@pytest.mark.parametrize("extra", [b"\x64", b"\x64\x00\xff"])
def test_bytes_after_the_tx_power_are_ignored(extra: bytes) -> None:
    # Jaalee-style tags append a battery byte: 24 bytes, read as Home Assistant's ibeacon-ble does
    assert parse_ibeacon(SPEC_FRAME + extra) == parse_ibeacon(SPEC_FRAME)


beacons = st.builds(
    IBeacon,
    st.uuids(),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.integers(-128, 127),
)


@given(beacons)
def test_build_then_parse_round_trips(beacon: IBeacon) -> None:
    assert parse_ibeacon(build_ibeacon(beacon)) == beacon


@given(st.one_of(st.binary(max_size=64), st.binary(max_size=30).map(b"\x02\x15".__add__)))
def test_arbitrary_bytes_raise_only_frame_error(data: bytes) -> None:
    try:
        beacon = parse_ibeacon(data)
    except FrameError:
        assert len(data) < 23 or data[:2] != b"\x02\x15"
        return
    assert build_ibeacon(beacon) == data[:23]


def test_builder_refuses_values_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="16 bits"):
        build_ibeacon(IBeacon(UUID(int=0), 0x10000, 0, 0))
