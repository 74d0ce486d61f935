"""Offers: the calls to action the engine decides and the publisher delivers."""

from __future__ import annotations

import hashlib
from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, HttpUrl, model_validator


class Moment(StrEnum):
    """The four micro-moments."""

    KNOW = "know"
    GO = "go"
    DO = "do"
    BUY = "buy"


class CtaFormat(StrEnum):
    BANNER = "banner"
    BUTTON = "button"
    LANDING = "landing"
    PUSH = "push"
    SMS = "sms"


class Cta(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format: CtaFormat
    title: str = Field(min_length=1, max_length=120)
    text: str = Field(default="", max_length=1000)
    link: str | None = Field(default=None, pattern=r"^[a-zA-Z][a-zA-Z0-9+.-]*:\S+$")
    """A URL or an app deep link (``shop://aisle/7``)."""
    image: HttpUrl | None = None


class Offer(BaseModel):
    """One call to action for one shopper. The JSON of this model is the MQTT payload."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    rule: str
    variant: str | None = None
    moment: Moment
    cta: Cta
    coupon: str | None = None
    redeem_code: str | None = None
    """With a coupon: the signed code (``PX1:...``) the app shows as a QR code at
    checkout; scanning it there redeems this offer, once."""
    store: str
    zone: str | None = None
    rules_version: str | None = None
    """The content hash of the rule files that decided this offer."""
    issued_at: AwareDatetime
    expires_at: AwareDatetime

    @model_validator(mode="after")
    def _expires_after_issue(self) -> Offer:
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at must be after issued_at")
        return self

    @property
    def ttl_seconds(self) -> float:
        return (self.expires_at - self.issued_at).total_seconds()


def offer_id(rule: str, shopper: str, visit: str, window: str) -> str:
    """Deterministic: a redelivered duplicate carries the same id and can be dropped by it.

    ``window`` tells apart offers of one rule in one visit: the decider uses
    ``n0`` for the first, ``n1`` for the second (a cap above 1/visit), and so on.
    """
    digest = hashlib.sha256(f"{rule}|{shopper}|{visit}|{window}".encode()).hexdigest()
    return f"o-{digest[:20]}"
