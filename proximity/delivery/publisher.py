"""The MQTT publisher: an async context manager over paho-mqtt 2.x, in the style of aiomqtt.

    async with MqttPublisher(url, store="store-001", gateway="gw-1", client_id="gw-1") as pub:
        await pub.publish_offer(token, offer)      # returns after the broker's PUBACK

- Offers go at QoS 1, not retained. With MQTT 5 the message expiry is the
  offer's remaining lifetime (rounded up, at least 1 s) and user properties
  carry ``offer_id``, ``rule`` and ``rules_version``; with MQTT 3.1.1 those are
  left out (``expires_at`` is in the payload anyway).
- A retained status on ``.../gateways/{gateway}/status``: ``online`` once
  connected, ``offline`` (``"graceful": true``) on a clean exit, and the same
  ``offline`` (``"graceful": false``) as the last will when the gateway vanishes.
- Threads: a :class:`~proximity.delivery._bridge.PahoBridge` runs paho's network
  thread and its blocking calls off the event loop; paho callbacks only hand
  their arguments to the event loop, where futures are resolved. Delivery is
  tracked by message id through ``on_publish`` (never ``wait_for_publish``,
  which raises for a message published while disconnected).
- Failures are typed: :class:`BrokerUnavailable` when the broker cannot be
  reached or the connection drops (every publish waiting for its PUBACK fails
  at once, nothing hangs), :class:`PublishTimeout` when no PUBACK comes in time.
  A publish that failed is never sent later behind the caller's back: paho would
  re-send it after reconnecting, possibly after the offer expired, so it is
  taken out of paho's queue (the caller, e.g. the outbox, retries it itself).
- paho reconnects on its own, trying every second, so the gateway is back within
  about a second of the broker; the status goes back to ``online`` and the
  feedback subscription is renewed on each connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Callable
from types import TracebackType
from typing import Self

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties, VariableByteIntegers

from proximity import __version__
from proximity.clock import Clock, SystemClock
from proximity.delivery._bridge import PahoBridge, Protocol, TlsFiles
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

OFFLINE_STATUS_TIMEOUT_S = 2.0


_PUBLISH_TEMPLATE = Properties(PacketTypes.PUBLISH)
_MAX_UINT32 = 0xFFFFFFFF
_MAX_UTF8 = 0xFFFF


class PublishProperties(Properties):
    """PUBLISH properties with a message expiry and user properties, packed once.

    paho's :class:`Properties` looks every attribute up in its name table when it
    is set and again when it is packed: about 60 µs an offer, a quarter of the
    publishing cost under load. This packs the two properties an offer carries
    as MQTT 5.0 (3.3.2.3) lays them out: identifier 0x02, a four-byte integer;
    identifier 0x26 for each UTF-8 string pair. The tests check that it packs
    byte for byte what paho's own class packs. Reading it back works as for any
    :class:`Properties`.
    """

    _packed: bytes

    def __init__(self, expiry_s: int, user: list[tuple[str, str]]) -> None:
        if not 0 <= expiry_s <= _MAX_UINT32:
            raise ValueError(f"message expiry {expiry_s}s is out of range")
        self.__dict__.update(_PUBLISH_TEMPLATE.__dict__)  # its tables, shared, never changed
        body = bytearray(b"\x02")
        body += expiry_s.to_bytes(4, "big")
        for key, value in user:
            body += b"\x26"
            body += _utf8(key)
            body += _utf8(value)
        object.__setattr__(self, "MessageExpiryInterval", expiry_s)
        if user:
            object.__setattr__(self, "UserProperty", list(user))
        object.__setattr__(self, "_packed", VariableByteIntegers.encode(len(body)) + body)

    def pack(self) -> bytes:
        return self._packed


def _utf8(text: str) -> bytes:
    if "\x00" in text:  # MQTT 5.0 1.5.4: a receiver treats it as a malformed packet
        raise ValueError(f"a user property cannot hold U+0000: {text!r}")
    data = text.encode()
    if len(data) > _MAX_UTF8:
        raise ValueError(f"a user property of {len(data)} bytes is longer than MQTT allows")
    return len(data).to_bytes(2, "big") + data


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
        version: str = __version__,
        rules_version: str | None = None,
        clock: Clock | None = None,
        tls: TlsFiles | None = None,
        require_connection: bool = True,
    ) -> None:
        """``tls``: CA and client certificate for an ``mqtts://`` broker (default: system CAs).

        ``require_connection=False``: start even when the broker is down, and connect
        (and reconnect) in the background; publishing raises BrokerUnavailable meanwhile.
        """
        if url.is_embedded:
            raise ValueError("start the EmbeddedBroker and pass its url, not 'embedded'")
        self.url = url
        self.store = store
        self.gateway = gateway
        self.protocol = protocol
        self.version = version
        self._publish_timeout = publish_timeout
        self._rules_version = rules_version
        self._require_connection = require_connection
        self._clock = clock or SystemClock()
        # The broker counts message expiry in real seconds; a clock that runs faster than
        # real time (a simulated store hour in a minute) says how much faster.
        self._speed: float = getattr(self._clock, "speed", 1.0)
        self._status_topic = status_topic(store, gateway)
        self._bridge = PahoBridge(
            url,
            client_id=client_id,
            protocol=protocol,
            tls=tls,
            connect_timeout=connect_timeout,
            publish_timeout=publish_timeout,
            subscriptions=(feedback_filter(store),),  # app feedback for this store
            on_connect=self._on_connect,
            on_message=self._on_message,
        )
        self.published = 0
        """Offers the broker acknowledged."""
        self.failed = 0
        """Offers that raised BrokerUnavailable or PublishTimeout."""
        self.expired = 0
        """Offers not sent because they expired first."""
        self.feedback_handler: Callable[[str, bytes], None] | None = None
        """Called on the event loop with (topic, payload) of each app feedback message."""

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._set_will()
        if not self._require_connection:
            # Start whether or not the broker is there: paho keeps trying, the outbox
            # keeps the offers. Only a broker that refuses this gateway fails the start.
            why_not = await self._bridge.connect_in_background()
            if why_not is not None:
                log.warning("mqtt_broker_unreachable_at_start", broker=str(self.url), error=why_not)
            return self
        # the feedback subscription is not waited for: a broker that refuses it still
        # takes the offers
        await self._bridge.connect(subscribed=False)
        try:
            await self._bridge.publish(
                self._status_topic, self._status("online"), qos=1, retain=True
            )
        except BaseException:
            await self._bridge.close()
            raise
        log.info("mqtt_connected", broker=str(self.url), protocol=self.protocol)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.connected:
            try:
                await asyncio.wait_for(
                    self._bridge.publish(
                        self._status_topic,
                        self._status("offline", graceful=True),
                        qos=1,
                        retain=True,
                    ),
                    min(OFFLINE_STATUS_TIMEOUT_S, self._publish_timeout),
                )
            except (BrokerUnavailable, PublishTimeout, TimeoutError):
                log.warning("mqtt_offline_status_not_sent", broker=str(self.url))
        await self._bridge.close()
        log.info("mqtt_disconnected", broker=str(self.url))

    @property
    def connected(self) -> bool:
        return self._bridge.connected

    @property
    def rules_version(self) -> str | None:
        return self._rules_version

    async def set_rules_version(self, version: str) -> None:
        """Serve a new rules version: the retained status (and the will) say so from now on."""
        self._rules_version = version
        self._set_will()
        if self.connected:
            await self._bridge.publish(
                self._status_topic, self._status("online"), qos=1, retain=True
            )

    # -- publishing ------------------------------------------------------------------------

    async def publish_offer(
        self, shopper_token: str, offer: Offer, payload: str | None = None
    ) -> bool:
        """Publish one offer at QoS 1 and wait for the PUBACK. ``payload``: the offer's
        JSON, when the caller made it already (the outbox has).

        Returns False (and counts it in ``expired``) when the offer expired before it
        could be sent: a late offer is never delivered. Raises BrokerUnavailable or
        PublishTimeout (counted in ``failed``) when the broker did not take it.
        """
        topic = offers_topic(self.store, shopper_token)
        remaining = self._remaining_s(offer)
        if remaining is None:
            log.info("offer_expired_before_publish", offer=offer.id, rule=offer.rule)
            return False
        user = [("offer_id", offer.id), ("rule", offer.rule)]
        if offer.rules_version is not None:
            user.append(("rules_version", offer.rules_version))
        properties = self._expiry(remaining, user)
        try:
            await self._bridge.publish(
                topic,
                (payload or offer.model_dump_json()).encode(),
                qos=1,
                properties=properties,
            )
        except (BrokerUnavailable, PublishTimeout):
            self.failed += 1
            raise
        self.published += 1
        return True

    async def publish_signage(self, offer: Offer, payload: str | None = None) -> bool:
        """An anonymous call to action for a zone's screens (QoS 1, expiring like an offer);
        ``payload`` as for :meth:`publish_offer`."""
        if offer.zone is None:
            raise ValueError("signage needs the offer's zone")
        remaining = self._remaining_s(offer)
        if remaining is None:
            return False
        await self._bridge.publish(
            signage_topic(self.store, offer.zone),
            (payload or offer.model_dump_json()).encode(),
            qos=1,
            properties=self._expiry(remaining),
        )
        return True

    async def publish_event(self, event: JourneyEvent, qos: int = 0) -> None:
        """Publish a journey event for analytics (QoS 0 by default: fire and forget)."""
        await self._bridge.publish(
            events_topic(self.store), event.model_dump_json().encode(), qos=qos
        )

    def _remaining_s(self, offer: Offer) -> float | None:
        """Seconds ``offer`` has left; None (and counted) when it has expired."""
        remaining = (offer.expires_at - self._clock.now()).total_seconds()
        if remaining <= 0:
            self.expired += 1
            return None
        return remaining

    def _expiry(
        self, remaining_s: float, user: list[tuple[str, str]] | None = None
    ) -> Properties | None:
        """MQTT 5 PUBLISH properties: the message expiry (in real seconds: on a sped-up
        clock, the offer's remaining lifetime divided by the speed) and ``user``
        properties (None with MQTT 3.1.1)."""
        if self.protocol != "5":
            return None
        return PublishProperties(max(1, math.ceil(remaining_s / self._speed)), user or [])

    # -- from the bridge, on the event loop -------------------------------------------------

    def _on_connect(self, first: bool) -> None:
        if first and self._require_connection:
            return  # __aenter__ publishes the status and waits for its PUBACK
        if first:
            log.info("mqtt_connected", broker=str(self.url))
        with contextlib.suppress(BrokerUnavailable):  # lost again already: the next CONNACK
            self._bridge.publish_nowait(
                self._status_topic, self._status("online"), qos=1, retain=True
            )

    def _on_message(self, message: mqtt.MQTTMessage) -> None:
        if self.feedback_handler is not None:
            self.feedback_handler(message.topic, bytes(message.payload))

    # -- status ----------------------------------------------------------------------------

    def _set_will(self) -> None:
        """The broker publishes this (retained) if the connection ends without DISCONNECT."""
        will = self._status("offline", graceful=False, at=False)
        self._bridge.set_will(self._status_topic, will, qos=1, retain=True)

    def _status(self, state: str, *, graceful: bool | None = None, at: bool = True) -> bytes:
        status: dict[str, object] = {
            "state": state,
            "gateway": self.gateway,
            "version": self.version,
            "rules_version": self._rules_version,
        }
        if graceful is not None:
            status["graceful"] = graceful
        if at:  # not in the will: it is sent long after it was written
            status["at"] = self._clock.now().isoformat()
        return json.dumps(status).encode()
