"""Crash points: ``proximity run`` killed (SIGKILL) at chosen instants, then restarted.

Each kill point is one drill against a real mosquitto on a free loopback port:

1. ``proximity run`` with a seeded crowd of the simulator (the example store's rules,
   a durable outbox, delivery state, funnel and used-codes files, coupon codes
   signed) on a sped-up clock; a paho subscriber (QoS 1) takes every offer.
2. At the kill point — an instant after the daemon started serving (its
   ``daemon_starting`` log line), drawn from the seed — the daemon gets SIGKILL. Some
   points freeze the broker first (SIGSTOP: QoS 1 publishes, events included when
   ``[events] qos = 1``, wait for ever), some rewrite the rule file just before (a
   reload in flight), with events at QoS 0 and 1. The instants fall between decision
   and outbox, in a group commit, mid drain, as they come.
3. The broker resumes; the daemon restarts on the same files with a shopper-less
   walk, so it decides nothing new: it recovers (``decisions_recovered``), drains
   its outbox and stops by itself.

Then the invariants (docs/durability.md), each a violation when broken:

- *lost*: every offer in the journal (the outbox file's ``issued`` table: every
  offer ever decided) reached the subscriber or was dropped as expired; none waits;
- *phantom*: every offer received is in the journal;
- *caps*: the delivery state's ``sent`` rows are exactly the journal's offers
  (shopper, rule, visit): no spent cap without its offer, no offer without its cap;
- *funnel*: ``decided`` facts = journal offers, ``published`` facts = distinct
  offers received, ``expired`` facts = journal offers dropped as expired.

A duplicate delivery (an offer the broker had but whose PUBACK the kill beat) is
counted, not a violation: offer ids are deterministic and the app drops repeats.

``python -m bench.crash_points [POINTS] [SEED]`` (default 200 points, seed 1) prints a
progress line per point and the table, and writes bench/out/crash_points.json.
tests/test_crash_points.py runs three fixed points of the same drill.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from bench.report import Row, write
from firmware_sim.mosquitto import Mosquitto, find_mosquitto

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules" / "example-store.toml"
CODE_KEY = "crash-points-drill-code-key-01234"
SPEED = 60.0
"""The first run's clock: a store minute a second, so offers are decided within seconds."""
RESTART_LIMIT_S = 60.0


@dataclass(frozen=True)
class KillPoint:
    seed: int
    kill_after_s: float
    """SIGKILL this long after the daemon was started (its start-up included)."""
    freeze_s: float = 0.0
    """The broker is frozen (SIGSTOP) this long before the kill, and resumed after it."""
    events_qos: int = 0
    reload: bool = False
    """The rule file is rewritten just before the kill (watched every 200 ms)."""

    def describe(self) -> str:
        parts = [f"kill at {self.kill_after_s:.2f}s", f"events QoS {self.events_qos}"]
        if self.freeze_s:
            parts.append(f"broker frozen {self.freeze_s:.1f}s")
        if self.reload:
            parts.append("mid reload")
        return ", ".join(parts)


@dataclass
class Outcome:
    point: KillPoint
    journalled: int = 0
    received: int = 0
    duplicates: int = 0
    expired: int = 0
    recovered: dict[str, int] = field(default_factory=dict)
    """What the restart's ``decisions_recovered`` line said (caps and facts restored)."""
    violations: list[str] = field(default_factory=list)


def kill_points(count: int, seed: int) -> list[KillPoint]:
    """``count`` kill points drawn from ``seed``: instants from before the first decision
    to well into the drain, a third with the broker frozen, a quarter mid reload."""
    rng = random.Random(seed)
    points = []
    for i in range(count):
        freeze = rng.choice([0.0, 0.0, rng.uniform(0.5, 2.5)])
        points.append(
            KillPoint(
                seed=seed * 100_000 + i,
                kill_after_s=rng.uniform(1.5, 7.0) + freeze,
                freeze_s=freeze,
                events_qos=rng.choice([0, 1]),
                reload=rng.random() < 0.25,
            )
        )
    return points


class OfferSubscriber:
    """A paho client (MQTT 5, QoS 1) that records the id of every offer it receives."""

    def __init__(self, port: int) -> None:
        self.ids: list[str] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_message = self._message
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect("127.0.0.1", port, keepalive=120)
        self.client.loop_start()
        self.client.subscribe("proximity/v1/+/shoppers/+/offers", qos=1)
        if not subscribed.wait(5):
            self.close()
            raise RuntimeError("the drill's subscriber got no SUBACK")

    def _message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        offer = json.loads(msg.payload)["id"]
        with self._lock:
            self.ids.append(offer)

    def received(self) -> list[str]:
        with self._lock:
            return list(self.ids)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client._reset_sockets()  # paho closes its wake-up socket pair only in __del__


