"""The reference shopper-app client: what an app developer reads to learn the contract.

    async with ShopperApp(url, store="store-001", token=token) as app:   # subscribed
        async for received in app.offers():
            show(received.offer)
            await app.send_feedback(received.offer.id, "opened")

The contract, as this client follows it:

- Subscribe at QoS 1 to your own offers topic only,
  ``proximity/v1/{store}/shoppers/{token}/offers`` (a broker ACL should let a
  shopper read nothing else). ``__aenter__`` returns once the broker's SUBACK
  arrived, so nothing published after it is missed.
- Each payload is one offer's JSON. Validate it; a payload that is not a valid
  offer is counted in ``rejected`` (per reason) and logged once per reason, and
  the stream goes on.
- Delivery is at least once: the same offer can arrive twice. Offer ids are
  deterministic, so drop repeats by id (counted in ``duplicates``).
- With MQTT 5 the broker passes on the message expiry: what is left of the
  offer's lifetime (``ReceivedOffer.expiry_interval``). With MQTT 3.1.1 use the
  payload's ``expires_at``.
- Report what the shopper did on ``.../shoppers/{token}/feedback`` at QoS 1:
  ``{"offer": id, "action": "delivered"|"opened"|"clicked"|"dismissed", "at": ISO time}``.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self, get_args

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import ValidationError

from proximity.clock import Clock, SystemClock
from proximity.delivery._bridge import (
    Protocol,
    TlsFiles,
    close_client,
    connect_off_loop,
    is_failure,
    make_client,
    reason_text,
    to_loop,
)
from proximity.delivery.topics import feedback_topic, offers_topic
from proximity.delivery.url import BrokerUrl
from proximity.errors import BrokerUnavailable, PublishTimeout
from proximity.offers import Offer

log = structlog.get_logger(__name__)

Action = Literal["delivered", "opened", "clicked", "dismissed"]
ACTIONS: tuple[Action, ...] = get_args(Action)
KEEPALIVE_S = 30
REMEMBERED_IDS = 1024
"""How many recent offer ids are kept to drop redelivered duplicates."""


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
        clock: Clock | None = None,
    ) -> None:
        """``timeout`` bounds connecting, subscribing and each feedback's PUBACK."""
        self.url = url
        self.store = store
        self.token = token
        self.protocol = protocol
        self._topic = offers_topic(store, token)
        self._feedback_topic = feedback_topic(store, token)
        self._timeout = timeout
        self._clock = clock or SystemClock()
        self._client = make_client(url, client_id or f"app-{token}", protocol, tls)
        self._client.connect_timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[ReceivedOffer] = asyncio.Queue()
        self._ready: asyncio.Future[None] | None = None
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._seen: deque[str] = deque(maxlen=REMEMBERED_IDS)
        self._connected = False
        self._closing = False
        self.rejected: Counter[str] = Counter()
        """Payloads that were not a valid offer, per reason."""
        self.duplicates = 0
        """Offers received again (at-least-once delivery) and dropped."""

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._ready = self._loop.create_future()
        client = self._client
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect
        try:
            await connect_off_loop(client, self.url, self._timeout, KEEPALIVE_S)
        except (OSError, TimeoutError) as exc:
            await asyncio.to_thread(close_client, client)
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            raise BrokerUnavailable(f"shopper app cannot connect to {self.url}: {reason}") from exc
        client.loop_start()
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), self._timeout)
        except BaseException as exc:
            await asyncio.to_thread(close_client, client)
            if isinstance(exc, TimeoutError):
                raise BrokerUnavailable(
                    f"no answer from {self.url} within {self._timeout:g}s{self._hint()}"
                ) from exc
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        await asyncio.to_thread(close_client, self._client)
        self._connected = False
        self._fail_pending(BrokerUnavailable("shopper app closed"))

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def pending(self) -> int:
        """Offers received but not yet taken from :meth:`offers`."""
        return self._queue.qsize()

    async def offers(self) -> AsyncIterator[ReceivedOffer]:
        """Valid, new offers as they arrive, forever (break, or cancel the consumer, to stop).

        paho reconnects and resubscribes on its own after a lost connection.
        """
        while True:
            yield await self._queue.get()

    async def send_feedback(self, offer_id: str, action: Action) -> None:
        """Publish what the shopper did with an offer (QoS 1); returns after the PUBACK."""
        if action not in ACTIONS:
            raise ValueError(f"feedback action {action!r} is not one of {', '.join(ACTIONS)}")
        assert self._loop is not None, "use ShopperApp as an async context manager"
        payload = json.dumps(
            {"offer": offer_id, "action": action, "at": self._clock.now().isoformat()}
        )
        if not self._connected:
            raise BrokerUnavailable(f"feedback not sent: not connected to {self.url}")
        info = self._client.publish(self._feedback_topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise BrokerUnavailable(f"feedback not sent: {mqtt.error_string(info.rc)}")
        future = self._loop.create_future()
        self._pending[info.mid] = future
        try:
            await asyncio.wait_for(asyncio.shield(future), self._timeout)
        except TimeoutError as exc:
            raise PublishTimeout(f"no PUBACK for feedback within {self._timeout:g}s") from exc
        finally:
            if self._pending.get(info.mid) is future:
                del self._pending[info.mid]

    def _hint(self) -> str:
        if self.protocol == "5":
            return " (an MQTT 3.1.1-only broker, such as the embedded one, refuses MQTT 5)"
        return ""

    # paho's thread: hand everything to the event loop -----------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._to_loop(self._connack, reason_code)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._to_loop(self._suback, any(is_failure(rc) for rc in reason_codes))

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        props = msg.properties if self.protocol == "5" else None
        expiry = getattr(props, "MessageExpiryInterval", None)
        self._to_loop(self._received, msg.topic, bytes(msg.payload), expiry)

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._to_loop(self._acked, mid, reason_code)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._to_loop(self._lost, reason_text(reason_code))

    def _to_loop(self, callback: Callable[..., None], *args: object) -> None:
        to_loop(self._loop, callback, *args)

    # the event loop ----------------------------------------------------------------------

    def _connack(self, reason_code: ReasonCode) -> None:
        if is_failure(reason_code):
            self._fail_start(f"{self.url} refused: {reason_text(reason_code)}{self._hint()}")
            return
        self._connected = True
        self._client.subscribe(self._topic, qos=1)  # again after every reconnect

    def _suback(self, refused: bool) -> None:
        if refused:
            self._fail_start(f"{self.url} refused the subscription to {self._topic}")
            log.error("app_subscription_refused", topic=self._topic)
        elif self._ready is not None and not self._ready.done():
            self._ready.set_result(None)

    def _lost(self, reason: str) -> None:
        if self._connected and not self._closing:
            log.warning("app_connection_lost", broker=str(self.url), reason=reason)
        self._connected = False
        self._fail_start(f"connection to {self.url} lost: {reason}")
        self._fail_pending(BrokerUnavailable(f"connection to {self.url} lost: {reason}"))

    def _acked(self, mid: int, reason_code: ReasonCode) -> None:
        future = self._pending.get(mid)
        if future is None or future.done():
            return
        if is_failure(reason_code):
            error = f"{self.url} refused the feedback: {reason_text(reason_code)}"
            future.set_exception(BrokerUnavailable(error))
        else:
            future.set_result(None)

    def _received(self, topic: str, payload: bytes, expiry: int | None) -> None:
        try:
            offer = Offer.model_validate_json(payload)
        except ValidationError as exc:
            errors = exc.errors()
            reason = errors[0]["type"] if errors else "invalid"
            self.rejected[reason] += 1
            if self.rejected[reason] == 1:
                log.warning("offer_rejected", topic=topic, reason=reason)
            return
        if offer.id in self._seen:
            self.duplicates += 1
            return
        self._seen.append(offer.id)
        self._queue.put_nowait(ReceivedOffer(offer, topic, payload, expiry))

    def _fail_start(self, reason: str) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(BrokerUnavailable(reason))
            self._ready.exception()  # retrieved: the waiter re-raises it

    def _fail_pending(self, error: BrokerUnavailable) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
                future.exception()
