"""The live mode at the store's readers: it plays the acts the in-process run plans for
the same store and seed (:func:`firmware_sim.acts.plan_acts`) at the store file's
``[[readers]]``. At the till (a code scanner: a pseudo-terminal the daemon reads with
pyserial) the shopper's check-in code and the coupon their app received are scanned;
the daemon publishes ``qr.scan`` and ``offer.redeemed`` and its funnel counts the
redemption. The cart dock is an NFC reader on nfcpy's UDP frontend."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from firmware_sim.__main__ import DEFAULT_STORE, _parser, _scenario, crowd_and_acts
from firmware_sim.acts import ActKind
from firmware_sim.bluez import find_dbus_daemon
from firmware_sim.checkout import CODE_KEY_ID, Readers, cart_idm, phone_idm, store_readers
from firmware_sim.harness import EXAMPLE_RULES, demo_resolver, load_table, run_scenario
from firmware_sim.live import LivePlan, LiveRun, daemon_config
from firmware_sim.store import ReaderKind, load_store
from proximity.adapters.qr.scan import CodeScan
from proximity.clock import VirtualClock
from proximity.codes import Verifier
from tests.mosquitto import Mosquitto, Subscriber
from tests.test_sim_live import _left_behind, _live, quick_presence

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


CROWD_FLAGS = ["--shoppers", "12", "--duration", "5m", "--carts", "0.5"]
ACT_FLAGS = ["--checkins", "1", "--redeem", "1"]


def _live_run(argv: list[str]) -> LiveRun:
    """The live run ``run --via bluez`` would make of ``argv``, set up but not started."""
    args = _parser().parse_args(["run", "--via", "bluez", *argv])
    crowd, acts, label = crowd_and_acts(args, load_store(args.store))
    plan = LivePlan(crowd, label, [EXAMPLE_RULES], "store-001", speed=10, acts=tuple(acts))
    return LiveRun(plan, io.StringIO())


@pytest.mark.parametrize("seed", [3, 11])
async def test_the_live_run_plays_the_acts_the_in_process_run_plans(seed: int) -> None:
    argv = [*CROWD_FLAGS, *ACT_FLAGS, "--seed", str(seed)]
    live = _live_run(argv)
    store = load_store(DEFAULT_STORE)
    args = _parser().parse_args(["run", *argv])
    result = await run_scenario(
        store, _scenario(args.scenario, args), seed, load_table(), demo_resolver()
    )
    assert live.acts == result.planned
    # a plan with every kind of act, at both of the store file's readers
    assert {a.kind for a in live.acts} == set(ActKind)
    assert {a.reader for a in live.acts} == {"till-1", "cart-dock"}
    assert result.bindings > 0


def test_the_live_run_takes_its_readers_from_the_store_file() -> None:
    live = _live_run([*CROWD_FLAGS, *ACT_FLAGS])
    assert [(r.id, r.kind, r.role, r.zone) for r in live.readers] == [
        ("till-1", ReaderKind.QR, "till", "checkout"),
        ("cart-dock", ReaderKind.NFC, "cart-dock", "entrance"),
    ]
    assert live.readers == store_readers(load_store(DEFAULT_STORE))
    readers = Readers(live.readers, live.code_key)
    readers.open()
    try:
        config = daemon_config(
            live.plan, "mqtt://127.0.0.1:1883", live.adapters, live.key, [], [], readers.config()
        )
    finally:
        readers.close()
    assert '[[scanners]]\nid = "till-1"\nserial = "/dev/pts/' in config
    assert '[[nfc]]\nid = "cart-dock"\npath = "udp:127.0.0.1:' in config
    assert live.code_key.hex() in config


def test_nobody_acts_the_live_run_has_no_readers() -> None:
    live = _live_run(CROWD_FLAGS)
    assert live.acts == []
    assert live.readers == []


def test_phones_and_carts_answer_with_their_own_nfc_identifiers() -> None:
    assert phone_idm(0) != phone_idm(1)
    assert phone_idm(0)[:2] == cart_idm(0)[:2] == b"\x02\xfe"
    assert cart_idm(0) != phone_idm(0)


def test_a_walk_to_the_till_checks_in_and_redeems_its_coupon(
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
                "20",
                "--json",
                "--broker",
                str(mosquitto.url),
                *ACT_FLAGS,
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

    # the store file's readers: its till a serial line, its cart dock an NFC pad; the
    # shopper's check-in code and the coupon their app received were scanned at the till
    coupon = next(
        o for o in (json.loads(m.payload) for m in offers.messages) if o["rule"] == "coffee-coupon"
    )
    token = offers.messages[0].topic.split("/")[4]
    readers = {r["id"]: r for r in result["readers"]}
    till, dock = readers["till-1"], readers["cart-dock"]
    assert (till["kind"], till["role"], till["zone"]) == ("qr", "till", "checkout")
    assert till["path"].startswith("/dev/pts/")
    assert (till["acts"], till["scans"], till["coupons"], till["taps"]) == (2, 2, 1, 0)
    assert (dock["kind"], dock["zone"], dock["acts"]) == ("nfc", "entrance", 0)
    assert dock["path"].startswith("udp:127.0.0.1:")

    # the daemon published both acts on the store's events topic, for this shopper
    by_kind = {e["kind"]: e for e in (json.loads(p) for p in events.payloads())}
    redeemed = by_kind["offer.redeemed"]
    assert (redeemed["offer"], redeemed["zone"], redeemed["reader"]) == (
        coupon["id"],
        "checkout",
        "till-1",
    )
    assert redeemed["shopper"]["token"] == token
    scan = by_kind["qr.scan"]
    assert (scan["zone"], scan["reader"], scan["shopper"]["token"]) == ("checkout", "till-1", token)
    # the check-in code named the shopper the phone's beacon placed in the store
    assert (scan["shopper"]["anonymous"], scan["shopper"]["consent"]) == (False, True)

    # ...counted them (metrics, the run's watcher, the funnel), refusing nothing
    daemon = result["daemon"]
    assert daemon["acts"] == {"offer.redeemed": 1, "qr.scan": 1}
    assert daemon["codes_refused"] == {}
    assert daemon["journey_events"]["offer.redeemed"] == 1
    assert result["acts"] == {"offer.redeemed": 1, "qr.scan": 1}
    assert [(r["shopper"], r["rule"], r["reader"]) for r in result["redeemed"]] == [
        (0, "coffee-coupon", "till-1")
    ]
    assert result["funnel"]["coffee-coupon"]["redeemed"] == 1
    assert result["funnel"]["coffee-coupon"]["published"] == 1

    # no device address or code in anything the daemon logged or the run printed
    log = (workdir / "proximity.log").read_text()
    for secret in (PHONE_ADDRESS, PHONE_ADDRESS.replace(":", "_"), phone_idm(0).hex().upper()):
        assert secret not in log.upper()
    assert coupon["redeem_code"] not in log
    assert coupon["redeem_code"] not in run.stdout + run.stderr
    assert not _left_behind(workdir)


async def test_live_codes_are_valid_over_the_daemons_clock_bounds() -> None:
    """The live run cannot read the daemon's clock: it signs a check-in code valid from
    the earliest the daemon's clock can read to a code's lifetime after the latest."""
    live = _live_run([*CROWD_FLAGS, *ACT_FLAGS])
    act = next(a for a in live.acts if a.kind is ActKind.CHECKIN)
    at = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    valid = (at - timedelta(seconds=30), at + timedelta(minutes=9))
    [reading] = live.player.readings(act, at, valid)
    if isinstance(reading, CodeScan):
        text = reading.text
    else:
        assert reading.ndef is not None
        text = reading.ndef.records[0].text or ""
    code = Verifier({CODE_KEY_ID: live.code_key}, VirtualClock(at)).verify(text)
    assert (code.issued, code.expires) == valid
    assert code.subject == live.tokens[act.shopper]


def test_carts_are_bound_at_the_live_cart_dock(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """The crowd's carts: each cart's tag, then its shopper's phone, held on the dock's
    NFC pad (nfcpy's UDP frontend); the daemon binds every cart the plan binds."""
    argv = ["--shoppers", "2", "--duration", "20s", "--carts", "1", *ACT_FLAGS, "--seed", "3"]
    planned = _live_run(argv).acts
    carts = sum(1 for a in planned if a.kind is ActKind.CART)
    assert carts == 2
    run = subprocess.run(
        [
            *(sys.executable, "-m", "firmware_sim", "run", "--via", "bluez", *argv),
            *("--speed", "40", "--json", "--broker", str(mosquitto.url)),
            *("--workdir", str(tmp_path / "run")),
            *quick_presence(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=55,
        cwd=ROOT,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    dock = next(r for r in result["readers"] if r["id"] == "cart-dock")
    assert dock["acts"] == sum(1 for a in planned if a.reader == "cart-dock") == 2 * carts
    assert dock["taps"] == dock["taps_read"] == 2 * carts
    assert result["daemon"]["acts"]["cart.bound"] == carts
    assert result["daemon"]["codes_refused"] == {}
    assert not _left_behind(tmp_path / "run")


def test_a_machine_without_pseudo_terminals_is_told_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A chroot or container without devpts: the till's serial line cannot be made."""

    def no_ptys() -> tuple[int, int]:
        raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))

    monkeypatch.setattr(os, "openpty", no_ptys)
    readers = Readers(store_readers(load_store(DEFAULT_STORE)), b"k" * 32)
    with pytest.raises(OSError, match=r"no pseudo-terminal .*is /dev/pts mounted\?"):
        readers.open()
    readers.close()
