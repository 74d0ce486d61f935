"""What adapters produce: typed, frozen readings of what the hardware saw.

A reading carries no MAC address and nothing that identifies a person; the
identity layer turns it into a pseudonymous shopper, or nobody.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Self
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class Reading(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    at: AwareDatetime
    """When the hardware saw it (the injected clock's time)."""

    @classmethod
    def trusted(cls, **values: Any) -> Self:
        """A reading from values its producer already guarantees valid, without validation.

        For the BLE decoder's hot path only: validating a sighting costs about as much as
        parsing the frame, and every value the decoder passes is in range by construction
        (16-bit fields and signed bytes unpacked from the frame, RSSI clamped, the scanner
        named by the backend). ``values`` must name every field, defaults included.
        What pydantic's ``model_construct`` does, without its per-field loop; the test of
        the decoder checks the result equals the validated reading. Two checks stay, as
        they cost next to nothing: the time must carry its time zone, the scanner a name.
        """
        if values["at"].tzinfo is None or not values["scanner"]:
            raise ValueError(f"not a valid {cls.__name__}: {values!r}")
        reading = _new(cls)
        _set(reading, "__dict__", values)
        names = _FIELDS.get(cls)
        if names is None:
            names = _FIELDS[cls] = frozenset(cls.model_fields)
        _set(reading, "__pydantic_fields_set__", names)
        _set(reading, "__pydantic_extra__", None)
        _set(reading, "__pydantic_private__", None)
        return reading


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

_FIELDS: dict[type[Reading], frozenset[str]] = {}
_new = object.__new__
_set = object.__setattr__


def sighting_at(sighting: BeaconSighting, at: datetime) -> BeaconSighting:
    """The same sighting, re-timed (replays and simulations)."""
    return sighting.model_copy(update={"at": at})
