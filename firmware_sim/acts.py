"""Shoppers' acts at the store's readers: check-ins, cart bindings, coupon redemptions.

BLE presence is only half of a phygital journey: shoppers also tap their phone on
an NFC reader or show a code to a scanner. This module plays that half, so the
simulator drives the daemon's :mod:`proximity.journey.acts` as a store would:

- **check-in**: a shopper shows the app's signed check-in code (``PX1``, kind
  check-in, subject: their pseudonymous token, as the app learns it when it
  checks in) to a reader: tapped on an ``nfc`` reader (the app emulates a tag whose
  NDEF text record is the code), or scanned by a ``qr`` scanner.
- **cart binding**: a shopper who takes a cart and checks in does so at the cart
  dock (a reader of role ``cart-dock``): the dock reads the cart's code (a cart
  code naming the cart's beacon, issued by the dock for this cart), then the
  shopper's check-in code, a few seconds apart. The daemon binds the cart's beacon
  to the shopper (both codes at one reader within a minute), so from then on the
  cart's presence is theirs.
- **coupon redemption**: when paying at a till, a shopper has the till read the
  code of each coupon offer the app received (the offer's ``redeem_code``, signed
  as the daemon signs it, :class:`~proximity.codes.CouponSigner`), which the
  daemon turns into ``offer.redeemed``.

What shoppers do is planned up front (:func:`plan_acts`) from their itineraries:
a check-in at a till, and a redemption, happen during the shopper's longest stay
in the till's zone (a stay shorter than :data:`MIN_PAY_S` is walking past), a
cart is bound a few seconds after the shopper enters the dock's zone. Which
coupons a shopper redeems is only known during the run (the offers the pipeline
decided for them before they pay), so :class:`ActPlayer` turns each planned act
into readings (:class:`NfcTap`, :class:`CodeScan`) at its instant.

Randomness: each shopper gets a generator of their own, seeded from one number
drawn from the generator passed in (a stream no other part of the simulator uses),
and always draws the same numbers whatever the shares are, so raising
``checkin_share`` changes who checks in and nothing else. With both shares at 0
(the default) nothing is planned, and a run is exactly what it was without acts.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from firmware_sim.crowd import CrowdParams, SimShopper, Stay, true_stays
from firmware_sim.store import Reader, ReaderKind, ReaderRole, Store
from proximity.adapters.nfc.ndef import build_ndef, parse_ndef, text_record
from proximity.adapters.nfc.tap import NfcTap, hash_tag_uid
from proximity.adapters.qr.scan import CodeScan
from proximity.codes import NONCE_BYTES, CodeKind, cart_subject, sign
from proximity.config import CodeSettings
from proximity.engine.decide import Decision
from proximity.offers import Offer

MIN_PAY_S = 10.0
"""A stay in a till's zone shorter than this is walking past the checkout, not paying."""
DOCK_DELAY_S = (2.0, 8.0)
"""Seconds from entering the dock's zone to the cart's code being read (taking a cart)."""
CHECKIN_AFTER_CART_S = (2.0, 6.0)
"""Seconds from the cart's code to the shopper's check-in at the dock: well inside the
daemon's one-minute binding window."""
DOCK_TURN_S = 1.0
"""Seconds between one shopper's check-in at a dock and the next shopper's cart code."""
CHECKIN_AT = 0.3
"""Where in the paying stay a till check-in happens (0: arriving at the till, 1: leaving)."""
REDEEM_AT = 0.7
"""Where in the paying stay the coupons are scanned (at the end, with the payment)."""
CODE_LIFETIME = timedelta(minutes=5)
"""How long a check-in code the app shows, or a cart code the dock issues, stays valid."""
PHONE_TAG_TYPE = "Type4Tag"
"""What a phone emulating a tag (host card emulation) looks like to nfcpy."""
CART_TAG_TYPE = "Type2Tag"
"""A cart's tag: an NTAG sticker the dock rewrites with the cart's current code."""
ReaderReading = NfcTap | CodeScan


class ActKind(StrEnum):
    CART = "cart"
    """The dock reads the code of the cart the shopper takes."""
    CHECKIN = "checkin"
    """The shopper shows the app's check-in code."""
    REDEEM = "redeem"
    """The till reads the code of every coupon the app holds."""


@dataclass(frozen=True, slots=True, order=True)
class PlannedAct:
    """Shopper ``shopper`` (a phone index) does ``kind`` at ``reader``, ``t`` seconds in."""

    t: float
    shopper: int
    kind: ActKind
    reader: str


