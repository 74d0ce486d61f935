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

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from proximity.engine.durations import parse_duration
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


Duration = Annotated[timedelta, BeforeValidator(_duration)]
HitPolicy = Literal["first", "collect"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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


class Defaults(_Model):
    ttl: Duration = timedelta(minutes=10)
    hit_policy: HitPolicy = "collect"


class When(_Model):
    zone: str | list[str] | None = None
    dwell: Duration | None = None

    @property
    def zones(self) -> tuple[str, ...] | None:
        if self.zone is None:
            return None
        return (self.zone,) if isinstance(self.zone, str) else tuple(self.zone)


class Rule(_Model):
    id: str = Field(pattern=RULE_ID)
    on: EventKind
    moment: Moment
    cta: Cta
    priority: int = 0
    ttl: Duration | None = None
    coupon: str | None = Field(default=None, min_length=1, max_length=64)
    enabled: bool = True
    when: When = Field(default_factory=When)


class RuleFile(_Model):
    store: StoreMeta | None = None
    zones: dict[str, Zone] = Field(default_factory=dict)
    defaults: Defaults | None = None
    rules: list[Rule] = Field(default_factory=list)
