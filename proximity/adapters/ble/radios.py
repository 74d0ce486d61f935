"""Several BlueZ adapters in one gateway, read as one stream of advertisements.

A store gateway may carry one USB radio per zone (``[ble] adapters`` maps each
scanner id to its adapter). Each radio gets its own :class:`BleakBackend`, with
its own watchdog and adapter watch, so one unplugged dongle never stops the
others; :class:`Radios` starts and stops them together and merges what they
hear. Each advertisement already names its scanner (the backend's ``scanner``),
which is how the pipeline finds the zone.

The counters the metrics endpoint reads from a bleak backend (``scanning``,
``restarts``, ``errors``...) are the radios' totals here, so the same endpoint
serves one radio or several.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Sequence

from proximity.adapters.base import Advertisement, BleBackend
from proximity.adapters.ble.bleak_backend import BleakBackend
from proximity.adapters.ble.merged import merge, start_together, stop_together


class Radios(BleBackend):
    """The advertisements of every radio in ``radios``, in the order they arrive."""

    def __init__(self, radios: Sequence[BleakBackend]) -> None:
        if not radios:
            raise ValueError("Radios needs at least one radio")
        self.radios = tuple(radios)

    # -- what the metrics endpoint reads, as totals -------------------------------------------

    @property
    def scanning(self) -> bool:
        """Every radio is scanning (one lost dongle makes the gateway not ready)."""
        return all(radio.scanning for radio in self.radios)

    @property
    def adapter_lost(self) -> bool:
        return any(radio.adapter_lost for radio in self.radios)

    @property
    def restarts(self) -> int:
        return sum(radio.restarts for radio in self.radios)

    @property
    def errors(self) -> Counter[str]:
        return sum((radio.errors for radio in self.radios), Counter())

    @property
    def adapter_losses(self) -> int:
        return sum(radio.adapter_losses for radio in self.radios)

    @property
    def dropped(self) -> int:
        return sum(radio.dropped for radio in self.radios)

    # -- BleBackend ---------------------------------------------------------------------------

    async def start(self) -> None:
        await start_together(self.radios)

    async def stop(self) -> None:
        await stop_together(self.radios)

    async def advertisements(self) -> AsyncIterator[Advertisement]:
        async for advertisement in merge(self.radios, "ble-radio"):
            yield advertisement
