"""The store's journey events as the broker carries them: what analytics would see.

The live mode watches ``proximity/v1/{store}/events`` to tell, as they happen,
what the daemon made of what the simulator did at the checkout (a tap seen, a
coupon redeemed). Reading the broker, not the daemon's log, keeps the check on
the product's contract: an act counts when the daemon published it.

paho runs its network thread; its callbacks only hand messages to the event
loop (``call_soon_threadsafe`` into a queue), and :meth:`JourneyFeed.events`
is the async stream. Payloads that are not a journey event are counted in
``rejected``, never raised: the feed is an observer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Self

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import ValidationError

from proximity.delivery._bridge import (
    close_client,
    connect_off_loop,
    is_failure,
    make_client,
    reason_text,
    to_loop,
)
from proximity.delivery.topics import events_topic
from proximity.delivery.url import BrokerUrl
from proximity.errors import BrokerUnavailable
from proximity.events import JourneyEvent

KEEPALIVE_S = 30


class JourneyFeed:
    """Subscribed to one store's journey events from ``__aenter__`` until ``__aexit__``."""

    def __init__(self, url: BrokerUrl, store: str, *, timeout: float = 10.0) -> None:
        self.url = url
        self.topic = events_topic(store)
        self._timeout = timeout
        self._client = make_client(url, f"firmware-sim-events-{store}", "5")
        self._client.connect_timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Future[None] | None = None
        self._queue: asyncio.Queue[JourneyEvent] = asyncio.Queue()
        self.rejected = 0
        """Payloads on the topic that were not a journey event."""

    async def __aenter__(self) -> Self:
        loop = self._loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        client = self._client
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        try:
            await connect_off_loop(client, self.url, self._timeout, KEEPALIVE_S)
            client.loop_start()
            await asyncio.wait_for(asyncio.shield(self._ready), self._timeout)
        except (OSError, TimeoutError) as exc:
            await asyncio.to_thread(close_client, client)
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            raise BrokerUnavailable(f"cannot watch {self.topic} on {self.url}: {reason}") from exc
        except BaseException:
            await asyncio.to_thread(close_client, client)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(close_client, self._client)

    async def events(self) -> AsyncIterator[JourneyEvent]:
        """Journey events as they arrive, forever (cancel the consumer to stop)."""
        while True:
            yield await self._queue.get()

    # paho's thread: hand everything to the event loop -----------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        to_loop(self._loop, self._connack, reason_code)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        to_loop(self._loop, self._suback, any(is_failure(rc) for rc in reason_codes))

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        to_loop(self._loop, self._received, bytes(msg.payload))

    # the event loop ----------------------------------------------------------------------

    def _connack(self, reason_code: ReasonCode) -> None:
        if is_failure(reason_code):
            self._fail(f"{self.url} refused: {reason_text(reason_code)}")
            return
        self._client.subscribe(self.topic, qos=1)  # again after every reconnect

    def _suback(self, refused: bool) -> None:
        if refused:
            self._fail(f"{self.url} refused the subscription to {self.topic}")
        elif self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    def _fail(self, why: str) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(BrokerUnavailable(why))

    def _received(self, payload: bytes) -> None:
        try:
            event = JourneyEvent.model_validate_json(payload)
        except ValidationError:
            self.rejected += 1
            return
        self._queue.put_nowait(event)
