"""``proximity demo``: one scripted store visit, end to end, on a real broker.

The simulated phone walks the demo store; the daemon's own pipeline turns what
the scanners hear into journey events and offers and publishes them; a
reference shopper-app client subscribed on the broker prints each offer as the
broker delivered it. At the checkout the till scans the signed code of each
coupon the app received, which redeems it (``offer.redeemed``, counted in the
funnel).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import structlog

from firmware_sim.walk import Walk, builtin_walk, load_walk
from proximity import __version__
from proximity.adapters.qr.scan import CodeScan
from proximity.clock import Clock, ScaledClock, VirtualClock
from proximity.config import Settings
from proximity.delivery.app_client import ReceivedOffer, ShopperApp
from proximity.engine.decide import Decision
from proximity.identity.resolver import CONSENT_BIT
from proximity.journey.record import JourneyRecorder
from proximity.measurement.store import MeasurementStore, Stage
from proximity.wiring import broker_for, build_runtime

log = structlog.get_logger(__name__)

RECEIVE_GRACE_S = 5.0
DEMO_TILL = "till-1"
"""The demo store's checkout scanner (``readers`` of its checkout zone)."""
DEMO_TILL_ZONE = "checkout"


async def _feedback_in(measure: MeasurementStore, expected: int) -> None:
    """Wait (briefly) until the app's feedback has come back through the broker."""
    feedback = (Stage.DELIVERED, Stage.OPENED)
    for _ in range(int(RECEIVE_GRACE_S / 0.05)):
        counted = sum(row.stages[s] for row in measure.funnel() for s in feedback)
        if counted >= expected:
            return
        await asyncio.sleep(0.05)


@dataclass
class DemoResult:
    events: int = 0
    offers_published: int = 0
    offers_received: list[ReceivedOffer] = field(default_factory=list)
    suppressed: int = 0


def _walk(settings: Settings) -> Walk:
    sim = settings.ble.sim
    return builtin_walk() if sim.walk is None else load_walk(sim.walk)


class _Printer:
    def __init__(self, out: TextIO, as_json: bool, start: datetime) -> None:
        self._out = out
        self._json = as_json
        self._start = start

    def _stamp(self, at: datetime) -> str:
        seconds = int((at - self._start).total_seconds())
        return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"

    def restart(self, start: datetime) -> None:
        """Count the visit's time from here (after the broker and clients are up)."""
        self._start = start

    def header(self, text: str) -> None:
        if not self._json:
            print(text, file=self._out, flush=True)

    def decision(self, decision: Decision) -> None:
        event = decision.event
        if self._json:
            line = {"type": "event", **json.loads(event.model_dump_json())}
            print(json.dumps(line), file=self._out, flush=True)
            return
        where = f" {event.zone}" if event.zone else ""
        extra = ""
        if event.kind == "offer.redeemed":
            extra = f" (the till scanned the coupon of {event.offer})"
        elif event.threshold_s is not None:
            extra = f" (dwell {event.threshold_s:g}s)"
        elif event.kind == "zone.exit" and event.dwell_s is not None:
            extra = f" (stayed {event.dwell_s:.0f}s)"
        text = f"  {self._stamp(event.at)}  {event.kind:<12}{where}{extra}"
        print(text.rstrip(), file=self._out)
        for rule, why in decision.suppressed:
            print(f"  {'':8}  suppressed {rule}: {why}", file=self._out)
        self._out.flush()

    def offer(self, received: ReceivedOffer) -> None:
        if self._json:
            line = {"type": "offer", "topic": received.topic, "offer": json.loads(received.payload)}
            print(json.dumps(line), file=self._out, flush=True)
            return
        offer = received.offer
        coupon = f" coupon {offer.coupon}" if offer.coupon else ""
        print(
            f"  {self._stamp(offer.issued_at)}  → app got offer "
            f"[{offer.moment}] {offer.cta.format} "
            f'"{offer.cta.title}"{coupon} (rule {offer.rule}, '
            f"expires in {offer.ttl_seconds / 60:g} min)",
            file=self._out,
            flush=True,
        )


