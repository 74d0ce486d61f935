"""The store's journey events as the broker carries them: what analytics would see.

The live mode watches ``proximity/v1/{store}/events`` to tell, as they happen,
what the daemon made of what the simulator did at the checkout (a tap seen, a
coupon redeemed). Reading the broker, not the daemon's log, keeps the check on
the product's contract: an act counts when the daemon published it.

A :class:`~proximity.delivery._bridge.PahoBridge` runs paho and hands each
message to the event loop, into a queue; :meth:`JourneyFeed.events`
is the async stream. Payloads that are not a journey event are counted in
``rejected``, never raised: the feed is an observer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Self

import paho.mqtt.client as mqtt
from pydantic import ValidationError

from proximity.delivery._bridge import PahoBridge
from proximity.delivery.topics import events_topic
from proximity.delivery.url import BrokerUrl
from proximity.events import JourneyEvent


class JourneyFeed:
    """Subscribed to one store's journey events from ``__aenter__`` until ``__aexit__``."""

    def __init__(self, url: BrokerUrl, store: str, *, timeout: float = 10.0) -> None:
        self.url = url
        self.topic = events_topic(store)
        self._bridge = PahoBridge(
            url,
            client_id=f"firmware-sim-events-{store}",
            connect_timeout=timeout,
            subscriptions=(self.topic,),
            on_message=self._received,
        )
        self._queue: asyncio.Queue[JourneyEvent] = asyncio.Queue()
        self.rejected = 0
        """Payloads on the topic that were not a journey event."""

    async def __aenter__(self) -> Self:
        """Returns once subscribed (SUBACK); raises BrokerUnavailable if it cannot be."""
        await self._bridge.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._bridge.close()

    async def events(self) -> AsyncIterator[JourneyEvent]:
        """Journey events as they arrive, forever (cancel the consumer to stop)."""
        while True:
            yield await self._queue.get()

    def _received(self, message: mqtt.MQTTMessage) -> None:
        try:
            event = JourneyEvent.model_validate_json(message.payload)
        except ValidationError:
            self.rejected += 1
            return
        self._queue.put_nowait(event)
