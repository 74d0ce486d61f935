"""Feedback, the funnel and `proximity report`, down to a real daemon, broker and app."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from datetime import timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from proximity.config import DEMO_APP_UUID, DEMO_PSEUDONYM_KEY
from proximity.identity.resolver import IdentityResolver
from proximity.measurement.feedback import Action, FeedbackDesk
from proximity.measurement.store import MeasurementStore, Stage
from tests.factories import T0
from tests.mosquitto import Mosquitto

ROOT = Path(__file__).resolve().parent.parent
TOPIC = "proximity/v1/store-001/shoppers/{}/feedback"


def test_feedback_is_judged_before_it_counts() -> None:
    desk = FeedbackDesk("store-001")
    desk.sent("o-1", "s-alice", "coffee-coupon", "b")
    good = desk.judge(TOPIC.format("s-alice"), b'{"offer": "o-1", "action": "clicked"}')
    assert good is not None
    assert (good.action, good.sent.rule, good.sent.variant) == (
        Action.CLICKED,
        "coffee-coupon",
        "b",
    )
    assert desk.judge(TOPIC.format("s-alice"), b'{"offer": "o-1", "action": "clicked"}') is None
    assert desk.duplicates == 1
    cases = [
        (TOPIC.format("s-bob"), b'{"offer": "o-1", "action": "opened"}', "not_this_shoppers_offer"),
        (TOPIC.format("s-alice"), b'{"offer": "o-9", "action": "opened"}', "unknown_offer"),
        (TOPIC.format("s-alice"), b'{"offer": "o-1", "action": "bought"}', "malformed"),
        (TOPIC.format("s-alice"), b"\xff not json", "malformed"),
        ("proximity/v1/store-002/shoppers/s-alice/feedback", b"{}", "bad_topic"),
    ]
    for topic, payload, _ in cases:
        assert desk.judge(topic, payload) is None
    assert dict(desk.rejected) == {
        "not_this_shoppers_offer": 1,
        "unknown_offer": 1,
        "malformed": 2,
        "bad_topic": 1,
    }


def test_the_funnel_aggregates_per_rule_and_variant_since_a_time(tmp_path: Path) -> None:
    store = MeasurementStore(tmp_path / "funnel.sqlite")
    for stage in (Stage.DECIDED, Stage.PUBLISHED, Stage.DELIVERED, Stage.CLICKED, Stage.CONVERTED):
        store.add(stage, "promo", T0, "a")
    store.add(Stage.DECIDED, "promo", T0 - timedelta(days=2), "a")
    store.add(Stage.SUPPRESSED, "promo", T0, reason="cap")
    for stage in (Stage.HELD_OUT, Stage.HELD_OUT, Stage.HELD_OUT_CONVERTED):
        store.add(stage, "promo", T0)
    store.close()
    rows = {
        (r.rule, r.variant): r
        for r in MeasurementStore(tmp_path / "funnel.sqlite").funnel(T0 - timedelta(hours=1))
    }
    a = rows[("promo", "a")]
    assert a.stages[Stage.DECIDED] == 1  # the one two days ago is before --since
    assert (a.ctr, a.conversion) == (1.0, 1.0)
    control = rows[("promo", "")]
    assert control.suppressed == {"cap": 1}
    assert control.holdout_conversion == 0.5


def test_run_records_the_funnel_and_report_shows_it(mosquitto: Mosquitto, tmp_path: Path) -> None:
    (tmp_path / "walk.toml").write_text(
        'name = "loop"\nscanners = ["gw-entrance"]\n'
        '[phone]\nuuid = "f7826da6-4fa2-4e98-8024-bc5b71e0893e"\nmajor = 5\nminor = 32773\n'
        'interval = "100ms"\n'
        '[[legs]]\nscanner = "gw-entrance"\nduration = "600ms"\n[[legs]]\nduration = "1s"\n'
    )
    (tmp_path / "config.toml").write_text(
        f'[broker]\nurl = "mqtt://127.0.0.1:{mosquitto.port}"\n'
        '[ble.sim]\nwalk = "walk.toml"\nrepeat = true\n'
        '[presence]\nexit_timeout = "300ms"\nvisit_timeout = "300ms"\ntick = "100ms"\n'
        '[measurement]\nstore = "funnel.sqlite"\n'
        '[logging]\nformat = "json"\n'
    )
    token = IdentityResolver([DEMO_APP_UUID], DEMO_PSEUDONYM_KEY.encode()).token_for(
        DEMO_APP_UUID, 5, 5
    )
    app = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "proximity",
            "app",
            "--shopper",
            token,
            "--broker",
            f"mqtt://127.0.0.1:{mosquitto.port}",
            "--count",
            "2",
            "--then",
            "clicked",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    time.sleep(0.8)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "proximity", "run", "--config", str(tmp_path / "config.toml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        out, err = app.communicate(timeout=30)
        assert app.returncode == 0, err
        # someone else's client sends garbage and feedback for this shopper's offer
        offer_id = json.loads(out.splitlines()[0])["id"]
        rogue = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        rogue.connect("127.0.0.1", mosquitto.port)
        rogue.loop_start()
        rogue.publish(
            TOPIC.format("s-mallory"), json.dumps({"offer": offer_id, "action": "clicked"}), qos=1
        ).wait_for_publish(5)
        rogue.publish(TOPIC.format(token), b"{broken", qos=1).wait_for_publish(5)
        rogue.disconnect()
        rogue.loop_stop()
        time.sleep(0.5)
        daemon.send_signal(signal.SIGTERM)
        _, log = daemon.communicate(timeout=20)
    finally:
        for proc in (app, daemon):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert daemon.returncode == 0, log
    rejected = [
        json.loads(x)["reason"]
        for x in log.splitlines()
        if x.startswith("{") and json.loads(x)["event"] == "feedback_rejected"
    ]
    assert sorted(rejected) == ["malformed", "not_this_shoppers_offer"]

    chart = tmp_path / "funnel.svg"
    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "proximity",
            "report",
            "--config",
            str(tmp_path / "config.toml"),
            "--format",
            "json",
            "--chart",
            str(chart),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        check=False,
    )
    assert report.returncode == 0, report.stderr
    (row,) = json.loads(report.stdout)
    assert row["rule"] == "welcome-directions"
    assert row["published"] >= 2
    assert row["delivered"] >= 2
    assert row["clicked"] >= 2
    assert row["clicked"] <= row["delivered"] <= row["published"] <= row["decided"]
    assert row["ctr"] == row["clicked"] / row["delivered"]
    svg = ET.parse(chart).getroot()
    assert svg.tag.endswith("svg")
    assert "welcome-directions" in chart.read_text()
    table = subprocess.run(
        [
            sys.executable,
            "-m",
            "proximity",
            "report",
            "--store",
            str(tmp_path / "funnel.sqlite"),
            "--since",
            "1h",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        check=False,
    )
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split()[:3] == ["rule", "variant", "decided"]


def test_without_a_file_the_funnel_stays_small_however_long_the_run() -> None:
    from datetime import timedelta

    from proximity.measurement.store import MeasurementStore, Stage
    from tests.factories import T0

    store = MeasurementStore()
    for n in range(10_000):
        store.add(Stage.DECIDED, "coffee-coupon", T0 + timedelta(seconds=n % 60))
    store.add(Stage.SUPPRESSED, "coffee-coupon", T0 + timedelta(minutes=5), reason="cap")
    assert len(store._memory) == 2  # one per minute, rule, stage and reason
    (row,) = store.funnel()
    assert row.stages[Stage.DECIDED] == 10_000
    assert row.suppressed == {"cap": 1}
    (later,) = store.funnel(since=T0 + timedelta(minutes=1))
    assert later.stages[Stage.DECIDED] == 0
    assert later.stages[Stage.SUPPRESSED] == 1
