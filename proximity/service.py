"""``proximity run``: the daemon with its broker connection, until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog

from proximity import __version__
from proximity.clock import SystemClock
from proximity.config import Settings
from proximity.daemon import DaemonStats
from proximity.wiring import broker_for, build_runtime

log = structlog.get_logger(__name__)


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
        rules_version=runtime.table.version,
    )
    async with broker_for(settings) as url, runtime.publisher(url) as publisher:
        watcher = None
        if settings.rules.watch:
            watcher = asyncio.create_task(runtime.watcher(publisher).run(), name="rules-watch")
        try:
            stats = await runtime.daemon(publisher).run(stop)
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
    log.info(
        "daemon_stopped",
        events=stats.events,
        offers_published=stats.offers_published,
        offers_failed=stats.offers_failed,
    )
    return stats
