"""``proximity run``: the daemon with its broker connection, until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog

from proximity import __version__
from proximity.clock import Clock, ScaledClock, SystemClock
from proximity.config import BleBackendKind, Settings
from proximity.console.feed import ConsoleFeed
from proximity.console.server import Console
from proximity.daemon import Daemon, DaemonStats
from proximity.delivery._bridge import TlsFiles
from proximity.delivery.outbox import Outbox
from proximity.delivery.publisher import MqttPublisher
from proximity.delivery.url import BrokerUrl
from proximity.engine.decide import Decision
from proximity.engine.reload import RuleWatcher
from proximity.journey.record import JourneyRecorder
from proximity.measurement.store import MeasurementStore
from proximity.metrics import HealthServer, Metrics, gateway_status
from proximity.recovery import recover
from proximity.wiring import Runtime, broker_for, build_runtime

if TYPE_CHECKING:
    from proximity.chain.uplink import ChainUplink

log = structlog.get_logger(__name__)


async def serve(
    settings: Settings,
    install_signals: Callable[[asyncio.Event], None] | None = None,
    stop: asyncio.Event | None = None,
) -> DaemonStats:
    stop = stop or asyncio.Event()
    if install_signals is not None:
        install_signals(stop)
    clock: Clock = SystemClock()
    simulated = settings.ble.backend in (
        BleBackendKind.SIM,
        BleBackendKind.BLEAK,
        BleBackendKind.NODES,
    )
    if simulated and settings.ble.sim.speed != 1.0:
        # the simulator and the daemon on one accelerated clock: a store hour in minutes.
        # The simulator drives the daemon in process (the sim backend) or from outside,
        # through a mocked BlueZ (the bleak backend) or as scanner nodes over MQTT (the
        # nodes backend): firmware_sim's live mode.
        clock = ScaledClock(clock.now(), settings.ble.sim.speed)
        if settings.ble.backend is not BleBackendKind.SIM:
            log.warning(
                "clock_accelerated",
                speed=settings.ble.sim.speed,
                note="for the simulator only: a real radio or scanner node needs speed 1",
            )
    if settings.ble.backend is BleBackendKind.REPLAY:
        from proximity.adapters.ble.replay import replay_clock

        # the daemon's clock starts where the recording started, so events carry its times
        assert settings.ble.replay.file is not None
        clock = replay_clock(settings.ble.replay.file, settings.ble.replay.speed)
    runtime = build_runtime(settings, clock)
    log.info(
        "daemon_starting",
        version=__version__,
        store=settings.store.id,
        gateway=settings.store.gateway,
        ble_backend=str(settings.ble.backend),
        nfc_readers=[r.id for r in settings.nfc],
        code_scanners=[s.id for s in settings.scanners],
        rules=len(runtime.table.rules),
        rules_version=runtime.table.version,
        clock_origin=clock.now().isoformat(),
        clock_speed=clock.speed if isinstance(clock, ScaledClock) else 1.0,
        ble_scanners=sorted(settings.ble.scanners())
        if settings.ble.backend is BleBackendKind.BLEAK
        else None,
        presence=settings.presence.method,
    )
    recording = JourneyRecorder(settings.events.record) if settings.events.record else None
    with recording or contextlib.nullcontext() as recorder:
        on_decision = (lambda d: recorder.record(d.event)) if recorder is not None else None
        stats = await _serve(settings, runtime, stop, on_decision)
    log.info(
        "daemon_stopped",
        events=stats.events,
        offers_published=stats.offers_published,
        offers_expired=stats.offers_expired,
        offers_waiting=stats.offers_waiting,
        publish_failures=stats.publish_failures,
        offers_unpublishable=stats.offers_unpublishable,
        acts=stats.acts,
        codes_refused=stats.codes_refused,
        readers_failed=stats.readers_failed or None,
    )
    return stats


async def _serve(
    settings: Settings,
    runtime: Runtime,
    stop: asyncio.Event,
    on_decision: Callable[[Decision], None] | None,
) -> DaemonStats:
    outbox = Outbox(settings.delivery.outbox)
    measure = MeasurementStore(settings.measurement.store)
    recover(runtime, outbox, measure)
    async with (
        broker_for(settings) as url,
        runtime.publisher(url, require_connection=False) as publisher,
    ):
        rules = runtime.watcher(publisher) if settings.rules.watch else None
        watcher = None
        if rules is not None:
            watcher = asyncio.create_task(rules.run(), name="rules-watch")
        try:
            feed = (
                ConsoleFeed.for_settings(settings.console, runtime.clock)
                if settings.console.enabled and settings.metrics.enabled
                else None
            )
            daemon = runtime.daemon(
                publisher,
                on_decision=feed.hook(on_decision) if feed else on_decision,
                outbox=outbox,
                measure=measure,
            )
            publisher.feedback_handler = daemon.on_feedback
            metrics = Metrics()
            metrics.watch(daemon, publisher, rules)
            serving: contextlib.AbstractAsyncContextManager[object] = (
                HealthServer(
                    metrics,
                    settings.metrics.host,
                    settings.metrics.port,
                    console=Console(
                        daemon,
                        feed,
                        settings.console,
                        rules,
                        settings.metrics.host,
                        runtime.rule_paths,
                    )
                    if feed is not None
                    else None,
                )
                if settings.metrics.enabled
                else contextlib.nullcontext()
            )
            uplink = _uplink(settings, runtime, url, measure, daemon, rules, publisher)
            if uplink is not None:
                metrics.watch_uplink(uplink)
            async with serving, uplink or contextlib.nullcontext():
                stats = await daemon.run(stop)
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            outbox.close()
            measure.close()
            runtime.close()
    return stats


def _uplink(
    settings: Settings,
    runtime: Runtime,
    url: BrokerUrl,
    measure: MeasurementStore,
    daemon: Daemon,
    rules: RuleWatcher | None,
    publisher: MqttPublisher,
) -> ChainUplink | None:
    """With ``[chain] enabled``: the uplink to the chain, on its own connection to the store
    broker (offers never wait behind it), applying the signed rule bundles that `proximity
    rollout publish` sends when ``[chain] bundles`` is set; else None."""
    if not settings.chain.enabled:
        return None
    from proximity.chain.rollout import applier_for
    from proximity.chain.uplink import ChainUplink

    # a bundle swaps through the watcher (which also tells the publisher's status the new
    # rules version); with [rules] watch = false there is one all the same, never started
    applier = applier_for(runtime, rules or runtime.watcher(publisher), runtime.clock)

    async def on_bundle(payload: bytes) -> None:
        assert applier is not None
        await uplink.report_rollout(await applier.apply(payload))

    def status() -> dict[str, object]:
        fields = gateway_status(daemon, rules, uplink, scanners)
        if applier is not None:
            fields["bundle"] = applier.running
        return fields

    scanners = {node.scanner_id for node in settings.nodes}
    if settings.ble.backend is BleBackendKind.BLEAK:
        scanners |= set(settings.ble.scanners())
    broker = settings.broker
    uplink: ChainUplink = ChainUplink(
        url,
        store=settings.store.id,
        gateway=settings.store.gateway,
        measure=measure,
        clock=runtime.clock,
        settings=settings.chain,
        status=status,
        on_bundle=on_bundle if applier is not None else None,
        version=__version__,
        protocol=settings.mqtt_protocol(),
        tls=TlsFiles(
            ca_file=str(broker.ca_file) if broker.ca_file else None,
            cert_file=str(broker.client_cert) if broker.client_cert else None,
            key_file=str(broker.client_key) if broker.client_key else None,
        ),
        publish_timeout=broker.publish_timeout.total_seconds(),
    )
    return uplink
