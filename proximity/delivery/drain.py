"""Draining the outbox to the broker, oldest first, until each offer is acknowledged.

One task owns the outbox's head. It keeps up to a window of the oldest offers
(64 by default) in flight over the one connection, started in order so they
reach the broker in order, each only once it is on disk (``Outbox.durable``); a new
offer starts as soon as it is woken for, not at the next PUBACK. Offers that
expired while they waited are dropped, never sent. Each offer is removed
when its own PUBACK arrives; those acknowledged together are removed in one
transaction. On a broker error it waits (backing off from 0.2 s to 1 s) and
tries the offers that failed again, oldest first, so nothing is skipped. The
first failure of an outage is logged, not every retry. A retry while the broker
is away is cheap (the publisher refuses at once: not connected), and the 1 s cap
sends the waiting offers within about a second of the connection's return.
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
BACKOFF_MAX_S = 1.0
WINDOW = 64
"""Offers in flight at once: enough to keep the connection busy while PUBACKs come back."""


class OfferSink(Protocol):
    async def publish_offer(
        self, shopper_token: str, offer: Offer, payload: str | None = None
    ) -> bool:
        """True once the broker has it; False when it expired before it could go.
        ``payload``: the offer's JSON when the caller has it already (the outbox does)."""
        ...

    async def publish_signage(self, offer: Offer, payload: str | None = None) -> bool: ...


@dataclass(slots=True)
class DrainStats:
    published: int = 0
    signage: int = 0
    expired: int = 0
    failures: int = 0
    """Publish attempts that failed (each is retried)."""
    unpublishable: int = 0
    """Offers dropped because publishing them raised something other than a delivery
    error (a bug, or a value MQTT cannot carry): never retried, so never blocking."""


class OutboxDrainer:
    def __init__(
        self,
        outbox: Outbox,
        sink: OfferSink,
        clock: Clock,
        on_done: Callable[[Item, bool], None] | None = None,
        window: int = WINDOW,
    ) -> None:
        """``on_done(item, sent)``: after each offer left the outbox, published or expired.

        ``window``: how many of the oldest offers are published at once, each waiting
        for its own PUBACK (1: strictly one after the other).
        """
        if window < 1:
            raise ValueError("the drain window must be at least 1")
        self.outbox = outbox
        self.window = window
        self._on_done = on_done
        self._sink = sink
        self._clock = clock
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._outage = False
        self._kick: asyncio.Future[None] | None = None
        self.stats = DrainStats()

    def wake(self) -> None:
        self._idle.clear()
        self._wake.set()
        self._kick_now()

    def _kick_now(self) -> None:
        """End the pipeline's wait: an offer to start, or one in flight has ended."""
        if self._kick is not None and not self._kick.done():
            self._kick.set_result(None)

    async def run(self) -> None:
        backoff = BACKOFF_START_S
        while True:
            if not len(self.outbox):
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            error = await self._pipeline()
            if error is not None:
                if not self._outage:
                    log.warning(
                        "outbox_waiting_for_broker", error=str(error), waiting=len(self.outbox)
                    )
                self._outage = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            if self._outage:
                log.info("outbox_draining", waiting=len(self.outbox))
            self._outage, backoff = False, BACKOFF_START_S

    async def _pipeline(self) -> DeliveryError | None:
        """Publish the waiting offers, oldest first, keeping up to ``window`` in flight,
        until none is left (None) or one failed (its error: no new offer is started,
        those in flight are waited for, and the failed ones stay for the next try)."""
        inflight: dict[asyncio.Task[bool], Item] = {}
        ended: list[asyncio.Task[bool]] = []  # of those in flight, since the last look
        last_seq = 0
        error: DeliveryError | None = None
        loop = asyncio.get_running_loop()

        def on_end(task: asyncio.Task[bool]) -> None:
            # each task says so once (not asyncio.wait over every task in flight, which
            # adds and removes a callback on each of them at every wake)
            ended.append(task)
            self._kick_now()

        try:
            while True:
                if error is None:
                    last_seq = await self._start(inflight, last_seq, on_end)
                if not inflight:
                    return error
                if not ended:
                    # a new offer does not wait for a PUBACK to be started: wake() ends it
                    kick = self._kick = loop.create_future()
                    await kick
                    self._kick = None
                finished: list[tuple[Item, bool]] = []
                unpublishable: set[int] = set()
                done, ended[:] = [task for task in ended if task in inflight], []
                for task in done:
                    item = inflight.pop(task)
                    failure = task.exception()
                    if isinstance(failure, DeliveryError):
                        self.stats.failures += 1
                        error = error or failure
                    elif failure is not None:
                        # a bug or an offer MQTT cannot carry: retrying would block the
                        # queue for ever, so it leaves the outbox, counted and logged
                        self.stats.unpublishable += 1
                        log.error(
                            "offer_unpublishable",
                            offer=item.offer.id,
                            rule=item.offer.rule,
                            error=repr(failure),
                        )
                        finished.append((item, False))
                        unpublishable.add(item.seq)
                    else:
                        finished.append((item, task.result()))
                finished.sort(key=lambda pair: pair[0].seq)
                self.outbox.done_many(  # one transaction
                    [item for item, _ in finished],
                    [
                        "unpublishable"
                        if item.seq in unpublishable
                        else ("published" if sent else "expired")
                        for item, sent in finished
                    ],
                )
                for item, sent in finished:
                    if item.seq not in unpublishable:
                        self._count(item, sent)
                    self._done(item, sent)
        finally:
            self._kick = None
            for task in inflight:
                task.cancel()

    async def _start(
        self,
        inflight: dict[asyncio.Task[bool], Item],
        last_seq: int,
        on_end: Callable[[asyncio.Task[bool]], None],
    ) -> int:
        """Start publishing the oldest offers not yet started, up to the window, once
        they are on disk; drop those that expired while they waited. The last sequence
        number started."""
        room = self.window - len(inflight)
        if room <= 0:
            return last_seq
        items = self.outbox.after(last_seq, room)
        if not items:
            return last_seq
        await self.outbox.durable()  # on disk before it goes out
        now = self._clock.now()
        expired: list[Item] = []
        for item in items:
            last_seq = item.seq
            if item.offer.expires_at <= now:
                expired.append(item)
                continue
            task = asyncio.ensure_future(self._publish(item))
            task.add_done_callback(on_end)
            inflight[task] = item
        if expired:
            self.outbox.expire(expired)
            self.stats.expired += len(expired)
            for item in expired:
                self._done(item, False)
        return last_seq

    def _count(self, item: Item, sent: bool) -> None:
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

    def _done(self, item: Item, sent: bool) -> None:
        if self._on_done is not None:
            self._on_done(item, sent)

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
            return await self._sink.publish_signage(item.offer, item.payload)
        return await self._sink.publish_offer(item.target, item.offer, item.payload)
