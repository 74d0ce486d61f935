"""hq's MQTT connection: a persistent MQTT 5 session on the central broker.

:class:`UplinkClient` subscribes ``proximity/v1/+/up/#`` (as ``$share/{group}/...`` when
a share group is set) with ``clean_start=False`` and a session expiry, so what stores
send while hq is down waits in the broker and arrives when it is back. It does not use
:class:`~proximity.delivery._bridge.PahoBridge`, which always starts clean sessions.

Threads: paho's network thread only appends ``(topic, payload)`` to a list and wakes the
event loop once per burst; everything else (parsing, the database, acks) happens on the
loop's side. Acks are QoS 1 publishes handed to paho without waiting for the PUBACK: a
lost ack only makes a gateway send its batch again, which hq acks again.

paho reads each packet with several ``recv`` calls (one byte of type, the length byte by
byte, then the rest) and one ``select`` per packet: the bridge's
:class:`~proximity.delivery._bridge.PahoClient` reads up to 64 KiB at a time and hands
paho its bytes from there, reading on while some are left (bench/chain: paho's CPU time
per received message about halved).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from proximity.delivery._bridge import PahoClient
from proximity.delivery.url import BrokerUrl
from proximity.errors import BrokerUnavailable

log = structlog.get_logger(__name__)

UPLINK = "proximity/v1/+/up/#"
KEEPALIVE_S = 30


class _BufferedClient(PahoClient):
    """The bridge's paho client (reads through a buffer), which also skips paho's empty
    Properties object of each QoS 1 message without properties.

    Overrides paho's private ``_handle_publish``: paho-mqtt 2.x (pinned ``<3`` in
    pyproject.toml); tests/test_chain_hq.py runs it against a real mosquitto."""

    def _handle_publish(self) -> MQTTErrorCode:
        # the uplink's case: QoS 1, MQTT 5 without properties. paho builds an empty
        # Properties object per message, a third of its time (bench/chain): skipped here;
        # anything else (and anything malformed) goes paho's way
        header = self._in_packet["command"]
        packet = self._in_packet["packet"]
        if (
            header & 0x06 != 0x02
            or self._protocol != mqtt.MQTTv5
            or self._manual_ack
            or len(packet) < 5
        ):
            return super()._handle_publish()
        end = 2 + ((packet[0] << 8) | packet[1])
        if len(packet) < end + 3 or packet[end + 2] != 0:
            return super()._handle_publish()
        mid = (packet[end] << 8) | packet[end + 1]
        message = mqtt.MQTTMessage(mid=mid, topic=bytes(packet[2:end]))
        message.dup = bool(header & 0x08)
        message.qos = 1
        message.retain = bool(header & 0x01)
        message.payload = bytes(packet[end + 3 :])
        message.timestamp = time.monotonic()
        self._handle_on_message(message)
        return self._send_puback(mid)


def uplink_filter(share_group: str) -> str:
    return f"$share/{share_group}/{UPLINK}" if share_group else UPLINK


class UplinkClient:
    """Receive every store's uplink; publish acks. :meth:`start`, then :meth:`close`."""

    def __init__(
        self,
        url: BrokerUrl,
        *,
        client_id: str,
        share_group: str,
        session_expiry_s: int,
        on_messages: Callable[[list[tuple[str, bytes]]], None],
        ca_file: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
    ) -> None:
        self.url = url
        self.filter = uplink_filter(share_group)
        self._expiry = session_expiry_s
        self._on_messages = on_messages
        client = self._client = _BufferedClient(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        if url.username is not None:
            client.username_pw_set(
                url.username, url.password.get_secret_value() if url.password else None
            )
        if url.tls:
            client.tls_set(
                ca_certs=ca_file,
                certfile=client_cert,
                keyfile=client_key,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.on_connect = self._paho_connect
        client.on_disconnect = self._paho_disconnect
        client.on_subscribe = self._paho_subscribe
        client.on_message = self._paho_message
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._scheduled = False
        self._subscribed: asyncio.Future[None] | None = None
        self.connected = False
        self.connect_timeout = 10.0
        self._closing = False

    async def start(self) -> None:
        """Connect and subscribe; returns at the SUBACK. BrokerUnavailable otherwise (the
        client is closed then). paho reconnects on its own afterwards."""
        timeout = self.connect_timeout
        self._loop = asyncio.get_running_loop()
        self._subscribed = self._loop.create_future()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._expiry
        client = self._client
        try:
            await asyncio.wait_for(
                asyncio.to_thread(
                    client.connect,
                    self.url.host,
                    self.url.port,
                    KEEPALIVE_S,
                    clean_start=False,
                    properties=props,
                ),
                timeout,
            )
        except (OSError, TimeoutError) as exc:
            await asyncio.to_thread(self._shutdown)
            raise BrokerUnavailable(f"cannot connect to {self.url}: {exc or 'timed out'}") from exc
        client.loop_start()
        try:
            await asyncio.wait_for(asyncio.shield(self._subscribed), timeout)
        except BaseException as exc:
            await asyncio.to_thread(self._shutdown)
            if isinstance(exc, TimeoutError):
                raise BrokerUnavailable(f"no CONNACK/SUBACK from {self.url}") from exc
            raise

    async def close(self) -> None:
        self._closing = True
        await asyncio.to_thread(self._shutdown)
        self.connected = False

    def publish(self, topic: str, payload: bytes) -> bool:
        """Hand a QoS 1 message to paho; False when not connected (nothing queued)."""
        if not self.connected:
            return False
        info = self._client.publish(topic, payload, qos=1)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    def _shutdown(self) -> None:
        client = self._client
        client.disconnect()
        client.loop_stop()
        sock = client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        client._reset_sockets()

    # -- paho's thread -------------------------------------------------------------------

    def _paho_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self._to_loop(self._refused, str(reason_code))
            return
        self.connected = True
        client.subscribe(self.filter, qos=1)
        self._to_loop(self._connected, bool(flags.session_present))

    def _paho_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected = False
        self._to_loop(self._lost, str(reason_code))

    def _paho_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        self._to_loop(self._subacked, refused)

    def _paho_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self._inbox.append((msg.topic, bytes(msg.payload)))
            if self._scheduled:
                return
            self._scheduled = True
        self._to_loop(self._deliver)

    def _to_loop(self, callback: Callable[..., None], *args: object) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(callback, *args)

    # -- the event loop ------------------------------------------------------------------

    def _deliver(self) -> None:
        with self._lock:
            messages, self._inbox = self._inbox, []
            self._scheduled = False
        if messages:
            self._on_messages(messages)

    def _connected(self, session_present: bool) -> None:
        log.info("hq_connected", broker=str(self.url), session_present=session_present)

    def _refused(self, reason: str) -> None:
        log.error("mqtt_connect_refused", broker=str(self.url), reason=reason)
        if self._subscribed is not None and not self._subscribed.done():
            self._subscribed.set_exception(
                BrokerUnavailable(f"{self.url} refused the connection: {reason}")
            )

    def _subacked(self, refused: list[str]) -> None:
        if refused:
            log.error("mqtt_subscription_refused", topic=self.filter, reason=", ".join(refused))
        future = self._subscribed
        if future is None or future.done():
            return
        if refused:
            future.set_exception(
                BrokerUnavailable(f"{self.url} refused {self.filter}: {', '.join(refused)}")
            )
        else:
            future.set_result(None)

    def _lost(self, reason: str) -> None:
        if not self._closing:
            log.warning("mqtt_connection_lost", broker=str(self.url), reason=reason)
