"""Taps and scans through the pipeline: signed codes verified, acts placed in the reader's zone."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from uuid import UUID

import structlog

from proximity.adapters.nfc.ndef import NdefContent, NdefRecord
from proximity.adapters.nfc.tap import NfcTap
from proximity.adapters.qr.scan import CodeScan
from proximity.clock import VirtualClock
from proximity.codes import CodeKind, Verifier, cart_subject, parse_cart_subject, sign
from proximity.engine.loader import load_rule_files
from proximity.engine.table import RuleTable
from proximity.events import EventKind
from proximity.identity.resolver import IdentityResolver
from proximity.measurement.feedback import FeedbackDesk
from proximity.pipeline import Pipeline
from proximity.presence.machine import PresenceConfig
from tests.factories import APP_UUID, KEY, T0, make_sighting

CODE_KEY = b"c" * 32
RULES = """
[store]
id = "store-001"
[zones.entrance]
scanners = ["gw-entrance"]
[zones.coffee]
scanners = ["gw-coffee"]
readers = ["shelf-coffee"]
[zones.checkout]
readers = ["till-1", "kiosk-cam"]

[[rules]]
id = "coffee-story"
on = "nfc.tap"
moment = "know"
cta = { format = "landing", title = "Where this coffee comes from" }
[rules.when]
zone = "coffee"

[[rules]]
id = "kiosk-recipe"
on = "qr.scan"
moment = "do"
cta = { format = "button", title = "Book a tasting" }
[rules.when]
zone = "checkout"

