"""The daemon's task handling, with a recording sink (no broker: that is tested elsewhere)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import structlog

from firmware_sim.ble import SimulatedBleBackend
from firmware_sim.walk import builtin_walk
from proximity.adapters.base import Advertisement, BleBackend
from proximity.adapters.ble.adapter import BleAdapter
from proximity.adapters.qr.sources import CodeReader
from proximity.clock import VirtualClock
from proximity.config import Settings
from proximity.daemon import Daemon
from proximity.errors import AdapterError, BrokerUnavailable
from proximity.events import JourneyEvent
from proximity.offers import Offer
from proximity.wiring import build_runtime
from tests.factories import T0, make_shopper
from tests.mosquitto import eventually

ROOT = Path(__file__).resolve().parent.parent
SECOND = timedelta(seconds=1)


class RecordingSink:
    def __init__(self, fail_offers: bool = False) -> None:
        self.offers: list[tuple[str, Offer]] = []
        self.events: list[JourneyEvent] = []
        self.signage: list[Offer] = []
        self.fail_offers = fail_offers

    async def publish_offer(
        self, shopper_token: str, offer: Offer, payload: str | None = None
    ) -> bool:
        if self.fail_offers:
            raise BrokerUnavailable("broker down")
        self.offers.append((shopper_token, offer))
        return True

    async def publish_event(self, event: JourneyEvent, qos: int = 0) -> None:
        self.events.append(event)

    async def publish_signage(self, offer: Offer, payload: str | None = None) -> bool:
        self.signage.append(offer)
        return True


class BrokenRadio(BleBackend):
    """Hands over a few advertisements, then fails like a radio that went away."""

    def __init__(self, inner: SimulatedBleBackend, after: int) -> None:
        self.inner = inner
        self.after = after

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    async def advertisements(self) -> AsyncIterator[Advertisement]:
        count = 0
        async for adv in self.inner.advertisements():
            yield adv
            count += 1
            if count == self.after:
                raise AdapterError("hci0 disappeared")


def runtime(clock: VirtualClock):  # type: ignore[no-untyped-def]
    return build_runtime(Settings(), clock)


async def test_a_whole_walk_in_virtual_time() -> None:
    clock = VirtualClock(T0)
    rt = runtime(clock)
    sink = RecordingSink()
    stats = await Daemon(rt.adapter, rt.pipeline, sink, clock).run()
    assert [o.rule for _, o in sink.offers] == [
        "welcome-directions",
        "coffee-coupon",
        "bakery-fresh-bread",
    ]
    assert stats.events == len(sink.events) == 12
    assert stats.offers_published == 3
    # timeouts fire on the ticker in virtual time, not at the end of the walk (205 s):
    # the shopper leaves checkout at 115 s; exit after 15 s, visit end after 60 s (±1 s tick)
    last = sink.events[-2:]
    assert [str(e.kind) for e in last] == ["zone.exit", "visit.end"]
    assert 128 <= (last[0].at - T0).total_seconds() <= 132
    assert 173 <= (last[1].at - T0).total_seconds() <= 177


async def test_serving_starts_with_the_heap_frozen_out_of_the_collectors_sight() -> None:
    """What was alive at start is not walked by every full collection of the run (those
    pauses made most of the reading-to-offer tail), and the young are collected less
    often than Python's default."""
    import gc

    from proximity.daemon import GC_THRESHOLD

    before = gc.get_threshold()
    gc.unfreeze()
    try:
        clock = VirtualClock(T0)
        rt = runtime(clock)
        assert gc.get_freeze_count() == 0
        await Daemon(rt.adapter, rt.pipeline, RecordingSink(), clock).run()
        assert gc.get_freeze_count() > 10_000
        assert gc.get_threshold() == GC_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


async def test_the_same_walk_gives_the_same_offers_every_time() -> None:
    runs = []
    for _ in range(2):
        clock = VirtualClock(T0)
        rt = runtime(clock)
        sink = RecordingSink()
        await Daemon(rt.adapter, rt.pipeline, sink, clock).run()
        runs.append([o.model_dump_json() for _, o in sink.offers])
    assert runs[0] == runs[1]


async def test_a_broker_that_fails_keeps_offers_waiting_not_lost() -> None:
    clock = VirtualClock(T0)
    rt = runtime(clock)
    sink = RecordingSink(fail_offers=True)
    daemon = Daemon(rt.adapter, rt.pipeline, sink, clock, drain_timeout=0.5)
    stats = await daemon.run()
    assert stats.events == 12  # the journey goes on
    assert stats.offers_published == 0
    assert stats.offers_waiting == 3  # every offer still queued, in order, for the next try
    assert stats.publish_failures >= 1


async def test_a_radio_failure_surfaces_and_nothing_hangs() -> None:
    clock = VirtualClock(T0)
    rt = runtime(clock)
    inner = SimulatedBleBackend(builtin_walk(), clock, random.Random(1))
    adapter = BleAdapter(BrokenRadio(inner, after=40))
    with pytest.raises(AdapterError, match="hci0 disappeared"):
        await asyncio.wait_for(Daemon(adapter, rt.pipeline, RecordingSink(), clock).run(), 5)


