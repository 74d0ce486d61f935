"""Recording a journey and replaying it through two rule versions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from proximity.cli.main import main
from proximity.journey.record import JourneyRecorder, read_journey
from tests.factories import at, make_event

ROOT = Path(__file__).resolve().parent.parent


def test_a_log_round_trips_and_bad_lines_are_skipped_with_their_number(tmp_path: Path) -> None:
    path = tmp_path / "journey.jsonl"
    events = [make_event(at=at(s)) for s in (3, 1, 2)]
    with JourneyRecorder(path) as recorder:
        for event in events:
            recorder.record(event)
    with path.open("a") as f:
        f.write('{"kind": "zone.walk"}\n\n{truncated')
    log = read_journey(path)
    assert [e for _, e in log.events] == sorted(events, key=lambda e: e.at)
    assert [n for n, _ in log.rejected] == [4, 6]
    assert "kind" in log.rejected[0][1]


def test_replay_says_what_a_rule_change_changes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journey = tmp_path / "journey.jsonl"
    demo = subprocess.run(
        [sys.executable, "-m", "proximity", "demo", "--speed", "0", "--record", str(journey)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert demo.returncode == 0, demo.stderr
    assert len(journey.read_text().splitlines()) == 13  # with the coupon redeemed at the till

    old = ROOT / "rules" / "example-store.toml"
    new = tmp_path / "new.toml"
    new.write_text(
        old.read_text().replace('coupon = "COFFEE-20"', 'coupon = "COFFEE-20"\nenabled = false')
    )
    assert main(["replay", str(journey), "--rules", str(new), "--against", str(old), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["events"] == 13
    assert report["offers"] == {"welcome-directions": 1, "bakery-fresh-bread": 1}
    assert report["against"]["offers"]["coffee-coupon"] == 1
    (change,) = report["changes"]
    assert change["kind"] == "zone.dwell"
    assert change["zone"] == "coffee"
    assert (change["before"], change["after"]) == ("coffee-coupon", "no offer")

    assert main(["replay", str(journey), "--rules", str(old)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("13 events replayed")
    assert "coffee-coupon" in text
