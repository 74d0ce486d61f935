"""Shared plumbing between paho's network thread and asyncio.

paho callbacks run on paho's thread; they only hand their arguments to the
event loop with ``call_soon_threadsafe``. Nothing else crosses threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from proximity.delivery.url import BrokerUrl

Protocol = Literal["5", "3.1.1"]
MAX_INFLIGHT = 256


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """For mqtts:// brokers: the CA to trust (none: the system's) and a client certificate."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


def make_client(
    url: BrokerUrl, client_id: str, protocol: Protocol, tls: TlsFiles | None = None
) -> mqtt.Client:
    """A paho client for ``url``: credentials and TLS set, nothing connected yet."""
    client = mqtt.Client(
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
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    client.on_socket_open = _no_delay
    # paho's default of 20 unacknowledged messages would hold back the outbox's drain
    # window; the broker's own receive maximum still applies
    client.max_inflight_messages_set(MAX_INFLIGHT)
    return client


def _no_delay(client: mqtt.Client, userdata: object, sock: object) -> None:
    """Small MQTT packets go out at once. With Nagle's algorithm on, a QoS 0 event
    publish waits for the broker's TCP acknowledgement (delayed up to 40 ms, as
    nothing answers a QoS 0 message) and the offers behind it wait too: measured
    here, reading-to-offer p99 about 100 ms with Nagle, 2-7 ms without."""
    setsockopt = getattr(sock, "setsockopt", None)
    if setsockopt is not None:
        with contextlib.suppress(OSError):
            setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def reason_text(reason_code: object) -> str:
    """A reason code (v5 ReasonCode, v3 int or error code) as a short text."""
    return str(getattr(reason_code, "getName", lambda: reason_code)())


def is_failure(reason_code: object) -> bool:
    failure = getattr(reason_code, "is_failure", None)
    if isinstance(failure, bool):
        return failure
    return bool(reason_code)


def to_loop(
    loop: asyncio.AbstractEventLoop | None, callback: Callable[..., None], *args: object
) -> None:
    """From paho's thread, run ``callback`` on the event loop (dropped once the loop is gone)."""
    if loop is None or loop.is_closed():
        return
    with contextlib.suppress(RuntimeError):  # closed between the check and the call
        loop.call_soon_threadsafe(callback, *args)


def shut_down(client: mqtt.Client) -> None:
    """Disconnect, stop paho's thread and close its socket (blocking: run it off the loop)."""
    client.disconnect()
    client.loop_stop()
    sock = client.socket()
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


async def connect_off_loop(
    client: mqtt.Client, url: BrokerUrl, within_s: float, keepalive: int
) -> None:
    """paho's blocking ``connect`` in a worker thread, waited for at most ``within_s``.

    Raises OSError (refused, unreachable, TLS) or TimeoutError. If the caller
    stops waiting (timeout, cancellation) while the thread is still connecting,
    the thread closes whatever sockets it opened when it is done, so nothing leaks.
    """
    lock = threading.Lock()
    state = {"abandoned": False, "finished": False}

    def attempt() -> None:
        try:
            client.connect(url.host, url.port, keepalive)
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


def close_client(client: mqtt.Client) -> None:
    """Disconnect, stop paho's thread and close all its sockets (blocking: off the loop).

    Besides the connection, paho holds a socket pair to wake its thread, which it
    closes only in ``__del__``; a client caught in a reference cycle (an exception's
    traceback) would leave it to the garbage collector, with a ResourceWarning.
    """
    shut_down(client)
    client._reset_sockets()


def forget_unacknowledged(client: mqtt.Client, mid: int | None = None) -> None:
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
