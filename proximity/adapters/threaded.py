"""A blocking reader on a worker thread, its readings handed to the event loop.

nfcpy, pyserial and OpenCV block, so each reader built on them runs in one
worker thread. :class:`ThreadedSource` owns that thread and the hand-over, and
nothing else: a subclass writes :meth:`ThreadedSource._run` (read until
:attr:`~ThreadedSource._stopping` is set, give each reading to
:meth:`~ThreadedSource._emit`) and the base does the rest.

- The worker only schedules work on the loop (``call_soon_threadsafe``); the
  readings wait in a bounded queue, and one that finds it full is dropped and
  counted in :attr:`~ThreadedSource.dropped`.
- :meth:`~ThreadedSource.readings` is the async stream. It ends when the source
  stops, or when ``_run`` returns on its own (a video file played to its end).
- An exception escaping ``_run`` ends the stream with :class:`SourceFailed` in
  the consumer, never a silent stall.
- :meth:`~ThreadedSource.stop` sets the stop event, waits for the worker (at
  most :attr:`~ThreadedSource.stop_timeout` seconds, without blocking the
  loop), joins it, and ends the stream.
"""

from __future__ import annotations

import abc
import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import structlog

from proximity.adapters.base import Startable
from proximity.errors import AdapterError

log = structlog.get_logger(__name__)

T = TypeVar("T")
U = TypeVar("U")


class SourceFailed(AdapterError):
    """A threaded source's worker raised; ``error`` is what it raised."""

    def __init__(self, source: str, error: BaseException) -> None:
        super().__init__(f"{source}: the reader failed: {type(error).__name__}: {error}")
        self.source = source
        self.error = error


class _Ended:
    """The end of the stream, queued after the last reading."""


_ENDED = _Ended()


@dataclass(frozen=True, slots=True)
class _Failed:
    error: BaseException


class ThreadedSource(Startable, Generic[T]):
    """Readings of type ``T`` from a blocking :meth:`_run` on a thread this object owns.

    ``name`` names the thread and the source in logs and errors.
    """

    stop_timeout: float = 5.0
    """How long :meth:`stop` waits for the worker before it gives up on it."""

    def __init__(self, name: str, *, queue_size: int = 1024) -> None:
        self.name = name
        self._queue: asyncio.Queue[T | _Ended | _Failed] = asyncio.Queue(queue_size)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        """Set by :meth:`stop`; ``_run`` returns soon after (wait on it to pace or back off)."""
        self._worker_done = asyncio.Event()
        self.dropped = 0
        """Readings lost: the queue was full (nobody drained :meth:`readings`) or the
        event loop was gone."""

    @abc.abstractmethod
    def _run(self) -> None:
        """The worker thread: read until ``self._stopping`` is set, or until the source
        ended for good, giving each reading to :meth:`_emit`. An exception ends the
        stream with :class:`SourceFailed`."""

    @property
    def running(self) -> bool:
        """The worker thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    async def start(self) -> None:
        """Start the worker thread (again, after a stop)."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stopping.clear()
        self._worker_done = asyncio.Event()
        self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop the worker, wait for it (bounded) and end :meth:`readings`."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        try:
            await asyncio.wait_for(self._worker_done.wait(), self.stop_timeout)
        except TimeoutError:
            log.error("source_stuck", source=self.name, waited_s=self.stop_timeout)
            self._finish(_ENDED)  # the stream ends all the same
        else:
            thread.join()

    async def readings(self) -> AsyncIterator[T]:
        """The readings in the order the worker emitted them; ends when the source stops
        or ends; raises :class:`SourceFailed` if the worker raised."""
        while True:
            item = await self._queue.get()
            if isinstance(item, _Ended):
                return
            if isinstance(item, _Failed):
                raise SourceFailed(self.name, item.error) from item.error
            yield item

    # -- the worker thread's side ----------------------------------------------------

    def _emit(self, reading: T) -> None:
        """Hand one reading to the event loop (from the worker thread)."""
        if not self._call_soon(self._enqueue, reading):
            self.dropped += 1

    def _work(self) -> None:
        outcome: _Ended | _Failed = _ENDED
        try:
            self._run()
        except BaseException as exc:  # the top of the thread: it goes to the consumer
            log.error("source_failed", source=self.name, error=type(exc).__name__)
            outcome = _Failed(exc)
        finally:
            self._call_soon(self._finish, outcome)

    def _call_soon(self, callback: Callable[[U], None], item: U) -> bool:
        """Run ``callback(item)`` on the event loop; False if the loop is gone."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return False
        try:
            loop.call_soon_threadsafe(callback, item)
        except RuntimeError:  # the loop closed between the check and the call
            return False
        return True

    # -- the event loop's side --------------------------------------------------------

    def _enqueue(self, reading: T) -> None:
        try:
            self._queue.put_nowait(reading)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("reading_dropped", source=self.name, queued=self._queue.qsize())

    def _finish(self, outcome: _Ended | _Failed) -> None:
        """End the stream after the readings queued so far, making room if need be."""
        while True:
            try:
                self._queue.put_nowait(outcome)
            except asyncio.QueueFull:
                self._queue.get_nowait()
                self.dropped += 1
            else:
                break
        self._worker_done.set()
