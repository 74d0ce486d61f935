"""Hot reload: valid changes swap in, broken ones are reported and the last good rules serve."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import structlog

from proximity.clock import VirtualClock
from proximity.engine.reload import RuleWatcher
from proximity.engine.table import RuleTable
from tests.factories import T0
from tests.mosquitto import Mosquitto

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "rules" / "example-store.toml"


async def test_watcher_swaps_valid_rules_and_keeps_the_last_good(tmp_path: Path) -> None:
    rules = tmp_path / "store.toml"
    shutil.copy(EXAMPLE, rules)
    swapped: list[RuleTable] = []

    async def on_reload(table: RuleTable) -> None:
        swapped.append(table)

    watcher = RuleWatcher([tmp_path], VirtualClock(T0), on_reload)
    assert await watcher.check() is None  # nothing changed yet

    text = rules.read_text()
    rules.write_text(text.replace('ttl = "15m"', 'ttl = "20m"'))
    table = await watcher.check()
    assert table is not None
    assert swapped == [table]
    assert table.ttl_for(table.rule("coffee-coupon")).total_seconds() == 1200

    with structlog.testing.capture_logs() as logs:
        rules.write_text(text.replace('moment = "buy"', 'moment = "purchase"'))
        assert await watcher.check() is None
        assert await watcher.check() is None  # the same broken version is reported once
    failed = [entry for entry in logs if entry["event"] == "rules_reload_failed"]
    assert len(failed) == 1
    assert failed[0]["error"].startswith(f"{rules}:")
    assert 'not "purchase"' in failed[0]["error"]
    assert watcher.failures == 1
    assert swapped == [table]

    rules.write_text(text)
    restored = await watcher.check()
    assert restored is not None
    assert restored.version != table.version
    assert watcher.reloads == 2


def test_versions_follow_content(tmp_path: Path) -> None:
    from proximity.engine.loader import load_rule_files

    a = load_rule_files([EXAMPLE]).version
    copy = tmp_path / "example-store.toml"
    shutil.copy(EXAMPLE, copy)
    assert load_rule_files([copy]).version == a
    copy.write_text(copy.read_text().replace("COFFEE-20", "COFFEE-25"))
    assert load_rule_files([copy]).version != a


def test_a_running_daemon_reloads_rules_and_survives_a_broken_edit(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    rules = rules_dir / "store.toml"
    shutil.copy(EXAMPLE, rules)
    original = rules.read_text()
    (tmp_path / "walk.toml").write_text(
        'name = "loop"\nscanners = ["gw-entrance"]\n'
        '[phone]\nuuid = "f7826da6-4fa2-4e98-8024-bc5b71e0893e"\nmajor = 9\nminor = 32770\n'
        'interval = "100ms"\n'
        '[[legs]]\nscanner = "gw-entrance"\nduration = "600ms"\n[[legs]]\nduration = "1s"\n'
    )
    (tmp_path / "config.toml").write_text(
        f'[broker]\nurl = "mqtt://127.0.0.1:{mosquitto.port}"\n'
        '[ble.sim]\nwalk = "walk.toml"\nrepeat = true\n'
        '[presence]\nexit_timeout = "300ms"\nvisit_timeout = "300ms"\ntick = "100ms"\n'
        '[rules]\npaths = ["rules"]\nwatch_interval = "200ms"\n'
        '[logging]\nformat = "json"\n'
    )
    sub = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(mosquitto.port),
            "-V",
            "mqttv5",
            "-t",
            "proximity/v1/store-001/shoppers/+/offers",
            "-F",
            "%p",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.3)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "proximity", "run", "--config", str(tmp_path / "config.toml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert sub.stdout is not None

    def next_offer() -> dict[str, str]:
        line = sub.stdout.readline()  # type: ignore[union-attr]
        assert line, "mosquitto_sub ended"
        return json.loads(line)

    try:
        first = next_offer()
        assert first["cta"]["title"] == "Welcome! Coffee week is on"
        old_version = first["rules_version"]

        rules.write_text(original.replace('on = "zone.enter"', 'on = "zone.entre"'))
        time.sleep(1.0)
        kept = next_offer()  # still serving the last good rules
        assert kept["rules_version"] == old_version

        rules.write_text(original.replace("Welcome! Coffee week is on", "Welcome back!"))
        deadline = time.monotonic() + 10
        while (offer := next_offer())["cta"]["title"] != "Welcome back!":
            assert time.monotonic() < deadline, "the new rules never served"
        assert offer["rules_version"] != old_version
        daemon.send_signal(signal.SIGTERM)
        out, err = daemon.communicate(timeout=20)
    finally:
        sub.kill()
        sub.communicate()
        if daemon.poll() is None:
            daemon.kill()
            daemon.communicate()
    assert daemon.returncode == 0, err
    logged = [json.loads(x) for x in (out + err).splitlines() if x.startswith("{")]
    failures = [x["error"] for x in logged if x["event"] == "rules_reload_failed"]
    line = original.splitlines().index('on = "zone.enter"') + 1
    assert failures == [
        f'{rules}:{line}:6: rule "welcome-directions": on must be one of visit.start, zone.enter, '
        'zone.dwell, zone.exit, visit.end, nfc.tap, qr.scan, offer.redeemed, not "zone.entre"'
    ]
    assert [x["event"] for x in logged].count("rules_reloaded") == 1
