"""ThreadedSource: a blocking reader's thread handing readings to the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest
import structlog

from proximity.adapters.qr.sources import CodeReader
from proximity.adapters.threaded import SourceFailed, ThreadedSource
from proximity.clock import VirtualClock
from proximity.errors import AdapterError
from tests.factories import T0


class Counting(ThreadedSource[int]):
    """Emits ``0..n-1``, then does what ``then`` says: return, raise, or block."""

    def __init__(self, n: int, then: Callable[[Counting], object] = lambda s: None, **kw: int):
        super().__init__("counting", **kw)
        self.n = n
        self.then = then

    def _run(self) -> None:
        for i in range(self.n):
            self._emit(i)
        self.then(self)


async def collect(source: ThreadedSource[int], limit_s: float = 5.0) -> list[int]:
    async def run() -> list[int]:
        return [i async for i in source.readings()]

    return await asyncio.wait_for(run(), limit_s)


async def test_readings_come_in_order_and_the_stream_ends_with_the_source() -> None:
    source = Counting(5000, queue_size=5000)
    async with source:
        assert await collect(source) == list(range(5000))
    assert source.dropped == 0
    assert not source.running


async def test_stop_ends_the_stream_of_a_worker_blocked_waiting() -> None:
    source = Counting(3, then=lambda s: s._stopping.wait())  # a reader with nothing to read
    await source.start()
    consumer = asyncio.create_task(collect(source))
    await asyncio.sleep(0.1)
    assert source.running
    assert not consumer.done()
    await source.stop()
    assert not source.running  # joined
    assert await consumer == [0, 1, 2]


async def test_a_worker_that_ignores_stop_is_given_up_on_and_the_stream_still_ends() -> None:
    release = threading.Event()
    source = Counting(1, then=lambda s: release.wait(10))  # stuck in a blocking call
    source.stop_timeout = 0.2
    await source.start()
    try:
        with structlog.testing.capture_logs() as logs:
            await source.stop()
        assert await collect(source) == [0]
        assert [e["event"] for e in logs] == ["source_stuck"]
    finally:
        release.set()


async def test_an_exception_in_the_worker_surfaces_in_the_consumer_as_an_adapter_error() -> None:
    def fail(source: Counting) -> None:
        raise ZeroDivisionError("boom")

    source = Counting(2, then=fail)
    async with source:
        readings = source.readings()
        assert [await anext(readings), await anext(readings)] == [0, 1]  # nothing lost
        with pytest.raises(SourceFailed) as failed:
            await anext(readings)
    assert isinstance(failed.value, AdapterError)
    assert isinstance(failed.value.error, ZeroDivisionError)
    assert failed.value.source == "counting"
    assert "ZeroDivisionError: boom" in str(failed.value)


async def test_a_full_queue_drops_and_counts_and_the_end_still_gets_in() -> None:
    source = Counting(5, queue_size=2)
    async with source:
        while source.running:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # let the worker's last callbacks run
        # 0 and 1 queued, 2..4 dropped; the end made room by dropping 0
        assert await collect(source) == [1]
    assert source.dropped == 4


async def test_a_source_starts_again_after_a_stop() -> None:
    source = Counting(3, then=lambda s: s._stopping.wait())
    for _ in range(2):
        async with source:
            readings = source.readings()
            assert [await anext(readings) for _ in range(3)] == [0, 1, 2]
        assert [i async for i in readings] == []


class Broken(CodeReader):
    """A code reader whose device fails in a way it does not expect (not OSError)."""

    source = "scanner"

    def _open(self) -> None:
        pass

    def _read(self) -> list[str]:
        raise ValueError("driver bug")

    def _close(self) -> None:
        pass


async def test_a_code_reader_whose_worker_dies_ends_its_scans_with_the_error() -> None:
    reader = Broken("till", VirtualClock(T0))
    async with reader:
        with pytest.raises(SourceFailed, match=r"scanner-till: .*ValueError: driver bug"):
            await asyncio.wait_for(anext(reader.scans()), 5)
