"""The reference shopper-app client: what an app developer reads to learn the contract.

    async with ShopperApp(url, store="store-001", token=token) as app:
        async for received in app.offers():
            show(received.offer)
            await app.send_feedback(received.offer.id, "opened")

It subscribes at QoS 1 to its own offers topic only. A payload that is not a
valid offer is counted in ``rejected`` and logged once per reason; the stream
goes on.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Literal, Self

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import ValidationError

from proximity.delivery._bridge import (
    Protocol,
    TlsFiles,
    is_failure,
    make_client,
    reason_text,
    shut_down,
    to_loop,
)
from proximity.delivery.topics import feedback_topic, offers_topic
from proximity.delivery.url import BrokerUrl
from proximity.errors import BrokerUnavailable
from proximity.offers import Offer

log = structlog.get_logger(__name__)

Action = Literal["delivered", "opened", "clicked", "dismissed"]


@dataclass(frozen=True, slots=True)
class ReceivedOffer:
    offer: Offer
    topic: str
    payload: bytes
    """Exactly the bytes the broker delivered."""
    expiry_interval: int | None
    """The MQTT 5 message expiry the broker passed on (None with MQTT 3.1.1)."""


class ShopperApp:
    def __init__(
        self,
        url: BrokerUrl,
        *,
        store: str,
        token: str,
        protocol: Protocol = "5",
        client_id: str | None = None,
        timeout: float = 10.0,
        tls: TlsFiles | None = None,
    ) -> None:
        self.url = url
        self.store = store
        self.token = token
        self._topic = offers_topic(store, token)
        self._feedback_topic = feedback_topic(store, token)
        self._timeout = timeout
        self._client = make_client(url, client_id or f"app-{token}", protocol, tls)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[ReceivedOffer] = asyncio.Queue()
        self._ready: asyncio.Future[None] | None = None
        self.rejected: Counter[str] = Counter()

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._ready = self._loop.create_future()
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        try:
            await asyncio.wait_for(
                asyncio.to_thread(self._client.connect, self.url.host, self.url.port, 30),
                self._timeout,
            )
        except (OSError, TimeoutError) as exc:
            raise BrokerUnavailable(f"shopper app cannot connect to {self.url}: {exc}") from exc
        self._client.loop_start()
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), self._timeout)
        except BaseException:
            await asyncio.to_thread(self._stop)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self._stop)

    def _stop(self) -> None:
        shut_down(self._client)

    @property
    def pending(self) -> int:
        """Offers received but not yet taken from :meth:`offers`."""
        return self._queue.qsize()

    async def offers(self) -> AsyncIterator[ReceivedOffer]:
        """Offers as they arrive, forever (cancel the consuming task to stop)."""
        while True:
            yield await self._queue.get()

    async def send_feedback(self, offer_id: str, action: Action) -> None:
        payload = json.dumps(
            {"offer": offer_id, "action": action, "at": datetime.now(UTC).isoformat()}
        )
        info = self._client.publish(self._feedback_topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise BrokerUnavailable(f"feedback not sent: {mqtt.error_string(info.rc)}")

    # paho's thread -----------------------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if is_failure(reason_code):
            assert self._loop is not None
            self._to_loop(
                self._fail, BrokerUnavailable(f"{self.url} refused: {reason_text(reason_code)}")
            )
            return
        client.subscribe(self._topic, qos=1)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        assert self._loop is not None
        if any(is_failure(rc) for rc in reason_codes):
            error = BrokerUnavailable(f"{self.url} refused the subscription to {self._topic}")
            self._to_loop(self._fail, error)
        else:
            self._to_loop(self._subscribed)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        assert self._loop is not None
        props = getattr(msg, "properties", None)
        expiry = getattr(props, "MessageExpiryInterval", None) if props is not None else None
        self._to_loop(self._received, msg.topic, bytes(msg.payload), expiry)

    def _to_loop(self, callback: Callable[..., None], *args: object) -> None:
        to_loop(self._loop, callback, *args)

    # the event loop ----------------------------------------------------------------------

    def _subscribed(self) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    def _fail(self, error: BrokerUnavailable) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)

    def _received(self, topic: str, payload: bytes, expiry: int | None) -> None:
        try:
            offer = Offer.model_validate_json(payload)
        except ValidationError as exc:
            reason = exc.errors()[0]["type"] if exc.errors() else "invalid"
            self.rejected[reason] += 1
            if self.rejected[reason] == 1:
                log.warning("offer_rejected", topic=topic, reason=reason)
            return
        self._queue.put_nowait(ReceivedOffer(offer, topic, payload, expiry))
