"""The one bridge between paho and asyncio: :class:`PahoBridge`.

The publisher, the shopper-app client, the node backend, the chain uplink and the
simulator's journey feed each hold one. paho runs on the event loop itself, through
its external-loop interface (``loop_read`` when the socket is readable, ``loop_write``
while it has bytes to send, ``loop_misc`` every second): there is no network thread.
Only paho's blocking TCP connect runs in a worker thread.

Why not paho's own thread (``loop_start``), as this did before: every publish then
wrote to a socket pair to wake that thread, and each thread gave the GIL to the other
on every socket call. Measured in bench/delivery (500 readings/s into a daemon): a
``send`` took 122 µs of the loop's time on average, the loop waited up to the
interpreter's 5 ms switch interval now and then, and the two threads spent about 0.3
ms of CPU per offer more than one loop does.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.matcher import MQTTMatcher
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from proximity.delivery.url import BrokerUrl
from proximity.errors import BrokerUnavailable, PublishTimeout

log = structlog.get_logger(__name__)

Protocol = Literal["5", "3.1.1"]
MAX_INFLIGHT = 0
"""paho's own limit of unacknowledged messages: none (0). The outbox's drain window (64)
is the limit; paho's default of 20 would hold it back, and with any limit set paho walks
every message in flight after each PUBACK, looking for one it held back (9.2 µs a PUBACK
at 64 in flight, measured alone)."""
KEEPALIVE_S = 30
RECONNECT_DELAY_S = 1
"""paho's reconnect delay, with no growth (whole seconds: paho's API). The broker is on
the store LAN and a refused attempt costs one TCP SYN, so paho tries every second: the
gateway is connected (and ready) within about a second of the broker's return, not
after a backoff that grew through a long outage (it used to reach 30 s)."""
_UNSUPPORTED_PROTOCOL_VERSION = 0x84


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """For mqtts:// brokers: the CA to trust (none: the system's) and a client certificate."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


class _Filters(MQTTMatcher):
    """paho's table of ``message_callback_add`` filters, which no client here uses.
    paho matches every incoming message against it, and its ``iter_match`` makes a
    reference cycle on each call (a recursive closure: six objects that only the
    garbage collector frees). At 1,000 messages a second (scanner nodes at x10) that
    was a 5-12 ms collection on the event loop every 1.2 s; with no filter registered
    there is nothing to match and nothing is made."""

    def iter_match(self, topic: str) -> Iterator[Any]:
        root = self._root
        if not root._children and root._content is None:
            return iter(())
        return super().iter_match(topic)  # type: ignore[no-untyped-call,no-any-return]


_PUBACK_NO_PROPERTIES = Properties(PacketTypes.PUBACK)
_PUBACK_REASONS: dict[int, ReasonCode | None] = {}
"""PUBACK reason codes by value, each made once (None: not one paho knows), and the
empty properties of a PUBACK without any: shared by every PUBACK, read, never changed."""


def _puback_reason(code: int) -> ReasonCode | None:
    if code not in _PUBACK_REASONS:
        try:
            _PUBACK_REASONS[code] = ReasonCode(PacketTypes.PUBACK, identifier=code)
        except (KeyError, ValueError):
            _PUBACK_REASONS[code] = None
    return _PUBACK_REASONS[code]


