"""What an operator watches: Prometheus metrics, ``/healthz`` and ``/readyz``.

    GET /metrics   Prometheus text format (prometheus_client)
    GET /healthz   200 "ok": the process and its event loop answer
    GET /readyz    200 or 503, with a JSON body saying which check failed

Counters are read from the daemon's own counts when Prometheus scrapes, so
nothing on the hot path pays for metrics except two latency histograms. The
server listens on loopback by default; it serves nothing but these three paths.

Ready means: the rules are loaded, every reader is reading (the BLE stream, NFC
readers, code scanners) and the broker is connected. With the broker away the
gateway is not ready — offers wait in the outbox (``outbox`` in the body says
whether it is durable) — and it is ready again once the broker is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Collection, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from proximity import __version__
from proximity.daemon import Daemon
from proximity.delivery.publisher import MqttPublisher
from proximity.engine.reload import RuleWatcher

if TYPE_CHECKING:
    from proximity.chain.uplink import ChainUplink

log = structlog.get_logger(__name__)

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
_DELIVERY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_MAX_REQUEST = 8192


class Metrics:
    """The registry behind ``/metrics``, and the daemon's latency observer."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._pipeline = Histogram(
            "proximity_pipeline_latency_seconds",
            "Time to take one reading, tap or scan through identity, presence and the rules",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._delivery = Histogram(
            "proximity_delivery_latency_seconds",
            "Time from an offer entering the outbox to the broker's acknowledgement",
            buckets=_DELIVERY_BUCKETS,
            registry=self.registry,
        )
        self._state: _StateCollector | None = None

    def watch(
        self,
        daemon: Daemon,
        publisher: MqttPublisher | None,
        rules: RuleWatcher | None = None,
    ) -> None:
        """Report this daemon's counts (and time its pipeline and deliveries), and the
        rule reloads of ``rules`` (the hot-reload watcher, when there is one)."""
        daemon.observer = self
        self._state = _StateCollector(daemon, publisher)
        self.registry.register(self._state)
        if rules is not None:
            self.registry.register(_ReloadCollector(rules))

    def watch_uplink(self, uplink: ChainUplink) -> None:
        """Report the chain uplink's batches (sealed, sent, acknowledged, waiting)."""
        self.registry.register(_UplinkCollector(uplink))

    def pipeline(self, seconds: float) -> None:
        self._pipeline.observe(seconds)

    def delivery(self, seconds: float) -> None:
        self._delivery.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        state = self._state
        if state is None:
            return False, {"ready": False, "checks": {"daemon": "not started"}}
        return state.readiness()


