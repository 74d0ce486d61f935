"""Acts: NFC taps and code scans become journey events, or are refused with a reason.

Each tap or scan is one act by one shopper at one reader, so it becomes at most
one event, in the reader's zone (``readers`` of a zone in the rule file):

- a verified **coupon** (a signed code naming an offer this gateway sent) is
  ``offer.redeemed``, by the shopper the offer went to;
- otherwise ``nfc.tap`` or ``qr.scan``: by the shopper a verified **check-in**
  code names (with their consent and segments if their phone is also in the
  store by BLE), else by an anonymous shopper (signage only); with the
  **product** link read, if any.

A verified **cart** code (naming a cart or basket beacon) and a check-in code
at the same reader within a minute — one act or two — bind that beacon to the
shopper: from then on its presence is theirs, for this visit. When the other
half comes after two of the same kind at one reader (two carts, or two
shoppers' check-ins, within the minute), nothing is bound and the act is
refused as ``ambiguous_pairing``: a guess could give a cart to the wrong
shopper. Check-ins alone, one after another at a till, pair with nothing and
are never refused.

Refused, counted by reason and logged without the text: forged, expired,
early, unknown-key and replayed codes; coupons of offers this gateway does not
know; texts that are neither signed codes nor product links (``unsigned``);
NDEF messages that could not be read. A tap with nothing to act on (a bank
card, a blank tag) is still an anonymous ``nfc.tap``: someone was there.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Literal, Protocol
from uuid import UUID

import structlog

from proximity.adapters.nfc.tap import NfcTap
from proximity.adapters.qr.scan import CodeScan
from proximity.codes import CodeError, CodeKind, SignedCode, Verifier, parse_cart_subject
from proximity.events import EventKind, JourneyEvent, Shopper, visit_id
from proximity.journey.tracker import JourneyTracker
from proximity.scanned import Meaning, interpret

log = structlog.get_logger(__name__)

BIND_WINDOW = timedelta(seconds=60)
"""A check-in and a cart code at one reader this close together are one shopper's cart."""
BIND_FOR = timedelta(hours=3)
"""How long a cart stays its shopper's (longer than any visit)."""


class SentOffer(Protocol):
    @property
    def token(self) -> str:
        """Whom the offer went to."""
        ...


