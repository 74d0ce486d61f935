"""Shared plumbing between paho's network thread and asyncio.

paho callbacks run on paho's thread; they only hand their arguments to the
event loop with ``call_soon_threadsafe``. Nothing else crosses threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from proximity.delivery.url import BrokerUrl

Protocol = Literal["5", "3.1.1"]


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
    return client


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