def plan_acts(
    store: Store, shoppers: Iterable[SimShopper], params: CrowdParams, rng: random.Random
) -> list[PlannedAct]:
    """What each shopper does at the store's readers, in time order (see the module)."""
    if params.checkin_share <= 0 and params.redeem_share <= 0:
        return []
    tills = _by_zone(store, ReaderRole.TILL)
    docks = _by_zone(store, ReaderRole.CART_DOCK)
    if not tills and not docks:
        return []
    base = rng.getrandbits(64)
    acts: list[PlannedAct] = []
    docking: list[tuple[float, float, int, str]] = []
    for shopper in sorted(shoppers, key=lambda s: s.phone.index):
        index = shopper.phone.index
        own = random.Random(f"{base}:{index}")
        checks_in = own.random() < params.checkin_share
        redeems = own.random() < params.redeem_share
        dock_delay, checkin_delay, pick = own.uniform(*DOCK_DELAY_S), own.random(), own.random()
        stays = true_stays(store, shopper.itinerary)
        bound = False
        if checks_in and shopper.cart is not None:
            dock = _first_stay(stays, docks)
            if dock is not None:
                stay, readers = dock
                reader = _pick(readers, pick).id
                at = stay.start + min(dock_delay, (stay.end - stay.start) / 2)
                after = CHECKIN_AFTER_CART_S[0] + checkin_delay * (
                    CHECKIN_AFTER_CART_S[1] - CHECKIN_AFTER_CART_S[0]
                )
                docking.append((at, after, index, reader))
                bound = True
        till = _paying_stay(stays, tills)
        if till is None:
            continue
        stay, readers = till
        reader = _pick(readers, pick).id
        length = stay.end - stay.start
        if checks_in and not bound:
            acts.append(
                PlannedAct(stay.start + CHECKIN_AT * length, index, ActKind.CHECKIN, reader)
            )
        if redeems:
            acts.append(PlannedAct(stay.start + REDEEM_AT * length, index, ActKind.REDEEM, reader))
    acts.extend(_one_at_a_time(docking))
    return sorted(acts)


def _one_at_a_time(docking: Iterable[tuple[float, float, int, str]]) -> list[PlannedAct]:
    """Cart and check-in acts at the docks, one shopper at a time at each dock.

    The daemon pairs a cart code with the next check-in at the same reader, whoever
    shows it: a second shopper reading their cart between the first one's cart and
    check-in would have the first shopper bound to the second cart. At a real dock
    the next shopper waits their turn; here they wait until :data:`DOCK_TURN_S` after
    the shopper before them checked in.
    """
    out: list[PlannedAct] = []
    free: dict[str, float] = {}
    for at, after, index, reader in sorted(docking):
        at = max(at, free.get(reader, at))
        out.append(PlannedAct(at, index, ActKind.CART, reader))
        out.append(PlannedAct(at + after, index, ActKind.CHECKIN, reader))
        free[reader] = at + after + DOCK_TURN_S
    return out


def _by_zone(store: Store, role: ReaderRole) -> dict[str, list[Reader]]:
    out: dict[str, list[Reader]] = {}
    for reader in store.readers:
        if reader.role is role:
            out.setdefault(store.reader_zone(reader), []).append(reader)
    return out


def _pick(readers: Sequence[Reader], u: float) -> Reader:
    return readers[min(len(readers) - 1, int(u * len(readers)))]


def _first_stay(
    stays: Sequence[Stay], readers: Mapping[str, list[Reader]]
) -> tuple[Stay, list[Reader]] | None:
    for stay in stays:
        if stay.zone in readers:
            return stay, readers[stay.zone]
    return None


def _paying_stay(
    stays: Sequence[Stay], readers: Mapping[str, list[Reader]]
) -> tuple[Stay, list[Reader]] | None:
    """The longest stay in a zone with a till, if it is long enough to pay in."""
    at_tills = [s for s in stays if s.zone in readers and s.end - s.start >= MIN_PAY_S]
    if not at_tills:
        return None
    stay = max(at_tills, key=lambda s: s.end - s.start)
    return stay, readers[stay.zone]


@dataclass
class ActCounts:
    """What the readers read during a run."""

    taps: int = 0
    scans: int = 0
    checkins: int = 0
    """Check-in codes shown (at a dock or a till)."""
    cart_codes: int = 0
    coupons: int = 0
    """Coupon codes shown at a till."""
    by_reader: Counter[str] = field(default_factory=Counter)
    """Readings per reader id."""

    def to_json(self) -> dict[str, object]:
        return {
            "taps": self.taps,
            "scans": self.scans,
            "checkins": self.checkins,
            "cart_codes": self.cart_codes,
            "coupons": self.coupons,
            "by_reader": dict(sorted(self.by_reader.items())),
        }


