"""The seam between hardware and the rest of Proximity.

A *backend* talks to one kind of hardware (or simulates it) and hands over the
hardware's own output; an *adapter* turns that output into typed readings and
decides nothing. The hardware simulator is a real backend too, plugged in from
outside by configuration (see ``proximity/adapters/ble/backends.py``).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Self

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData


@dataclass(frozen=True, slots=True)
class Advertisement:
    """One advertisement as bleak reports it, with which scanner heard it and when."""

    device: BLEDevice
    data: AdvertisementData
    scanner: str
    at: datetime


class Startable(abc.ABC):
    """Something that runs between ``start()`` and ``stop()``; ``async with`` does both."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Start reading."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop reading; the stream of readings then ends."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class BleBackend(Startable):
    """Something that hears BLE advertisements: a real radio or the simulator."""

    @abc.abstractmethod
    def advertisements(self) -> AsyncIterator[Advertisement]:
        """The advertisements heard, as they arrive; ends when scanning stops."""
