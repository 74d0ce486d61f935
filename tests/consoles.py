"""A store with its ops console, for the console's tests (HTTP and browser).

:func:`console_store` builds a real runtime and daemon from settings (the simulator's
built-in walk by default), the console's feed as the daemon's ``on_decision`` hook and
the console on a :class:`ConsoleServer` of its own on a free loopback port: the same
routing the daemon's metrics server hands ``/console`` requests to. :func:`get` and
:func:`events` are a tiny HTTP client (no dependency) for the pages and the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from proximity.clock import Clock
from proximity.config import Settings
from proximity.console.feed import ConsoleFeed
from proximity.console.server import Console, ConsoleServer
from proximity.console.settings import ConsoleSettings
from proximity.daemon import Daemon
from proximity.engine.reload import RuleWatcher
from proximity.measurement.store import MeasurementStore
from proximity.wiring import Runtime, build_runtime
from tests.test_daemon import RecordingSink


class StartingClock:
    """A clock ``speed`` times faster than real time that stands at ``start`` until
    :meth:`go`: a store's day begins when the test is ready to watch it, however long
    building the runtime and loading the page took."""

    def __init__(self, start: datetime, speed: float) -> None:
        self._start = start
        self._speed = speed
        self._t0: float | None = None

    def go(self) -> None:
        self._t0 = time.monotonic()

    def faster(self, speed: float) -> None:
        """From now on ``speed`` times real time (the time so far is kept)."""
        self._start, self._t0, self._speed = self.now(), time.monotonic(), speed

    def now(self) -> datetime:
        if self._t0 is None:
            return self._start
        return self._start + timedelta(seconds=(time.monotonic() - self._t0) * self._speed)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self._speed)


@dataclass
class ConsoleStore:
    runtime: Runtime
    daemon: Daemon
    feed: ConsoleFeed
    console: Console
    watcher: RuleWatcher
    server: ConsoleServer
    sink: RecordingSink

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port


@contextlib.asynccontextmanager
async def console_store(
    settings: Settings,
    clock: Clock,
    console: ConsoleSettings | None = None,
    measure: MeasurementStore | None = None,
    host: str = "127.0.0.1",
) -> AsyncIterator[ConsoleStore]:
    runtime = build_runtime(settings, clock)
    feed = ConsoleFeed(clock.now)
    sink = RecordingSink()
    daemon = runtime.daemon(sink, on_decision=feed.decision, measure=measure)
    watcher = runtime.watcher()
    served = Console(daemon, feed, console, watcher=watcher, host=host)
    try:
        async with ConsoleServer(served) as server:
            yield ConsoleStore(runtime, daemon, feed, served, watcher, server, sink)
    finally:
        runtime.close()


@contextlib.asynccontextmanager
async def running(
    daemon: Daemon, clock: StartingClock | None = None
) -> AsyncIterator[asyncio.Task[Any]]:
    """The daemon running until the block ends (then stopped and awaited); ``clock``
    starts with it."""
    if clock is not None:
        clock.go()
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def get(
    port: int, target: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """One request: status, headers (lower-case names) and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    found = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        found[name.strip().lower()] = value.strip()
    return int(status_line.split(" ")[1]), found, body


@contextlib.asynccontextmanager
async def events(
    port: int, headers: dict[str, str] | None = None
) -> AsyncIterator[AsyncIterator[tuple[str, dict[str, Any]]]]:
    """The live page's stream, as (event name, data) pairs."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = ["GET /console/events HTTP/1.1", "Host: 127.0.0.1", "Accept: text/event-stream"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"text/event-stream" in head

    async def messages() -> AsyncIterator[tuple[str, dict[str, Any]]]:
        name = ""
        while True:
            line = (await reader.readline()).decode()
            if not line:
                return
            if line.startswith("event: "):
                name = line[7:].strip()
            elif line.startswith("data: "):
                yield name, json.loads(line[6:])

    try:
        yield messages()
    finally:
        writer.close()