class ActPlayer:
    """Turns planned acts into the readings the store's readers make, on the run's clock.

    It signs what the app and the dock would show with the store's code key (the
    daemon's ``[codes]`` settings, so the daemon's verifier accepts them) and keeps
    the coupons each shopper's app received (:meth:`offered`) until they are shown.
    Nonces come from what is signed, so the same run signs the same codes.
    """

    def __init__(
        self,
        store: Store,
        shoppers: Mapping[int, SimShopper],
        tokens: Mapping[int, str],
        codes: CodeSettings,
        uid_key: bytes,
    ) -> None:
        """``tokens``: each shopper's pseudonymous token by phone index; ``uid_key``: the
        key tag UIDs are hashed with (as the daemon's NFC adapter does)."""
        self._readers = {r.id: r for r in store.readers}
        self._shoppers = shoppers
        self._tokens = tokens
        self._key = codes.key_bytes()[codes.sign_with]
        self._key_id = codes.sign_with
        self._coupons = codes.coupon_signer()
        self._uid_key = uid_key
        self._held: dict[str, dict[str, Offer]] = {}
        self.counts = ActCounts()

    def offered(self, decision: Decision) -> None:
        """Remember the coupon offers of ``decision`` in the app of the shopper they went to."""
        for offer in decision.offers:
            self.hold(decision.event.shopper.token, offer)

    def hold(self, token: str, offer: Offer) -> None:
        """The app of shopper ``token`` received ``offer``: its coupon, if any, is shown at
        the till (the live run's apps receive offers from the broker)."""
        if offer.coupon is not None:
            self._held.setdefault(token, {}).setdefault(offer.id, offer)

    def readings(
        self, act: PlannedAct, at: datetime, valid: tuple[datetime, datetime] | None = None
    ) -> list[ReaderReading]:
        """The readings ``act`` makes at ``at`` (none: a shopper with no coupon to show).

        ``valid``: when the check-in and cart codes are issued and expire (default: at
        ``at``, for :data:`CODE_LIFETIME`); the live run gives bounds on the daemon's
        clock, which it can only estimate."""
        reader = self._readers[act.reader]
        shopper = self._shoppers[act.shopper]
        token = self._tokens[act.shopper]
        match act.kind:
            case ActKind.CART:
                if shopper.cart is None:
                    return []
                subject = cart_subject(shopper.cart.beacon_key)
                code = self._sign(CodeKind.CART, subject, at, valid)
                self.counts.cart_codes += 1
                uid = b"cart" + shopper.cart.number.to_bytes(4, "big")
                return [self._reading(reader, at, code, uid, CART_TAG_TYPE)]
            case ActKind.CHECKIN:
                code = self._sign(CodeKind.CHECKIN, token, at, valid)
                self.counts.checkins += 1
                return [self._reading(reader, at, code, _phone_uid(token, at), PHONE_TAG_TYPE)]
            case ActKind.REDEEM:
                held = self._held.pop(token, {})
                out: list[ReaderReading] = []
                for offer in held.values():
                    # the code the app received with the offer (the daemon signs it so)
                    code = offer.redeem_code or self._coupons.code_for(
                        offer.id, offer.issued_at, offer.expires_at
                    )
                    self.counts.coupons += 1
                    uid = _phone_uid(token, at)
                    out.append(self._reading(reader, at, code, uid, PHONE_TAG_TYPE))
                return out

    def _sign(
        self, kind: CodeKind, subject: str, at: datetime, valid: tuple[datetime, datetime] | None
    ) -> str:
        nonce = hashlib.sha256(f"{kind.label}|{subject}|{at.isoformat()}".encode()).digest()
        issued, expires = valid or (at, at + CODE_LIFETIME)
        return sign(
            kind,
            subject,
            key=self._key,
            key_id=self._key_id,
            issued=issued,
            expires=expires,
            nonce=nonce[:NONCE_BYTES],
        )

    def _reading(
        self, reader: Reader, at: datetime, code: str, uid: bytes, tag_type: str
    ) -> ReaderReading:
        self.counts.by_reader[reader.id] += 1
        if reader.kind is ReaderKind.QR:
            self.counts.scans += 1
            return CodeScan(at=at, scanner=reader.id, text=code, source="scanner")
        self.counts.taps += 1
        ndef = parse_ndef(build_ndef([text_record(code)]))
        return NfcTap(
            at=at,
            reader=reader.id,
            tag_uid_hash=hash_tag_uid(uid, self._uid_key),
            tag_type=tag_type,
            ndef=ndef,
        )


def _phone_uid(token: str, at: datetime) -> bytes:
    """A phone emulating a tag shows a random UID each time (Android's host card emulation
    does): derived from the shopper and the instant, so a run is repeatable."""
    return hashlib.sha256(f"phone|{token}|{at.isoformat()}".encode()).digest()[:7]
