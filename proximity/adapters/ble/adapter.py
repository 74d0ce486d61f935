"""The BLE adapter: bleak advertisements in, beacon sightings out.

It decides nothing: frames that are not beacons are ignored, malformed beacon
frames are rejected with a reason, counted, and logged once per reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import structlog

from proximity.adapters.base import Advertisement, BleBackend
from proximity.adapters.ble.ibeacon import APPLE_COMPANY_ID, parse_ibeacon
from proximity.errors import FrameError
from proximity.readings import BeaconSighting

log = structlog.get_logger(__name__)


class BeaconDecoder:
    """Turns one advertisement into a beacon sighting, counting what it could not use."""

    def __init__(self) -> None:
        self.advertisements = 0
        self.sightings = 0
        self.ignored = 0
        self.rejected: Counter[str] = Counter()

    def to_sighting(self, adv: Advertisement) -> BeaconSighting | None:
        """The beacon sighting in one advertisement, or None (counted) if there is none."""
        self.advertisements += 1
        payload = adv.data.manufacturer_data.get(APPLE_COMPANY_ID)
        if payload is None or not payload or payload[0] != 0x02:
            self.ignored += 1
            return None
        try:
            beacon = parse_ibeacon(payload)
        except FrameError as exc:
            self._reject(exc.reason)
            return None
        self.sightings += 1
        return BeaconSighting(
            at=adv.at,
            uuid=beacon.uuid,
            major=beacon.major,
            minor=beacon.minor,
            tx_power=beacon.tx_power,
            rssi=max(-127, min(20, adv.data.rssi)),
            scanner=adv.scanner,
        )

    def _reject(self, reason: str) -> None:
        self.rejected[reason] += 1
        if self.rejected[reason] == 1:
            log.warning("ble_frame_rejected", kind="ibeacon", reason=reason)


class BleAdapter:
    """A BLE backend's advertisements as an async stream of beacon sightings."""

    def __init__(self, backend: BleBackend, decoder: BeaconDecoder | None = None) -> None:
        self.backend = backend
        self.decoder = decoder or BeaconDecoder()

    async def readings(self) -> AsyncIterator[BeaconSighting]:
        async for adv in self.backend.advertisements():
            sighting = self.decoder.to_sighting(adv)
            if sighting is not None:
                yield sighting
