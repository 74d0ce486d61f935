"""`proximity run` and `proximity demo --broker` as real processes against a real mosquitto."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.mosquitto import Mosquitto

ROOT = Path(__file__).resolve().parent.parent


def mosquitto_sub(port: int, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-F",
            "%t\t%p",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.3)  # subscribed before anything is published
    return proc


def test_demo_offer_lines_equal_what_mosquitto_carried(mosquitto: Mosquitto) -> None:
    sub = mosquitto_sub(
        mosquitto.port, "-t", "proximity/v1/+/shoppers/+/offers", "-C", "3", "-W", "30"
    )
    demo = subprocess.run(
        [
            sys.executable,
            "-m",
            "proximity",
            "demo",
            "--json",
            "--speed",
            "0",
            "--broker",
            f"mqtt://127.0.0.1:{mosquitto.port}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert demo.returncode == 0, demo.stderr
    carried, _ = sub.communicate(timeout=30)
    on_wire = sorted(
        (
            (topic, json.loads(payload))
            for topic, payload in (line.split("\t", 1) for line in carried.splitlines())
        ),
        key=lambda item: item[1]["id"],
    )
    printed = sorted(
        (
            (line["topic"], line["offer"])
            for line in map(json.loads, demo.stdout.splitlines())
            if line["type"] == "offer"
        ),
        key=lambda item: item[1]["id"],
    )
    assert len(on_wire) == 3
    assert printed == on_wire
    for _, offer in on_wire:
        assert {"id", "moment", "cta", "expires_at"} <= offer.keys()


def test_run_publishes_and_stops_cleanly_on_sigterm(mosquitto: Mosquitto, tmp_path: Path) -> None:
    walk = tmp_path / "walk.toml"
    walk.write_text(
        'name = "quick"\nscanners = ["gw-entrance"]\n'
        '[phone]\nuuid = "f7826da6-4fa2-4e98-8024-bc5b71e0893e"\nmajor = 9\nminor = 32770\n'
        'interval = "200ms"\n'
        '[[legs]]\nscanner = "gw-entrance"\nduration = "3s"\n[[legs]]\nduration = "2s"\n'
    )
    config = tmp_path / "config.toml"
    config.write_text(
        f'[store]\nid = "store-001"\ngateway = "gw-test"\n'
        f'[broker]\nurl = "mqtt://127.0.0.1:{mosquitto.port}"\n'
        f'[ble.sim]\nwalk = "walk.toml"\nrepeat = true\n'
        f'[rules]\npaths = ["{ROOT / "rules"}"]\n'
        f'[logging]\nformat = "json"\n'
        f'[events]\nrecord = "journey.jsonl"\n'
    )
    offers = mosquitto_sub(
        mosquitto.port, "-t", "proximity/v1/store-001/shoppers/+/offers", "-C", "1", "-W", "20"
    )
    daemon = subprocess.Popen(
        [sys.executable, "-m", "proximity", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        carried, _ = offers.communicate(timeout=30)
        _topic, payload = carried.strip().split("\t", 1)
        assert json.loads(payload)["rule"] == "welcome-directions"
        daemon.send_signal(signal.SIGTERM)
        out, err = daemon.communicate(timeout=20)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()
    assert daemon.returncode == 0, err
    logged = [json.loads(line) for line in (out + err).splitlines() if line.startswith("{")]
    names = [entry["event"] for entry in logged]
    assert "daemon_starting" in names
    recorded = (tmp_path / "journey.jsonl").read_text().splitlines()
    assert [json.loads(x)["kind"] for x in recorded][:2] == ["visit.start", "zone.enter"]
    assert "daemon_stopped" in names
    # privacy: no hardware address or raw beacon identity in the logs
    text = out + err
    assert "5A:11:CE" not in text
    assert "f7826da6" not in text
    status = mosquitto_sub(
        mosquitto.port, "-t", "proximity/v1/store-001/gateways/gw-test/status", "-C", "1", "-W", "5"
    )
    got, _ = status.communicate(timeout=10)
    assert json.loads(got.split("\t", 1)[1])["state"] == "offline"


def test_run_with_a_broken_rule_file_says_where(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rules]]\nid = "x"\non = "zone.entre"\n')
    config = tmp_path / "config.toml"
    config.write_text('[rules]\npaths = ["rules.toml"]\n')
    result = subprocess.run(
        [sys.executable, "-m", "proximity", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        check=False,
        env={**os.environ},
    )
    assert result.returncode == 1
    assert f'{rules}:3:6: rule "x": on must be one of' in result.stderr
