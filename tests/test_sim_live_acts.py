"""The live mode at the checkout: a coupon the shopper's app received is scanned on the
till's serial line (a pseudo-terminal the daemon reads with pyserial) and the shopper's
phone taps their check-in code on the till's NFC pad (an emulated tag on nfcpy's UDP
frontend); the daemon publishes ``offer.redeemed`` and ``nfc.tap`` and its funnel counts
the redemption."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from firmware_sim.bluez import find_dbus_daemon
from firmware_sim.checkout import Checkout, find_checkout, phone_idm, till_visits
from firmware_sim.crowd import Stay
from tests.mosquitto import Mosquitto, Subscriber
from tests.test_sim_live import _left_behind, _live

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
PHONE_ADDRESS = "5A:11:CE:00:00:01"
#: In at the entrance, 40 s at the coffee promotion (its coupon fires at 30 s), 20 s at
#: the checkout (2 s of real time at 10x: an NFC sense round is about 1 s), gone.
TILL_WALK = """
name = "till"
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
scanner = "gw-checkout"
duration = "20s"

[[legs]]
duration = "10s"
"""


def test_the_checkout_is_the_rule_files_zone_with_readers() -> None:
    rules = [ROOT / "rules" / "example-store.toml"]
    assert find_checkout(rules, {"checkout": object()}) == Checkout("checkout", "till-1", "till-1")
    assert find_checkout(rules, {"coffee": object()}) is None  # not on this floor


def test_a_shopper_reaches_the_till_a_little_after_entering_the_checkout() -> None:
    truth = {
        0: [Stay("coffee", 0.0, 40.0), Stay("checkout", 50.0, 70.0)],
        1: [Stay("checkout", 10.0, 14.0)],
    }
    visits = till_visits(truth, "checkout")
    assert [(v.shopper, v.at_s, v.leaves_s) for v in visits] == [(1, 11.0, 14.0), (0, 53.0, 70.0)]
    assert phone_idm(0) != phone_idm(1)
    assert phone_idm(0)[:2] == b"\x02\xfe"


def test_a_walk_to_the_till_redeems_its_coupon_and_taps_in(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    if find_dbus_daemon() is None:
        pytest.fail("dbus-daemon is not installed: run `make test`, which installs it")
    workdir = tmp_path / "run"
    offers = Subscriber(mosquitto.port, "proximity/v1/store-001/shoppers/+/offers")
    events = Subscriber(mosquitto.port, "proximity/v1/store-001/events")
    try:
        run = subprocess.run(
            _live(
                tmp_path,
                "--speed",
                "10",
                "--json",
                "--broker",
                str(mosquitto.url),
                walk_text=TILL_WALK,
            ),
            capture_output=True,
            text=True,
            timeout=50,
            cwd=ROOT,
            check=False,
        )
    finally:
        offers.close()
        events.close()
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)

    # the coupon the app received was scanned at the till, and the phone read on the pad
    coupon = next(
        o for o in (json.loads(m.payload) for m in offers.messages) if o["rule"] == "coffee-coupon"
    )
    token = offers.messages[0].topic.split("/")[4]
    checkout = result["checkout"]
    assert (checkout["zone"], checkout["scanner"], checkout["pad"]) == (
        "checkout",
        "till-1",
        "till-1",
    )
    assert checkout["serial"].startswith("/dev/pts/")
    assert (checkout["visits"], checkout["coupons_scanned"], checkout["taps"]) == (1, 1, 1)
    assert checkout["taps_read"] == 1

    # the daemon published both acts on the store's events topic, for this shopper
    by_kind = {e["kind"]: e for e in (json.loads(p) for p in events.payloads())}
    redeemed = by_kind["offer.redeemed"]
    assert (redeemed["offer"], redeemed["zone"], redeemed["reader"]) == (
        coupon["id"],
        "checkout",
        "till-1",
    )
    assert redeemed["shopper"]["token"] == token
    tap = by_kind["nfc.tap"]
    assert (tap["zone"], tap["reader"], tap["shopper"]["token"]) == ("checkout", "till-1", token)
    # the check-in code named the shopper the phone's beacon placed in the store
    assert (tap["shopper"]["anonymous"], tap["shopper"]["consent"]) == (False, True)

    # ...counted them (metrics, the run's watcher, the funnel), refusing nothing
    daemon = result["daemon"]
    assert daemon["acts"] == {"offer.redeemed": 1, "nfc.tap": 1}
    assert daemon["codes_refused"] == {}
    assert daemon["journey_events"]["offer.redeemed"] == 1
    assert result["acts"] == {"offer.redeemed": 1, "nfc.tap": 1}
    assert [(r["shopper"], r["rule"], r["reader"]) for r in result["redeemed"]] == [
        (0, "coffee-coupon", "till-1")
    ]
    assert result["funnel"]["coffee-coupon"]["redeemed"] == 1
    assert result["funnel"]["coffee-coupon"]["published"] == 1

    # no device address, tag UID or code in anything the daemon logged or the run printed
    log = (workdir / "proximity.log").read_text()
    for secret in (PHONE_ADDRESS, PHONE_ADDRESS.replace(":", "_"), phone_idm(0).hex().upper()):
        assert secret not in log.upper()
    assert coupon["redeem_code"] not in log
    assert coupon["redeem_code"] not in run.stdout + run.stderr
    assert not _left_behind(workdir)
