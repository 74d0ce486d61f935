"""A simulator's readings recording, replayed into `proximity run` against mosquitto,
gives the journey events of the run that recorded it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_sim.__main__ import main as sim_main
from tests.mosquitto import Mosquitto, Subscriber

pytestmark = pytest.mark.timeout(60)


def test_the_daemon_replays_a_recording_to_the_same_journey_events(
    mosquitto: Mosquitto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readings, journey = tmp_path / "readings.jsonl", tmp_path / "journey.jsonl"
    args = ["--shoppers", "6", "--duration", "300", "--seed", "11"]
    assert (
        sim_main(["run", *args, "--record", str(journey), "--record-readings", str(readings)]) == 0
    )
    capsys.readouterr()
    (tmp_path / "config.toml").write_text(
        f'[broker]\nurl = "mqtt://127.0.0.1:{mosquitto.port}"\n'
        '[ble]\nbackend = "replay"\nrecord = "again.jsonl"\n'
        '[ble.replay]\nfile = "readings.jsonl"\nspeed = 0\n'
        '[events]\nrecord = "daemon-journey.jsonl"\nqos = 1\n'
        "[rules]\nwatch = false\n"
        "[metrics]\nenabled = false\n"
        '[logging]\nformat = "json"\n'
    )
    events = Subscriber(mosquitto.port, "proximity/v1/store-001/events")
    try:
        run = subprocess.run(
            [sys.executable, "-m", "proximity", "run", "--config", str(tmp_path / "config.toml")],
            capture_output=True,
            text=True,
            timeout=50,
            cwd=tmp_path,
            check=False,
        )
        expected = journey.read_text().splitlines()
        published = events.payloads()
    finally:
        events.close()
    assert run.returncode == 0, run.stderr[-2000:]
    # the daemon made exactly the run's journey events: kinds, zones, tokens, times
    assert (tmp_path / "daemon-journey.jsonl").read_text().splitlines() == expected
    assert len(expected) > 20
    # and published them (QoS 1, one connection: in order)
    assert [json.loads(p) for p in published] == [json.loads(line) for line in expected]
    logged = [json.loads(x) for x in run.stderr.splitlines() if x.startswith("{")]
    finished = next(x for x in logged if x["event"] == "ble_replay_finished")
    assert finished["rejected"] == 0
    stopped = next(x for x in logged if x["event"] == "daemon_stopped")
    assert stopped["events"] == len(expected)
    # the daemon recorded what it replayed (tee): that replays to the same events too
    again = tmp_path / "again.jsonl"
    assert sim_main(["replay", str(again), "--record", str(tmp_path / "again-journey.jsonl")]) == 0
    assert (tmp_path / "again-journey.jsonl").read_text().splitlines() == expected
    assert again.read_text().count('"format"') == 1
