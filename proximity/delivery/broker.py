"""The embedded broker: amqtt running inside the daemon's event loop.

For the demo and single-gateway stores, so nothing else has to be installed.
amqtt speaks MQTT 3.1.1 only (no message expiry, no user properties: the
offer's ``expires_at`` travels in the payload); an external MQTT 5 broker such
as mosquitto is the choice for a real deployment. Anonymous clients are
accepted only while it listens on a loopback address.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from types import TracebackType
from typing import Any, Final, Self

from proximity.delivery.url import BrokerUrl
from proximity.errors import BrokerUnavailable

PROTOCOL: Final = "3.1.1"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedBroker:
    protocol: Final = PROTOCOL

    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        if not _is_loopback(host):
            raise ValueError(
                f"the embedded broker accepts anonymous clients, so it only listens on "
                f"loopback; {host!r} is not (use an external broker with ACLs instead)"
            )
        self.host = host
        self.port = port or _free_port(host)
        self._broker: Any = None

    @property
    def url(self) -> BrokerUrl:
        return BrokerUrl.tcp(self.host, self.port)

    async def __aenter__(self) -> Self:
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.WARNING)
        from amqtt.broker import Broker

        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }
        self._broker = Broker(config)
        try:
            await self._broker.start()
        except Exception as exc:
            raise BrokerUnavailable(
                f"cannot start the embedded broker on {self.host}:{self.port}: {exc}"
            ) from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None
