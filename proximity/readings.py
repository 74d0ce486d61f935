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
    """One BLE advertisement carrying a beacon frame, heard by one scanner."""

    kind: Literal["ibeacon"] = "ibeacon"
    uuid: UUID
    major: int = Field(ge=0, le=0xFFFF)
    minor: int = Field(ge=0, le=0xFFFF)
    tx_power: int = Field(ge=-128, le=127, description="calibrated RSSI at 1 m, dBm")
    rssi: int = Field(ge=-127, le=20, description="received signal strength, dBm")
    scanner: str = Field(min_length=1, description="which scanner (radio) heard it")

    @property
    def beacon_key(self) -> tuple[UUID, int, int]:
        return (self.uuid, self.major, self.minor)


def sighting_at(sighting: BeaconSighting, at: datetime) -> BeaconSighting:
    """The same sighting, re-timed (replays and simulations)."""
    return sighting.model_copy(update={"at": at})
