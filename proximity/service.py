"""``proximity run``: the daemon with its broker connection, until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import structlog

from proximity import __version__
from proximity.clock import SystemClock
from proximity.config import Settings
from proximity.daemon import Daemon, DaemonStats
from proximity.delivery.broker import EmbeddedBroker
from proximity.delivery.publisher import MqttPublisher
from proximity.delivery.url import BrokerUrl
from proximity.wiring import build_runtime

log = structlog.get_logger(__name__)


@contextlib.asynccontextmanager
async def broker_for(settings: Settings) -> AsyncIterator[BrokerUrl]:
    """The broker URL to publish to, starting the embedded broker when configured."""
    if settings.broker.url.is_embedded:
        async with EmbeddedBroker(
            host=settings.broker.embedded_host, port=settings.broker.embedded_port
        ) as broker:
            log.info("embedded_broker_started", url=str(broker.url))
            yield broker.url
    else:
        yield settings.broker.url


async def serve(
    settings: Settings,
    install_signals: Callable[[asyncio.Event], None] | None = None,
    stop: asyncio.Event | None = None,
) -> DaemonStats:
    stop = stop or asyncio.Event()
    if install_signals is not None:
        install_signals(stop)
    clock = SystemClock()
    runtime = build_runtime(settings, clock)
    log.info(
        "daemon_starting",
        version=__version__,
        store=settings.store.id,
        gateway=settings.store.gateway,
        ble_backend=str(settings.ble.backend),
        rules=len(runtime.table.rules),
    )
    async with (
        broker_for(settings) as url,
        MqttPublisher(
            url,
            store=settings.store.id,
            gateway=settings.store.gateway,
            client_id=settings.broker.client_id or f"proximity-{settings.store.gateway}",
            protocol=settings.mqtt_protocol(),
            publish_timeout=settings.broker.publish_timeout.total_seconds(),
            rules_version=runtime.table.store.version if runtime.table.store else None,
            clock=clock,
        ) as publisher,
    ):
        daemon = Daemon(
            runtime.adapter,
            runtime.pipeline,
            publisher,
            clock,
            tick=settings.presence.tick,
            publish_events=settings.events.publish,
            events_qos=settings.events.qos,
        )
        stats = await daemon.run(stop)
    log.info(
        "daemon_stopped",
        events=stats.events,
        offers_published=stats.offers_published,
        offers_failed=stats.offers_failed,
    )
    return stats