async def run_demo(
    settings: Settings,
    *,
    speed: float,
    as_json: bool,
    out: TextIO,
    record: Path | None = None,
    funnel: Path | None = None,
) -> DemoResult:
    """Run the demo visit; ``speed`` 0 means virtual time (no waiting at all)."""
    start = datetime.now(UTC).replace(microsecond=0)
    measure = MeasurementStore(funnel or settings.measurement.store)
    clock: Clock = VirtualClock(start) if speed == 0 else ScaledClock(start, speed)
    runtime = build_runtime(settings, clock)
    walk = _walk(settings)
    phone = walk.phone
    token = runtime.resolver.token_for(phone.uuid, phone.major, phone.minor & ~CONSENT_BIT)
    printer = _Printer(out, as_json, start)
    result = DemoResult()
    protocol = settings.mqtt_protocol()

    recording = JourneyRecorder(record) if record is not None else None
    with recording or contextlib.nullcontext() as recorder:
        async with broker_for(settings, any_port=True) as url:
            printer.header(
                f"Proximity {__version__} demo: store {settings.store.id}, shopper {token}, "
                f"broker {url}{' (embedded)' if settings.broker.url.is_embedded else ''}, "
                f"{'virtual time' if speed == 0 else f'{speed:g}x speed'}"
            )
            printer.header(f"  walk {walk.name!r}: {walk.duration:.0f}s in the store's time\n")
            async with (
                ShopperApp(url, store=settings.store.id, token=token, protocol=protocol) as app,
                runtime.publisher(
                    url, client_id=f"proximity-demo-{settings.store.gateway}"
                ) as publisher,
            ):
                received_all = asyncio.Event()
                signer = settings.codes.coupon_signer()
                coupons: list[str] = []

                async def receive() -> None:
                    async for received in app.offers():
                        result.offers_received.append(received)
                        printer.offer(received)
                        # the shopper's app confirms delivery, and the shopper opens it
                        await app.send_feedback(received.offer.id, "delivered")
                        await app.send_feedback(received.offer.id, "opened")
                        if daemon_done.is_set() and len(result.offers_received) >= published():
                            received_all.set()

                def on_decision(decision: Decision) -> None:
                    result.suppressed += len(decision.suppressed)
                    printer.decision(decision)
                    if recorder is not None:
                        recorder.record(decision.event)
                    event = decision.event
                    for offer in decision.offers:
                        if offer.coupon is not None:  # the code the app gets in redeem_code
                            coupons.append(
                                signer.code_for(offer.id, offer.issued_at, offer.expires_at)
                            )
                    if event.kind == "zone.enter" and event.zone == DEMO_TILL_ZONE:
                        # paying: the app shows its coupons' codes, the till scans them
                        for code in coupons:
                            scan = CodeScan(
                                at=event.at, scanner=DEMO_TILL, text=code, source="scanner"
                            )
                            asyncio.get_running_loop().call_soon(daemon.on_scan, scan)

                daemon = runtime.daemon(publisher, on_decision=on_decision, measure=measure)
                publisher.feedback_handler = daemon.on_feedback

                def published() -> int:
                    return daemon.published

                daemon_done = asyncio.Event()
                printer.restart(clock.now())
                receiver = asyncio.create_task(receive())
                try:
                    stats = await daemon.run()
                    daemon_done.set()
                    if len(result.offers_received) < stats.offers_published:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(received_all.wait(), RECEIVE_GRACE_S)
                    await _feedback_in(measure, 2 * len(result.offers_received))
                finally:
                    receiver.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await receiver
                result.events = stats.events
                result.offers_published = stats.offers_published
    funnel_rows = measure.funnel()
    measure.close()

    if not as_json:
        print(
            f"\nSummary: {result.events} journey events, {result.offers_published} offers "
            f"published, {len(result.offers_received)} received by the shopper app, "
            f"{result.suppressed} suppressed.",
            file=out,
            flush=True,
        )
        stages = (Stage.DECIDED, Stage.PUBLISHED, Stage.DELIVERED, Stage.OPENED, Stage.REDEEMED)
        totals = {stage: sum(row.stages[stage] for row in funnel_rows) for stage in stages}
        print(
            "Funnel: "
            + ", ".join(f"{stage} {count}" for stage, count in totals.items())
            + (f" (saved to {funnel}: proximity report --store {funnel})" if funnel else ""),
            file=out,
            flush=True,
        )
    log.info(
        "demo_finished",
        events=result.events,
        published=result.offers_published,
        received=len(result.offers_received),
    )
    return result
