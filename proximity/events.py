"""Journey events: what normalisation makes of readings, and what rules react to."""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class EventKind(StrEnum):
    VISIT_START = "visit.start"
    ZONE_ENTER = "zone.enter"
    ZONE_DWELL = "zone.dwell"
    ZONE_EXIT = "zone.exit"
    VISIT_END = "visit.end"
    NFC_TAP = "nfc.tap"
    """Something was held to an NFC reader ("I want to know" at a shelf)."""
    QR_SCAN = "qr.scan"
    """A code was shown to a scanner or camera ("I want to do" at a kiosk)."""
    OFFER_REDEEMED = "offer.redeemed"
    """A coupon (a signed code naming the offer) was scanned and accepted at checkout."""


#: Events made by a shopper's act at a reader; their zone is the reader's zone.
ACTS = frozenset({EventKind.NFC_TAP, EventKind.QR_SCAN, EventKind.OFFER_REDEEMED})
#: Events that carry a zone.
ZONAL = frozenset({EventKind.ZONE_ENTER, EventKind.ZONE_DWELL, EventKind.ZONE_EXIT}) | ACTS


class Shopper(BaseModel):
    """A pseudonymous shopper. ``token`` is safe for topics, logs and analytics."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    token: str = Field(pattern=r"^[A-Za-z0-9_-]{4,64}$")
    consent: bool = False
    """The shopper agreed to personal offers."""
    anonymous: bool = False
    """Presence without identity (e.g. an unbound cart beacon): zone signage, never offers."""
    segments: frozenset[str] = frozenset()
    """Marketing segments of this shopper (from the segments file), e.g. "loyal"."""


class JourneyEvent(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: EventKind
    at: AwareDatetime
    store: str
    shopper: Shopper
    visit: str
    zone: str | None = None
    dwell_s: float | None = Field(default=None, ge=0)
    """Seconds in the zone so far (dwell and exit events)."""
    threshold_s: float | None = Field(default=None, ge=0)
    """The dwell threshold this ``zone.dwell`` event marks."""
    reader: str | None = None
    """Acts: the NFC reader, scanner or camera."""
    product: str | None = None
    """Acts: the product link read (scheme, host and path only)."""
    offer: str | None = None
    """offer.redeemed: the id of the offer whose coupon was redeemed."""


def visit_id(token: str, started: datetime) -> str:
    """A deterministic visit id: the same shopper starting at the same time gets the same id."""
    digest = hashlib.sha256(f"{token}|{started.isoformat()}".encode()).hexdigest()
    return f"v-{digest[:16]}"
