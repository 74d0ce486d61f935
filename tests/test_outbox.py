"""The durable outbox: order, no duplicates, no late offers, and what survives a kill."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import structlog
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from proximity.clock import VirtualClock
from proximity.delivery.drain import OutboxDrainer
from proximity.delivery.outbox import Kind, Outbox
from proximity.errors import BrokerUnavailable, PublishTimeout
from proximity.offers import Offer
from tests.factories import T0
from tests.mosquitto import Mosquitto, eventually, find_mosquitto, free_port
from tests.test_publisher import make_offer

ROOT = Path(__file__).resolve().parent.parent


def offers(n: int, ttl: timedelta = timedelta(minutes=10)) -> list[Offer]:
    return [make_offer(id=f"o-{i:04d}", expires_at=T0 + ttl) for i in range(n)]


class FlakySink:
    """A broker that is away while ``down`` is set (every publish fails, as every publish in
    flight does when the connection drops), and that refuses the ids in ``refuse`` once each
    (a PUBACK that did not come in time)."""

    def __init__(self, down: bool = False, refuse: tuple[str, ...] = ()) -> None:
        self.down = down
        self.refuse = set(refuse)
        self.got: list[str] = []
        self.attempts = 0

    async def publish_offer(
        self, shopper_token: str, offer: Offer, payload: str | None = None
    ) -> bool:
        self.attempts += 1
        await asyncio.sleep(0)  # in flight together, as over one connection
        if self.down:
            raise BrokerUnavailable("broker down")
        if offer.id in self.refuse:
            self.refuse.discard(offer.id)
            raise PublishTimeout("no PUBACK")
        self.got.append(offer.id)
        return True

    async def publish_signage(self, offer: Offer, payload: str | None = None) -> bool:
        return await self.publish_offer("", offer)


def test_order_duplicates_and_resume_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path)
    for offer in offers(5):
        assert box.put(Kind.OFFER, "s-token-1", offer)
    assert not box.put(Kind.OFFER, "s-token-1", offers(1)[0])  # same id: already waiting
    first = box.peek()
    assert first is not None
    box.done(first)
    box.close()
    again = Outbox(path)  # a new process
    assert [i.offer.id for i in again._items] == ["o-0001", "o-0002", "o-0003", "o-0004"]
    assert all(i.target == "s-token-1" for i in again._items)


def test_a_corrupt_outbox_file_is_reported_and_memory_takes_over(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"not sqlite at all " * 64)
    with structlog.testing.capture_logs() as logs:
        box = Outbox(path)
        assert box.put(Kind.OFFER, "s-token-1", offers(1)[0])
    assert box.failed
    assert len(box) == 1
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["outbox_unavailable"]


async def test_an_outage_delays_offers_in_order_and_expired_ones_are_dropped() -> None:
    clock = VirtualClock(T0)
    box = Outbox()
    short = make_offer(id="o-short", expires_at=T0 + timedelta(seconds=30))
    for offer in [*offers(3), short, *offers(6)[3:]]:
        box.put(Kind.OFFER, "s-token-1", offer)
    sink = FlakySink(down=True)
    drainer = OutboxDrainer(box, sink, clock, window=4)
    task = asyncio.create_task(drainer.run())
    for _ in range(5):
        await asyncio.sleep(0)
    assert sink.attempts == 4  # one window, all refused
    await clock.advance(60)  # the short-lived offer expires while the broker is down
    sink.down = False
    assert await drainer.flush(10)
    task.cancel()
    assert sink.got == ["o-0000", "o-0001", "o-0002", "o-0003", "o-0004", "o-0005"]
    assert drainer.stats.expired == 1
    assert drainer.stats.failures == 4
    assert drainer.stats.published == 6
    assert len(box) == 0


async def test_the_drain_retries_at_least_every_second_through_an_outage() -> None:
    """However long the broker was away, the waiting offers go within about a second
    of its return: the retry backoff stops growing at 1 s."""
    loop = asyncio.get_running_loop()
    box = Outbox()
    box.put(Kind.OFFER, "s-token-1", offers(1)[0])
    sink = FlakySink(down=True)
    drainer = OutboxDrainer(box, sink, VirtualClock(T0))
    task = asyncio.create_task(drainer.run())
    await asyncio.sleep(3.5)  # a doubling backoff would wait until 6.2 s for its next try
    sink.down = False
    back = loop.time()
    assert await drainer.flush(10)
    task.cancel()
    assert sink.got == ["o-0000"]
    assert loop.time() - back < 1.2
    assert sink.attempts >= 6  # 0, 0.2, 0.6, 1.4, 2.4, 3.4 s


@pytest.mark.parametrize("window", [1, 3, 64])
async def test_an_offer_without_its_puback_is_retried_and_none_is_lost_or_doubled(
    window: int,
) -> None:
    box = Outbox()
    for offer in offers(8):
        box.put(Kind.OFFER, "s-token-1", offer)
    sink = FlakySink(refuse=("o-0001", "o-0005"))
    drainer = OutboxDrainer(box, sink, VirtualClock(T0), window=window)
    task = asyncio.create_task(drainer.run())
    assert await drainer.flush(10)
    task.cancel()
    assert sorted(sink.got) == [f"o-{n:04d}" for n in range(8)]
    assert drainer.stats.failures == 2
    assert drainer.stats.published == 8
    assert len(box) == 0


async def test_an_offer_that_cannot_be_published_is_dropped_not_retried_for_ever() -> None:
    class PickySink(FlakySink):
        async def publish_offer(
            self, shopper_token: str, offer: Offer, payload: str | None = None
        ) -> bool:
            if offer.id == "o-0001":
                raise ValueError("a user property cannot hold U+0000")
            return await super().publish_offer(shopper_token, offer)

    box = Outbox()
    for offer in offers(3):
        box.put(Kind.OFFER, "s-token-1", offer)
    sink = PickySink()
    done: list[tuple[str, bool]] = []
    drainer = OutboxDrainer(
        box, sink, VirtualClock(T0), on_done=lambda item, sent: done.append((item.offer.id, sent))
    )
    task = asyncio.create_task(drainer.run())
    with structlog.testing.capture_logs() as logs:
        assert await drainer.flush(5)
    assert not task.done()  # the drainer lives on
    task.cancel()
    assert sink.got == ["o-0000", "o-0002"]
    assert sorted(done) == [("o-0000", True), ("o-0001", False), ("o-0002", True)]
    assert drainer.stats.unpublishable == 1
    assert drainer.stats.published == 2
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["offer_unpublishable"]
    assert len(box) == 0


def test_a_drain_window_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        OutboxDrainer(Outbox(), FlakySink(), VirtualClock(T0), window=0)


def test_offers_queued_by_a_killed_daemon_reach_the_broker_after_restart(
    tmp_path: Path,
) -> None:
    port = free_port()
    outbox = tmp_path / "outbox.sqlite"
    (tmp_path / "walk.toml").write_text(
        'name = "burst"\nscanners = ["gw-entrance", "gw-coffee"]\n'
        '[phone]\nuuid = "f7826da6-4fa2-4e98-8024-bc5b71e0893e"\nmajor = 3\nminor = 32771\n'
        'interval = "100ms"\n'
        '[[legs]]\nscanner = "gw-entrance"\nduration = "1s"\n'
        '[[legs]]\nduration = "30s"\n'
    )
    config = tmp_path / "config.toml"
    config.write_text(
        f'[broker]\nurl = "mqtt://127.0.0.1:{port}"\n'
        '[ble.sim]\nwalk = "walk.toml"\n'
        '[delivery]\noutbox = "outbox.sqlite"\n'
        '[logging]\nformat = "json"\n'
    )
    cmd = [sys.executable, "-m", "proximity", "run", "--config", str(config)]
    # 1. no broker: the daemon starts anyway and queues the offer on disk
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while _rows(outbox) == 0:
            assert time.monotonic() < deadline, "the offer never reached the outbox"
            assert first.poll() is None, first.communicate()[1].decode()
            time.sleep(0.1)
        queued = _ids(outbox)
        first.send_signal(signal.SIGKILL)  # no clean shutdown
    finally:
        first.kill()
        first.communicate(timeout=10)
    assert queued
    # 2. the broker comes back, a subscriber listens, the daemon restarts and drains
    binary = find_mosquitto()
    assert binary is not None, "mosquitto is not installed: run `make test`"
    broker = Mosquitto(binary, tmp_path, port=port)
    broker.start()
    sub = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "proximity/v1/store-001/shoppers/+/offers",
            "-F",
            "%p",
            "-W",
            "30",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.3)
    second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        assert sub.stdout is not None
        got: list[str] = []
        deadline = time.monotonic() + 20
        while not set(queued) <= set(got):
            assert time.monotonic() < deadline, f"queued {queued}, received {got}"
            line = sub.stdout.readline()
            if line:
                got.append(json.loads(line)["id"])
        second.send_signal(signal.SIGTERM)
        _, err = second.communicate(timeout=20)
        assert second.returncode == 0, err.decode()
        assert b"outbox_resumed" in err
    finally:
        for proc in (second, sub):
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        broker.stop()


def _rows(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path) as db:
            return int(db.execute("SELECT count(*) FROM outbox").fetchone()[0])
    except sqlite3.Error:
        return 0


def _ids(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("SELECT id FROM outbox ORDER BY seq")]


async def test_a_broker_killed_under_a_steady_stream_loses_nothing(tmp_path: Path) -> None:
    """SIGKILL the broker mid-stream, restart it: every offer still valid arrives at least
    once; those that expired during the outage are dropped and counted, never sent late."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from proximity.clock import SystemClock
    from proximity.delivery.publisher import MqttPublisher

    binary = find_mosquitto()
    assert binary is not None, "mosquitto is not installed: run `make test`"
    broker = Mosquitto(binary, tmp_path, persistent=True)
    broker.start()
    received: set[str] = set()
    subscribed = asyncio.Event()
    loop = asyncio.get_running_loop()
    app = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="app-s-token-1", protocol=mqtt.MQTTv5)
    app.reconnect_delay_set(0.1, 0.5)
    session = Properties(PacketTypes.CONNECT)
    session.SessionExpiryInterval = 600  # the app's session outlives a broker restart
    app.on_message = lambda c, u, m: received.add(json.loads(m.payload)["id"])
    app.on_subscribe = lambda *a: loop.call_soon_threadsafe(subscribed.set)
    app.connect("127.0.0.1", broker.port, clean_start=False, properties=session)
    app.loop_start()
    app.subscribe("proximity/v1/store-001/shoppers/s-token-1/offers", qos=1)
    await asyncio.wait_for(subscribed.wait(), 5)
    await asyncio.sleep(1.5)  # the broker's autosave now holds the app's subscription

    clock = SystemClock()
    box = Outbox(tmp_path / "outbox.sqlite")
    try:
        async with MqttPublisher(
            broker.url,
            store="store-001",
            gateway="gw-1",
            client_id="gw-kill-test",
            publish_timeout=2,
            clock=clock,
        ) as pub:
            drainer = OutboxDrainer(box, pub, clock)
            task = asyncio.create_task(drainer.run())
            lasting: list[str] = []
            for n in range(60):
                now = clock.now()
                offer = make_offer(
                    id=f"o-{n:04d}", issued_at=now, expires_at=now + timedelta(minutes=5)
                )
                box.put(Kind.OFFER, "s-token-1", offer)
                lasting.append(offer.id)
                drainer.wake()
                if n == 20:
                    broker.kill()
                    for k in range(5):  # these expire before the broker is back
                        short = make_offer(
                            id=f"o-short-{k}", issued_at=now, expires_at=now + timedelta(seconds=1)
                        )
                        box.put(Kind.OFFER, "s-token-1", short)
                if n == 40:
                    await asyncio.sleep(1.5)
                    broker.start()
                await asyncio.sleep(0.03)
            assert await drainer.flush(30), f"{len(box)} offers still waiting"
            task.cancel()
        deadline = loop.time() + 15
        while not set(lasting) <= received and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert sorted(set(lasting) - received) == []
        assert not any(i.startswith("o-short") for i in received)
        assert drainer.stats.expired == 5
        assert drainer.stats.failures >= 1
    finally:
        app.disconnect()
        app.loop_stop()
        box.close()
        broker.stop()