class PahoClient(mqtt.Client):
    """paho's client, with two costs of receiving taken out:

    - paho reads each packet with several ``recv`` calls (one byte of type, the length
      byte by byte, then the rest): here reads go through a buffer of up to
      ``READ_SIZE`` bytes, and ``loop_read`` reads on while some are left (the selector
      cannot see them). A PUBACK cost three ``recv`` calls, now a share of one: the
      durable outbox's burst made 9,000 ``recv`` calls for 3,000 offers, now 150-200.
    - no filter table to match each message against (:class:`_Filters`);
    - a PUBACK without properties is handed on with a shared ReasonCode (one per code)
      and Properties object instead of two new ones.

    Overrides private paho methods (``_sock_send``, ``_sock_recv``, ``_sock_close``,
    ``_packet_write``, ``_handle_pubackcomp``), ``loop_read`` and ``want_write``:
    paho-mqtt 2.x (pinned ``<3`` in pyproject.toml); tests/test_bridge.py and
    tests/test_chain_hq.py run it against a real mosquitto."""

    READ_SIZE = 65536
    _rbuf = b""
    _rpos = 0
    qos0_published = True
    """Whether ``on_publish`` hears of each QoS 0 message written. paho builds a new
    ReasonCode and Properties object for each such call; a client that waits for
    nothing of a QoS 0 publish (the bridge) turns it off."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_message_filtered = _Filters()  # type: ignore[no-untyped-call]
        self._wparts: list[bytes] = []
        """What paho wrote and the socket has not taken yet, in order."""

    # writes: paho sends each packet with its own ``send``; here the packets of one
    # ``loop_write`` are gathered and sent in one, what the kernel does not take waiting
    # (in order) for the next

    def _sock_send(self, buf: bytes | bytearray) -> int:
        if self._sock is None:
            raise ConnectionError("self._sock is None")  # as paho's
        self._wparts.append(bytes(buf))
        return len(buf)

    def _packet_write(self) -> MQTTErrorCode:
        if self.qos0_published or self._on_publish is None:
            rc = super()._packet_write()
        else:  # paho calls on_publish here for QoS 0 messages only
            on_publish, self._on_publish = self._on_publish, None
            try:
                rc = super()._packet_write()
            finally:
                self._on_publish = on_publish
        if not self._wparts or self._sock is None:
            return rc
        parts = self._wparts
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        try:
            sent = super()._sock_send(data)  # paho's: a full TLS buffer is BlockingIOError
        except BlockingIOError:
            self._wparts = [data]
            return MQTTErrorCode.MQTT_ERR_AGAIN
        except OSError as err:
            self._wparts = [data]
            self._easy_log(mqtt.MQTT_LOG_ERR, "failed to send on socket: %s", err)
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        self._wparts = [data[sent:]] if sent < len(data) else []
        if self._wparts:
            return MQTTErrorCode.MQTT_ERR_AGAIN
        return rc

    def want_write(self) -> bool:
        return bool(self._wparts) or super().want_write()

    def _sock_recv(self, bufsize: int) -> bytes:
        buf, pos = self._rbuf, self._rpos
        if pos >= len(buf):
            buf = super()._sock_recv(self.READ_SIZE)  # BlockingIOError: nothing there
            pos = 0
            self._rbuf = buf
            if not buf:
                return buf  # the connection is closed
        end = pos + bufsize
        self._rpos = end
        return buf[pos:end]

    def _sock_close(self) -> None:
        # a DISCONNECT paho wrote goes out if the socket takes it now (paho closes the
        # socket right after writing it); a new connection starts with nothing pending
        if self._wparts and self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.send(b"".join(self._wparts))
        self._wparts = []
        self._rbuf, self._rpos = b"", 0
        super()._sock_close()

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        # a PUBACK without properties (the message id, in MQTT 5 maybe a reason code):
        # paho builds a ReasonCode and a Properties object for each; here each reason
        # code has one, shared, and "no properties" one
        packet = self._in_packet["packet"]
        size = len(packet)
        if cmd != "PUBACK" or not (
            size == 2
            or (self._protocol == mqtt.MQTTv5 and (size == 3 or (size == 4 and packet[3] == 0)))
        ):
            return super()._handle_pubackcomp(cmd)
        reason = _puback_reason(packet[2] if size > 2 else 0)
        if reason is None:
            return super()._handle_pubackcomp(cmd)
        mid = (packet[0] << 8) | packet[1]
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, reason, _PUBACK_NO_PROPERTIES)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        while (
            rc == MQTTErrorCode.MQTT_ERR_SUCCESS
            and self._rpos < len(self._rbuf)
            and self._sock is not None
        ):
            rc = super().loop_read(max_packets)
        return rc


def _make_client(
    url: BrokerUrl, client_id: str, protocol: Protocol, tls: TlsFiles | None = None
) -> PahoClient:
    """A paho client for ``url``: credentials and TLS set, nothing connected yet."""
    client = PahoClient(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311,
    )
    if url.username is not None:
        client.username_pw_set(
            url.username, url.password.get_secret_value() if url.password else None
        )
    if url.tls:
        files = tls or TlsFiles()
        client.tls_set(
            ca_certs=files.ca_file,
            certfile=files.cert_file,
            keyfile=files.key_file,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    client.max_inflight_messages_set(MAX_INFLIGHT)
    client.qos0_published = False  # the bridge waits for nothing of a QoS 0 publish
    return client


def _no_delay(sock: object) -> None:
    """Small MQTT packets go out at once. With Nagle's algorithm on, a QoS 0 event
    publish waits for the broker's TCP acknowledgement (delayed up to 40 ms, as
    nothing answers a QoS 0 message) and the offers behind it wait too: measured
    here, reading-to-offer p99 about 100 ms with Nagle, 2-7 ms without."""
    setsockopt = getattr(sock, "setsockopt", None)
    if setsockopt is not None:
        with contextlib.suppress(OSError):
            setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _reason_text(reason_code: object) -> str:
    """A reason code (v5 ReasonCode, v3 int or error code) as a short text."""
    return str(getattr(reason_code, "getName", lambda: reason_code)())


def _is_failure(reason_code: object) -> bool:
    failure = getattr(reason_code, "is_failure", None)
    if isinstance(failure, bool):
        return failure
    return bool(reason_code)


async def _connect_off_loop(
    client: mqtt.Client, within_s: float, connect: Callable[[], object]
) -> None:
    """paho's blocking ``connect`` (or ``reconnect``) in a worker thread, waited for at
    most ``within_s``.

    Raises OSError (refused, unreachable, TLS) or TimeoutError. If the caller
    stops waiting (timeout, cancellation) while the thread is still connecting,
    the thread closes whatever sockets it opened when it is done, so nothing leaks.
    """
    lock = threading.Lock()
    state = {"abandoned": False, "finished": False}

    def attempt() -> None:
        try:
            connect()
        finally:
            with lock:
                state["finished"] = True
                if state["abandoned"]:
                    client._reset_sockets()

    try:
        await asyncio.wait_for(asyncio.to_thread(attempt), within_s)
    except BaseException:
        with lock:
            state["abandoned"] = True
            if state["finished"]:
                client._reset_sockets()
        raise


def _forget_unacknowledged(client: mqtt.Client, mid: int | None = None) -> None:
    """Take QoS 1/2 messages (all, or ``mid``) out of paho's outgoing queue.

    paho keeps every unacknowledged message and re-sends it after a reconnect.
    Their publishers were already told the publish failed and retry on their own,
    so a re-send would be a duplicate at best and a late offer at worst. paho has
    no public call for this; its queue is ``_out_messages``, guarded by
    ``_out_message_mutex``. Call it only while disconnected (paho recounts its
    in-flight messages when it reconnects), or for a message publish() returned
    MQTT_ERR_NO_CONN for (paho no longer counts it as in flight).
    """
    with client._out_message_mutex:
        if mid is not None:
            client._out_messages.pop(mid, None)
            return
        for stale in [m for m, msg in client._out_messages.items() if msg.qos > 0]:
            del client._out_messages[stale]


class PahoBridge:
    """One paho client, driven by the event loop.

        bridge = PahoBridge(url, client_id="app-1", subscriptions=(topic,), on_message=show)
        async with bridge:                                   # connected, and subscribed
            await bridge.publish(topic, payload, qos=1)     # returns after the PUBACK

    - paho reads when the socket is readable and writes at the end of the loop's turn
      in which something was published (one ``loop_write`` for all of it; the socket is
      watched for room only when the kernel's buffer was full), and keeps the
      connection alive from a one-second timer, all on the loop's thread.
    - Every paho callback is registered here and only hands its arguments on
      (``call_soon``; PUBACKs in batches). On the loop, CONNACK, SUBACK and PUBACK
      resolve futures (acknowledgements by message id), messages go to
      ``on_message`` and each accepted CONNACK (the first one too) to
      ``on_connect(first)``.
    - After a lost connection it reconnects, trying every second
      (``RECONNECT_DELAY_S``); ``subscriptions`` (QoS 1) are renewed on every
      connection.
    - Failures are typed: :class:`BrokerUnavailable` when the broker cannot be
      reached, refuses, or the connection drops (everything waiting for an
      acknowledgement fails at once, nothing hangs); :class:`PublishTimeout` when
      no PUBACK comes in time. A publish that failed is taken out of paho's queue:
      paho would re-send it after reconnecting, behind the caller's back.
    - Threads: only paho's blocking TCP (and TLS) connect runs in a worker thread.
    """

    def __init__(
        self,
        url: BrokerUrl,
        *,
        client_id: str,
        protocol: Protocol = "5",
        tls: TlsFiles | None = None,
        connect_timeout: float = 10.0,
        publish_timeout: float = 10.0,
        subscriptions: Sequence[str] = (),
        on_connect: Callable[[bool], None] | None = None,
        on_message: Callable[[mqtt.MQTTMessage], None] | None = None,
        session_expiry: int = 0,
    ) -> None:
        """``on_connect`` and ``on_message`` are called on the event loop.
        ``session_expiry`` (MQTT 5): seconds the broker keeps this client's session (its
        subscriptions, and QoS 1 messages for it) while it is away; 0: a clean session on
        every connection."""
        self.url = url
        self.protocol = protocol
        self._connect_timeout = connect_timeout
        self._publish_timeout = publish_timeout
        self._subscriptions = tuple(subscriptions)
        self._on_connect = on_connect
        self._on_message = on_message
        self._session: dict[str, Any] = {}
        if session_expiry > 0 and protocol == "5":
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = session_expiry
            self._session = {"clean_start": False, "properties": properties}
        client = self._client = _make_client(url, client_id, protocol, tls)
        client.connect_timeout = connect_timeout
        client.on_connect = self._paho_connect
        client.on_disconnect = self._paho_disconnect
        client.on_subscribe = self._paho_subscribe
        client.on_publish = self._paho_publish
        client.on_message = self._paho_message
        client.on_socket_open = self._socket_open
        client.on_socket_close = self._socket_close
        client.on_socket_register_write = self._socket_want_write
        client.on_socket_unregister_write = self._socket_written
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        """The event loop's thread."""
        self._sock: Any = None
        """The socket registered with the loop (None: none)."""
        self._ticker: asyncio.TimerHandle | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        self._connected = False
        self._closing = False
        self._refused = False
        self._connack: asyncio.Future[None] | None = None
        self._first_subacks: list[asyncio.Future[None]] = []
        self._subacks: dict[int, tuple[str, asyncio.Future[None]]] = {}
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._acks: list[tuple[int, ReasonCode]] = []
        self._acks_lock = threading.Lock()
        self._acks_scheduled = False
        self._flush_due = False
        """A write is due at the end of this turn of the loop (``_flush``)."""
        self._deadlines: deque[tuple[float, asyncio.Future[None]]] = deque()
        """When each publish waiting for its PUBACK times out, oldest first."""
        self._overdue: asyncio.TimerHandle | None = None
        """The one timer of those deadlines (set for the oldest)."""

    @property
    def connected(self) -> bool:
        return self._connected

    def set_will(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = True) -> None:
        """What the broker publishes if the connection ends without DISCONNECT (from the
        next connection on)."""
        self._client.will_set(topic, payload, qos=qos, retain=retain)

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self, *, subscribed: bool = True) -> None:
        """Connect, and return once the broker's CONNACK (and, if ``subscribed``, the
        SUBACKs of ``subscriptions``) arrived, within ``connect_timeout``.

        Raises BrokerUnavailable (unreachable, TLS, refused, no answer); the client is
        closed then.
        """
        connack = self._begin()
        try:
            await self._open_connection()
        except (OSError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            self._shut()
            raise BrokerUnavailable(f"cannot connect to {self.url}: {reason}") from exc
        try:
            await asyncio.wait_for(self._ready(connack, subscribed), self._connect_timeout)
        except BaseException as exc:
            self._shut()
            if isinstance(exc, TimeoutError):
                raise BrokerUnavailable(
                    f"no answer from {self.url} within {self._connect_timeout:g}s{self._hint()}"
                ) from exc
            raise

    async def connect_in_background(self) -> str | None:
        """Connect whether or not the broker is there: it keeps trying until it is.

        Returns None once connected, else why not yet. Raises BrokerUnavailable (and
        closes the client) only when the broker refused this client (credentials,
        client id): retrying would not help.
        """
        connack = self._begin()
        try:
            await self._open_connection()
        except (OSError, TimeoutError) as exc:
            self._reconnect_soon()
            return str(exc) or "timed out"
        try:
            await asyncio.wait_for(asyncio.shield(connack), self._connect_timeout)
        except TimeoutError:
            return "no answer"
        except BrokerUnavailable as exc:
            if self._refused:
                self._shut()
                raise
            return str(exc)
        return None

    async def close(self) -> None:
        """Disconnect (DISCONNECT: no will) and stop; whatever still waits for an
        acknowledgement fails with BrokerUnavailable."""
        self._closing = True
        self._shut()
        self._connected = False
        self._fail_pending(BrokerUnavailable(f"connection to {self.url} closed"))

    def _begin(self) -> asyncio.Future[None]:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._connack = self._loop.create_future()
        return self._connack

    # -- paho on the event loop -------------------------------------------------------------

    async def _open_connection(self) -> None:
        """paho's blocking connect in a worker thread, then its socket on the loop.
        Raises OSError or TimeoutError (nothing is left open then)."""
        client = self._client
        first = not self._connack_seen()

        def connect() -> None:
            if first:
                client.connect(self.url.host, self.url.port, KEEPALIVE_S, **self._session)
            else:
                client.reconnect()

        await _connect_off_loop(client, self._connect_timeout, connect)
        if self._closing:  # closed while the thread connected
            client._reset_sockets()
            return
        self._attach()

    def _connack_seen(self) -> bool:
        return self._connack is not None and self._connack.done()

    def _attach(self) -> None:
        """Register the connected socket with the loop: read when readable, write the
        queued CONNECT (and whatever follows) when writable, and start the timer."""
        loop, sock = self._loop, self._client.socket()
        assert loop is not None
        if sock is None:
            return
        self._sock = sock
        loop.add_reader(sock, self._readable)
        loop.add_writer(sock, self._writable)  # the CONNECT, queued by the thread
        if self._ticker is None:
            self._ticker = loop.call_later(1.0, self._tick)

    def _detach(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)

    def _readable(self) -> None:
        client, sock = self._client, self._sock
        rc = client.loop_read()
        # a TLS socket may hold decrypted bytes the selector cannot see: read them too
        while rc == mqtt.MQTT_ERR_SUCCESS and sock is not None and self._sock is sock:
            pending = getattr(sock, "pending", None)
            if pending is None or not pending():
                break
            rc = client.loop_read()

    def _writable(self) -> None:
        client, sock = self._client, self._sock
        client.loop_write()
        if sock is not None and self._sock is sock and not client.want_write():
            assert self._loop is not None
            self._loop.remove_writer(sock)

    def _tick(self) -> None:
        """Each second: keepalive (PINGREQ, and a broker that stopped answering)."""
        self._ticker = None
        if self._closing or self._loop is None:
            return
        if self._sock is not None:
            self._client.loop_misc()
        self._ticker = self._loop.call_later(1.0, self._tick)

    def _reconnect_soon(self) -> None:
        """After a lost connection: try again every ``RECONNECT_DELAY_S`` until connected."""
        if self._closing or self._loop is None or self._reconnecting is not None:
            return
        self._reconnecting = self._loop.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        try:
            while not self._closing and self._sock is None:
                await asyncio.sleep(RECONNECT_DELAY_S)
                if self._closing:
                    return
                with contextlib.suppress(OSError, TimeoutError):
                    await self._open_connection()
        finally:
            self._reconnecting = None

    def _shut(self) -> None:
        """Disconnect (the DISCONNECT written at once if the socket takes it) and close
        every socket; the timer and any reconnecting stop, for good."""
        self._closing = True
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._overdue is not None:
            self._overdue.cancel()
            self._overdue = None
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            self._reconnecting = None
        client = self._client
        client.disconnect()
        if self._sock is not None:
            client.loop_write()  # the DISCONNECT: paho closes the socket once it is out
        self._detach()
        client._reset_sockets()

    def _soon(self, callback: Callable[..., None], *args: object) -> None:
        """Run ``callback`` on the loop soon, outside paho's callback (dropped once the
        loop is gone). paho calls back on the loop's thread, except while a worker thread
        connects (a refused CONNACK can come then)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # closed between the check and the call
            if threading.get_ident() == self._thread:
                loop.call_soon(callback, *args)
            else:
                loop.call_soon_threadsafe(callback, *args)

    # paho's socket callbacks (on the loop's thread, or on a connecting thread: then the
    # socket is not registered yet, and _attach registers it)

    def _socket_open(self, client: mqtt.Client, userdata: object, sock: object) -> None:
        _no_delay(sock)

    def _socket_close(self, client: mqtt.Client, userdata: object, sock: object) -> None:
        if sock is self._sock and threading.get_ident() == self._thread:
            self._detach()

    def _socket_want_write(self, client: mqtt.Client, userdata: object, sock: object) -> None:
        """paho queued a packet: written at the end of this turn of the loop, with every
        other packet queued in it. Not by watching the socket for room (``add_writer``):
        that costs two ``epoll_ctl`` calls and a turn of the loop per publish."""
        if self._flush_due or sock is not self._sock or self._loop is None:
            return
        if threading.get_ident() == self._thread:
            self._flush_due = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Write what paho queued; watch the socket for room only if some is left (the
        kernel's buffer is full)."""
        self._flush_due = False
        client, sock = self._client, self._sock
        if sock is None or self._loop is None or self._closing:
            return
        client.loop_write()
        if self._sock is sock and client.want_write():
            self._loop.add_writer(sock, self._writable)

    def _socket_written(self, client: mqtt.Client, userdata: object, sock: object) -> None:
        if sock is self._sock and self._loop is not None and threading.get_ident() == self._thread:
            self._loop.remove_writer(sock)

    async def _ready(self, connack: asyncio.Future[None], subscribed: bool) -> None:
        await asyncio.shield(connack)
        if subscribed:
            for suback in self._first_subacks:
                await asyncio.shield(suback)

    def _hint(self) -> str:
        if self.protocol == "5":
            return " (an MQTT 3.1.1-only broker, such as the embedded one, does not speak MQTT 5)"
        return ""

    # -- publishing ------------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        """Publish; with QoS 1 or 2 return once the broker acknowledged it.

        Raises BrokerUnavailable (not connected, refused, connection lost meanwhile)
        or PublishTimeout (no acknowledgement within ``publish_timeout``).
        """
        mid = self.publish_nowait(topic, payload, qos=qos, retain=retain, properties=properties)
        if qos == 0:
            return
        loop = self._loop
        assert loop is not None
        # No await between publish() and registering: on_publish reaches the loop
        # through call_soon_threadsafe, so it cannot run before the future exists.
        future = loop.create_future()
        self._pending[mid] = future
        # One timer for every publish in flight, not one each (nor wait_for): hundreds
        # are in flight under load, and their deadlines come in the order they were sent.
        deadlines = self._deadlines
        while deadlines and deadlines[0][1].done():  # acknowledged: no longer timed
            deadlines.popleft()
        deadlines.append((loop.time() + self._publish_timeout, future))
        if self._overdue is None:
            self._overdue = loop.call_at(deadlines[0][0], self._time_out_overdue)
        try:
            await future
        finally:
            if self._pending.get(mid) is future:
                del self._pending[mid]

    def publish_nowait(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> int:
        """Hand a message to paho and return its message id, without waiting for it."""
        if not self._connected:
            raise BrokerUnavailable(f"not connected to {self.url}")
        client = self._client
        info = client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc == mqtt.MQTT_ERR_NO_CONN:  # paho keeps it for after a reconnect: no
            _forget_unacknowledged(client, info.mid)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise BrokerUnavailable(f"publish to {self.url} failed: {mqtt.error_string(info.rc)}")
        return info.mid

    # -- paho's callbacks: hand everything on -----------------------------------------------

    def _paho_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._soon(self._connacked, reason_code)

    def _paho_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        # Here, not on the loop: this must happen before paho's next reconnect.
        _forget_unacknowledged(client)
        self._soon(self._lost, _reason_text(reason_code))

    def _paho_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._soon(
            self._subacked,
            mid,
            [_reason_text(rc) for rc in reason_codes if _is_failure(rc)],
        )

    def _paho_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        # PUBACKs come in bursts under load: hand them over in batches, one wake-up each
        with self._acks_lock:
            self._acks.append((mid, reason_code))
            if self._acks_scheduled:
                return
            self._acks_scheduled = True
        self._soon(self._flush_acks)

    def _paho_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if self._on_message is not None:
            self._soon(self._on_message, msg)

    # -- the same events, on the event loop ------------------------------------------------

    def _connacked(self, reason_code: ReasonCode) -> None:
        assert self._connack is not None
        if _is_failure(reason_code):
            reason = _reason_text(reason_code)
            if getattr(reason_code, "value", None) == _UNSUPPORTED_PROTOCOL_VERSION:
                reason += self._hint()
            self._refused = True
            log.error("mqtt_connect_refused", broker=str(self.url), reason=reason)
            self._fail_connack(BrokerUnavailable(f"{self.url} refused the connection: {reason}"))
            return
        first = not self._connack.done()
        self._connected = True
        self._refused = False
        subacks = [self._subscribe(topic) for topic in self._subscriptions]
        if first:
            self._first_subacks = subacks
            self._connack.set_result(None)
        else:
            log.info("mqtt_reconnected", broker=str(self.url))
        if self._on_connect is not None:
            self._on_connect(first)

    def _subscribe(self, topic: str) -> asyncio.Future[None]:
        assert self._loop is not None
        future = self._loop.create_future()
        rc, mid = self._client.subscribe(topic, qos=1)
        if rc == mqtt.MQTT_ERR_SUCCESS and mid is not None:
            self._subacks[mid] = (topic, future)
        else:  # lost again already: the next connection subscribes
            _fail(
                future, BrokerUnavailable(f"cannot subscribe to {topic}: {mqtt.error_string(rc)}")
            )
        return future

    def _subacked(self, mid: int, refusals: list[str]) -> None:
        topic, future = self._subacks.pop(mid, (None, None))
        if topic is None or future is None or future.done():
            return
        if refusals:
            log.error("mqtt_subscription_refused", broker=str(self.url), topic=topic)
            reason = ", ".join(refusals)
            _fail(
                future,
                BrokerUnavailable(f"{self.url} refused the subscription to {topic}: {reason}"),
            )
        else:
            future.set_result(None)

    def _lost(self, reason: str) -> None:
        if self._connected and not self._closing:
            log.warning("mqtt_connection_lost", broker=str(self.url), reason=reason)
        self._connected = False
        ended = "closed" if self._closing else f"lost: {reason}"
        error = BrokerUnavailable(f"connection to {self.url} {ended}")
        self._fail_connack(error)  # closed before CONNACK (a refused certificate, say)
        self._fail_pending(error)
        self._reconnect_soon()

    def _flush_acks(self) -> None:
        with self._acks_lock:
            acks, self._acks = self._acks, []
            self._acks_scheduled = False
        pending = self._pending
        for mid, reason_code in acks:
            future = pending.get(mid)
            if future is None or future.done():
                continue  # a publish we stopped waiting for (timed out), or QoS 0
            if _is_failure(reason_code):
                refused = f"{self.url} refused the publish: {_reason_text(reason_code)}"
                future.set_exception(BrokerUnavailable(refused))
            else:
                future.set_result(None)

    def _time_out_overdue(self) -> None:
        """The publishes' one timer: those whose PUBACK is overdue fail with
        PublishTimeout; the timer is set again for the next one still waiting."""
        self._overdue = None
        loop, deadlines = self._loop, self._deadlines
        if loop is None or self._closing:
            return
        now = loop.time()
        while deadlines and (deadlines[0][1].done() or deadlines[0][0] <= now):
            _, future = deadlines.popleft()
            if not future.done():
                future.set_exception(
                    PublishTimeout(f"no PUBACK from {self.url} within {self._publish_timeout:g}s")
                )
        if deadlines:
            self._overdue = loop.call_at(deadlines[0][0], self._time_out_overdue)

    def _fail_connack(self, error: BrokerUnavailable) -> None:
        if self._connack is not None and not self._connack.done():
            _fail(self._connack, error)

    def _fail_pending(self, error: BrokerUnavailable) -> None:
        pending, self._pending = self._pending, {}
        subacks, self._subacks = self._subacks, {}
        for future in [*pending.values(), *(future for _, future in subacks.values())]:
            if not future.done():
                _fail(future, error)


def _fail(future: asyncio.Future[None], error: BaseException) -> None:
    future.set_exception(error)
    future.exception()  # retrieved: a waiter re-raises it, and nobody may be waiting
