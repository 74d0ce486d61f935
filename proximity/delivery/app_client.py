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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self, get_args

import paho.mqtt.client as mqtt
import structlog
from pydantic import ValidationError

from proximity.clock import Clock, SystemClock
from proximity.delivery._bridge import PahoBridge, Protocol, TlsFiles
from proximity.delivery.topics import feedback_topic, offers_topic
from proximity.delivery.url import BrokerUrl
from proximity.offers import Offer

log = structlog.get_logger(__name__)

Action = Literal["delivered", "opened", "clicked", "dismissed"]
ACTIONS: tuple[Action, ...] = get_args(Action)
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
        self._clock = clock or SystemClock()
        self._bridge = PahoBridge(
            url,
            client_id=client_id or f"app-{token}",
            protocol=protocol,
            tls=tls,
            connect_timeout=timeout,
            publish_timeout=timeout,
            subscriptions=(self._topic,),
            on_message=self._received,
        )
        self._queue: asyncio.Queue[ReceivedOffer] = asyncio.Queue()
        self._seen: deque[str] = deque(maxlen=REMEMBERED_IDS)
        self.rejected: Counter[str] = Counter()
        """Payloads that were not a valid offer, per reason."""
        self.duplicates = 0
        """Offers received again (at-least-once delivery) and dropped."""

    async def __aenter__(self) -> Self:
        await self._bridge.connect()  # and subscribed: the SUBACK arrived
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._bridge.close()

    @property
    def connected(self) -> bool:
        return self._bridge.connected

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
        """Publish what the shopper did with an offer (QoS 1); returns after the PUBACK.

        Raises BrokerUnavailable (not connected, or the connection dropped) or
        PublishTimeout (no PUBACK within ``timeout``).
        """
        if action not in ACTIONS:
            raise ValueError(f"feedback action {action!r} is not one of {', '.join(ACTIONS)}")
        payload = json.dumps(
            {"offer": offer_id, "action": action, "at": self._clock.now().isoformat()}
        )
        await self._bridge.publish(self._feedback_topic, payload, qos=1)

    # on the event loop, from the bridge ---------------------------------------------------

    def _received(self, message: mqtt.MQTTMessage) -> None:
        topic, payload = message.topic, bytes(message.payload)
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
        props = message.properties if self.protocol == "5" else None
        expiry = getattr(props, "MessageExpiryInterval", None)
        self._queue.put_nowait(ReceivedOffer(offer, topic, payload, expiry))
