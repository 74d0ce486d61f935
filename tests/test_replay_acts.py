"""Readings recordings that hold shoppers' acts (format version 2): NFC taps and code
scans are recorded beside the advertisements, without what the privacy model keeps out,
and a replay plays them through the run's act path, binding the same carts and redeeming
the same coupons. Version 1 recordings (advertisements only) still read."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from firmware_sim.__main__ import main as sim_main
from firmware_sim.harness import demo_resolver, load_table
from firmware_sim.replay import replay_in_process
from proximity.adapters.base import Advertisement, BleBackend
from proximity.adapters.ble.recording import (
    VERSION,
    WITHHELD,
    ReadingRecorder,
    act_line,
    header_line,
    kept,
    reading_line,
)
from proximity.adapters.ble.replay import (
    Header,
    RecordedReading,
    RecordedScan,
    RecordedTap,
    Rejected,
    ReplayBleBackend,
    parse_line,
    read_recording,
    recorded_acts,
)
from proximity.adapters.nfc.ndef import build_ndef, parse_ndef, text_record, uri_record
from proximity.adapters.nfc.tap import NfcTap, hash_tag_uid
from proximity.adapters.qr.scan import CodeScan
from proximity.clock import VirtualClock
from tests.factories import T0
from tests.test_readings_replay import advertisement

CHECKIN = "PX1:AEAWWCVGMNVQVJ4PA5UFRUF5Y4KPSELTMRUWY5DFMNVHAYTRPJVW2YTINKIHTIYJZAH5DQQX4JZ7Q"
LOYALTY = "9300000123456789"
UID = bytes.fromhex("04a1b2c3d4e5f6")
UID_KEY = b"k" * 32


def tap(*texts: str, seconds: float = 1.0, uri: str | None = None) -> NfcTap:
    records = [text_record(t) for t in texts] + ([uri_record(uri)] if uri else [])
    return NfcTap(
        at=T0 + timedelta(seconds=seconds),
        reader="cart-dock",
        tag_uid_hash=hash_tag_uid(UID, UID_KEY),
        tag_type="Type4Tag",
        ndef=parse_ndef(build_ndef(records)) if records else None,
    )


def scan(text: str, seconds: float = 2.0) -> CodeScan:
    return CodeScan(
        at=T0 + timedelta(seconds=seconds), scanner="till-1", text=text, source="scanner"
    )


# -- the format ------------------------------------------------------------------------------


def test_taps_and_scans_round_trip() -> None:
    for reading in (tap(CHECKIN), tap(), scan(CHECKIN)):
        parsed = parse_line(act_line(reading))
        assert isinstance(parsed, RecordedTap | RecordedScan)
        assert parsed.reading() == reading
    assert VERSION == 2


def test_only_what_the_gateway_acts_on_is_written() -> None:
    """A loyalty number shown to the till's scanner, a tag's own text, a link's query:
    none is written; a signed code (naming a pseudonymous token) and a product link are.
    A tag's UID is written as the NFC adapter's keyed hash, never as read."""
    product = "https://shop.example.com/p/123?member=4711"
    line = act_line(tap("Hello, my name is Ada", CHECKIN, uri=product))
    assert json.loads(line)["texts"] == [WITHHELD, CHECKIN, "https://shop.example.com/p/123"]
    assert "Ada" not in line
    assert "4711" not in line
    assert UID.hex() not in line.lower()
    assert json.loads(line)["uid"] == hash_tag_uid(UID, UID_KEY)
    assert json.loads(act_line(scan(LOYALTY)))["text"] == WITHHELD
    assert kept(f"  {CHECKIN}\r\n") == CHECKIN


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ({"tap": "dock", "uid": "XYZ", "tag": "Type2Tag"}, "uid: String should match pattern"),
        ({"tap": "dock", "uid": "0123456789abcdef", "tag": "T2", "texts": [""]}, "texts:"),
        ({"tap": "", "uid": "0123456789abcdef", "tag": "Type2Tag"}, "tap: String should have"),
        ({"scan": "till-1", "source": "scanner"}, "text: Field required"),
        ({"scan": "till-1", "source": "phone", "text": "x"}, "source: Input should be"),
        ({"scan": "till-1", "source": "scanner", "text": "x", "rssi": -60}, "rssi: Extra"),
    ],
)
def test_malformed_tap_and_scan_lines_are_rejected_with_their_line(
    tmp_path: Path, line: dict[str, Any], reason: str
) -> None:
    path = tmp_path / "r.jsonl"
    bad = json.dumps({"at": T0.isoformat(), **line})
    path.write_text(f"{header_line(T0)}\n{act_line(scan(CHECKIN))}\n{bad}\n")
    items = list(read_recording(path))
    assert [type(i).__name__ for i in items] == ["Header", "RecordedScan", "Rejected"]
    rejected = items[2]
    assert isinstance(rejected, Rejected)
    assert rejected.line == 3
    assert rejected.reason.startswith(reason), rejected.reason


async def test_the_radio_replay_passes_acts_over_and_reports_bad_ones(tmp_path: Path) -> None:
    """The daemon's replay backend plays advertisements only: good tap and scan lines are
    counted, not rejected; a broken one is rejected as FILE:LINE: reason."""
    path = tmp_path / "r.jsonl"
    good = reading_line(advertisement(), "dev-0123456789ab")
    broken = json.dumps({"at": T0.isoformat(), "scan": "till-1", "source": "scanner"})
    path.write_text(
        "\n".join([header_line(T0), good, act_line(tap(CHECKIN)), broken, act_line(scan("x"))])
        + "\n"
    )
    replay = ReplayBleBackend(path, VirtualClock(T0))
    async with replay:
        played = [adv async for adv in replay.advertisements()]
    assert len(played) == 1
    assert replay.acts == 2
    assert replay.rejections == [f"{path}:4: text: Field required"]
    assert [type(r).__name__ for r in recorded_acts(path)] == ["NfcTap", "CodeScan"]


def test_version_1_recordings_still_read(tmp_path: Path) -> None:
    path = tmp_path / "v1.jsonl"
    v1 = json.dumps({"format": "proximity.ble-readings", "v": 1, "started": T0.isoformat()})
    path.write_text(f"{v1}\n{reading_line(advertisement(), 'dev-0123456789ab')}\n")
    items = list(read_recording(path))
    assert isinstance(items[0], Header)
    assert items[0].v == 1
    assert isinstance(items[1], RecordedReading)
    assert recorded_acts(path) == []


async def test_a_withheld_text_is_refused_as_the_text_was(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    lines = [header_line(T0), reading_line(advertisement(), "dev-0123456789ab")]
    path.write_text("\n".join([*lines, act_line(scan(LOYALTY, seconds=0.5))]) + "\n")
    result = await replay_in_process(path, load_table(), demo_resolver())
    assert result.acts == 1
    assert dict(result.refused) == {"unsigned": 1}


class _Listed(BleBackend):
    def __init__(self, advertisements: list[Advertisement]) -> None:
        self._advertisements = advertisements

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def advertisements(self) -> AsyncIterator[Advertisement]:
        for adv in self._advertisements:
            yield adv


async def test_the_recorder_writes_acts_while_open_only(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    recorder = ReadingRecorder(_Listed([advertisement()]), path, VirtualClock(T0))
    recorder.record_act(scan(CHECKIN))  # not started: nowhere to write
    async with recorder:
        _ = [adv async for adv in recorder.advertisements()]
        recorder.record_act(tap(CHECKIN))
    recorder.record_act(scan(CHECKIN))  # stopped
    assert (recorder.written, recorder.acts_written) == (1, 1)
    assert [type(i).__name__ for i in read_recording(path)] == [
        "Header",
        "RecordedReading",
        "RecordedTap",
    ]


# -- a run's acts, recorded and replayed -------------------------------------------------------


def test_a_recorded_run_replays_to_the_same_bindings_and_redemptions(tmp_path: Path) -> None:
    path = tmp_path / "readings.jsonl"
    argv = ["run", "--shoppers", "30", "--duration", "15m", "--seed", "5"]
    acts = ["--carts", "0.5", "--checkins", "0.7", "--redeem", "1"]
    out = io.StringIO()
    assert sim_main([*argv, *acts, "--record-readings", str(path), "--json"], out) == 0
    run = json.loads(out.getvalue())
    out = io.StringIO()
    assert sim_main(["replay", str(path), "--json"], out) == 0
    replay = json.loads(out.getvalue())

    assert run["acts"]["bindings"] > 0
    assert run["acts"]["redemptions"] > 0
    assert replay["rejected"] == 0
    assert replay["acts"]["replayed"] == run["acts"]["taps"] + run["acts"]["scans"]
    assert replay["acts"]["bindings"] == run["acts"]["bindings"]
    assert replay["acts"]["redemptions"] == run["acts"]["redemptions"]
    assert replay["acts"]["refused"] == run["acts"]["refused"] == {}
    assert replay["events"] == run["events"]
    assert replay["offers"] == run["offers"]
    header = json.loads(path.read_text().splitlines()[0])
    assert header["v"] == VERSION