class OutboxMachine(RuleBasedStateMachine):
    """Any interleaving of enqueue, publish-and-ack, crash and restart keeps the invariants:
    every offer not yet acknowledged is waiting, once, in the order it was enqueued."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp())
        self.path = self.dir / "outbox.sqlite"
        self.box = Outbox(self.path)
        self.model: list[str] = []
        self.next_id = 0

    @rule()
    def enqueue(self) -> None:
        offer = make_offer(id=f"o-{self.next_id:05d}", expires_at=T0 + timedelta(hours=1))
        self.next_id += 1
        assert self.box.put(Kind.OFFER, "s-token-1", offer)
        self.model.append(offer.id)

    @rule()
    def enqueue_a_duplicate(self) -> None:
        if self.model:
            again = make_offer(id=self.model[-1], expires_at=T0 + timedelta(hours=1))
            assert not self.box.put(Kind.OFFER, "s-token-1", again)

    @rule()
    def publish_and_ack(self) -> None:
        item = self.box.peek()
        if self.model:
            assert item is not None
            assert item.offer.id == self.model.pop(0)
            self.box.done(item)
        else:
            assert item is None

    @rule(n=st.integers(min_value=1, max_value=8), skip=st.sets(st.integers(0, 7), max_size=3))
    def publish_a_window(self, n: int, skip: set[int]) -> None:
        """The drainer's way: the oldest ``n`` at once; those in ``skip`` got no PUBACK."""
        window = self.box.head(n)
        assert [i.offer.id for i in window] == self.model[:n]
        acked = [item for k, item in enumerate(window) if k not in skip]
        self.box.done_many(acked)
        gone = {item.offer.id for item in acked}
        self.model = [i for i in self.model if i not in gone]

    @rule()
    def crash_and_restart(self) -> None:
        self.box._db = None  # SIGKILL: nothing is closed or flushed on purpose
        self.box = Outbox(self.path)

    @invariant()
    def waiting_in_order(self) -> None:
        assert [i.offer.id for i in self.box._items] == self.model
        assert len(self.box) == len(self.model)

    def teardown(self) -> None:
        self.box.close()
        shutil.rmtree(self.dir, ignore_errors=True)


OutboxMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
test_outbox_invariants = OutboxMachine.TestCase


def test_a_full_disk_is_reported_once_and_offers_keep_flowing(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    assert box._db is not None
    assert box._db._db is not None
    # SQLite's own "database or disk is full" (SQLITE_FULL), as on a full partition
    box._db._db.execute("PRAGMA max_page_count = 8")
    with structlog.testing.capture_logs() as logs:
        for offer in offers(300):
            assert box.put(Kind.OFFER, "s-token-1", offer)
    assert box.failed
    assert len(box) == 300  # nothing lost: the queue goes on in memory
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [e["event"] for e in errors] == ["outbox_write_failed"]
    assert "full" in errors[0]["error"]
    while (item := box.peek()) is not None:
        box.done(item)
    assert len(box) == 0


def test_caps_hold_across_a_killed_daemon(mosquitto: Mosquitto, tmp_path: Path) -> None:
    (tmp_path / "rules.toml").write_text(
        '[store]\nid = "store-001"\n[zones.entrance]\nscanners = ["gw-entrance"]\n'
        '[[rules]]\nid = "weekly-welcome"\non = "zone.enter"\nmoment = "go"\ncap = "1/7d"\n'
        'cta = { format = "push", title = "Welcome" }\n[rules.when]\nzone = "entrance"\n'
    )
    (tmp_path / "walk.toml").write_text(
        'name = "loop"\nscanners = ["gw-entrance"]\n'
        '[phone]\nuuid = "f7826da6-4fa2-4e98-8024-bc5b71e0893e"\nmajor = 7\nminor = 32775\n'
        'interval = "100ms"\n'
        '[[legs]]\nscanner = "gw-entrance"\nduration = "500ms"\n[[legs]]\nduration = "800ms"\n'
    )
    (tmp_path / "config.toml").write_text(
        f'[broker]\nurl = "mqtt://127.0.0.1:{mosquitto.port}"\n'
        '[ble.sim]\nwalk = "walk.toml"\nrepeat = true\n'
        '[presence]\nexit_timeout = "200ms"\nvisit_timeout = "200ms"\ntick = "100ms"\n'
        '[rules]\npaths = ["rules.toml"]\n'
        '[delivery]\nstate = "state.sqlite"\noutbox = "outbox.sqlite"\n'
        '[logging]\nformat = "json"\n'
    )
    sub = subprocess.Popen(
        [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(mosquitto.port),
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-t",
            "proximity/v1/store-001/shoppers/+/offers",
            "-F",
            "%p",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.3)
    cmd = [sys.executable, "-m", "proximity", "run", "--config", str(tmp_path / "config.toml")]
    try:
        for _ in range(2):  # several visits per run; the second run is a new process
            daemon = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
            time.sleep(4)
            daemon.send_signal(signal.SIGKILL)
            daemon.communicate(timeout=10)
        time.sleep(0.5)
    finally:
        sub.kill()
        out, _ = sub.communicate()
    ids = [json.loads(line)["id"] for line in out.splitlines()]
    assert len(ids) == 1, ids  # one a week, whatever the visits and restarts


async def test_offers_queued_in_one_turn_are_written_together_before_they_go(
    tmp_path: Path,
) -> None:
    box = Outbox(tmp_path / "outbox.sqlite")
    for offer in offers(5):
        box.put(Kind.OFFER, "s-token-1", offer)
    assert _rows(tmp_path / "outbox.sqlite") == 0  # not yet: at the end of this turn
    await asyncio.sleep(0)
    assert _rows(tmp_path / "outbox.sqlite") == 5
    assert box.commits == 1  # one transaction for the five

    class Watching(FlakySink):
        """Checks, as each offer goes out, that it is already on disk, and that what goes
        out is what was written (the JSON made once, not the offer serialised again)."""

        async def publish_offer(
            self, shopper_token: str, offer: Offer, payload: str | None = None
        ) -> bool:
            on_disk = sqlite3.connect(tmp_path / "outbox.sqlite")
            try:
                rows = dict(on_disk.execute("SELECT id, payload FROM outbox"))
            finally:
                on_disk.close()
            assert offer.id in rows, f"{offer.id} published before it was committed"
            assert payload == rows[offer.id]
            assert Offer.model_validate_json(payload) == offer
            return await super().publish_offer(shopper_token, offer)

    sink = Watching()
    drainer = OutboxDrainer(box, sink, VirtualClock(T0))
    task = asyncio.create_task(drainer.run())
    late = make_offer(id="o-late", expires_at=T0 + timedelta(hours=1))
    box.put(Kind.OFFER, "s-token-1", late)  # and the drainer starts in this same turn
    drainer.wake()
    assert await drainer.flush(5)
    task.cancel()
    assert sink.got[-1] == "o-late"
    assert len(sink.got) == 6
    box.close()
    assert _rows(tmp_path / "outbox.sqlite") == 0


@pytest.mark.timeout(60)
async def test_the_gateway_is_back_within_two_seconds_of_a_long_outage(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """A 9 s outage, long enough for a doubling backoff to wait 8 s before its next try:
    still, the publisher is connected within 2 s of the broker listening again, and the
    offer that waited in the outbox is acknowledged by the broker soon after."""
    from proximity.delivery.publisher import MqttPublisher

    loop = asyncio.get_running_loop()
    clock = VirtualClock(T0)
    box = Outbox(tmp_path / "outbox.sqlite")
    acked: list[float] = []
    try:
        async with MqttPublisher(
            mosquitto.url,
            store="store-001",
            gateway="gw-1",
            client_id="gw-outage",
            clock=clock,
            require_connection=False,
        ) as pub:
            await eventually(lambda: pub.connected)
            drainer = OutboxDrainer(box, pub, clock, on_done=lambda _, sent: acked.append(sent))
            task = asyncio.create_task(drainer.run())
            await asyncio.to_thread(mosquitto.stop)
            await eventually(lambda: not pub.connected)
            box.put(Kind.OFFER, "s-token-1", make_offer())
            drainer.wake()
            await asyncio.sleep(9)
            assert not acked
            assert drainer.stats.failures >= 1

            await asyncio.to_thread(mosquitto.start)  # returns once the port accepts
            back = loop.time()
            await eventually(lambda: pub.connected, limit_s=5)
            reconnected = loop.time() - back
            await eventually(lambda: acked, limit_s=5)
            delivered = loop.time() - back
            task.cancel()
    finally:
        box.close()
    assert reconnected < 2.0, f"connected {reconnected:.1f}s after the broker's return"
    assert delivered < 3.0, f"the waiting offer went {delivered:.1f}s after the broker's return"
    assert acked == [True]
    assert drainer.stats.published == 1


class Disk:
    """``FallbackDb.sync_log`` watched: each sync's thread and the commits made when it
    began; each takes ``delay`` seconds more (a slow disk), and the first waits for
    ``hold`` when it is given."""

    def __init__(self, box: Callable[[], Outbox], monkeypatch: pytest.MonkeyPatch) -> None:
        from proximity.sqlite import FallbackDb

        self.syncs: list[tuple[int, int]] = []  # (thread, commits when it began)
        self.delay = 0.0
        self.hold: threading.Event | None = None
        real = FallbackDb.sync_log

        def sync_log(db: FallbackDb) -> OSError | None:
            self.syncs.append((threading.get_ident(), box().commits))
            if self.hold is not None:
                self.hold.wait(5)
                self.hold = None
            time.sleep(self.delay)
            return real(db)

        monkeypatch.setattr(FallbackDb, "sync_log", sync_log)

        # the outbox judges the disk by how long its syncs on the loop took: here by the
        # delay the test set, not by the machine's own fdatasync (over a millisecond now
        # and then on a busy machine, which made a quick disk look slow)
        from proximity.delivery import outbox as module

        def timed_sync(db: FallbackDb) -> tuple[OSError | None, float]:
            delay = self.delay
            return db.sync_log(), delay

        monkeypatch.setattr(module, "_timed_sync", timed_sync)

    def on_loop(self) -> list[bool]:
        loop = threading.get_ident()  # the test runs on the loop's thread
        return [thread == loop for thread, _ in self.syncs]


class Watching(FlakySink):
    """Checks, as each offer goes out, that a sync began after the last commit."""

    def __init__(self, box: Outbox, disk: Disk) -> None:
        super().__init__()
        self.box, self.disk = box, disk

    async def publish_offer(
        self, shopper_token: str, offer: Offer, payload: str | None = None
    ) -> bool:
        assert self.disk.syncs, "published before any sync"
        assert self.disk.syncs[-1][1] == self.box.commits, "published before it was synced"
        return await super().publish_offer(shopper_token, offer)


async def _drain(box: Outbox, disk: Disk, ids: list[str]) -> list[str]:
    sink = Watching(box, disk)
    drainer = OutboxDrainer(box, sink, VirtualClock(T0))
    task = asyncio.create_task(drainer.run())
    for id_ in ids:
        box.put(Kind.OFFER, "s-token-1", make_offer(id=id_, expires_at=T0 + timedelta(hours=1)))
    drainer.wake()
    assert await drainer.flush(5)
    task.cancel()
    return sink.got


async def _find_the_disk_slow(box: Outbox, disk: Disk, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two offers through ``box``: the folder's sync, then one slow sync on the loop, which
    (one slow sync of one is a slow disk here) sends the next syncs to a worker thread."""
    from proximity.delivery import outbox as module

    monkeypatch.setattr(module, "SYNC_SAMPLES", 1)
    monkeypatch.setattr(module, "SLOW_SYNCS", 1)
    for id_ in ("o-first", "o-slow"):
        box.put(Kind.OFFER, "s-token-1", make_offer(id=id_))
        disk.delay = 0.0 if id_ == "o-first" else 2 * module.QUICK_SYNC_S
        await box.durable()
    disk.delay = 0.0


async def test_a_quick_disk_is_synced_on_the_loop_once_for_every_commit_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit leaves the rows with the operating system and does not sync; the drainer's
    ``durable()`` syncs on the loop (no worker thread to wake), once for every commit made
    since the last sync, and an offer goes out only after a sync that began after its
    commit."""
    box = Outbox(tmp_path / "outbox.sqlite")
    disk = Disk(lambda: box, monkeypatch)
    for offer in offers(3):  # three turns, three commits
        box.put(Kind.OFFER, "s-token-1", offer)
        await asyncio.sleep(0)
    assert box.commits == 3
    assert disk.syncs == []  # none at the commits
    await box.durable()
    assert [commits for _, commits in disk.syncs] == [3]  # one for the three
    assert disk.on_loop() == [True]
    await box.durable()
    assert len(disk.syncs) == 1  # nothing new: nothing to sync
    got = await _drain(box, disk, ["o-late"])
    assert got == ["o-0000", "o-0001", "o-0002", "o-late"]
    assert all(disk.on_loop())
    assert (box.syncs_on_loop, box.syncs_in_thread) == (len(disk.syncs), 0)
    box.close()
    assert _rows(tmp_path / "outbox.sqlite") == 0


async def test_a_slow_disk_is_synced_in_a_worker_thread_until_it_is_quick_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When ``SLOW_SYNCS`` of the last ``SYNC_SAMPLES`` syncs on the loop were slow, the next
    ``SYNC_WINDOW`` syncs run in a worker thread, each begun by the commit itself; then
    the disk is judged again on the loop: quick, the syncs stay there; slow again, twice
    as many go to the thread."""
    from proximity.delivery import outbox as module

    monkeypatch.setattr(module, "SYNC_SAMPLES", 4)
    monkeypatch.setattr(module, "SLOW_SYNCS", 2)
    monkeypatch.setattr(module, "SYNC_WINDOW", 3)
    box = Outbox(tmp_path / "outbox.sqlite")
    disk = Disk(lambda: box, monkeypatch)
    n = 0

    async def one_offer() -> None:
        nonlocal n
        box.put(Kind.OFFER, "s-token-1", make_offer(id=f"o-{n:04d}"))
        n += 1
        await asyncio.sleep(0)  # the turn's commit
        await box.durable()

    await one_offer()  # the first sync also syncs the folder: not judged
    disk.delay = 2 * module.QUICK_SYNC_S
    await one_offer()  # slow, on the loop: one of four, the disk is not slow yet
    await one_offer()  # slow again: two of the last four
    assert disk.on_loop() == [True, True, True]
    disk.delay = 0.0
    for _ in range(3):  # SYNC_WINDOW syncs in a worker thread, begun at the commit
        before = len(disk.syncs)
        box.put(Kind.OFFER, "s-token-1", make_offer(id=f"o-{n:04d}"))
        n += 1
        await asyncio.sleep(0)
        await eventually(lambda b=before: len(disk.syncs) == b + 1)  # not at durable()
        await box.durable()
    assert disk.on_loop()[3:] == [False, False, False]
    await one_offer()  # quick again: back on the loop
    assert disk.on_loop()[-1] is True
    disk.delay = 2 * module.QUICK_SYNC_S
    await one_offer()
    await one_offer()  # slow again: twice the window this time
    disk.delay = 0.0
    for _ in range(6):
        await one_offer()
    assert disk.on_loop()[-8:] == [True, True, False, False, False, False, False, False]
    await one_offer()
    assert disk.on_loop()[-1] is True
    assert (box.syncs_in_thread, box.syncs_on_loop) == (9, len(disk.syncs) - 9)
    box.close()


async def test_in_the_worker_thread_one_sync_runs_at_a_time_and_the_next_serves_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a slow disk: one sync under way at a time; the commits made while it runs are
    served by the next one; nothing is published before a sync that began after its
    commit."""
    box = Outbox(tmp_path / "outbox.sqlite")
    disk = Disk(lambda: box, monkeypatch)
    await _find_the_disk_slow(box, disk, monkeypatch)
    disk.hold = threading.Event()  # the next sync waits for it: a stuck disk
    begun = len(disk.syncs)
    for offer in offers(3):  # three turns, three commits, while that sync waits
        box.put(Kind.OFFER, "s-token-1", offer)
        await asyncio.sleep(0)
        await eventually(lambda: len(disk.syncs) == begun + 1)  # begun by the first commit
    assert [commits for _, commits in disk.syncs[begun:]] == [begun + 1]
    disk.hold.set()
    await box.durable()
    # the second serves the two commits made during the first
    assert [commits for _, commits in disk.syncs[begun:]] == [begun + 1, begun + 3]
    assert disk.on_loop()[begun:] == [False, False]  # none on the loop
    await box.durable()
    assert len(disk.syncs) == begun + 2  # nothing new: nothing to sync
    got = await _drain(box, disk, ["o-late"])
    assert got == ["o-first", "o-slow", "o-0000", "o-0001", "o-0002", "o-late"]
    box.close()
    assert _rows(tmp_path / "outbox.sqlite") == 0


async def test_durable_waits_for_a_sync_that_has_ended_but_not_yet_been_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker thread's sync can end (its future done) a moment before the loop counts
    it; durable() called in that moment yields to let it be counted, rather than spin."""
    box = Outbox(tmp_path / "outbox.sqlite")
    disk = Disk(lambda: box, monkeypatch)
    await _find_the_disk_slow(box, disk, monkeypatch)
    box.put(Kind.OFFER, "s-token-1", make_offer(id="o-next"))
    await asyncio.sleep(0)  # the turn's commit: its sync is handed to a worker thread
    assert box.commits == 3
    deadline = time.monotonic() + 5
    while len(disk.syncs) < 3 and time.monotonic() < deadline:  # the loop stays busy
        time.sleep(0.001)  # noqa: ASYNC251 - on purpose: the sync's end must not be counted
    assert disk.on_loop()[-1] is False
    time.sleep(0.2)  # noqa: ASYNC251 - the loop busy on purpose: the sync ends meanwhile
    waiting = asyncio.ensure_future(box.durable())  # runs just after the result is set
    await asyncio.wait_for(waiting, 5)
    assert waiting.done()
    box.close()


async def test_a_new_offer_does_not_wait_for_the_puback_of_one_in_flight() -> None:
    class Slow(FlakySink):
        def __init__(self) -> None:
            super().__init__()
            self.release = asyncio.Event()
            self.started: list[str] = []

        async def publish_offer(
            self, shopper_token: str, offer: Offer, payload: str | None = None
        ) -> bool:
            self.started.append(offer.id)
            if offer.id == "o-0000":
                await self.release.wait()  # its PUBACK is slow
            return await super().publish_offer(shopper_token, offer)

    box = Outbox()
    sink = Slow()
    drainer = OutboxDrainer(box, sink, VirtualClock(T0))
    task = asyncio.create_task(drainer.run())
    first, second = offers(2)
    box.put(Kind.OFFER, "s-token-1", first)
    drainer.wake()
    await eventually(lambda: sink.started == ["o-0000"])
    box.put(Kind.OFFER, "s-token-1", second)
    drainer.wake()
    await eventually(lambda: sink.got == ["o-0001"])  # out while the first still waits
    sink.release.set()
    assert await drainer.flush(5)
    task.cancel()
    assert sorted(sink.got) == ["o-0000", "o-0001"]