class _StateCollector(Collector):
    def __init__(self, daemon: Daemon, publisher: MqttPublisher | None) -> None:
        self._daemon = daemon
        self._publisher = publisher

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        daemon = self._daemon
        radio = getattr(daemon.adapter.backend, "scanning", True)  # the bleak backend says
        readers = {"ble": daemon.scanning and bool(radio)}
        readers |= {f"nfc:{n.reader}": n.running for n in daemon.nfc}
        readers |= {f"scanner:{s.scanner}": s.running for s in daemon.scanners}
        broker = self._publisher is not None and self._publisher.connected
        outbox = daemon.outbox
        checks: dict[str, Any] = {
            "rules": daemon.pipeline.table.version or "loaded",
            "readers": readers,
            "broker": "connected" if broker else "not connected",
            "outbox": {
                "waiting": len(outbox),
                "durable": outbox.path is not None and not outbox.failed,
            },
        }
        ready = all(readers.values()) and broker
        return ready, {"ready": ready, "checks": checks}

    def collect(self) -> Iterator[Metric]:
        daemon = self._daemon
        pipeline = daemon.pipeline
        decoder = daemon.adapter.decoder

        readings = CounterMetricFamily(
            "proximity_readings",
            "What the adapters read, by adapter and outcome (rejected ones with the reason)",
            labels=["adapter", "outcome", "reason"],
        )
        readings.add_metric(["ble", "accepted", ""], decoder.sightings)
        readings.add_metric(["ble", "ignored", "not_a_beacon"], decoder.ignored)
        for reason, count in decoder.rejected.items():
            readings.add_metric(["ble", "rejected", reason], count)
        for reason, count in decoder.refused.items():
            readings.add_metric(["ble", "refused", reason], count)
        for nfc in daemon.nfc:
            readings.add_metric(["nfc", "accepted", ""], nfc.taps_read - sum(nfc.rejected.values()))
            for reason, count in nfc.rejected.items():
                readings.add_metric(["nfc", "rejected", reason], count)
        for scanner in daemon.scanners:
            readings.add_metric([scanner.source, "accepted", ""], scanner.maker.scans)
            for reason, count in scanner.rejected.items():
                readings.add_metric([scanner.source, "rejected", reason], count)
        yield readings

        telemetry = CounterMetricFamily(
            "proximity_ble_telemetry",
            "Beacon frames that are not presence: tlm, etlm (encrypted, counted only), url",
            labels=["kind"],
        )
        for kind, count in decoder.telemetry.items():
            telemetry.add_metric([kind], count)
        yield telemetry
        backend = daemon.adapter.backend
        restarts = getattr(backend, "restarts", None)
        if isinstance(restarts, int):
            yield CounterMetricFamily(
                "proximity_ble_scanner_restarts",
                "Scans restarted by the watchdog or after a BlueZ error",
                value=restarts,
            )
            errors = CounterMetricFamily(
                "proximity_ble_scanner_errors", "BlueZ errors, by name", labels=["error"]
            )
            for name, count in getattr(backend, "errors", {}).items():
                errors.add_metric([str(name)], count)
            yield errors

        ignored = CounterMetricFamily(
            "proximity_readings_ignored",
            "Readings the pipeline did not use, by reason (not a shopper, no zone...)",
            labels=["reason"],
        )
        for reason, count in pipeline.ignored.items():
            ignored.add_metric([reason], count)
        yield ignored

        yield GaugeMetricFamily(
            "proximity_tracked_identities",
            "Shoppers with an open visit",
            value=pipeline.tracker.active_visits,
        )

        events = CounterMetricFamily(
            "proximity_journey_events", "Journey events, by kind", labels=["kind"]
        )
        for kind, count in daemon.stats.events_by_kind.items():
            events.add_metric([kind], count)
        yield events

        decided = CounterMetricFamily(
            "proximity_offers_decided", "Offers the rules decided, by rule", labels=["rule"]
        )
        suppressed = CounterMetricFamily(
            "proximity_offers_suppressed",
            "Matched rules a delivery control held back, by reason",
            labels=["reason"],
        )
        stats = pipeline.decider.stats
        for rule, count in stats.decided.items():
            decided.add_metric([rule], count)
        by_reason: dict[str, int] = {}
        for (_, reason), count in stats.suppressed.items():
            by_reason[str(reason)] = by_reason.get(str(reason), 0) + count
        for reason, count in by_reason.items():
            suppressed.add_metric([reason], count)
        yield decided
        yield suppressed

        drain = daemon.drain_stats
        offers = CounterMetricFamily(
            "proximity_offers",
            "Offers leaving the outbox: acknowledged by the broker, expired, unpublishable",
            labels=["outcome"],
        )
        offers.add_metric(["acked"], drain.published)
        offers.add_metric(["signage_acked"], drain.signage)
        offers.add_metric(["expired"], drain.expired)
        offers.add_metric(["unpublishable"], drain.unpublishable)
        yield offers
        yield CounterMetricFamily(
            "proximity_publish_failures",
            "Publish attempts that failed (each offer is retried)",
            value=drain.failures,
        )

        outbox = daemon.outbox
        yield GaugeMetricFamily(
            "proximity_outbox_depth", "Offers waiting for the broker", value=len(outbox)
        )
        yield GaugeMetricFamily(
            "proximity_outbox_oldest_age_seconds",
            "Age of the oldest waiting offer",
            value=outbox.oldest_age(daemon.clock.now()),
        )
        connected = self._publisher is not None and self._publisher.connected
        yield GaugeMetricFamily(
            "proximity_broker_connected", "1 while connected to the broker", value=int(connected)
        )

        info = GaugeMetricFamily(
            "proximity_info", "Versions served", labels=["version", "rules_version"]
        )
        info.add_metric([__version__, pipeline.table.version or ""], 1)
        yield info

        if pipeline.acts is not None:
            acts = CounterMetricFamily(
                "proximity_acts", "Taps and scans that became events, by kind", labels=["kind"]
            )
            for kind, count in pipeline.acts.events.items():
                acts.add_metric([kind], count)
            yield acts
            refused = CounterMetricFamily(
                "proximity_codes_refused",
                "Scanned codes and texts not acted on, by reason",
                labels=["reason"],
            )
            for reason, count in pipeline.acts.refused.items():
                refused.add_metric([reason], count)
            yield refused

        feedback = CounterMetricFamily(
            "proximity_feedback_rejected",
            "App feedback messages rejected, by reason",
            labels=["reason"],
        )
        for reason, count in daemon.feedback.rejected.items():
            feedback.add_metric([reason], count)
        yield feedback

        pauses = daemon.gc_pauses
        gc_pauses = HistogramMetricFamily(
            "proximity_gc_pause_seconds",
            "Pauses of Python's garbage collector on the event loop, by generation (2: full)",
            labels=["generation"],
        )
        for generation in range(len(pauses.count)):
            gc_pauses.add_metric(
                [str(generation)], pauses.cumulative(generation), pauses.seconds[generation]
            )
        yield gc_pauses
        longest = GaugeMetricFamily(
            "proximity_gc_pause_longest_seconds",
            "The longest pause of the garbage collector since the daemon started, by generation",
            labels=["generation"],
        )
        for generation, seconds in enumerate(pauses.longest):
            longest.add_metric([str(generation)], seconds)
        yield longest

        # remote scanner nodes (docs/nodes.md): their backend keeps its own counts
        families = getattr(daemon.adapter.backend, "metric_families", None)
        if callable(families):
            yield from families()


