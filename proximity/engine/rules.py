"""The rule file format, version 1: frozen, validated models.

A file has optional ``[store]`` metadata, ``[zones.<id>]`` (each with the
scanners that place a shopper in it), optional ``[defaults]`` and an array of
``[[rules]]``. Conditions live in a rule's ``when`` table, so the language
grows by adding keys there.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
)

from proximity.engine.durations import format_duration, parse_duration
from proximity.engine.values import Cap, CapField, DateRangeField, TimeRangeField, Weekday
from proximity.events import EventKind
from proximity.offers import Cta, Moment

ZONE_ID = r"^[a-z0-9][a-z0-9_-]{0,39}$"
RULE_ID = r"^[a-z0-9][a-z0-9_.-]{0,63}$"


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(f'bad duration {value}: give it in quotes with a unit, e.g. "{value}s"')
    return value


Duration = Annotated[
    timedelta,
    BeforeValidator(_duration),
    PlainSerializer(format_duration),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+$",
            "examples": ["45s", "10m"],
        }
    ),
]
HitPolicy = Literal["first", "collect", "unique"]


def _listify(value: Any) -> Any:
    """One value where a list is expected is a list of one: cap = "2/day"."""
    return [value] if isinstance(value, str) else value


ListOf = BeforeValidator(_listify)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class StoreMeta(_Model):
    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    name: str | None = None
    timezone: str | None = None
    version: str | None = None
    owner: str | None = None

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f'unknown time zone "{value}" (e.g. "Europe/Paris")') from exc
        return value


class Zone(_Model):
    name: str | None = None
    scanners: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    """BLE scanners (gateways) whose sightings place a shopper in this zone."""
    readers: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    """NFC readers, code scanners and cameras (their ids in the config) in this zone:
    a tap or scan there is an act in this zone."""


class Defaults(_Model):
    ttl: Duration = timedelta(minutes=10)
    hit_policy: HitPolicy = "collect"
    # delivery controls for every rule (each rule may add its own, see Rule)
    min_gap: Duration | None = None
    """At least this long between any two offers to the same shopper."""
    max_per_visit: int | None = Field(default=None, ge=1)
    """At most this many offers to one shopper in one visit, all rules together."""
    max_per_day: int | None = Field(default=None, ge=1)
    """At most this many offers to one shopper per calendar day (store time)."""
    quiet_hours: Annotated[list[TimeRangeField], ListOf] = Field(default_factory=list)
    """No offers at all in these hours (store time), e.g. ["21:00-08:00"]."""


class Engagement(_Model):
    """Weights of the engagement score of a visit: what the shopper did so far."""

    zone: float = 1.0
    """Each zone entered."""
    dwell: float = 2.0
    """Each dwell threshold reached."""
    offer: float = 0.0
    """Each offer received."""


class When(_Model):
    """Conditions: every one given must hold for the rule to match."""

    zone: str | list[str] | None = None
    dwell: Duration | None = None
    """zone.dwell only: fires when the shopper has been in the zone this long."""
    stayed_at_least: Duration | None = None
    """zone.exit only: the stay that just ended lasted at least this long."""
    stayed_at_most: Duration | None = None
    """zone.exit only: the stay that just ended lasted at most this long."""
    hours: Annotated[list[TimeRangeField], ListOf] = Field(default_factory=list)
    """Local time of day (store time zone) within one of these ranges."""
    weekdays: Annotated[list[Weekday], ListOf] = Field(default_factory=list)
    dates: Annotated[list[DateRangeField], ListOf] = Field(default_factory=list)
    visited: Annotated[list[str], ListOf] = Field(default_factory=list)
    """Zones the shopper entered earlier in this visit (all of them)."""
    not_visited: Annotated[list[str], ListOf] = Field(default_factory=list)
    """Zones the shopper has not entered in this visit (none of them)."""
    after_offer: Annotated[list[str], ListOf] = Field(default_factory=list)
    """Rules whose offer the shopper already received in this visit (all of them)."""
    visit_number_at_least: int | None = Field(default=None, ge=1)
    """Returning shoppers: this is at least their N-th visit (2: not the first)."""
    visit_number_at_most: int | None = Field(default=None, ge=1)
    """New shoppers: this is at most their N-th visit (1: the first visit)."""
    last_visit_within: Duration | None = None
    """The previous visit started at most this long ago."""
    last_visit_over: Duration | None = None
    """Lapsed shoppers: the previous visit started more than this long ago."""
    segment: Annotated[list[str], ListOf] = Field(default_factory=list)
    """The shopper is in at least one of these segments (see identity.segments)."""
    engagement_at_least: float | None = Field(default=None, ge=0)
    """The visit's engagement score so far (see [engagement]) is at least this."""

    @property
    def zones(self) -> tuple[str, ...] | None:
        if self.zone is None:
            return None
        return (self.zone,) if isinstance(self.zone, str) else tuple(self.zone)


