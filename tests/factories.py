"""Test data with defaults: override only what a test is about."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from proximity.events import EventKind, JourneyEvent, Shopper
from proximity.readings import BeaconSighting

T0 = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)
APP_UUID = UUID("f7826da6-4fa2-4e98-8024-bc5b71e0893e")
KEY = b"test-pseudonym-key-0123456789"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def make_sighting(**overrides: Any) -> BeaconSighting:
    fields: dict[str, Any] = {
        "at": T0,
        "uuid": APP_UUID,
        "major": 1,
        "minor": 0x8001,
        "tx_power": -59,
        "rssi": -60,
        "scanner": "gw-entrance",
    }
    fields.update(overrides)
    return BeaconSighting(**fields)


def make_shopper(**overrides: Any) -> Shopper:
    fields: dict[str, Any] = {"token": "s-test-0001", "consent": True}
    fields.update(overrides)
    return Shopper(**fields)


def make_event(**overrides: Any) -> JourneyEvent:
    fields: dict[str, Any] = {
        "kind": EventKind.ZONE_ENTER,
        "at": T0,
        "store": "store-001",
        "shopper": make_shopper(),
        "visit": "v-0001",
        "zone": "entrance",
    }
    fields.update(overrides)
    return JourneyEvent(**fields)