def _config(work: Path, port: int, point: KillPoint, first: bool) -> Path:
    if first:
        ble = (
            f'[ble.sim]\nscenario = "crowded"\nshoppers = 60\narrival_window = "5m"\n'
            f"seed = {point.seed % 2**31}\nspeed = {SPEED}\n"
        )
    else:  # nobody in the store: the restart only recovers and drains
        (work / "quiet.toml").write_text(
            'name = "quiet"\nscanners = ["gw-entrance"]\n'
            '[phone]\nuuid = "f7826da6-4fa2-4e98-8024-bc5b71e0893e"\nmajor = 1\nminor = 1\n'
            'interval = "1s"\n[[legs]]\nduration = "2s"\n'
        )
        ble = '[ble.sim]\nwalk = "quiet.toml"\n'
    path = work / ("first.toml" if first else "restart.toml")
    path.write_text(
        f'[broker]\nurl = "mqtt://127.0.0.1:{port}"\n'
        f"{ble}"
        '[rules]\npaths = ["rules.toml"]\nwatch = true\nwatch_interval = "200ms"\n'
        f"[events]\nqos = {point.events_qos}\n"
        '[delivery]\noutbox = "outbox.sqlite"\nstate = "state.sqlite"\n'
        '[measurement]\nstore = "funnel.sqlite"\n'
        f'[codes]\nkeys = {{ 1 = "{CODE_KEY}" }}\nused = "used.sqlite"\n'
        "[metrics]\nenabled = false\n"
        '[logging]\nformat = "json"\nlevel = "info"\n'
    )
    return path


def _daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "proximity", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=config.parent,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )


