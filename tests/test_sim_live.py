"""The simulator's live mode: `python -m firmware_sim run --via bluez` drives a real
`proximity run` through a mocked BlueZ (the daemon's bleak backend, one adapter per
store scanner) and mosquitto, and the shopper's app receives the offers.

Everything is real and started by the run itself: dbus-daemon, python-dbusmock's
bluez5 template, the daemon process, mosquitto (or the one given with --broker).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firmware_sim.bluez import find_dbus_daemon
from tests.mosquitto import Mosquitto, Subscriber

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
PHONE_ADDRESS = "5A:11:CE:00:00:01"
#: In at the entrance, 40 s at the coffee promotion (its coupon fires at 30 s), gone.
SHORT_WALK = """
name = "short"
scanners = ["gw-entrance", "gw-coffee", "gw-bakery", "gw-checkout"]

[phone]
uuid = "f7826da6-4fa2-4e98-8024-bc5b71e0893e"
major = 1
minor = 32770
address = "5A:11:CE:00:00:01"

[[legs]]
scanner = "gw-entrance"
duration = "10s"

[[legs]]
scanner = "gw-coffee"
duration = "40s"

[[legs]]
duration = "10s"
"""


@pytest.fixture(autouse=True)
def _needs_dbus_daemon() -> None:
    if find_dbus_daemon() is None:
        pytest.fail("dbus-daemon is not installed: run `make test`, which installs it")


QUICK_PRESENCE = '[presence]\nexit_timeout = "5s"\nvisit_timeout = "10s"\n'
"""Shorter timeouts than the daemon's (15 s, 60 s): the run lingers after the walk for
them to run out (7.7 s at 10x with the defaults, 1.7 s with these)."""


def quick_presence(tmp_path: Path) -> list[str]:
    """``--config`` with :data:`QUICK_PRESENCE` (a live run takes only its [presence])."""
    config = tmp_path / "presence.toml"
    config.write_text(QUICK_PRESENCE)
    return ["--config", str(config)]


def _live(tmp_path: Path, *extra: str, walk_text: str = SHORT_WALK) -> list[str]:
    """The live run's command line on a walk written to ``tmp_path``, its folder ``run``,
    with :data:`QUICK_PRESENCE`."""
    walk = tmp_path / "walk.toml"
    walk.write_text(walk_text)
    return [
        sys.executable,
        "-m",
        "firmware_sim",
        "run",
        "--via",
        "bluez",
        "--walk",
        str(walk),
        "--workdir",
        str(tmp_path / "run"),
        *quick_presence(tmp_path),
        *extra,
    ]


AS_AT_A_TERMINAL = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])",
]
"""Run a command with Ctrl-C's default meaning, as at a terminal: a test suite started in the
background (``make test &`` in a script) inherits SIGINT ignored, and so would the run."""


def _left_behind(workdir: Path, simulator: int | None = None) -> list[str]:
    """Processes still running with the run's folder in their command line (dbus-daemon,
    mosquitto and the daemon all have it there; the simulator's own ``--workdir`` aside)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in {os.getpid(), simulator}:
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(workdir) in cmdline:
            found.append(cmdline)
    return found


