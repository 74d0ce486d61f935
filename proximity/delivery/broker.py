"""The embedded broker: amqtt running inside the daemon's event loop.

    async with EmbeddedBroker(port=0) as broker:     # port 0: a free port, see broker.port
        async with MqttPublisher(broker.url, ..., protocol=broker.protocol) as pub:
            ...

For the demo and single-gateway stores, so nothing else has to be installed.

**amqtt speaks MQTT 3.1.1 only**: no message expiry, no user properties (the
offer's ``expires_at`` travels in the payload anyway). Connect to it with
``protocol=EmbeddedBroker.protocol`` ("3.1.1"); an MQTT 5 client is turned
away. An external MQTT 5 broker such as mosquitto is the choice for a real
deployment, and for load: amqtt carries several times fewer messages per second.

It accepts anonymous clients, so it only listens on a loopback address.

The listening socket is this class's own (amqtt's "external" listener, fed
through ``Broker.external_connected``), so ``port=0`` is a port the kernel
picked and nobody else can take before the broker binds it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from types import TracebackType
from typing import Any, Final, Literal, Self

import structlog

from proximity.delivery.url import BrokerUrl
from proximity.errors import BrokerUnavailable

log = structlog.get_logger(__name__)

PROTOCOL: Final = "3.1.1"
STOP_TIMEOUT_S = 5.0
_LISTENER = "default"
# amqtt logs every connection and state change at INFO; transitions is its state machine
_CHATTY_LOGGERS = ("amqtt", "transitions")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class EmbeddedBroker:
    protocol: Final[Literal["3.1.1"]] = PROTOCOL

    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        """``host``: a loopback address (``localhost`` means 127.0.0.1); ``port=0``: any free."""
        host = "127.0.0.1" if host == "localhost" else host
        if not _is_loopback(host):
            raise ValueError(
                f"the embedded broker accepts anonymous clients, so it only listens on "
                f"loopback; {host!r} is not (use an external broker with ACLs instead)"
            )
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is not in 0-65535")
        self.host = host
        self.port = port
        """The port asked for; once started, the port it listens on."""
        self._broker: Any = None
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    @property
    def url(self) -> BrokerUrl:
        if self.port == 0:
            raise RuntimeError("the embedded broker picks its port when it starts")
        return BrokerUrl.tcp(self.host, self.port)

    async def __aenter__(self) -> Self:
        for name in _CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        from amqtt.broker import Broker  # only the embedded mode pays for importing amqtt

        config = {
            "listeners": {_LISTENER: {"type": "external"}},
            # an explicit plugin list: amqtt's default one adds $SYS reporting (and a
            # DeprecationWarning about psutil) and would read an 'auth' section
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }
        self._broker = Broker(config)
        try:
            await self._broker.start()
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except Exception as exc:
            await self._stop()
            raise BrokerUnavailable(
                f"cannot start the embedded broker on {self.host}:{self.port}: {exc}"
            ) from exc
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection, handed to amqtt until it ends."""
        from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter

        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            await self._broker.external_connected(
                StreamReaderAdapter(reader), StreamWriterAdapter(writer), _LISTENER
            )
        finally:
            # amqtt leaves a connection it turned away (an MQTT 5 CONNECT) open
            writer.close()
            self._connections.pop(task, None)

    async def _stop(self) -> None:
        """Close the clients' connections, then stop amqtt; bounded, whatever amqtt does.

        Connections are closed first, as mosquitto does on SIGTERM: each client
        session then ends through amqtt's ordinary end-of-stream path. Shutting
        amqtt down with sessions still open can hang (a reader task cancelled
        while it reads, on Python 3.11), so its shutdown is also given a limit.
        """
        if self._server is not None:
            self._server.close()  # no new connections
        for writer in self._connections.values():
            writer.close()
        if self._connections:
            await asyncio.wait(self._connections, timeout=STOP_TIMEOUT_S)
        if self._broker is not None:
            stopping = asyncio.ensure_future(self._broker.shutdown())
            done, _ = await asyncio.wait({stopping}, timeout=STOP_TIMEOUT_S)
            if not done:
                stopping.cancel()
                log.warning("embedded_broker_stop_timed_out", waited_s=STOP_TIMEOUT_S)
            elif stopping.exception() is not None:  # amqtt refuses to stop a failed start
                log.debug("embedded_broker_stop_failed", error=str(stopping.exception()))
            self._broker = None
        for task in self._connections:
            task.cancel()
        self._connections.clear()
        self._server = None