[[rules]]
id = "thanks"
on = "offer.redeemed"
moment = "buy"
cta = { format = "push", title = "Thanks! Here is 5% off next time" }
"""


def pipeline(tmp_path: Path, clock: VirtualClock) -> tuple[Pipeline, FeedbackDesk]:
    path = tmp_path / "rules.toml"
    path.write_text(RULES)
    desk = FeedbackDesk("store-001")
    pipe = Pipeline(
        "store-001",
        RuleTable.from_ruleset(load_rule_files([path])),
        IdentityResolver([APP_UUID], KEY),
        PresenceConfig(),
        verifier=Verifier({1: CODE_KEY}, clock),
        sent_offer=desk.lookup,
    )
    return pipe, desk


def code(kind: CodeKind, subject: str, **kw: object) -> str:
    args: dict[str, object] = {
        "key": CODE_KEY,
        "key_id": 1,
        "issued": T0,
        "expires": T0 + timedelta(hours=2),
    }
    args.update(kw)
    return sign(kind, subject, **args)  # type: ignore[arg-type]


def scan(text: str, scanner: str = "till-1", at_s: float = 60) -> CodeScan:
    return CodeScan(at=T0 + timedelta(seconds=at_s), scanner=scanner, text=text, source="scanner")


def tap(*records: NdefRecord, reader: str = "shelf-coffee") -> NfcTap:
    ndef = NdefContent(size=10, records=records) if records else None
    return NfcTap(
        at=T0 + timedelta(seconds=30),
        reader=reader,
        tag_uid_hash="0123456789abcdef",
        tag_type="Type3Tag",
        ndef=ndef,
    )


def test_a_check_in_tap_is_the_shoppers_act_in_the_readers_zone(tmp_path: Path) -> None:
    clock = VirtualClock(T0)
    pipe, _ = pipeline(tmp_path, clock)
    # the shopper's phone is in the store by BLE, with consent
    (visit_start, *_) = pipe.on_sighting(make_sighting(scanner="gw-coffee"))
    shopper = visit_start.event.shopper
    checkin = NdefRecord(
        kind="text", type="urn:nfc:wkt:T", text=code(CodeKind.CHECKIN, shopper.token)
    )
    (decision,) = pipe.on_tap(tap(checkin))
    event = decision.event
    assert (event.kind, event.zone, event.reader) == (EventKind.NFC_TAP, "coffee", "shelf-coffee")
    assert event.shopper == shopper  # consent and segments from the beacon
    assert event.visit == visit_start.event.visit
    assert [o.rule for o in decision.offers] == ["coffee-story"]


def test_a_tap_with_nothing_signed_is_anonymous(tmp_path: Path) -> None:
    pipe, _ = pipeline(tmp_path, VirtualClock(T0))
    link = NdefRecord(kind="uri", type="urn:nfc:wkt:U", uri="https://shop.example/p/7?src=tag")
    (decision,) = pipe.on_tap(tap(link))
    event = decision.event
    assert event.shopper.anonymous
    assert event.product == "https://shop.example/p/7"
    assert decision.offers == ()  # anonymous presence never gets a personal offer
    # the same card again is the same anonymous shopper, in the same visit
    (again,) = pipe.on_tap(tap())
    assert again.event.shopper.token == event.shopper.token
    assert again.event.visit == event.visit


def test_a_coupon_redeems_the_offer_it_names_once(tmp_path: Path) -> None:
    clock = VirtualClock(T0)
    pipe, desk = pipeline(tmp_path, clock)
    desk.sent("o-coffee-1", "s-alice-token", "coffee-coupon", None)
    coupon = code(CodeKind.COUPON, "o-coffee-1")
    (decision,) = pipe.on_scan(scan(coupon))
    event = decision.event
    assert (event.kind, event.offer, event.zone) == (
        EventKind.OFFER_REDEEMED,
        "o-coffee-1",
        "checkout",
    )
    assert event.shopper.token == "s-alice-token"
    assert [o.rule for o in decision.offers] == []  # no consent known: no personal offer
    assert pipe.acts is not None
    with structlog.testing.capture_logs() as logs:
        assert pipe.on_scan(scan(coupon, at_s=90)) == []  # the same coupon again
    assert pipe.acts.refused == {"replayed": 1}
    assert logs[0]["event"] == "code_refused"
    assert logs[0]["reason"] == "replayed"
    assert coupon not in str(logs)  # the code itself is never logged


def test_forged_expired_and_foreign_coupons_are_refused_and_counted(tmp_path: Path) -> None:
    clock = VirtualClock(T0 + timedelta(hours=3))
    pipe, desk = pipeline(tmp_path, clock)
    desk.sent("o-1", "s-alice-token", "coffee-coupon", None)
    forged = code(CodeKind.COUPON, "o-1", key=b"f" * 32)
    expired = code(CodeKind.COUPON, "o-1")  # valid until T0 + 2h
    fresh = {"issued": T0 + timedelta(hours=3), "expires": T0 + timedelta(hours=5)}
    unknown = code(CodeKind.COUPON, "o-not-ours", **fresh)
    for text in (forged, expired, unknown, "hello world"):
        assert pipe.on_scan(scan(text)) == []
    assert pipe.acts is not None
    assert pipe.acts.refused == {
        "bad_signature": 1,
        "expired": 1,
        "unknown_offer": 1,
        "unsigned": 1,
    }
    # the coupon of an unknown offer was not used up: the gateway that sent it can still redeem it
    assert len(pipe.acts.verifier.used) == 0


def test_a_product_link_shown_to_a_camera_is_anonymous_product_interest(tmp_path: Path) -> None:
    pipe, _ = pipeline(tmp_path, VirtualClock(T0))
    (decision,) = pipe.on_scan(scan("https://shop.example/recipes/42", scanner="kiosk-cam"))
    assert decision.event.kind is EventKind.QR_SCAN
    assert decision.event.product == "https://shop.example/recipes/42"
    assert decision.event.shopper.anonymous
    assert decision.offers == ()


CART_UUID = UUID("11111111-2222-3333-4444-555555555555")


def cart_pipeline(tmp_path: Path, clock: VirtualClock) -> Pipeline:
    path = tmp_path / "rules.toml"
    path.write_text(RULES)
    return Pipeline(
        "store-001",
        RuleTable.from_ruleset(load_rule_files([path])),
        IdentityResolver([APP_UUID], KEY, anonymous_uuids=[CART_UUID]),
        PresenceConfig(),
        verifier=Verifier({1: CODE_KEY}, clock),
    )


def test_a_cart_code_and_a_check_in_at_one_reader_bind_the_cart_to_the_shopper(
    tmp_path: Path,
) -> None:
    clock = VirtualClock(T0)
    pipe = cart_pipeline(tmp_path, clock)
    cart = make_sighting(uuid=CART_UUID, major=9, minor=42, scanner="gw-coffee")
    (before,) = [d.event for d in pipe.on_sighting(cart) if d.event.kind is EventKind.ZONE_ENTER]
    assert before.shopper.anonymous
    assert pipe.on_scan(scan(code(CodeKind.CART, cart_subject((CART_UUID, 9, 42))))) == []
    (checkin,) = pipe.on_scan(scan(code(CodeKind.CHECKIN, "s-alice-token"), at_s=70))
    assert checkin.event.shopper.token == "s-alice-token"
    assert pipe.acts is not None
    assert pipe.acts.events["cart.bound"] == 1
    later = cart.model_copy(update={"at": T0 + timedelta(seconds=80), "scanner": "gw-entrance"})
    moved = [d.event for d in pipe.on_sighting(later)]
    assert moved
    assert {e.shopper.token for e in moved} == {"s-alice-token"}  # the cart is now Alice
    # another reader, or too late: no binding
    other = cart_pipeline(tmp_path, clock)
    other.on_scan(scan(code(CodeKind.CART, cart_subject((CART_UUID, 9, 43))), scanner="till-1"))
    other.on_scan(scan(code(CodeKind.CHECKIN, "s-bob-token"), scanner="kiosk-cam", at_s=61))
    other.on_scan(scan(code(CodeKind.CHECKIN, "s-carol-token"), scanner="till-1", at_s=200))
    assert other.acts is not None
    assert other.acts.events["cart.bound"] == 0


def test_two_carts_waiting_at_one_reader_bind_neither(tmp_path: Path) -> None:
    """Two shoppers at the dock: cart A, then cart B, then a check-in. Pairing the check-in
    with either cart is a guess that can give a cart to the wrong shopper: nothing is
    bound, the act is refused as ambiguous, and a clean pair afterwards binds."""
    pipe = cart_pipeline(tmp_path, VirtualClock(T0))
    pipe.on_scan(scan(code(CodeKind.CART, cart_subject((CART_UUID, 9, 1))), at_s=10))
    pipe.on_scan(scan(code(CodeKind.CART, cart_subject((CART_UUID, 9, 2))), at_s=12))
    pipe.on_scan(scan(code(CodeKind.CHECKIN, "s-alice-token"), at_s=14))
    assert pipe.acts is not None
    assert pipe.acts.events["cart.bound"] == 0
    assert pipe.acts.refused == {"ambiguous_pairing": 1}
    # two check-ins around one cart code are as ambiguous
    pipe.on_scan(scan(code(CodeKind.CHECKIN, "s-bob-token"), at_s=100))
    pipe.on_scan(scan(code(CodeKind.CHECKIN, "s-carol-token"), at_s=101))
    pipe.on_scan(scan(code(CodeKind.CART, cart_subject((CART_UUID, 9, 3))), at_s=102))
    assert pipe.acts.events["cart.bound"] == 0
    assert pipe.acts.refused == {"ambiguous_pairing": 2}
    # one shopper at a time: bound
    pipe.on_scan(scan(code(CodeKind.CART, cart_subject((CART_UUID, 9, 4))), at_s=300))
    pipe.on_scan(scan(code(CodeKind.CHECKIN, "s-dave-token"), at_s=303))
    assert pipe.acts.events["cart.bound"] == 1
    # check-ins one after another at a till, no cart in sight: never refused
    for i, who in enumerate(("s-erin-token", "s-frank-token", "s-grace-token")):
        pipe.on_scan(scan(code(CodeKind.CHECKIN, who), at_s=500 + i))
    assert pipe.acts.refused == {"ambiguous_pairing": 2}


def test_a_cart_code_for_a_beacon_that_is_not_a_cart_is_refused(tmp_path: Path) -> None:
    pipe = cart_pipeline(tmp_path, VirtualClock(T0))
    pipe.on_scan(scan(code(CodeKind.CART, cart_subject((APP_UUID, 1, 2)))))  # a shopper's phone
    pipe.on_scan(scan(code(CodeKind.CHECKIN, "s-mallory-token"), at_s=61))
    pipe.on_scan(scan(code(CodeKind.CART, "not-a-cart")))
    assert pipe.acts is not None
    assert pipe.acts.refused == {"not_a_cart_beacon": 1, "malformed": 1}


def test_cart_subjects_round_trip() -> None:
    for beacon in [(CART_UUID, 9, 42), (CART_UUID, 0, 0), (APP_UUID, 0xFFFF, 1)]:
        assert parse_cart_subject(cart_subject(beacon)) == beacon
        assert len(cart_subject(beacon)) <= 64
