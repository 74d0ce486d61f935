"""The MQTT publisher: an async context manager over paho-mqtt 2.x.

    async with MqttPublisher(url, store=..., gateway=..., client_id=...) as pub:
        await pub.publish_offer(token, offer)      # returns after the broker's PUBACK

- QoS 1 for offers; with MQTT 5 the message expiry is the offer's remaining
  lifetime and user properties carry the offer id, rule and rules version.
- A retained status on ``.../gateways/{gateway}/status``: ``online`` on connect,
  ``offline`` on a clean exit, and the same ``offline`` as the last will when
  the gateway vanishes.
- paho's network thread reconnects on its own with backoff; while the
  connection is down, publishing raises :class:`BrokerUnavailable` at once and
  every publish waiting for its PUBACK fails with it — nothing hangs.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from proximity import __version__
from proximity.clock import Clock, SystemClock
from proximity.delivery._bridge import (
    Protocol,
    TlsFiles,
    is_failure,
    make_client,
    reason_text,
    shut_down,
    to_loop,
)
from proximity.delivery.topics import (
    events_topic,
    feedback_filter,
    offers_topic,
    signage_topic,
    status_topic,
)
from proximity.delivery.url import BrokerUrl
from proximity.errors import BrokerUnavailable, PublishTimeout
from proximity.events import JourneyEvent
from proximity.offers import Offer

log = structlog.get_logger(__name__)


class MqttPublisher:
    def __init__(
        self,
        url: BrokerUrl,
        *,
        store: str,
        gateway: str,
        client_id: str,
        protocol: Protocol = "5",
        connect_timeout: float = 10.0,
        publish_timeout: float = 10.0,
        rules_version: str | None = None,
        clock: Clock | None = None,
        tls: TlsFiles | None = None,
        require_connection: bool = True,
    ) -> None:
        """``require_connection=False``: start even when the broker is down, and connect
        (and reconnect) in the background; publishing raises BrokerUnavailable meanwhile."""
        if url.is_embedded:
            raise ValueError("start the EmbeddedBroker and pass its url, not 'embedded'")
        self.url = url
        self.store = store
        self.gateway = gateway
        self.protocol = protocol
        self._connect_timeout = connect_timeout
        self._publish_timeout = publish_timeout
        self._rules_version = rules_version
        self._require_connection = require_connection
        self._clock = clock or SystemClock()
        self._status_topic = status_topic(store, gateway)
        self._client = make_client(url, client_id, protocol, tls)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = False
        self._closing = False
        self._first_connack: asyncio.Future[None] | None = None
        self._pending: dict[int, asyncio.Future[None]] = {}
        self.published = 0
        self.failed = 0
        self.feedback_handler: Callable[[str, bytes], None] | None = None
        """Called on the event loop with (topic, payload) of each app feedback message."""
        self.expired = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._first_connack = self._loop.create_future()
        client = self._client
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.will_set(self._status_topic, self._status("offline"), qos=1, retain=True)
        try:
            await asyncio.wait_for(
                asyncio.to_thread(client.connect, self.url.host, self.url.port, 30),
                self._connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            if self._require_connection:
                raise BrokerUnavailable(f"cannot connect to {self.url}: {reason}") from exc
            # A gateway starts anyway: paho keeps trying, the outbox keeps the offers.
            log.warning("mqtt_broker_unreachable_at_start", broker=str(self.url), error=reason)
            client.connect_async(self.url.host, self.url.port, 30)
            client.loop_start()
            return self
        client.loop_start()
        try:
            await asyncio.wait_for(asyncio.shield(self._first_connack), self._connect_timeout)
        except (TimeoutError, BrokerUnavailable) as exc:
            await asyncio.to_thread(self._shutdown_client)
            if isinstance(exc, BrokerUnavailable):
                raise
            raise BrokerUnavailable(f"no answer to CONNECT from {self.url}") from exc
        try:
            await self._publish(self._status_topic, self._status("online"), qos=1, retain=True)
        except (BrokerUnavailable, PublishTimeout):
            await asyncio.to_thread(self._shutdown_client)
            raise
        log.info("mqtt_connected", broker=str(self.url), protocol=self.protocol)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._connected:
            try:
                await asyncio.wait_for(
                    self._publish(self._status_topic, self._status("offline"), qos=1, retain=True),
                    min(2.0, self._publish_timeout),
                )
            except (BrokerUnavailable, PublishTimeout, TimeoutError):
                log.warning("mqtt_offline_status_not_sent", broker=str(self.url))
        self._closing = True
        await asyncio.to_thread(self._shutdown_client)
        self._fail_pending(BrokerUnavailable("publisher closed"))

    def _shutdown_client(self) -> None:
        shut_down(self._client)

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def rules_version(self) -> str | None:
        return self._rules_version

    async def set_rules_version(self, version: str) -> None:
        """Serve a new rules version: the retained status says so from now on."""
        self._rules_version = version
        if self._connected:
            await self._publish(self._status_topic, self._status("online"), qos=1, retain=True)

    # -- publishing ------------------------------------------------------------------------

    async def publish_offer(self, shopper_token: str, offer: Offer) -> bool:
        """Publish one offer at QoS 1 and wait for the PUBACK.

        Returns False (and counts it) when the offer expired before it could be
        sent: a late offer is never delivered.
        """
        remaining = (offer.expires_at - self._clock.now()).total_seconds()
        if remaining <= 0:
            self.expired += 1
            log.info("offer_expired_before_publish", offer=offer.id, rule=offer.rule)
            return False
        properties = None
        if self.protocol == "5":
            properties = Properties(PacketTypes.PUBLISH)
            properties.MessageExpiryInterval = max(1, math.ceil(remaining))
            user = [("offer_id", offer.id), ("rule", offer.rule)]
            if offer.rules_version is not None:
                user.append(("rules_version", offer.rules_version))
            properties.UserProperty = user
        try:
            await self._publish(
                offers_topic(self.store, shopper_token),
                offer.model_dump_json().encode(),
                qos=1,
                properties=properties,
            )
        except (BrokerUnavailable, PublishTimeout):
            self.failed += 1
            raise
        self.published += 1
        return True

    async def publish_signage(self, offer: Offer) -> bool:
        """An anonymous call to action for a zone's screens (QoS 1, expiring like an offer)."""
        if offer.zone is None:
            raise ValueError("signage needs the offer's zone")
        remaining = (offer.expires_at - self._clock.now()).total_seconds()
        if remaining <= 0:
            self.expired += 1
            return False
        properties = None
        if self.protocol == "5":
            properties = Properties(PacketTypes.PUBLISH)
            properties.MessageExpiryInterval = max(1, math.ceil(remaining))
        await self._publish(
            signage_topic(self.store, offer.zone),
            offer.model_dump_json().encode(),
            qos=1,
            properties=properties,
        )
        return True

    async def publish_event(self, event: JourneyEvent, qos: int = 0) -> None:
        """Publish a journey event for analytics (QoS 0 by default: fire and forget)."""
        await self._publish(events_topic(self.store), event.model_dump_json().encode(), qos=qos)

    async def _publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        assert self._loop is not None, "use MqttPublisher as an async context manager"
        if not self._connected:
            raise BrokerUnavailable(f"not connected to {self.url}")
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise BrokerUnavailable(f"publish to {self.url} failed: {mqtt.error_string(info.rc)}")
        if qos == 0:
            return
        # No await between publish() and registering: on_publish reaches the loop
        # through call_soon_threadsafe, so it cannot run before the future exists.
        future = self._loop.create_future()
        self._pending[info.mid] = future
        try:
            await asyncio.wait_for(asyncio.shield(future), self._publish_timeout)
        except TimeoutError as exc:
            raise PublishTimeout(
                f"no PUBACK from {self.url} within {self._publish_timeout:g}s"
            ) from exc
        finally:
            if self._pending.get(info.mid) is future:
                del self._pending[info.mid]

    # -- paho callbacks (paho's thread) ----------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        assert self._loop is not None
        self._to_loop(self._connack, reason_code)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        assert self._loop is not None
        self._to_loop(self._lost, reason_text(reason_code))

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self._to_loop(self._feedback, msg.topic, bytes(msg.payload))

    def _feedback(self, topic: str, payload: bytes) -> None:
        if self.feedback_handler is not None:
            self.feedback_handler(topic, payload)

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        assert self._loop is not None
        self._to_loop(self._acked, mid, reason_code)

    def _to_loop(self, callback: Callable[..., None], *args: object) -> None:
        to_loop(self._loop, callback, *args)

    # -- the same events, on the event loop ------------------------------------------------

    def _connack(self, reason_code: ReasonCode) -> None:
        assert self._first_connack is not None
        if is_failure(reason_code):
            error = BrokerUnavailable(
                f"{self.url} refused the connection: {reason_text(reason_code)}"
            )
            if not self._first_connack.done():
                self._first_connack.set_exception(error)
                self._first_connack.exception()  # retrieved: the waiter re-raises it
            log.error("mqtt_connect_refused", broker=str(self.url), reason=reason_text(reason_code))
            return
        was_down = self._first_connack.done() or not self._require_connection
        self._connected = True
        # app feedback for this store, (re)subscribed on every connection
        self._client.subscribe(feedback_filter(self.store), qos=1)
        if not self._first_connack.done():
            self._first_connack.set_result(None)
        if was_down:
            log.info("mqtt_reconnected", broker=str(self.url))
            self._client.publish(self._status_topic, self._status("online"), qos=1, retain=True)

    def _lost(self, reason: str) -> None:
        if self._closing:
            log.info("mqtt_disconnected", broker=str(self.url))
        elif self._connected:
            log.warning("mqtt_connection_lost", broker=str(self.url), reason=reason)
        self._connected = False
        error = BrokerUnavailable(f"connection to {self.url} lost: {reason}")
        if self._first_connack is not None and not self._first_connack.done():
            # closed before CONNACK (a refused certificate, say): fail the start at once
            self._first_connack.set_exception(error)
            self._first_connack.exception()
        self._fail_pending(error)

    def _acked(self, mid: int, reason_code: ReasonCode) -> None:
        future = self._pending.get(mid)
        if future is None or future.done():
            return  # a publish we stopped waiting for (timed out) or QoS 0
        if is_failure(reason_code):
            future.set_exception(
                BrokerUnavailable(f"{self.url} refused the publish: {reason_text(reason_code)}")
            )
        else:
            future.set_result(None)

    def _fail_pending(self, error: BrokerUnavailable) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
                future.exception()  # mark retrieved; the waiter re-raises it

    def _status(self, state: str) -> bytes:
        return json.dumps(
            {
                "state": state,
                "gateway": self.gateway,
                "version": __version__,
                "rules_version": self._rules_version,
                "at": datetime.now(UTC).isoformat(),
            }
        ).encode()
