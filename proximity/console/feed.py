"""The console's live feed: what just happened in the store, for the browsers watching.

The daemon hands every decision to :meth:`ConsoleFeed.decision` (its ``on_decision``
hook): a call that never waits and never allocates more than a few small objects. The
feed keeps

- a bounded ring of the newest journey events and offers, each with the shopper shown
  as four hex characters of a hash of their token (never the token, an offer id or a
  device address);
- how many shoppers are in each zone now (from the enter, exit and visit-end events);
- the offers of the last minute, for the offers-per-minute figure.

Each browser following the live page (Server-Sent Events, see :mod:`.server`) gets a
:class:`Subscription`: a bounded queue the daemon appends to. A browser that reads too
slowly loses its oldest updates, counted in :attr:`Subscription.dropped` and
:attr:`ConsoleFeed.dropped`; the daemon never waits on it.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter, deque
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from proximity.clock import Clock
from proximity.console.settings import ConsoleSettings
from proximity.engine.decide import Decision
from proximity.events import EventKind, JourneyEvent
from proximity.offers import Offer

Entry = dict[str, Any]
"""One feed line as the browser gets it (JSON): at, kind, zone, who, rule, variant."""

MINUTE = timedelta(minutes=1)


def short(token: str) -> str:
    """A shopper as the console shows them: 4 hex characters of a hash of the token,
    enough to follow one shopper along the feed, useless to find them anywhere else."""
    return hashlib.blake2s(token.encode(), digest_size=2).hexdigest()


class Subscription:
    """One browser's updates: a bounded queue; when full, the oldest update goes."""

    def __init__(self, size: int) -> None:
        self._pending: deque[Entry] = deque(maxlen=size)
        self._wake = asyncio.Event()
        self.dropped = 0
        self.closed = False

    def push(self, entry: Entry) -> bool:
        """Queue ``entry``; False when the oldest waiting update was dropped for it."""
        full = len(self._pending) == self._pending.maxlen
        if full:
            self.dropped += 1
        self._pending.append(entry)
        self._wake.set()
        return not full

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    def take(self) -> list[Entry]:
        """Every update waiting now (maybe none), without waiting."""
        # the wake-up of what is taken is used up too: else the next wait() would wake
        # at once to nothing, and the stream send an empty update
        self._wake.clear()
        out = list(self._pending)
        self._pending.clear()
        return out

    async def wait(self) -> list[Entry]:
        """Every update waiting (at least one, unless the subscription is closed first, or
        the caller's timeout ends the wait)."""
        while not self._pending and not self.closed:
            await self._wake.wait()
            self._wake.clear()
        return self.take()


class Broadcast:
    """The browsers following a live page: a bounded :class:`Subscription` each (when a
    browser's queue is full its oldest update goes, counted; the server never waits), at
    most ``max_subscribers`` of them."""

    def __init__(self, subscriber_queue: int = 256, max_subscribers: int = 16) -> None:
        self._queue_size = subscriber_queue
        self._max_subscribers = max_subscribers
        self._subscribers: set[Subscription] = set()
        self.dropped = 0
        """Updates dropped for browsers that read too slowly, all browsers together."""

    def broadcast(self, entry: Entry) -> None:
        for subscription in self._subscribers:
            if not subscription.push(entry):
                self.dropped += 1

    def subscribe(self) -> Subscription | None:
        """A new browser's subscription, or None when ``max_subscribers`` follow already."""
        if len(self._subscribers) >= self._max_subscribers:
            return None
        subscription = Subscription(self._queue_size)
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscription.close()
        self._subscribers.discard(subscription)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def close(self) -> None:
        """Every browser's stream ends (the server is stopping)."""
        for subscription in list(self._subscribers):
            self.unsubscribe(subscription)


class ConsoleFeed(Broadcast):
    def __init__(
        self,
        now: Callable[[], datetime],
        size: int = 200,
        subscriber_queue: int = 256,
        max_subscribers: int = 16,
    ) -> None:
        """``now``: the daemon's clock (offers per minute are counted on its time)."""
        super().__init__(subscriber_queue, max_subscribers)
        self._now = now
        self._ring: deque[Entry] = deque(maxlen=size)
        self._where: dict[str, set[str]] = {}
        """Visit id → the zones it is in now (the visit id never leaves this object)."""
        self._occupancy: Counter[str] = Counter()
        self._offer_times: deque[datetime] = deque()
        self.events = 0
        self.offers = 0

    @classmethod
    def for_settings(cls, settings: ConsoleSettings, clock: Clock) -> ConsoleFeed:
        """The feed of ``[console]``, on the daemon's clock."""
        return cls(
            clock.now,
            size=settings.feed_size,
            subscriber_queue=settings.subscriber_queue,
            max_subscribers=settings.max_subscribers,
        )

    def hook(self, then: Callable[[Decision], None] | None = None) -> Callable[[Decision], None]:
        """The daemon's ``on_decision``: this feed, then ``then`` (the journey recorder's)."""
        if then is None:
            return self.decision

        def both(decision: Decision) -> None:
            self.decision(decision)
            then(decision)

        return both

    # -- what the daemon calls ------------------------------------------------------------------

    def decision(self, decision: Decision) -> None:
        """The daemon's ``on_decision`` hook: the event and the offers it decided."""
        self.event(decision.event)
        for offer in decision.offers:
            self.offer(offer, decision.event.shopper.token)

    def event(self, event: JourneyEvent) -> None:
        self.events += 1
        self._follow(event)
        self._publish(
            {
                "at": event.at.isoformat(timespec="seconds"),
                "kind": str(event.kind),
                "zone": event.zone,
                "who": short(event.shopper.token),
            }
        )

    def offer(self, offer: Offer, token: str | None = None) -> None:
        self.offers += 1
        self._offer_times.append(offer.issued_at)
        self._publish(
            {
                "at": offer.issued_at.isoformat(timespec="seconds"),
                "kind": "offer",
                "zone": offer.zone,
                "who": short(token) if token is not None else "",
                "rule": offer.rule,
                "variant": offer.variant,
            }
        )

    # -- what the console reads -----------------------------------------------------------------

    def occupancy(self) -> dict[str, int]:
        """Zone → shoppers in it now (zones nobody is in are left out)."""
        return {zone: n for zone, n in self._occupancy.items() if n > 0}

    def offers_per_minute(self) -> int:
        """Offers issued in the last minute of the daemon's clock."""
        since = self._now() - MINUTE
        times = self._offer_times
        while times and times[0] <= since:
            times.popleft()
        return len(times)

    def recent(self, n: int | None = None) -> list[Entry]:
        """The newest ``n`` feed lines (all kept when None), oldest first."""
        items = list(self._ring)
        return items if n is None else items[-n:]

    # -- inside ------------------------------------------------------------------------------------

    def _publish(self, entry: Entry) -> None:
        self._ring.append(entry)
        self.broadcast(entry)

    def _follow(self, event: JourneyEvent) -> None:
        kind = event.kind
        if kind is EventKind.ZONE_ENTER and event.zone is not None:
            zones = self._where.setdefault(event.visit, set())
            if event.zone not in zones:
                zones.add(event.zone)
                self._occupancy[event.zone] += 1
        elif kind is EventKind.ZONE_EXIT and event.zone is not None:
            held = self._where.get(event.visit)
            if held is not None and event.zone in held:
                held.discard(event.zone)
                self._occupancy[event.zone] -= 1
        elif kind is EventKind.VISIT_END:
            self._leave(self._where.pop(event.visit, ()))

    def _leave(self, zones: Iterable[str]) -> None:
        for zone in zones:
            self._occupancy[zone] -= 1