class Acts:
    def __init__(
        self,
        store: str,
        verifier: Verifier,
        tracker: JourneyTracker,
        zone_for_reader: Callable[[str], str | None],
        sent_offer: Callable[[str], SentOffer | None],
        bind: Callable[[tuple[UUID, int, int], Shopper, datetime], bool] | None = None,
    ) -> None:
        """``sent_offer(offer_id)``: the offer this gateway sent under that id, if it knows it."""
        self._store = store
        self.verifier = verifier
        self._tracker = tracker
        self._zone_for_reader = zone_for_reader
        self._sent_offer = sent_offer
        self._bind = bind
        self._waiting: dict[
            str, tuple[str | None, tuple[UUID, int, int] | None, datetime, bool]
        ] = {}
        """Per reader: a check-in or a cart code waiting for the other half, and whether
        another shopper's half of the same kind came in the window (the pair is a guess)."""
        self.refused: Counter[str] = Counter()
        """Texts and codes not acted on, by reason."""
        self.events: Counter[str] = Counter()

    def on_tap(self, tap: NfcTap) -> JourneyEvent | None:
        if tap.reject_reason is not None:
            self._refuse("ndef_unreadable", tap.reader)
        texts: list[str] = []
        if tap.ndef is not None:
            for record in tap.ndef.records:
                if record.uri:
                    texts.append(record.uri)
                elif record.text:
                    texts.append(record.text)
        return self._act(
            EventKind.NFC_TAP, tap.reader, tap.at, texts, anonymous_key=f"tag:{tap.tag_uid_hash}"
        )

    def on_scan(self, scan: CodeScan) -> JourneyEvent | None:
        return self._act(EventKind.QR_SCAN, scan.scanner, scan.at, [scan.text], anonymous_key=None)

    def _act(
        self,
        kind: Literal[EventKind.NFC_TAP, EventKind.QR_SCAN],
        reader: str,
        at: datetime,
        texts: Iterable[str],
        anonymous_key: str | None,
    ) -> JourneyEvent | None:
        shopper_token: str | None = None
        product: str | None = None
        redeemed: str | None = None
        cart: tuple[UUID, int, int] | None = None
        for text in texts:
            # look first, use up only a code that will be acted on: a coupon of an offer
            # this gateway does not know stays valid for the gateway that sent it
            found = interpret(text, self.verifier, use=False)
            if found.meaning is Meaning.REFUSED:
                self._refuse(found.reason or "refused", reader)
            elif found.meaning is Meaning.PRODUCT:
                product = product or found.product
            elif found.code is not None:
                code = found.code
                if code.kind is CodeKind.COUPON and self._sent_offer(code.subject) is None:
                    self._refuse("unknown_offer", reader)
                elif code.kind is CodeKind.CART and not _is_cart(code.subject):
                    self._refuse("malformed", reader)
                elif self._use(code, reader):
                    if code.kind is CodeKind.COUPON:
                        redeemed = code.subject
                    elif code.kind is CodeKind.CART:
                        cart = parse_cart_subject(code.subject)
                    else:
                        shopper_token = code.subject
        zone = self._zone_for_reader(reader)
        if cart is not None or shopper_token is not None:
            self._pair(reader, at, shopper_token, cart)
        if redeemed is not None:
            sent = self._sent_offer(redeemed)
            assert sent is not None
            shopper, visit = self._shopper(sent.token, at)
            return self._event(
                EventKind.OFFER_REDEEMED, at, shopper, visit, zone, reader, product, redeemed
            )
        if shopper_token is not None:
            shopper, visit = self._shopper(shopper_token, at)
        elif product is not None or kind is EventKind.NFC_TAP:
            shopper, visit = self._anonymous(anonymous_key or f"reader:{reader}", at)
        else:
            return None  # a scanned cart code alone (bound, or waiting for its shopper), or refused
        return self._event(kind, at, shopper, visit, zone, reader, product, None)

    def _pair(
        self, reader: str, at: datetime, token: str | None, cart: tuple[UUID, int, int] | None
    ) -> None:
        """A cart code and a check-in code at the same reader within ``BIND_WINDOW``, in one
        act or two, bind the cart's beacon to the shopper for ``BIND_FOR``."""
        waiting = self._waiting.pop(reader, None)
        crowded = False
        if waiting is not None and at - waiting[2] <= BIND_WINDOW:
            w_token, w_cart, _, w_crowded = waiting
            if (token is not None and w_token not in (None, token)) or (
                cart is not None and w_cart not in (None, cart)
            ):
                # another shopper's half of the same kind: it takes the place of the one
                # waiting, but whoever completes the pair now could be either shopper
                crowded = True
            else:
                if (token is None) != (w_token is None) and w_crowded:
                    # Two carts (or two shoppers' check-ins) came before this other half:
                    # pairing it with the latest is a guess that can give a cart to the
                    # wrong shopper. Nothing is bound; the shoppers present their codes again.
                    self._refuse("ambiguous_pairing", reader)
                    return
                token = token or w_token
                cart = cart or w_cart
                crowded = w_crowded
        if token is None or cart is None:
            self._waiting[reader] = (token, cart, at, crowded)
            return
        shopper, _ = self._shopper(token, at)
        if self._bind is not None and self._bind(cart, shopper, at + BIND_FOR):
            self.events["cart.bound"] += 1
            log.info("cart_bound", reader=reader, shopper=shopper.token)
        else:
            self._refuse("not_a_cart_beacon", reader)

    def _use(self, code: SignedCode, reader: str) -> bool:
        """Use up a code already verified; False (refused, counted) if that fails."""
        try:
            self.verifier.use(code)
        except CodeError as exc:
            self._refuse(str(exc.reason), reader)
            return False
        return True

    def _shopper(self, token: str, at: datetime) -> tuple[Shopper, str]:
        current = self._tracker.current(token)
        if current is not None:
            return current
        # known only by the code: no consent given through the app's beacon
        return Shopper(token=token), visit_id(token, _day(at))

    def _anonymous(self, key: str, at: datetime) -> tuple[Shopper, str]:
        token = "anon-" + hashlib.sha256(key.encode()).hexdigest()[:16]
        return Shopper(token=token, anonymous=True), visit_id(token, _day(at))

    def _event(
        self,
        kind: EventKind,
        at: datetime,
        shopper: Shopper,
        visit: str,
        zone: str | None,
        reader: str,
        product: str | None,
        offer: str | None,
    ) -> JourneyEvent:
        self.events[str(kind)] += 1
        return JourneyEvent(
            kind=kind,
            at=at,
            store=self._store,
            shopper=shopper,
            visit=visit,
            zone=zone,
            reader=reader,
            product=product,
            offer=offer,
        )

    def _refuse(self, reason: str, reader: str) -> None:
        self.refused[reason] += 1
        log.warning("code_refused", reason=reason, reader=reader)


def _is_cart(subject: str) -> bool:
    try:
        parse_cart_subject(subject)
    except ValueError:
        return False
    return True


def _day(at: datetime) -> datetime:
    """Acts of a shopper not seen by BLE share one visit a day (caps per visit hold)."""
    return at.replace(hour=0, minute=0, second=0, microsecond=0)
