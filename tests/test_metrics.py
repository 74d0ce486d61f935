"""/metrics, /healthz and /readyz of a running daemon, against a real mosquitto."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from proximity.clock import VirtualClock
from proximity.config import EXAMPLE_RULES, RulesSettings, Settings
from proximity.daemon import Daemon
from proximity.metrics import HealthServer, Metrics
from proximity.wiring import build_runtime
from tests.factories import T0
from tests.mosquitto import Mosquitto
from tests.test_daemon import RecordingSink

pytestmark = pytest.mark.timeout(90)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def total(values: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in values.items() if n == name and want <= set(ls))


def wait_for(what: str, check: object, limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not {what} within {limit_s:g}s"
        time.sleep(0.1)


class DaemonLogs:
    """Reads the daemon's JSON log lines as they come (a thread drains stderr)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[dict[str, object]] = []
        self.raw: list[str] = []
        assert proc.stderr is not None
        self._thread = threading.Thread(target=self._drain, args=(proc.stderr,), daemon=True)
        self._thread.start()

    def _drain(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.raw.append(line)
            if line.startswith("{"):
                self.lines.append(json.loads(line))

    def close(self) -> None:
        self._thread.join(10)

    def first(self, event: str) -> dict[str, object] | None:
        return next((x for x in self.lines if x["event"] == event), None)


def test_every_stage_counts_and_readyz_follows_the_broker(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    (tmp_path / "walk.toml").write_text(
        'name = "loop"\nscanners = ["gw-entrance", "gw-coffee"]\n'
        '[phone]\nuuid = "f7826da6-4fa2-4e98-8024-bc5b71e0893e"\nmajor = 3\nminor = 32771\n'
        'interval = "100ms"\n'
        '[[legs]]\nscanner = "gw-entrance"\nduration = "2s"\n'
        '[[legs]]\nduration = "20s"\n'
    )
    (tmp_path / "config.toml").write_text(
        f'[broker]\nurl = "mqtt://127.0.0.1:{mosquitto.port}"\n'
        '[ble.sim]\nwalk = "walk.toml"\nrepeat = true\n'
        '[delivery]\noutbox = "outbox.sqlite"\n'
        "[metrics]\nport = 0\n"
        '[logging]\nformat = "json"\n'
    )
    daemon = subprocess.Popen(
        [sys.executable, "-m", "proximity", "run", "--config", str(tmp_path / "config.toml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    logs = DaemonLogs(daemon)
    try:
        wait_for("listening", lambda: logs.first("metrics_listening"))
        listening = logs.first("metrics_listening")
        assert listening is not None
        base = str(listening["url"]).removesuffix("/metrics")
        assert get(base + "/healthz") == (200, "ok\n")

        def acked() -> bool:
            return (
                total(samples(get(base + "/metrics")[1]), "proximity_offers_total", outcome="acked")
                > 0
            )

        wait_for("an offer acknowledged", acked)
        values = samples(get(base + "/metrics")[1])
        for name, labels in [
            ("proximity_readings_total", {"adapter": "ble", "outcome": "accepted"}),
            ("proximity_journey_events_total", {"kind": "zone.enter"}),
            ("proximity_offers_decided_total", {"rule": "welcome-directions"}),
            ("proximity_offers_total", {"outcome": "acked"}),
            ("proximity_pipeline_latency_seconds_count", {}),
            ("proximity_delivery_latency_seconds_count", {}),
            ("proximity_tracked_identities", {}),
            ("proximity_broker_connected", {}),
            ("proximity_info", {}),
        ]:
            assert total(values, name, **labels) > 0, f"{name} {labels} is zero"
        # the collector's pauses on the loop, by generation (counted from the start)
        assert {
            dict(labels)["generation"]
            for name, labels in values
            if name == "proximity_gc_pause_seconds_count"
        } == {"0", "1", "2"}
        status, body = get(base + "/readyz")
        assert status == 200, body
        assert json.loads(body)["checks"]["broker"] == "connected"

        # the ops console, on the same server (docs/console.md)
        status, page = get(base + "/console/")
        assert status == 200, page
        assert "Proximity console" in page
        status, page = get(base + "/console/funnel")
        assert (status, "welcome-directions" in page) == (200, True), page
        # a live page follows the stream until the daemon stops (below)
        live = socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), 5)
        live.sendall(b"GET /console/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        stream = live.makefile("rb")
        assert stream.readline().startswith(b"HTTP/1.1 200")
        assert any(stream.readline().startswith(b"event: ") for _ in range(50))

        mosquitto.stop()
        wait_for("not ready", lambda: get(base + "/readyz")[0] == 503)
        checks = json.loads(get(base + "/readyz")[1])["checks"]
        assert checks["broker"] == "not connected"
        assert checks["outbox"]["durable"] is True
        assert checks["readers"] == {"ble": True}
        assert total(samples(get(base + "/metrics")[1]), "proximity_broker_connected") == 0

        mosquitto.start()
        wait_for("ready again", lambda: get(base + "/readyz")[0] == 200, limit_s=45)
    finally:
        daemon.terminate()
        daemon.wait(30)
        logs.close()
        assert daemon.stderr is not None
        daemon.stderr.close()
        if "live" in locals():
            stream.close()
            live.close()
    assert daemon.returncode == 0, "".join(logs.raw[-20:])
    # stopping with a live page open: its stream ends, nothing logged as an error
    assert [x for x in logs.lines if x.get("level") in ("error", "critical")] == []
    assert not [line for line in logs.raw if "Traceback" in line], "".join(logs.raw[-40:])


async def test_the_server_answers_only_what_it_knows() -> None:
    async with HealthServer(Metrics(), port=0) as server:
        base = f"http://127.0.0.1:{server.port}"
        assert await asyncio.to_thread(get, base + "/nope") == (
            404,
            "not found: /metrics, /healthz, /readyz\n",
        )
        status, body = await asyncio.to_thread(get, base + "/readyz")
        assert (status, json.loads(body)["ready"]) == (503, False)  # no daemon yet
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST /metrics HTTP/1.1\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 405")
        writer.close()
        await writer.wait_closed()


async def test_a_taken_port_is_logged_not_fatal() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with structlog.testing.capture_logs() as logs:
            async with HealthServer(Metrics(), port=port) as server:
                assert not server.listening
    assert logs[0]["event"] == "metrics_unavailable"


async def test_rule_reloads_are_counted_by_outcome(tmp_path: Path) -> None:
    rules = tmp_path / "store.toml"
    shutil.copy(EXAMPLE_RULES, rules)
    original = rules.read_text()
    clock = VirtualClock(T0)
    runtime = build_runtime(Settings(rules=RulesSettings(paths=[rules])), clock)
    daemon = Daemon(runtime.adapter, runtime.pipeline, RecordingSink(), clock)
    watcher = runtime.watcher()
    metrics = Metrics()
    metrics.watch(daemon, None, watcher)
    async with HealthServer(metrics, port=0) as server:
        url = f"http://127.0.0.1:{server.port}/metrics"

        async def scrape() -> Samples:
            status, text = await asyncio.to_thread(get, url)
            assert status == 200
            return samples(text)

        before = await scrape()
        assert total(before, "proximity_rule_reloads_total", outcome="ok") == 0
        assert total(before, "proximity_rule_reloads_total", outcome="failed") == 0

        rules.write_text(original.replace('moment = "buy"', 'moment = "purchase"'))
        with structlog.testing.capture_logs():
            assert await watcher.check() is None  # broken: the last good rules serve on
        rules.write_text(original.replace("COFFEE-20", "COFFEE-25"))
        table = await watcher.check()
        assert table is not None

        after = await scrape()
    assert total(after, "proximity_rule_reloads_total", outcome="ok") == 1
    assert total(after, "proximity_rule_reloads_total", outcome="failed") == 1
    outcomes = {dict(ls)["outcome"] for (n, ls) in after if n == "proximity_rule_reloads_total"}
    assert outcomes == {"ok", "failed"}  # a fixed label set
    info = [dict(labels) for (name, labels) in after if name == "proximity_info"]
    assert [x["rules_version"] for x in info] == [table.version]


class _Streams:
    """A console whose pages are streams: ``polite`` ones end a beat after their feed
    closes (as the live page's do), the others write forever until a write fails."""

    def __init__(self, polite: bool) -> None:
        self.polite = polite
        self.tasks: list[asyncio.Task[Any]] = []
        self.started = asyncio.Event()
        self.feed = self
        self.closed = False

    def close(self) -> None:  # the feed's
        self.closed = True

    async def respond(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.append(task)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
        self.started.set()
        while not (self.polite and self.closed):
            writer.write(b"data: {}\n\n" * 1000)  # nobody reads: the buffers fill
            await writer.drain()
            await asyncio.sleep(0.1)


@pytest.mark.parametrize("polite", [True, False])
async def test_stopping_with_a_live_page_open_ends_its_stream_and_cancels_nothing(
    polite: bool,
) -> None:
    """asyncio (3.11) logs a connection handler cancelled by the loop's end as an error:
    the server's exit lets each stream end, and aborts the connection of one that will not."""
    console = _Streams(polite)
    async with HealthServer(Metrics(), port=0, console=console) as server:
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /console/events HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(console.started.wait(), 5)
        await asyncio.sleep(0.3)
    (task,) = console.tasks
    assert task.done()
    assert not task.cancelled()
    writer.close()
