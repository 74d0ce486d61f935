"""What adapters produce: typed, frozen readings of what the hardware saw.

A reading carries no MAC address and nothing that identifies a person; the
identity layer turns it into a pseudonymous shopper, or nobody.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class Reading(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    at: AwareDatetime
    """When the hardware saw it (the injected clock's time)."""


class BeaconSighting(Reading):
    """One BLE advertisement carrying a beacon frame, heard by one scanner.

    iBeacon and AltBeacon carry a 16-byte id, major and minor; an Eddystone-UID
    frame's 10-byte namespace and 6-byte instance are ``uuid`` (namespace first)
    with major and minor 0.
    """

    kind: Literal["ibeacon", "altbeacon", "eddystone_uid"] = "ibeacon"
    uuid: UUID
    major: int = Field(ge=0, le=0xFFFF)
    minor: int = Field(ge=0, le=0xFFFF)
    tx_power: int = Field(ge=-128, le=127, description="calibrated RSSI at 1 m, dBm")
    rssi: int = Field(ge=-127, le=20, description="received signal strength, dBm")
    scanner: str = Field(min_length=1, description="which scanner (radio) heard it")

    @property
    def beacon_key(self) -> tuple[UUID, int, int]:
        return (self.uuid, self.major, self.minor)


class ShopperSighting(Reading):
    """An advertisement of a registered shopper's phone, recognised by the adapter from a
    rotating identifier or a resolvable private address: it carries the shopper's key id,
    never the identifier or the address."""

    kind: Literal["rotating", "rpa"]
    key_id: str = Field(min_length=1, description="the registered shopper key that matched")
    tx_power: int = Field(default=-59, ge=-128, le=127)
    rssi: int = Field(ge=-127, le=20)
    scanner: str = Field(min_length=1)


Sighting = BeaconSighting | ShopperSighting


def sighting_at(sighting: BeaconSighting, at: datetime) -> BeaconSighting:
    """The same sighting, re-timed (replays and simulations)."""
    return sighting.model_copy(update={"at": at})
