"""Draining the outbox to the broker, oldest first, until each offer is acknowledged.

One task owns the outbox's head: it publishes it, removes it on PUBACK, drops it
if it expired while waiting, and on a broker error waits (backing off from
0.2 s to 5 s) and tries the same offer again, so order is kept and nothing is
skipped. The first failure of an outage is logged, not every retry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from proximity.clock import Clock
from proximity.delivery.outbox import Item, Kind, Outbox
from proximity.errors import DeliveryError
from proximity.offers import Offer

log = structlog.get_logger(__name__)

BACKOFF_START_S = 0.2
BACKOFF_MAX_S = 5.0


class OfferSink(Protocol):
    async def publish_offer(self, shopper_token: str, offer: Offer) -> bool:
        """True once the broker has it; False when it expired before it could go."""
        ...

    async def publish_signage(self, offer: Offer) -> bool: ...


@dataclass(slots=True)
class DrainStats:
    published: int = 0
    signage: int = 0
    expired: int = 0
    failures: int = 0
    """Publish attempts that failed (each is retried)."""


class OutboxDrainer:
    def __init__(
        self,
        outbox: Outbox,
        sink: OfferSink,
        clock: Clock,
        on_done: Callable[[Item, bool], None] | None = None,
    ) -> None:
        """``on_done(item, sent)``: after each offer left the outbox, published or expired."""
        self.outbox = outbox
        self._on_done = on_done
        self._sink = sink
        self._clock = clock
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self.stats = DrainStats()

    def wake(self) -> None:
        self._idle.clear()
        self._wake.set()

    async def run(self) -> None:
        backoff = BACKOFF_START_S
        outage = False
        while True:
            item = self.outbox.peek()
            if item is None:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            if self.outbox.drop_if_expired(item, self._clock.now()):
                self.stats.expired += 1
                if self._on_done is not None:
                    self._on_done(item, False)
                continue
            try:
                sent = await self._publish(item)
            except DeliveryError as exc:
                self.stats.failures += 1
                if not outage:
                    log.warning(
                        "outbox_waiting_for_broker", error=str(exc), waiting=len(self.outbox)
                    )
                outage = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            if outage:
                log.info("outbox_draining", waiting=len(self.outbox))
            outage, backoff = False, BACKOFF_START_S
            self.outbox.done(item)
            if self._on_done is not None:
                self._on_done(item, sent)
            if not sent:
                self.stats.expired += 1
            elif item.kind is Kind.SIGNAGE:
                self.stats.signage += 1
            else:
                self.stats.published += 1
                log.info(
                    "offer_published",
                    offer=item.offer.id,
                    rule=item.offer.rule,
                    moment=str(item.offer.moment),
                )

    async def flush(self, limit: float) -> bool:
        """Wait until the outbox is empty (True) or ``limit`` seconds passed (False)."""
        if self.outbox.peek() is None:
            return True
        self.wake()
        try:
            await asyncio.wait_for(self._idle.wait(), limit)
        except TimeoutError:
            return self.outbox.peek() is None
        return True

    async def _publish(self, item: Item) -> bool:
        if item.kind is Kind.SIGNAGE:
            return await self._sink.publish_signage(item.offer)
        return await self._sink.publish_offer(item.target, item.offer)