class _ReloadCollector(Collector):
    def __init__(self, watcher: RuleWatcher) -> None:
        self._watcher = watcher

    def collect(self) -> Iterator[Metric]:
        reloads = CounterMetricFamily(
            "proximity_rule_reloads",
            "Rule file changes seen by the hot reload: ok (now serving) or failed (the last "
            "good rules kept serving)",
            labels=["outcome"],
        )
        reloads.add_metric(["ok"], self._watcher.reloads)
        reloads.add_metric(["failed"], self._watcher.failures)
        yield reloads


class _UplinkCollector(Collector):
    def __init__(self, uplink: ChainUplink) -> None:
        self._uplink = uplink

    def collect(self) -> Iterator[Metric]:
        uplink = self._uplink
        count, age = uplink.pending()
        yield GaugeMetricFamily(
            "proximity_uplink_pending_batches",
            "Sealed fact batches waiting for hq's acknowledgement (kept in the measurement file)",
            value=count,
        )
        yield GaugeMetricFamily(
            "proximity_uplink_oldest_pending_age_seconds",
            "Age of the oldest batch waiting for hq's acknowledgement (0: none waits)",
            value=age or 0.0,
        )
        yield CounterMetricFamily(
            "proximity_uplink_sent",
            "Batch messages the store broker acknowledged, re-sends included",
            value=uplink.sent,
        )
        yield CounterMetricFamily(
            "proximity_uplink_resent",
            "Batches sent again (no ack from hq in time)",
            value=uplink.resent,
        )
        yield CounterMetricFamily(
            "proximity_uplink_acked", "Batches hq acknowledged (then deleted)", value=uplink.acked
        )
        yield CounterMetricFamily(
            "proximity_uplink_refused",
            "Batches hq's database refused (kept in uplink_refused, not sent again)",
            value=uplink.refused,
        )
        ignored = CounterMetricFamily(
            "proximity_uplink_acks_ignored",
            "Acknowledged seqs not acted on: other_gateway, already_acked, unknown_seq",
            labels=["reason"],
        )
        for reason, n in uplink.acks_ignored.items():
            ignored.add_metric([reason], n)
        yield ignored
        rejected = CounterMetricFamily(
            "proximity_uplink_rejected",
            "Downlink messages refused (malformed, unknown topic), by reason",
            labels=["reason"],
        )
        for reason, n in uplink.rejected.items():
            rejected.add_metric([reason], n)
        yield rejected
        yield CounterMetricFamily(
            "proximity_uplink_facts_unsealable",
            "Facts recorded while the measurement file had failed: never sent to the chain",
            value=uplink.measure.unsealable,
        )
        yield GaugeMetricFamily(
            "proximity_uplink_connected",
            "1 while the uplink is connected to the store broker",
            value=int(uplink.connected),
        )


