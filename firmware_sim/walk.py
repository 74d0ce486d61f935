"""Scripted shopper walks: where a simulated phone is, and what each scanner hears.

A walk is a list of legs (a zone's scanner, or outside, for a duration). The
phone advertises at its interval with jitter; the scanner of the zone the
shopper is in hears it strong, the other scanners hear it weak (or not at all
below their sensitivity), each sample with Gaussian noise from a seeded RNG,
so the same walk and seed always produce the same advertisements.
"""

from __future__ import annotations

import random
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from proximity.engine.durations import parse_duration

BUILTIN_WALKS = Path(__file__).parent / "walks"


def _seconds(value: Any) -> Any:
    if isinstance(value, str):
        return parse_duration(value).total_seconds()
    return value


Seconds = Annotated[float, BeforeValidator(_seconds), Field(gt=0)]


class Phone(BaseModel):
    """A shopper's phone running the store app (an iBeacon advertiser)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uuid: UUID
    major: int = Field(ge=0, le=0xFFFF)
    minor: int = Field(ge=0, le=0xFFFF)
    tx_power: int = -59
    interval: Seconds = 1.0
    jitter: float = Field(default=0.1, ge=0, le=0.5)
    """Fraction of the interval each gap may vary by."""
    address: str = "5A:11:CE:00:00:01"
    """A random static address, as phones use; it never leaves the adapter."""


class Leg(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    scanner: str | None = None
    """The scanner whose zone the shopper is in; none means outside the store."""
    duration: Seconds


class Radio(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    near_rssi: float = -60.0
    far_rssi: float = -90.0
    noise_db: float = Field(default=3.0, ge=0)
    sensitivity: float = -95.0


class Walk(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    scanners: list[str] = Field(min_length=1)
    phone: Phone
    radio: Radio = Field(default_factory=Radio)
    legs: list[Leg] = Field(min_length=1)

    @property
    def duration(self) -> float:
        return sum(leg.duration for leg in self.legs)


@dataclass(frozen=True, slots=True)
class Heard:
    """One advertisement heard by one scanner, ``offset`` seconds into the walk."""

    offset: float
    scanner: str
    rssi: int


def load_walk(path: Path) -> Walk:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return Walk.model_validate(data)
    except (OSError, tomllib.TOMLDecodeError, ValidationError) as exc:
        raise ValueError(f"{path}: invalid walk: {exc}") from exc


def builtin_walk(name: str = "demo") -> Walk:
    return load_walk(BUILTIN_WALKS / f"{name}.toml")


def hear(walk: Walk, rng: random.Random) -> Iterator[Heard]:
    """Every advertisement the store's scanners hear during ``walk``, in time order."""
    phone, radio = walk.phone, walk.radio
    start = 0.0
    t = rng.uniform(0, phone.interval)
    for leg in walk.legs:
        end = start + leg.duration
        while t < end:
            if leg.scanner is not None:
                for scanner in walk.scanners:
                    base = radio.near_rssi if scanner == leg.scanner else radio.far_rssi
                    rssi = round(rng.gauss(base, radio.noise_db))
                    if rssi >= radio.sensitivity:
                        yield Heard(t, scanner, max(-127, min(20, rssi)))
            t += phone.interval * (1 + rng.uniform(-phone.jitter, phone.jitter))
        start = end


def walk_length(walk: Walk) -> timedelta:
    return timedelta(seconds=walk.duration)
