"""The daemon's event loop: one owner for every task.

    backend ─▶ BleAdapter.readings() ─▶ Pipeline ─▶ decisions queue ─▶ sink (MQTT)
                      ticker (clock) ─▶ Pipeline.tick ─┤
     NFC readers, code scanners ─▶ Pipeline.on_tap/on_scan ─┘

Readings and ticks are handled on the event loop in arrival order (a tick in
slices of ``TICK_SLICE`` visits, readings handled between them); publishing
happens in one delivery task so a slow broker never stalls the radio. The run
ends when ``stop`` is set (SIGINT/SIGTERM) or when the backend's stream ends
(a finished simulation); queued decisions are delivered before it returns.

The order of a decision's writes (docs/durability.md): its offers go into the
outbox as it is made, with nothing awaited in between, and are committed at the
end of that loop turn together with their journal rows; only after that commit
are the caps' rows and the funnel's facts written, and only then is the journey
event handed to the publisher. A kill at any instant leaves an offer either
durable or never decided, and what a crash cut short after the commit is
reconciled from the outbox's journal at the next start. Journey events never
hold offers back.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

import structlog

from proximity.adapters.ble.adapter import BleAdapter
from proximity.adapters.nfc.adapter import NfcAdapter
from proximity.adapters.qr.scan import CodeScan
from proximity.adapters.qr.sources import CodeReader
from proximity.clock import Clock
from proximity.codes import CouponSigner
from proximity.delivery.drain import DrainStats, OutboxDrainer
from proximity.delivery.outbox import Issued, Item, Kind, Outbox
from proximity.engine.controls import Suppression
from proximity.engine.decide import Decision
from proximity.engine.funnel import CONTROL, HOLDOUT
from proximity.errors import AdapterError, DeliveryError
from proximity.events import EventKind, JourneyEvent
from proximity.gcpause import GcPauses
from proximity.measurement.feedback import FeedbackDesk
from proximity.measurement.store import MeasurementStore, Stage
from proximity.offers import Offer
from proximity.pipeline import Pipeline

log = structlog.get_logger(__name__)

R = TypeVar("R")
YIELD_EVERY = 64
"""Readings handled back to back before the reader lets the other tasks run."""
TICK_SLICE = 100
"""Visits ticked back to back before the ticker lets the other tasks run: about 1 ms
with ``fused`` (a whole tick of a thousand shoppers took 10-37 ms), 0.25 ms with the
per-zone thresholds."""
FEEDBACK_GRACE = timedelta(days=1)
"""How long past an offer's (or its coupon's) expiry the gateway still knows it: app
feedback may arrive late, and a redemption is refused as expired, not as unknown."""


class Sink(Protocol):
    """Where decisions go: the MQTT publisher, or anything with the same two calls."""

    async def publish_offer(
        self, shopper_token: str, offer: Offer, payload: str | None = None
    ) -> bool:
        """True once the broker has it; False when the offer expired before it could go.
        ``payload``: the offer's JSON, when the outbox made it already."""
        ...

    async def publish_event(self, event: JourneyEvent, qos: int = 0) -> None: ...

    async def publish_signage(self, offer: Offer, payload: str | None = None) -> bool: ...


class Observer(Protocol):
    """Timings the daemon reports as they happen (the metrics endpoint's histograms)."""

    def pipeline(self, seconds: float) -> None:
        """One reading, act or tick through identity, presence and the rules."""

    def delivery(self, seconds: float) -> None:
        """One offer from the outbox to the broker's acknowledgement."""


class _NoObserver:
    def pipeline(self, seconds: float) -> None:
        pass

    def delivery(self, seconds: float) -> None:
        pass


GC_THRESHOLD = (10_000, 20, 20)
"""Collections of the youngest generation every 10,000 net allocations (Python's default
is 700): the pipeline allocates many short-lived objects per reading, and each
collection is a pause on the event loop."""


