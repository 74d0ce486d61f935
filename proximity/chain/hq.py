"""``proximity hq``: every store's uplink into PostgreSQL, acknowledged after the commit.

    async with Hq(settings) as hq:      # migrated, connected, subscribed, /metrics up
        await stop.wait()               # messages flow meanwhile

- ``up/facts``: each batch is validated (:func:`~proximity.chain.messages.parse_uplink`),
  buffered, and committed with the others of its flush in one transaction
  (:meth:`~proximity.chain.pgstore.PgStore.write`: idempotent on store, gateway, seq).
  Only after the commit does hq publish ``down/acks`` with the seqs, for duplicates too.
  A flush happens at ``batch_rows`` buffered rows or ``flush_every`` after the first.
- ``up/status`` updates the fleet (in memory for /metrics, and the ``fleet`` table);
  ``up/rollout`` is kept in ``rollout_reports``.
- A malformed message is counted in ``proximity_hq_rejected_total{reason}``, logged once
  per (reason, store) and dropped; hq keeps going.
- PostgreSQL away: the buffer is kept (nothing acked), the write retried every second.
  Messages the broker handed to hq but hq had not committed when it stopped are sent
  again by their gateways (unacked batches are re-sent): the ack is the only receipt.

A store is stale when none of its gateways is online and heard from within
``stale_after``: ``proximity_hq_store_stale{store}`` is 1 and ``store_stale`` is logged
once per episode (``store_fresh`` when it is back).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

import psycopg
import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proximity.chain.hqconfig import HqSettings
from proximity.chain.link import UplinkClient
from proximity.chain.messages import (
    REJECT_REASONS,
    FactsBatch,
    GatewayStatus,
    Rejected,
    RolloutReport,
    parse_uplink,
)
from proximity.chain.pgstore import BatchKey, PgStore, Seen, Written
from proximity.metrics import HealthServer, Metrics

log = structlog.get_logger(__name__)

RETRY_S = 1.0
_COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def ack_topic(store: str) -> str:
    return f"proximity/v1/{store}/down/acks"


def ack_payload(gateway: str, seqs: list[int], refused: Sequence[tuple[int, str]] = ()) -> bytes:
    """``down/acks``: the seqs committed, and (``refused``, when any) the batches PostgreSQL
    refused for their content with its reason: the gateway stops sending those."""
    message: dict[str, Any] = {"v": 1, "gateway": gateway, "seqs": sorted(seqs)}
    if refused:
        message["refused"] = [{"seq": seq, "reason": why} for seq, why in sorted(refused)]
    return json.dumps(message).encode()


@dataclass
class _Pending:
    """What waits for the next commit."""

    batches: dict[BatchKey, FactsBatch] = field(default_factory=dict)
    rows: int = 0
    statuses: list[tuple[GatewayStatus, datetime, dict[str, Any]]] = field(default_factory=list)
    reports: list[RolloutReport] = field(default_factory=list)
    since: float | None = None

    def __bool__(self) -> bool:
        return bool(self.batches or self.statuses or self.reports)


class Fleet:
    """Every gateway's last status, and which stores are stale."""

    def __init__(self, stale_after: timedelta) -> None:
        self.stale_after = stale_after
        self.gateways: dict[tuple[str, str], Seen] = {}
        self._stale: set[str] = set()

    def load(self, seen: list[Seen]) -> None:
        for s in seen:
            self.gateways[(s.store, s.gateway)] = s

    def status(self, status: GatewayStatus, at: datetime) -> None:
        self.gateways[(status.store, status.gateway)] = Seen(
            status.store,
            status.gateway,
            at,
            status.online,
            status.outbox_depth,
            status.uplink_pending,
            status.errors,
        )

    def heard(self, store: str, gateway: str, at: datetime) -> None:
        """A facts batch or report: the gateway is alive (its status fields unchanged)."""
        seen = self.gateways.get((store, gateway))
        if seen is not None and seen.online:
            self.gateways[(store, gateway)] = Seen(
                store,
                gateway,
                at,
                True,
                seen.outbox_depth,
                seen.uplink_pending,
                seen.errors,
            )

    def stores(self) -> dict[str, list[Seen]]:
        out: dict[str, list[Seen]] = defaultdict(list)
        for seen in self.gateways.values():
            out[seen.store].append(seen)
        return out

    def stale(self, now: datetime) -> dict[str, bool]:
        limit = now - self.stale_after
        return {
            store: not any(g.online and g.last_seen >= limit for g in gateways)
            for store, gateways in self.stores().items()
        }

    def check(self, now: datetime) -> None:
        """Log each store that became stale (``store_stale``) or fresh again."""
        for store, stale in self.stale(now).items():
            if stale and store not in self._stale:
                self._stale.add(store)
                last = max(g.last_seen for g in self.stores()[store])
                log.warning(
                    "store_stale",
                    store=store,
                    last_seen=last.isoformat(),
                    online=any(g.online for g in self.stores()[store]),
                )
            elif not stale and store in self._stale:
                self._stale.discard(store)
                log.info("store_fresh", store=store)