class Variant(_Model):
    """One arm of an A/B test: its own CTA and/or coupon, shown to ``weight`` of shoppers."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    weight: int = Field(default=1, ge=1)
    cta: Cta | None = None
    """Replaces the rule's CTA for this variant (none: the rule's)."""
    coupon: str | None = Field(default=None, min_length=1, max_length=64)


class Conversion(_Model):
    """The event that counts as the offer having worked, e.g. "zone.enter:checkout"."""

    kind: EventKind
    zone: str | None = None

    def matches(self, kind: EventKind, zone: str | None) -> bool:
        return kind is self.kind and (self.zone is None or zone == self.zone)

    def __str__(self) -> str:
        return f"{self.kind}:{self.zone}" if self.zone else str(self.kind)


def _conversion(value: Any) -> Any:
    if isinstance(value, str):
        kind, _, zone = value.partition(":")
        kinds = ", ".join(k.value for k in EventKind)
        try:
            return Conversion(kind=EventKind(kind.strip()), zone=zone.strip() or None)
        except ValueError as exc:
            raise ValueError(
                f'bad conversion "{value}": use an event kind ({kinds}), '
                'optionally with ":zone", e.g. "zone.enter:checkout"'
            ) from exc
    return value


ConversionField = Annotated[
    Conversion,
    BeforeValidator(_conversion),
    PlainSerializer(str),
    WithJsonSchema({"type": "string", "examples": ["zone.enter:checkout", "visit.end"]}),
]


class Rule(_Model):
    id: str = Field(pattern=RULE_ID)
    on: EventKind
    moment: Moment
    cta: Cta
    audience: Literal["personal", "signage"] = "personal"
    """personal: an offer to the shopper's app (consent needed); signage: an anonymous
    call to action on the zone's screens, for any shopper, identified or not."""
    priority: int = 0
    ttl: Duration | None = None
    coupon: str | None = Field(default=None, min_length=1, max_length=64)
    enabled: bool = True
    when: When = Field(default_factory=When)
    # delivery controls for this rule
    consent_required: bool = True
    """Personal offers need the shopper's consent; leave it on."""
    cap: Annotated[list[CapField], ListOf] = Field(default_factory=lambda: [Cap(1, "visit")])
    """At most N offers of this rule per shopper per visit, day or rolling window."""
    cooldown: Duration | None = None
    """At least this long between two offers of this rule to the same shopper."""
    daily_budget: int | None = Field(default=None, ge=1)
    """At most this many offers of this rule per calendar day, all shoppers together."""
    # experiments
    holdout: float = Field(default=0.0, ge=0.0, lt=1.0)
    """This share of shoppers never gets the offer; a "would have shown" impression is
    logged instead, so uplift can be measured against them."""
    variants: list[Variant] = Field(default_factory=list)
    """A/B variants; each shopper always sees the same one (by a hash of rule and shopper)."""
    # measurement
    conversion: ConversionField | None = None
    """The event that means the offer worked, e.g. "zone.enter:checkout"."""
    attribution: Duration = timedelta(hours=2)
    """How long after the offer (or the holdout's would-have-shown) a conversion counts."""


class TestShopper(_Model):
    consent: bool = True
    anonymous: bool = False
    segments: list[str] = Field(default_factory=list)
    token: str = Field(default="s-test-shopper", pattern=r"^[A-Za-z0-9_-]{4,64}$")


class TestEvent(_Model):
    kind: EventKind
    zone: str | None = None
    after: Duration = timedelta(0)
    """Time since the previous event of the case (or since the case's start)."""
    dwell: Duration | None = None
    """zone.dwell: the dwell threshold reached."""
    stayed: Duration | None = None
    """zone.exit: how long the stay that ended lasted."""
    visit: str = Field(default="v-test-1", pattern=r"^[A-Za-z0-9_-]{1,64}$")


class Expected(_Model):
    rule: str
    reason: str


class RuleTest(_Model):
    """An inline test case: a shopper, a start time and events → the offers expected."""

    name: str = Field(min_length=1)
    start: AwareDatetime | None = None
    """When the first event happens (default: a Tuesday at 10:00 store time)."""
    shopper: TestShopper = Field(default_factory=TestShopper)
    events: list[TestEvent] = Field(min_length=1)
    expect: list[str] = Field(default_factory=list)
    """Rule ids of the offers, in the order they are made (empty: no offer at all)."""
    expect_suppressed: list[Expected] = Field(default_factory=list)
    """Suppressions that must happen (others may, too)."""
    expect_signage: list[str] | None = None
    """Rule ids of the signage shown on zone screens, in order (checked only when given)."""


class RuleFile(_Model):
    store: StoreMeta | None = None
    zones: dict[str, Zone] = Field(default_factory=dict)
    defaults: Defaults | None = None
    engagement: Engagement | None = None
    rules: list[Rule] = Field(default_factory=list)
    tests: list[RuleTest] = Field(default_factory=list)


def one_or_many() -> frozenset[str]:
    """Fields where one value stands for a list of one (cap = "2/day"), for the JSON Schema."""
    return frozenset(
        name
        for model in (Defaults, When, Rule)
        for name, info in model.model_fields.items()
        if ListOf in info.metadata
    )