def test_a_walk_through_the_mocked_bluez_reaches_the_shoppers_app(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    offers = Subscriber(mosquitto.port, "proximity/v1/store-001/shoppers/+/offers")
    try:
        run = subprocess.run(
            _live(tmp_path, "--speed", "40", "--json", "--broker", str(mosquitto.url)),
            capture_output=True,
            text=True,
            timeout=50,
            cwd=ROOT,
            check=False,
        )
    finally:
        offers.close()
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    daemon = result["daemon"]

    # the daemon heard the store through its bleak backend, one adapter per store scanner
    assert daemon["ble_backend"] == "bleak"
    assert daemon["ble_scanners"] == ["gw-bakery", "gw-checkout", "gw-coffee", "gw-entrance"]
    assert sorted(result["scanners"].values()) == ["hci0", "hci1", "hci2", "hci3"]
    # every advertisement update made on the bus became a reading in the daemon
    assert daemon["heard"] == result["advertisements_sent"] > 0
    assert daemon["sightings"] > 0
    assert daemon["scanner_errors"] == {}
    assert daemon["exit_code"] == 0

    # offers were published on the broker, to this shopper's topic, and their app got them
    rules = [o["rule"] for o in result["offers"]]
    assert rules == ["welcome-directions", "coffee-coupon"]
    assert {o["shopper"] for o in result["offers"]} == {0}
    assert daemon["offers_published"] == 2
    on_broker = [json.loads(m.payload) for m in offers.messages]
    assert [o["rule"] for o in on_broker] == rules
    assert len({m.topic for m in offers.messages}) == 1  # one shopper, their own topic

    # no device address in anything the daemon logged
    log = (tmp_path / "run" / "proximity.log").read_text()
    assert '"event": "daemon_starting"' in log
    assert PHONE_ADDRESS not in log.upper()
    assert PHONE_ADDRESS.replace(":", "_") not in log.upper()
    assert not _left_behind(tmp_path / "run")


def test_the_daemon_places_the_walk_with_the_fused_filter_over_the_mocked_bluez(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """``--method fused``: the daemon reads the store file as its floor plan and every one of
    its four bleak adapters feeds one filter per shopper; the demo's visit still plays out
    (welcome at the entrance, the coffee coupon after 30 s at the coffee zone)."""
    run = subprocess.run(
        _live(
            tmp_path, "--method", "fused", "--speed", "40", "--json", "--broker", str(mosquitto.url)
        ),
        capture_output=True,
        text=True,
        timeout=50,
        cwd=ROOT,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    daemon = result["daemon"]
    assert daemon["presence"] == "fused"
    assert daemon["ble_backend"] == "bleak"
    assert sorted(result["scanners"].values()) == ["hci0", "hci1", "hci2", "hci3"]
    assert daemon["heard"] == result["advertisements_sent"] > 0
    config = (tmp_path / "run" / "proximity.toml").read_text()
    assert 'method = "fused"' in config
    assert f'floor_plan = "{ROOT / "firmware_sim" / "stores" / "example.toml"}"' in config
    assert [o["rule"] for o in result["offers"]] == ["welcome-directions", "coffee-coupon"]
    log = (tmp_path / "run" / "proximity.log").read_text().splitlines()
    zones = [
        (entry["kind"], entry["zone"])
        for entry in map(json.loads, log)
        if entry.get("event") == "journey_event"
        and entry.get("kind") in ("zone.enter", "zone.exit")
    ]
    assert zones[:4] == [
        ("zone.enter", "entrance"),
        ("zone.exit", "entrance"),
        ("zone.enter", "coffee"),
        ("zone.exit", "coffee"),
    ]
    assert not _left_behind(tmp_path / "run")


def test_ctrl_c_stops_everything_the_live_run_started(tmp_path: Path) -> None:
    """Its own mosquitto, the bus, the mock and the daemon: nothing is left behind."""
    proc = subprocess.Popen(
        [*AS_AT_A_TERMINAL, *_live(tmp_path, "--speed", "5")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("playing"):
                break
        assert any(line.startswith("mosquitto on") for line in seen), seen
        # dbus-daemon, mosquitto, the daemon
        assert len(_left_behind(tmp_path / "run", simulator=proc.pid)) == 3
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"still stopping 20 s after Ctrl-C; it said:\n{err[-3000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err[-2000:]
    assert "everything the run started is stopped" in err
    assert time.monotonic() - started < 15
    assert not _left_behind(tmp_path / "run")


def test_a_plan_the_mocked_bluez_cannot_keep_up_with_is_refused(tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "firmware_sim",
            "run",
            "--via",
            "bluez",
            *("--shoppers", "100", "--duration", "30s", "--speed", "200"),
        ],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=ROOT,
        check=False,
    )
    assert run.returncode == 1
    assert "lower --speed or --shoppers" in run.stderr
    assert "the mocked BlueZ keeps up with 2,000" in run.stderr