class HqMetrics(Metrics):
    """hq's /metrics (a Metrics, so the gateway's HealthServer serves it)."""

    def __init__(self, fleet: Fleet, clock: Callable[[], datetime]) -> None:
        # not the gateway's histograms: a registry of hq's own
        self.registry = CollectorRegistry(auto_describe=True)
        self.rows = Counter(
            "proximity_hq_facts_rows",
            "Fact rows committed (rows of new batches)",
            registry=self.registry,
        )
        self.batches = Counter(
            "proximity_hq_batches",
            "Facts batches committed (new) or found already there (duplicate); both acked",
            ["result"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "proximity_hq_rejected",
            "Uplink messages refused, by reason",
            ["reason"],
            registry=self.registry,
        )
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        for result in ("new", "duplicate"):
            self.batches.labels(result)
        self.commit = Histogram(
            "proximity_hq_commit_seconds",
            "Time to commit one flush (many batches) to PostgreSQL",
            buckets=_COMMIT_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_FleetCollector(fleet, clock))
        self.ready: dict[str, str] = {"broker": "not connected", "database": "not connected"}

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        ok = all(v == "ok" for v in self.ready.values())
        return ok, {"ready": ok, "checks": dict(self.ready)}


class _FleetCollector(Collector):
    def __init__(self, fleet: Fleet, clock: Callable[[], datetime]) -> None:
        self.fleet = fleet
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        stores = self.fleet.stores()
        stale = self.fleet.stale(self.clock())
        yield GaugeMetricFamily(
            "proximity_hq_stores", "Stores hq has heard a status from", value=len(stores)
        )
        flags = GaugeMetricFamily(
            "proximity_hq_store_stale",
            "1 when no gateway of the store is online and heard from within stale_after",
            labels=["store"],
        )
        outbox = GaugeMetricFamily(
            "proximity_hq_store_outbox_depth",
            "Offers waiting in the store's outbox (its gateways' last status)",
            labels=["store"],
        )
        uplink = GaugeMetricFamily(
            "proximity_hq_store_uplink_pending",
            "Facts batches the store's gateways have not had acked (last status)",
            labels=["store"],
        )
        for store in sorted(stores):
            flags.add_metric([store], 1.0 if stale[store] else 0.0)
            outbox.add_metric([store], sum(g.outbox_depth for g in stores[store]))
            uplink.add_metric([store], sum(g.uplink_pending for g in stores[store]))
        yield flags
        yield outbox
        yield uplink


class Hq:
    """The service; an async context manager (see the module docstring)."""

    def __init__(
        self,
        settings: HqSettings,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        serve_metrics: bool = True,
    ) -> None:
        self.settings = settings
        cfg = settings.hq
        self.clock = clock
        self.db = PgStore(cfg.database)
        self.fleet = Fleet(cfg.stale_after)
        self.metrics = HqMetrics(self.fleet, clock)
        self.health: HealthServer | None = (
            HealthServer(self.metrics, cfg.metrics_host, cfg.metrics_port)
            if serve_metrics
            else None
        )
        from proximity.console.chain import mount  # the chain's console on /console/

        self.console = mount(self)
        received = self._received if self.console is None else self.console.tap(self._received)
        self.link = UplinkClient(
            cfg.broker_url(),
            client_id=cfg.client_id,
            share_group=cfg.share_group,
            session_expiry_s=int(cfg.session_expiry.total_seconds()),
            on_messages=received,
            ca_file=str(cfg.ca_file) if cfg.ca_file else None,
            client_cert=str(cfg.client_cert) if cfg.client_cert else None,
            client_key=str(cfg.client_key) if cfg.client_key else None,
        )
        self._pending = _Pending()
        self._wake = asyncio.Event()
        self._stopping = False
        self._writer: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._logged: set[tuple[str, str]] = set()
        self.committed = 0
        """Flushes committed so far (tests wait on it)."""
        self.received = 0
        """Uplink messages received so far (the benchmark waits on it)."""
        self.rows_committed = 0
        """Fact rows committed so far (the benchmark waits on it)."""

    async def __aenter__(self) -> Self:
        applied = await asyncio.to_thread(self.db.migrate)
        seen = await asyncio.to_thread(self.db.fleet)
        self.fleet.load(seen)
        self.metrics.ready["database"] = "ok"
        log.info("hq_database_ready", migrations=applied, gateways=len(seen))
        if self.health is not None:
            await self.health.__aenter__()
        try:
            await self.link.start()
        except BaseException:
            await self._close_rest()
            raise
        self.metrics.ready["broker"] = "ok"
        self._writer = asyncio.create_task(self._write_loop(), name="hq-writer")
        self._watcher = asyncio.create_task(self._watch_loop(), name="hq-stale-watch")
        log.info("hq_started", subscription=self.link.filter)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop: commit and ack what is buffered (if the database lets it), disconnect."""
        self._stopping = True
        self._wake.set()
        if self._writer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await asyncio.wait_for(self._writer, 10)
                except TimeoutError:
                    log.warning("hq_stop_uncommitted", batches=len(self._pending.batches))
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await self.link.close()
        await self._close_rest()
        log.info("hq_stopped")

    async def _close_rest(self) -> None:
        if self.health is not None:
            await self.health.__aexit__(None, None, None)
        await asyncio.to_thread(self.db.close)

    # -- receiving (on the loop) ---------------------------------------------------------

    def _received(self, messages: list[tuple[str, bytes]]) -> None:
        now = self.clock()
        pending = self._pending
        self.received += len(messages)
        for topic, payload in messages:
            message = parse_uplink(topic, payload)
            if isinstance(message, Rejected):
                self._reject(message)
                continue
            if isinstance(message, FactsBatch):
                if message.key not in pending.batches:
                    pending.batches[message.key] = message
                    pending.rows += len(message.rows)
                self.fleet.heard(message.store, message.gateway, now)
            elif isinstance(message, GatewayStatus):
                self.fleet.status(message, now)
                pending.statuses.append((message, now, _whole(payload)))
            else:
                pending.reports.append(message)
                self.fleet.heard(message.store, message.gateway, now)
            if pending.since is None:
                pending.since = time.monotonic()
        if pending:
            self._wake.set()  # the writer waits for batch_rows or flush_every from the first

    def _reject(self, rejected: Rejected) -> None:
        self.metrics.rejected.labels(rejected.reason).inc()
        store = rejected.store[:64]
        if (rejected.reason, store) not in self._logged:
            self._logged.add((rejected.reason, store))
            log.warning(
                "uplink_rejected", reason=rejected.reason, store=store, detail=rejected.detail
            )

    # -- writing -------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        cfg = self.settings.hq
        flush_every = cfg.flush_every.total_seconds()
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending = self._pending
            if not pending:
                if self._stopping:
                    return
                continue
            if not self._stopping and pending.rows < cfg.batch_rows and pending.since is not None:
                wait = pending.since + flush_every - time.monotonic()
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full(), wait)
            self._pending = _Pending()
            if not await self._commit(pending):
                self._merge_back(pending)
                if self._stopping:
                    return
                await asyncio.sleep(RETRY_S)
                self._wake.set()
                continue
            if self._stopping and not self._pending:
                return
            if self._pending:
                self._wake.set()

    async def _full(self) -> None:
        while self._pending.rows < self.settings.hq.batch_rows and not self._stopping:
            self._wake.clear()
            await self._wake.wait()

    def _merge_back(self, failed: _Pending) -> None:
        """Put a flush that could not be committed in front of what came since."""
        newer = self._pending
        for key, batch in newer.batches.items():
            if key not in failed.batches:
                failed.batches[key] = batch
                failed.rows += len(batch.rows)
        failed.statuses += newer.statuses
        failed.reports += newer.reports
        self._pending = failed

    async def _commit(self, pending: _Pending) -> bool:
        batches = list(pending.batches.values())
        started = time.perf_counter()
        try:
            written = await asyncio.to_thread(
                self.db.write, batches, pending.statuses, pending.reports, self.clock()
            )
        except psycopg.OperationalError as exc:
            if self.metrics.ready["database"] == "ok":
                log.error("db_unavailable", error=str(exc).splitlines()[0][:200])
            self.metrics.ready["database"] = "unavailable"
            await asyncio.to_thread(self.db.close)
            return False
        except psycopg.Error as exc:
            # one message PostgreSQL will never take must not hold back the others
            log.error("db_refused_flush", error=str(exc).splitlines()[0][:200])
            written = await self._commit_one_by_one(pending)
        self.metrics.ready["database"] = "ok"
        self.metrics.commit.observe(time.perf_counter() - started)
        self.committed += 1
        self._acknowledge(written)
        return True

    async def _commit_one_by_one(self, pending: _Pending) -> Written:
        total = Written()
        items: list[tuple[list[FactsBatch], list[Any], list[RolloutReport]]] = [
            ([b], [], []) for b in pending.batches.values()
        ]
        items += [([], [s], []) for s in pending.statuses]
        items += [([], [], [r]) for r in pending.reports]
        for batches, statuses, reports in items:
            try:
                one = await asyncio.to_thread(
                    self.db.write, batches, statuses, reports, self.clock()
                )
            except psycopg.Error as exc:
                store = batches[0].store if batches else ""
                why = str(exc).splitlines()[0][:200]
                self._reject(Rejected("db_refused", why, store))
                total.refused += [(*batch.key, why) for batch in batches]
                continue
            total.new += one.new
            total.duplicate += one.duplicate
            total.rows += one.rows
        return total

    def _acknowledge(self, written: Written) -> None:
        self.rows_committed += written.rows
        self.metrics.rows.inc(written.rows)
        self.metrics.batches.labels("new").inc(len(written.new))
        self.metrics.batches.labels("duplicate").inc(len(written.duplicate))
        seqs: dict[tuple[str, str], list[int]] = defaultdict(list)
        refused: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
        for store, gateway, seq in [*written.new, *written.duplicate]:
            seqs[(store, gateway)].append(seq)
        for store, gateway, seq, why in written.refused:
            refused[(store, gateway)].append((seq, why))
        for store, gateway in seqs.keys() | refused.keys():
            # not connected: the gateway re-sends, and the re-sent batch is answered then
            key = (store, gateway)
            payload = ack_payload(gateway, seqs.get(key, []), refused.get(key, []))
            self.link.publish(ack_topic(store), payload)
        if written.duplicate:
            log.debug("batches_duplicate", count=len(written.duplicate))

    # -- stale stores --------------------------------------------------------------------

    async def _watch_loop(self) -> None:
        period = min(5.0, max(0.1, self.settings.hq.stale_after.total_seconds() / 4))
        while True:
            self.fleet.check(self.clock())
            self.metrics.ready["broker"] = "ok" if self.link.connected else "not connected"
            await asyncio.sleep(period)


def _whole(payload: bytes) -> dict[str, Any]:
    value = json.loads(payload)
    return value if isinstance(value, dict) else {}


async def serve(settings: HqSettings, stop: asyncio.Event) -> None:
    """Run hq until ``stop`` is set."""
    async with Hq(settings):
        await stop.wait()