async def test_stop_ends_a_never_ending_walk() -> None:
    clock = VirtualClock(T0)
    rt = runtime(clock)
    endless = SimulatedBleBackend(builtin_walk(), clock, random.Random(1), repeat=True)
    stop = asyncio.Event()
    daemon = Daemon(BleAdapter(endless), rt.pipeline, RecordingSink(), clock)
    task = asyncio.create_task(daemon.run(stop))
    while daemon.published < 3:
        await asyncio.sleep(0.01)
    stop.set()
    stats = await asyncio.wait_for(task, 5)
    assert stats.offers_published >= 3


class Backlog(BleBackend):
    """Every advertisement of a walk at once, as a radio burst or a simulator faster than
    the daemon hands them over: the readings' times lag far behind the clock's now."""

    def __init__(self, ads: list[Advertisement]) -> None:
        self.ads = ads

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def advertisements(self) -> AsyncIterator[Advertisement]:
        for i, adv in enumerate(self.ads):
            if i % 50 == 0:
                await asyncio.sleep(0)  # as a simulator behind its schedule does
            yield adv


async def test_ticks_do_not_run_ahead_of_readings_still_being_worked_through() -> None:
    """A shopper heard every second for ten minutes, handed over in one burst while the
    clock already reads an hour later: the ticks that run during the burst (the reader
    lets them) must time out presence on the readings' times, not end the stay at once."""
    from proximity.clock import ScaledClock

    walk = builtin_walk()
    source = SimulatedBleBackend(walk, VirtualClock(T0), random.Random(1))
    ads = [
        Advertisement(source.device, source.advertisement_data(-55), "gw-coffee", T0 + s * SECOND)
        for s in range(600)
        for _ in range(20)  # 12,000 readings: many ticks' worth of work
    ]
    clock = ScaledClock(T0 + 3600 * SECOND, 1.0)
    rt = build_runtime(Settings(), clock)
    sink = RecordingSink()
    daemon = Daemon(BleAdapter(Backlog(ads)), rt.pipeline, sink, clock, tick=0.001 * SECOND)
    await daemon.run()
    kinds = [(str(e.kind), e.zone) for e in sink.events]
    assert kinds.count(("zone.enter", "coffee")) == 1, kinds
    assert kinds.count(("zone.exit", "coffee")) == 1, kinds


class BrokenScanner(CodeReader):
    """A code scanner whose device fails in a way its own thread cannot get over."""

    source = "scanner"

    def _open(self) -> None:
        pass

    def _read(self) -> list[str] | None:
        raise RuntimeError("the USB bus went away")

    def _close(self) -> None:
        pass

    def _run(self) -> None:
        self._read()


async def test_a_reader_that_fails_is_reported_and_the_store_trades_on() -> None:
    clock = VirtualClock(T0)
    rt = runtime(clock)
    sink = RecordingSink()
    scanner = BrokenScanner("till-1", clock)
    with structlog.testing.capture_logs() as logs:
        stats = await Daemon(rt.adapter, rt.pipeline, sink, clock, scanners=[scanner]).run()
    assert list(stats.readers_failed) == ["till-1"]
    assert "the USB bus went away" in stats.readers_failed["till-1"]
    failed = [e for e in logs if e["event"] == "reader_failed"]
    assert [(e["reader"], e["log_level"]) for e in failed] == [("till-1", "error")]
    assert stats.offers_published == 3  # the BLE journey went on without the till


async def test_the_ticker_lets_the_loop_turn_between_slices_of_a_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A tick goes in slices of visits (``TICK_SLICE``), the loop turning between them:
    readings that come meanwhile are not held up for the whole tick."""
    from proximity import daemon as module

    clock = VirtualClock(T0)
    rt = runtime(clock)
    daemon = Daemon(rt.adapter, rt.pipeline, RecordingSink(), clock)
    loop = asyncio.get_running_loop()
    turns = 0

    def count() -> None:
        nonlocal turns
        turns += 1
        loop.call_soon(count)

    sizes: list[int] = []
    at_turn: list[int] = []
    real = rt.pipeline.tick_in_slices

    def tick_in_slices(now: object, size: int):  # type: ignore[no-untyped-def]
        sizes.append(size)
        for decisions in real(now, size):  # type: ignore[arg-type]
            at_turn.append(turns)
            yield decisions

    monkeypatch.setattr(rt.pipeline, "tick_in_slices", tick_in_slices)
    monkeypatch.setattr(module, "TICK_SLICE", 2)
    for n in range(7):  # seven visits under way: four slices of two
        shopper = make_shopper(token=f"s-test-{n:04d}")
        rt.pipeline.tracker.observe(shopper, "entrance", -60, clock.now())
    count()
    ticker = asyncio.create_task(daemon._ticker())
    await clock.advance(1.0)
    await eventually(lambda: len(at_turn) == 4)
    ticker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await ticker
    assert sizes == [2]
    assert all(a < b for a, b in itertools.pairwise(at_turn)), at_turn