def _serving(daemon: subprocess.Popen[bytes], log: Path, limit_s: float = 60.0) -> None:
    """Wait until ``daemon`` logs ``daemon_starting`` (it serves from then on), exits, or
    ``limit_s`` passed. Kill instants count from then, not from the process's start: the
    interpreter's start-up and imports took 1-3 s more on a busy machine, and a kill at
    3-5 s then came before any offer was decided."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and daemon.poll() is None:
        if b'"daemon_starting"' in log.read_bytes():
            return
        time.sleep(0.02)


def _rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    if not path.exists():
        return []
    db = sqlite3.connect(path)
    try:
        return list(db.execute(sql))
    except sqlite3.Error:
        return []
    finally:
        db.close()


def drill(point: KillPoint, work: Path, mosquitto: str) -> Outcome:
    """One kill point, in the empty folder ``work``."""
    out = Outcome(point)
    (work / "rules.toml").write_text(RULES.read_text())
    broker = Mosquitto(mosquitto, work)
    broker.start()
    subscriber = OfferSubscriber(broker.port)
    log = work / "daemon.log"
    try:
        first = _daemon(_config(work, broker.port, point, first=True), log)
        try:
            _serving(first, log)
            started = time.monotonic()
            if point.freeze_s:
                time.sleep(max(0.0, point.kill_after_s - point.freeze_s))
                broker.pause()
            if point.reload:
                time.sleep(max(0.0, point.kill_after_s - 0.3 - (time.monotonic() - started)))
                rules = work / "rules.toml"
                rules.write_text(rules.read_text() + f"\n# edited at {time.time()}\n")
            time.sleep(max(0.0, point.kill_after_s - (time.monotonic() - started)))
            if first.poll() is not None:
                out.violations.append(f"the first run exited by itself ({first.returncode})")
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait(10)
            broker.resume()
        restart = _daemon(_config(work, broker.port, point, first=False), log)
        try:
            restart.wait(RESTART_LIMIT_S)
        except subprocess.TimeoutExpired:
            restart.kill()
            restart.wait(10)
            out.violations.append(f"the restart did not stop within {RESTART_LIMIT_S:g}s")
        if restart.returncode not in (0, -signal.SIGKILL):
            out.violations.append(f"the restart exited with {restart.returncode}")
        time.sleep(0.5)  # the last PUBLISHes reach the subscriber
    finally:
        subscriber.close()
        broker.stop()
    _check(out, work, subscriber.received(), log)
    return out


def _check(out: Outcome, work: Path, received: list[str], log: Path) -> None:
    outbox, state, funnel = work / "outbox.sqlite", work / "state.sqlite", work / "funnel.sqlite"
    journal = {
        str(offer): (str(shopper), str(rule), str(visit), str(outcome))
        for offer, shopper, rule, visit, outcome in _rows(
            outbox, "SELECT id, shopper, rule, visit, outcome FROM issued"
        )
    }
    got = set(received)
    out.journalled = len(journal)
    out.received = len(got)
    out.duplicates = len(received) - len(got)
    expired = {o for o, (*_, outcome) in journal.items() if outcome in ("expired", "unpublishable")}
    out.expired = len(expired)
    v = out.violations
    waiting = _rows(outbox, "SELECT count(*) FROM outbox")
    if waiting and waiting[0][0]:
        v.append(f"lost: {waiting[0][0]} offers still waiting after the drain")
    lost = set(journal) - got - expired
    if lost:
        v.append(f"lost: {len(lost)} journalled offers never received nor expired")
    phantom = got - set(journal)
    if phantom:
        v.append(f"phantom: {len(phantom)} offers received that the journal does not have")
    caps = Counter(
        (str(s), str(r), str(vi))
        for s, r, vi in _rows(state, "SELECT shopper, rule, visit FROM sent")
    )
    offers = Counter((s, r, vi) for s, r, vi, _ in journal.values())
    if caps != offers:
        v.append(
            f"caps: {sum((caps - offers).values())} caps spent without an offer, "
            f"{sum((offers - caps).values())} offers without their cap"
        )
    facts = Counter(
        str(stage)
        for stage, offer in _rows(funnel, "SELECT stage, offer FROM facts")
        if stage in ("decided", "published", "expired")
    )
    expected = {"decided": len(journal), "published": len(got), "expired": len(expired)}
    for stage, count in expected.items():
        if facts[stage] != count:
            v.append(f"funnel: {facts[stage]} {stage} facts, expected {count}")
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == "decisions_recovered":
                out.recovered = {
                    k: int(entry[k]) for k in ("journalled", "caps_restored", "facts_restored")
                }
            if entry.get("level") in ("error", "critical"):
                v.append(f"error logged: {entry.get('event')}")
        elif line.startswith("Traceback"):
            v.append("a traceback in the daemon's output")


def run(points: list[KillPoint], progress: bool = True) -> list[Outcome]:
    binary = find_mosquitto()
    if binary is None:
        raise SystemExit("mosquitto is not installed: run `make setup`")
    outcomes = []
    for i, point in enumerate(points, 1):
        with tempfile.TemporaryDirectory(prefix="crash-point-") as tmp:
            outcome = drill(point, Path(tmp), binary)
        outcomes.append(outcome)
        if progress:
            verdict = "; ".join(outcome.violations) or "ok"
            print(
                f"[{i}/{len(points)}] {point.describe()}: {outcome.journalled} decided, "
                f"{outcome.received} received, {outcome.expired} expired, "
                f"{outcome.duplicates} duplicates, recovered {outcome.recovered or '-'}: {verdict}",
                flush=True,
            )
    return outcomes


def main(argv: list[str] | None = None) -> None:
    """``argv``: [POINTS [SEED]]; none when ``python -m bench`` runs it (its own flags,
    such as ``--readme``, are not this benchmark's)."""
    args = argv or []
    count = int(args[0]) if args else 200
    seed = int(args[1]) if len(args) > 1 else 1
    started = time.monotonic()
    outcomes = run(kill_points(count, seed))
    elapsed = time.monotonic() - started
    violations = sum(len(o.violations) for o in outcomes)
    decided = sum(o.journalled for o in outcomes)
    frozen = [o for o in outcomes if o.point.freeze_s]
    restored = sum(o.recovered.get("caps_restored", 0) for o in outcomes)
    restored += sum(o.recovered.get("facts_restored", 0) for o in outcomes)
    print(f"{len(outcomes)} kill points in {elapsed:.0f} s")
    rows = [
        Row(
            f"{len(outcomes)} kill points (seed {seed}): invariant violations",
            "invariant violations",
            "count",
            violations,
        ),
        Row(
            f"{len(frozen)} of them with the broker frozen: invariant violations",
            "invariant violations",
            "count",
            sum(len(o.violations) for o in frozen),
        ),
        Row("offers decided before the kills", "offers", "count", decided),
        Row(
            "offers received after the restarts",
            "offers",
            "count",
            sum(o.received for o in outcomes),
        ),
        Row("caps and funnel facts restored from the journal", "rows", "count", restored),
    ]
    write("crash_points", rows)


if __name__ == "__main__":
    main(sys.argv[1:])
