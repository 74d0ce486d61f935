"""End to end through `proximity run`: a coupon offer goes out over mosquitto, its code is
scanned at the till (a serial scanner on a pseudo-terminal), an NFC tag is tapped (the
emulated Type 3 tag through nfcpy's UDP frontend), and forged, expired and replayed
coupons are refused with their reason in the log and counted."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from firmware_sim.nfc import TagEmulator
from proximity.adapters.nfc.ndef import build_ndef, uri_record
from proximity.codes import CodeKind, sign
from tests.mosquitto import Mosquitto, Subscriber
from tests.test_nfc_reader import udp_port
from tests.test_qr_sources import Pty

ROOT = Path(__file__).resolve().parent.parent
CODE_KEY = "till-and-app-code-key-for-tests-01"
pytestmark = pytest.mark.timeout(60)

RULES = """
[store]
id = "store-001"
[zones.entrance]
scanners = ["gw-entrance"]
readers = ["shelf-1"]
[zones.checkout]
readers = ["till-1"]

[[rules]]
id = "welcome-coupon"
on = "zone.enter"
moment = "buy"
coupon = "WELCOME-10"
cta = { format = "banner", title = "10% off today" }
[rules.when]
zone = "entrance"
"""


def wait_for(what: str, check: object, limit_s: float = 20.0) -> None:
    deadline = time.monotonic() + limit_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"no {what} within {limit_s:g}s"
        time.sleep(0.05)


def test_coupons_are_redeemed_once_and_bad_ones_refused_through_the_daemon(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    (tmp_path / "rules.toml").write_text(RULES)
    (tmp_path / "walk.toml").write_text(
        'name = "till"\nscanners = ["gw-entrance"]\n'
        '[phone]\nuuid = "f7826da6-4fa2-4e98-8024-bc5b71e0893e"\nmajor = 3\nminor = 32771\n'
        'interval = "100ms"\n'
        '[[legs]]\nscanner = "gw-entrance"\nduration = "2s"\n'
        '[[legs]]\nduration = "60s"\n'
    )
    till = Pty(tmp_path / "till")
    nfc_port = udp_port()
    (tmp_path / "config.toml").write_text(
        f'[broker]\nurl = "mqtt://127.0.0.1:{mosquitto.port}"\n'
        '[rules]\npaths = ["rules.toml"]\nwatch = false\n'
        '[ble.sim]\nwalk = "walk.toml"\n'
        f'[codes]\nkeys = {{ 1 = "{CODE_KEY}" }}\n'
        '[[scanners]]\nid = "till-1"\nserial = "till"\n'
        f'[[nfc]]\nid = "shelf-1"\npath = "udp:127.0.0.1:{nfc_port}"\n'
        '[measurement]\nstore = "funnel.sqlite"\n'
        '[logging]\nformat = "json"\n'
    )
    offers = Subscriber(mosquitto.port, "proximity/v1/store-001/shoppers/+/offers")
    events = Subscriber(mosquitto.port, "proximity/v1/store-001/events")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "proximity", "run", "--config", str(tmp_path / "config.toml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    tag = TagEmulator(nfc_port, build_ndef([uri_record("https://shop.example/p/7?ref=shelf")]))
    try:
        wait_for("coupon offer", lambda: offers.payloads())
        offer = json.loads(offers.payloads()[0])
        assert offer["coupon"] == "WELCOME-10"
        good = offer["redeem_code"]
        now = datetime.now(UTC).replace(microsecond=0)
        forged = sign(CodeKind.COUPON, offer["id"], key=b"f" * 32, key_id=1,
                      issued=now, expires=now + timedelta(hours=1))  # fmt: skip
        expired = sign(CodeKind.COUPON, offer["id"], key=CODE_KEY.encode(), key_id=1,
                       issued=now - timedelta(days=2), expires=now - timedelta(days=1))  # fmt: skip
        for text in (forged, expired, good):
            till.type(text.encode() + b"\r\n")
            time.sleep(0.1)
        kinds = lambda: [json.loads(p)["kind"] for p in events.payloads()]  # noqa: E731
        wait_for("offer.redeemed", lambda: "offer.redeemed" in kinds())
        time.sleep(2.5)  # past the scanner's 2 s window: the same code again is a new scan
        till.type(good.encode() + b"\r\n")  # the same coupon a second time
        tag.present()
        wait_for("nfc.tap", lambda: "nfc.tap" in kinds())
        time.sleep(0.5)
    finally:
        tag.stop()
        daemon.send_signal(signal.SIGTERM)
        out, err = daemon.communicate(timeout=30)
        offers.close()
        events.close()
        till.unplug()
    assert daemon.returncode == 0, err
    logged = [json.loads(x) for x in (out + err).splitlines() if x.startswith("{")]
    refused = [x["reason"] for x in logged if x["event"] == "code_refused"]
    assert sorted(refused) == ["bad_signature", "expired", "replayed"]
    stopped = next(x for x in logged if x["event"] == "daemon_stopped")
    assert stopped["codes_refused"] == {"bad_signature": 1, "expired": 1, "replayed": 1}
    assert stopped["acts"] == {"offer.redeemed": 1, "nfc.tap": 1}
    assert good not in out + err  # codes never reach the logs

    by_kind = {json.loads(p)["kind"]: json.loads(p) for p in events.payloads()}
    redeemed = by_kind["offer.redeemed"]
    assert (redeemed["offer"], redeemed["zone"], redeemed["reader"]) == (
        offer["id"],
        "checkout",
        "till-1",
    )
    assert redeemed["shopper"]["token"] in offers.messages[0].topic
    tap = by_kind["nfc.tap"]
    assert (tap["zone"], tap["product"]) == ("entrance", "https://shop.example/p/7")
    assert tap["shopper"]["anonymous"] is True

    report = subprocess.run(
        [sys.executable, "-m", "proximity", "report", "--store", str(tmp_path / "funnel.sqlite"),
         "--format", "json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    (row,) = json.loads(report.stdout)
    assert (row["rule"], row["published"], row["redeemed"], row["redemption"]) == (
        "welcome-coupon",
        1,
        1,
        1.0,
    )