def gateway_status(
    daemon: Daemon,
    rules: RuleWatcher | None = None,
    uplink: ChainUplink | None = None,
    scanners: Collection[str] = (),
) -> dict[str, Any]:
    """The gateway's health for the chain's ``up/status`` (docs/chain.md), from the same
    counts /metrics reads. ``scanners``: every scanner the config names (local radios and
    nodes); those the backend says are down count as silent."""
    backend = daemon.adapter.backend
    down_of = getattr(backend, "scanners_down", None)
    down = set(down_of()) if callable(down_of) else set()
    nodes = {"online": 0, "offline": 0}
    for part in getattr(backend, "parts", (backend,)):
        ingest = getattr(part, "ingest", None)
        for health in getattr(ingest, "nodes", {}).values():
            if health.state == "online":
                nodes["online"] += 1
            elif health.state in ("offline", "silent"):
                nodes["offline"] += 1
    known = set(scanners) | down
    errors = daemon.drain_stats.failures
    if rules is not None:
        errors += rules.failures
    if uplink is not None:
        errors += uplink.rollouts_refused
    return {
        "version": __version__,
        "rules_version": daemon.pipeline.table.version or "",
        "outbox_depth": len(daemon.outbox),
        "scanners": {"alive": len(known - down), "silent": len(down)},
        "nodes": nodes,
        "errors": errors,
    }


class _Closing(Protocol):
    def close(self) -> None: ...


class ConsoleApp(Protocol):
    """What the server hands ``/console`` requests to: the gateway's console
    (:class:`proximity.console.server.Console`) or the chain's (``proximity hq``)."""

    @property
    def feed(self) -> _Closing: ...

    async def respond(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None: ...


class HealthServer:
    """A minimal HTTP/1.1 server for ``/metrics``, ``/healthz`` and ``/readyz``."""

    def __init__(
        self,
        metrics: Metrics,
        host: str = "127.0.0.1",
        port: int = 9464,
        console: ConsoleApp | None = None,
    ) -> None:
        self.metrics = metrics
        self.console = console
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._handlers: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        """The connections being answered (a live page's stream lasts), with their writers."""

    async def __aenter__(self) -> Self:
        """Start listening. A port that is taken is logged, not fatal: the gateway's job
        is the store, not its own monitoring."""
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except OSError as exc:
            log.error(
                "metrics_unavailable",
                host=self.host,
                port=self.port,
                error=exc.strerror or str(exc),
                consequence="no /metrics, /healthz or /readyz",
            )
            return self
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics_listening", url=f"http://{self.host}:{self.port}/metrics")
        return self

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.console is not None:
            self.console.feed.close()  # the live pages' streams end
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        # Python 3.11's wait_closed does not wait for the connections' handlers, and a
        # handler the loop's end cancels is logged by asyncio as an error (its done
        # callback asks the cancelled task for its exception). A live page's stream ends
        # within a beat of its feed closing; one stuck writing to a browser that reads
        # nothing gets its connection aborted, so its next write fails and it ends too.
        if self._handlers:
            _, stuck = await asyncio.wait(self._handlers, timeout=2.0)
            for task in stuck:
                self._handlers[task].transport.abort()
            if stuck:
                await asyncio.wait(stuck, timeout=1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = writer
        try:
            await self._answer(reader, writer)
        finally:
            del self._handlers[task]

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            if len(head) > _MAX_REQUEST:
                raise ValueError("request too large")
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            if self.console is not None and target.startswith("/console"):
                with contextlib.suppress(ConnectionError):
                    await self.console.respond(head, reader, writer)
                writer.close()
                return
            status, kind, body = self._route(method, target.split("?", 1)[0])
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            status, kind, body = 400, "text/plain", b"bad request\n"
        try:
            writer.write(
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _route(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method != "GET":
            return 405, "text/plain", b"GET only\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, self.metrics.render()
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            ready, body = self.metrics.readiness()
            return (200 if ready else 503), "application/json", json.dumps(body).encode() + b"\n"
        return 404, "text/plain", b"not found: /metrics, /healthz, /readyz\n"


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}