def settle_garbage_collector() -> None:
    """Before serving: collect once, then move everything alive now (modules, the rule
    table, the pipeline's structures) out of the collector's sight (``gc.freeze``), and
    collect the young less often. A full collection then walks only what was allocated
    since start, not the whole heap: in ``bench/delivery`` Python's collector made most
    of the reading → offer p99 (21 ms with the defaults, 8.5 ms with collection off)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


@dataclass(slots=True)
class DaemonStats:
    events: int = 0
    events_by_kind: Counter[str] = field(default_factory=Counter)
    events_failed: int = 0
    offers_published: int = 0
    offers_expired: int = 0
    """Offers whose lifetime ended before the broker could take them: dropped, not late."""
    offers_waiting: int = 0
    """Offers still in the outbox when the run ended (a durable outbox keeps them)."""
    signage_published: int = 0
    publish_failures: int = 0
    """Publish attempts that failed; each offer is retried until it goes or expires."""
    offers_unpublishable: int = 0
    """Offers dropped because publishing them raised an unexpected error (logged)."""
    acts: dict[str, int] = field(default_factory=dict)
    """Taps and scans that became journey events, by event kind."""
    codes_refused: dict[str, int] = field(default_factory=dict)
    """Scanned texts and codes not acted on, by reason (forged, expired, replayed...)."""
    readers_failed: dict[str, str] = field(default_factory=dict)
    """NFC readers and code scanners whose stream ended in an error, with the error."""


class Daemon:
    def __init__(
        self,
        adapter: BleAdapter,
        pipeline: Pipeline,
        sink: Sink,
        clock: Clock,
        tick: timedelta = timedelta(seconds=1),
        publish_events: bool = True,
        events_qos: int = 0,
        on_decision: Callable[[Decision], None] | None = None,
        outbox: Outbox | None = None,
        drain_timeout: float = 10.0,
        measure: MeasurementStore | None = None,
        feedback: FeedbackDesk | None = None,
        nfc: Sequence[NfcAdapter] = (),
        scanners: Sequence[CodeReader] = (),
        coupons: CouponSigner | None = None,
        observer: Observer | None = None,
    ) -> None:
        """``feedback``: the desk that knows the offers sent (shared with the pipeline,
        which looks redeemed coupons up in it); ``nfc`` and ``scanners``: the readers
        whose taps and scans go to the pipeline (started and stopped with the run);
        ``coupons``: signs the redemption code of each offer with a coupon."""
        self._coupons = coupons
        self.observer: Observer = observer or _NoObserver()
        self._put_at: dict[str, float] = {}
        self._reader: asyncio.Task[None] | None = None
        self._heard: datetime | None = None
        """The time of the latest reading handled since the last tick (None: none since)."""
        self._ticked: datetime | None = None
        self._adapter = adapter
        self._nfc = tuple(nfc)
        self._scanners = tuple(scanners)
        self._pipeline = pipeline
        self._sink = sink
        self._clock = clock
        self._tick = tick.total_seconds()
        self._publish_events = publish_events
        self._events_qos = events_qos
        self._on_decision = on_decision
        self._queue: asyncio.Queue[Decision | None] = asyncio.Queue()
        self._uncommitted: list[Decision] = []
        """Decisions whose offers are in the outbox but not yet committed with the rest."""
        self._commit_scheduled = False
        self._outbox = outbox if outbox is not None else Outbox()
        self.measure = measure if measure is not None else MeasurementStore()
        self.feedback = feedback if feedback is not None else FeedbackDesk(pipeline.store)
        self._drainer = OutboxDrainer(self._outbox, sink, clock, on_done=self._left_outbox)
        pipeline.decider.state.defer_writes()  # flushed by _commit, after the outbox
        self._drain_timeout = drain_timeout
        self.stats = DaemonStats()
        self.gc_pauses = GcPauses()
        """The collector's pauses on the loop while :meth:`run` runs (the metrics report them)."""

    async def run(self, stop: asyncio.Event | None = None) -> DaemonStats:
        stop = stop or asyncio.Event()
        settle_garbage_collector()
        self.gc_pauses.install()
        try:
            return await self._run(stop)
        finally:
            self.gc_pauses.uninstall()

    async def _run(self, stop: asyncio.Event) -> DaemonStats:
        delivery = asyncio.create_task(self._deliver(), name="deliver")
        drainer = asyncio.create_task(self._drainer.run(), name="drain")
        async with self._adapter.backend, contextlib.AsyncExitStack() as readers:
            for nfc in self._nfc:
                await readers.enter_async_context(nfc)
            for scanner in self._scanners:
                await readers.enter_async_context(scanner)
            reader = self._reader = asyncio.create_task(self._read(), name="read")
            ticker = asyncio.create_task(self._ticker(), name="tick")
            stopper = asyncio.create_task(stop.wait(), name="stop")
            acts = [asyncio.create_task(self._taps(n), name=f"nfc-{n.reader}") for n in self._nfc]
            acts += [
                asyncio.create_task(self._scans(s), name=f"scan-{s.scanner}")
                for s in self._scanners
            ]
            try:
                await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (reader, ticker, stopper, *acts):
                    task.cancel()
                outcomes = await asyncio.gather(
                    reader, ticker, stopper, *acts, return_exceptions=True
                )
            failure = outcomes[0]
            if isinstance(failure, Exception):
                delivery.cancel()
                drainer.cancel()
                for task in (delivery, drainer):
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                log.error("ble_stream_failed", error=str(failure))
                raise failure
        self._enqueue(self._pipeline.tick(self._clock.now()))
        self._commit()
        await self._queue.put(None)
        await delivery
        drained = await self._drainer.flush(self._drain_timeout)
        if not drained:
            log.warning(
                "outbox_not_empty_at_stop",
                waiting=len(self._outbox),
                durable=self._outbox.path is not None and not self._outbox.failed,
            )
        drainer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drainer
        drain = self._drainer.stats
        self.stats.offers_published = drain.published
        self.stats.signage_published = drain.signage
        self.stats.offers_expired = drain.expired
        self.stats.publish_failures = drain.failures
        self.stats.offers_unpublishable = drain.unpublishable
        if self._pipeline.acts is not None:
            self.stats.acts = dict(self._pipeline.acts.events)
            self.stats.codes_refused = dict(self._pipeline.acts.refused)
        self.stats.offers_waiting = len(self._outbox)
        return self.stats

    @property
    def published(self) -> int:
        """Offers the broker has acknowledged so far."""
        return self._drainer.stats.published

    # -- what the metrics endpoint reads -------------------------------------------------

    @property
    def pipeline(self) -> Pipeline:
        return self._pipeline

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def adapter(self) -> BleAdapter:
        return self._adapter

    @property
    def outbox(self) -> Outbox:
        return self._outbox

    @property
    def drain_stats(self) -> DrainStats:
        return self._drainer.stats

    @property
    def nfc(self) -> tuple[NfcAdapter, ...]:
        return self._nfc

    @property
    def scanners(self) -> tuple[CodeReader, ...]:
        return self._scanners

    @property
    def scanning(self) -> bool:
        """The BLE stream is being read (a finished or failed stream is not scanning)."""
        return self._reader is not None and not self._reader.done()

    # -- readings in ------------------------------------------------------------------------

    async def _read(self) -> None:
        handled = 0
        async for sighting in self._adapter.readings():
            self._heard = sighting.at
            self._timed(self._pipeline.on_sighting, sighting)
            handled += 1
            if handled % YIELD_EVERY == 0:
                # a backlog (a radio burst, a simulator faster than one core) never keeps
                # the ticker and the delivery task off the loop for long
                await asyncio.sleep(0)
        log.info("ble_stream_ended")

    def on_scan(self, scan: CodeScan) -> None:
        """A scan from outside the configured readers (the simulator, the demo's till)."""
        self._timed(self._pipeline.on_scan, scan)

    async def _taps(self, adapter: NfcAdapter) -> None:
        try:
            async for tap in adapter.taps():
                self._timed(self._pipeline.on_tap, tap)
        except AdapterError as exc:
            self._reader_failed(adapter.reader, exc)

    async def _scans(self, reader: CodeReader) -> None:
        try:
            async for scan in reader.scans():
                self.on_scan(scan)
        except AdapterError as exc:
            self._reader_failed(reader.scanner, exc)

    def _reader_failed(self, reader: str, exc: AdapterError) -> None:
        """A reader's stream ended in an error: said now, and counted; the store trades on
        with its other readers (the reader's own thread handles unplug and replug, so this
        is a fault it could not get over)."""
        self.stats.readers_failed[reader] = str(exc)
        log.error("reader_failed", reader=reader, error=str(exc))

    def _timed(self, decide: Callable[[R], list[Decision]], reading: R) -> None:
        """One reading through the pipeline, timed for the metrics, its decisions queued."""
        started = time.perf_counter()
        decisions = decide(reading)
        self.observer.pipeline(time.perf_counter() - started)
        self._enqueue(decisions)

    async def _ticker(self) -> None:
        while True:
            await self._clock.sleep(self._tick)
            # in slices, the loop turning between them: readings that come meanwhile are
            # not held up for the whole tick
            for decisions in self._pipeline.tick_in_slices(self._tick_at(), TICK_SLICE):
                self._enqueue(decisions)
                await asyncio.sleep(0)

    def _tick_at(self) -> datetime:
        """Now; or, while readings are still being worked through (the latest one handled
        is more than a tick old), that reading's time. Presence times out on the readings'
        own times: a tick at the clock's now while older readings wait in the queue would
        end stays those readings extend."""
        now = self._clock.now()
        heard, self._heard = self._heard, None
        behind = heard is not None and (now - heard).total_seconds() > self._tick
        at = heard if heard is not None and behind else now
        if self._ticked is not None and at < self._ticked:
            at = self._ticked  # never back in time
        self._ticked = at
        return at

    def _enqueue(self, decisions: list[Decision]) -> None:
        """Decisions just made: their offers into the outbox now, the rest after the commit."""
        if not decisions:
            return
        for decision in decisions:
            if self._on_decision is not None:
                self._on_decision(decision)
            event = decision.event
            for offer in decision.offers:
                coded = self._with_code(offer)
                if self._outbox.put(
                    Kind.OFFER, event.shopper.token, coded, self._issued(event, coded)
                ):
                    self._put_at[offer.id] = time.perf_counter()
            for sign in decision.signage:
                if sign.zone is not None:
                    self._outbox.put(Kind.SIGNAGE, sign.zone, sign)
            self._uncommitted.append(decision)
        if not self._commit_scheduled:
            try:
                # after the outbox's own commit, which put() scheduled first
                asyncio.get_running_loop().call_soon(self._commit)
            except RuntimeError:  # no loop (a caller outside the run): commit now
                self._commit()
            else:
                self._commit_scheduled = True

    def _commit(self) -> None:
        """The end of a loop turn: the outbox's transaction first (a no-op when it already
        ran), then the caps' rows and the funnel's facts, then the events go out."""
        self._commit_scheduled = False
        if not self._uncommitted:
            return
        self._outbox.commit()
        self._pipeline.decider.state.flush()
        decisions, self._uncommitted = self._uncommitted, []
        wake = False
        for decision in decisions:
            self._measure(decision)
            self._queue.put_nowait(decision)
            wake = wake or bool(decision.offers or decision.signage)
        if wake:
            self._drainer.wake()

    def _issued(self, event: JourneyEvent, offer: Offer) -> Issued:
        """The journal row of ``offer``: kept while its code can be redeemed or feedback
        can name it (a day past the later of the two expiries, for late feedback)."""
        until = offer.expires_at
        if offer.redeem_code is not None and self._coupons is not None:
            until = max(until, offer.issued_at + self._coupons.valid_for)
        return Issued(
            offer=offer.id,
            shopper=event.shopper.token,
            rule=offer.rule,
            variant=offer.variant,
            visit=event.visit,
            issued_at=offer.issued_at,
            keep_until=until + FEEDBACK_GRACE,
        )

    async def _deliver(self) -> None:
        while (decision := await self._queue.get()) is not None:
            event = decision.event
            self.stats.events += 1
            self.stats.events_by_kind[str(event.kind)] += 1
            log.info(
                "journey_event",
                kind=str(event.kind),
                zone=event.zone,
                shopper=event.shopper.token,
                visit=event.visit,
                offers=len(decision.offers),
                suppressed=[f"{rule}:{why}" for rule, why in decision.suppressed] or None,
            )
            if self._publish_events:
                try:
                    await self._sink.publish_event(event, qos=self._events_qos)
                except DeliveryError as exc:
                    self.stats.events_failed += 1
                    log.warning("event_publish_failed", kind=str(event.kind), error=str(exc))

    def _with_code(self, offer: Offer) -> Offer:
        if offer.coupon is None or self._coupons is None:
            return offer
        code = self._coupons.code_for(offer.id, offer.issued_at, offer.expires_at)
        return offer.model_copy(update={"redeem_code": code})

    def _measure(self, decision: Decision) -> None:
        at = decision.event.at
        for offer in decision.offers:
            self.measure.add(Stage.DECIDED, offer.rule, at, offer.variant, offer=offer.id)
            self.feedback.sent(offer.id, decision.event.shopper.token, offer.rule, offer.variant)
        for rule, why in decision.suppressed:
            if why is Suppression.HOLDOUT:
                self.measure.add(Stage.HELD_OUT, rule, at)
            else:
                self.measure.add(Stage.SUPPRESSED, rule, at, reason=str(why))
        event = decision.event
        if event.kind is EventKind.OFFER_REDEEMED and event.offer is not None:
            sent = self.feedback.lookup(event.offer)
            if sent is not None:
                self.measure.add(Stage.REDEEMED, sent.rule, at, sent.variant)
                log.info("offer_redeemed", offer=event.offer, rule=sent.rule)
        for rule, arm in decision.conversions:
            if arm == HOLDOUT:
                self.measure.add(Stage.HELD_OUT_CONVERTED, rule, at)
            else:
                self.measure.add(Stage.CONVERTED, rule, at, None if arm == CONTROL else arm)

    def _left_outbox(self, item: Item, sent: bool) -> None:
        put_at = self._put_at.pop(item.offer.id, None)
        if sent and put_at is not None:
            self.observer.delivery(time.perf_counter() - put_at)
        if item.kind is Kind.OFFER:
            stage = Stage.PUBLISHED if sent else Stage.EXPIRED
            self.measure.add(
                stage, item.offer.rule, self._clock.now(), item.offer.variant, offer=item.offer.id
            )

    def on_feedback(self, topic: str, payload: bytes) -> None:
        """App feedback from the broker: judged, then counted in the funnel."""
        feedback = self.feedback.judge(topic, payload)
        if feedback is not None:
            self.measure.add(
                Stage(str(feedback.action)),
                feedback.sent.rule,
                self._clock.now(),
                feedback.sent.variant,
            )
