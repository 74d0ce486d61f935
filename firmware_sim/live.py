"""The live mode: the simulated store drives a real ``proximity run`` through its real interfaces.

``python -m firmware_sim run --via bluez`` builds, for one run::

    crowd or walk ──UpdateProperties──▶ mocked BlueZ ──D-Bus──▶ proximity run ──MQTT──▶ mosquitto
    (this process)   one adapter per     (private bus)   (bleak backend,         │
                     store scanner                        one radio per scanner)  ▼
                                                               shopper apps (this process)

- a private ``dbus-daemon`` and python-dbusmock's ``bluez5`` template
  (:mod:`firmware_sim.bluez`) with one adapter per store scanner (``hci0``...),
  and every phone known to every adapter;
- mosquitto on a free loopback port, unless ``--broker`` names one;
- ``proximity run`` as a child process, with a config written for the run: the
  bleak backend with ``[ble] adapters`` mapping each store scanner to its adapter,
  a fresh pseudonym key (the daemon refuses the demo key on the bleak backend),
  and the clock ``speed`` of the run; ``DBUS_SYSTEM_BUS_ADDRESS`` points its bleak
  at the private bus;
- one :class:`ShopperApp` per consenting shopper, subscribed to that shopper's
  offers topic exactly as the store app would;
- when shoppers act (``--checkins``, ``--redeem``), the store file's ``[[readers]]``
  (:mod:`firmware_sim.checkout`): the daemon gets a ``[[scanners]]`` serial line on
  a pseudo-terminal per code scanner (the example store's till) and an ``[[nfc]]``
  reader on nfcpy's UDP frontend per NFC reader (its cart dock), and a fresh
  ``[codes]`` key (it refuses the demo one once readers are configured);
- a watcher of the store's journey events on the broker
  (:mod:`firmware_sim.journey_feed`), which prints the acts as the daemon
  publishes them.

Then the advertisements are played in (scaled) real time: each one a scanner
hears becomes an ``UpdateProperties`` (RSSI and manufacturer data) on that phone's
device under the scanner's adapter, which BlueZ would emit for a real
advertisement. Updates due together go in one D-Bus call; the plan is refused up
front when its busiest second would need more than :data:`MAX_UPDATES_PER_S`.

Alongside, shoppers act at the readers: the acts :func:`firmware_sim.acts.plan_acts`
plans for the same store, crowd and seed as the in-process run (carts bound at the
dock, check-ins, coupons shown at the till), at the same store seconds, each turned
into its readings by the same :class:`~firmware_sim.acts.ActPlayer`. A code scan is
written on the reader's serial line, as a 2D scanner types the code the app shows;
a tap is an emulated tag (the phone, or the cart's tag) carrying the code, held on
the reader's pad. Coupons are the ones the shopper's app received from the broker
(the daemon emits ``offer.redeemed``, its funnel counts the redemption). A pad is
nfcpy's UDP frontend, which senses about once a second in real time whatever
``--speed`` says: a tag stays on the pad until the reader has read it (at most
:data:`firmware_sim.checkout.HOLD_S`), and each reader serves one act at a time, so in
a crowd played fast acts run late (the summary says how late at worst). After the run
the summary has what the daemon counted (acts and refused codes from /metrics,
redemptions from its funnel file).

Everything started is stopped in reverse order on the way out, on an error or
on Ctrl-C; children are also started to die with this process (see
:mod:`firmware_sim.processes`) and in their own process group, so Ctrl-C reaches
only the simulator, which stops the daemon before the broker and the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, TextIO

from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from firmware_sim.acts import CODE_LIFETIME, ActKind, ActPlayer, PlannedAct
from firmware_sim.beacons import CART_UUID
from firmware_sim.bluez import MockBlueZ, PrivateBus, Update, find_dbus_daemon
from firmware_sim.checkout import (
    CODE_KEY_ID,
    SETTLE_S,
    LiveReader,
    Readers,
    TillError,
    cart_idm,
    phone_idm,
    store_readers,
)
from firmware_sim.crowd import Crowd, Heard
from firmware_sim.journey_feed import JourneyFeed
from firmware_sim.processes import spawn, stop_process
from firmware_sim.store import ReaderKind
from proximity.adapters.nfc.ndef import build_ndef
from proximity.adapters.nfc.tap import NfcTap
from proximity.config import DEMO_APP_UUID, CodeSettings, PresenceSettings
from proximity.delivery.app_client import ReceivedOffer, ShopperApp
from proximity.delivery.url import BrokerUrl
from proximity.events import ACTS, EventKind, JourneyEvent
from proximity.identity.resolver import IdentityResolver
from proximity.measurement.store import MeasurementStore

Devices = dict[tuple[str, str], str]
"""(sender's address, scanner) -> its device object path under that scanner's adapter."""

#: The most advertisement updates a second the live mode plays into the mocked BlueZ.
#: Measured on a 2-core laptop with a bleak scanner listening on four adapters: one
#: UpdateProperties call per update carries about 1,000 a second, a batch of 40 in one
#: call about 5,700-6,300 a second. The daemon and the mock share those cores, so the
#: live mode keeps to a third of the batched figure.
MAX_UPDATES_PER_S = 2000
#: Updates due within this much real time of each other go in one D-Bus call.
BATCH_WINDOW_S = 0.01
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0
PROGRESS_EVERY_S = 5.0
FUNNEL_FILE = "funnel.sqlite"


class LiveError(Exception):
    """The live run could not be set up or did not go through (the message says why)."""


@dataclass(frozen=True, slots=True)
class Received:
    """One offer a shopper's app received, when (store seconds into the run)."""

    shopper: int
    at_s: float
    rule: str
    moment: str
    zone: str | None
    title: str
    offer_id: str = ""
    redeem_code: str | None = field(default=None, repr=False)
    """The coupon's signed code, which the shopper shows at the till; never printed."""


@dataclass(frozen=True, slots=True)
class Redeemed:
    """A coupon the daemon said was redeemed (an ``offer.redeemed`` on the broker)."""

    shopper: int | None
    at_s: float
    rule: str | None
    reader: str | None


@dataclass
class ReaderStats:
    """What the simulator did at one of the store's readers."""

    id: str
    kind: str
    role: str
    zone: str
    path: str
    """Where the daemon reads it: a serial line, or an nfcpy ``udp:`` path."""
    acts: int = 0
    """Planned acts played here."""
    scans: int = 0
    """Codes written on the scanner line."""
    taps: int = 0
    """Tags (phones, carts' tags) held on the pad."""
    taps_read: int = 0
    """...that the reader read before the tag was taken away (checkout.HOLD_S)."""
    coupons: int = 0
    """Coupon codes shown (scanned or tapped)."""
    max_late_s: float = 0.0
    """How far behind its planned store second an act was played, at worst."""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "role": self.role,
            "zone": self.zone,
            "path": self.path,
            "acts": self.acts,
            "scans": self.scans,
            "taps": self.taps,
            "taps_read": self.taps_read,
            "coupons": self.coupons,
            "max_late_s": round(self.max_late_s, 1),
        }


@dataclass(frozen=True, slots=True)
class DaemonTime:
    """Bounds on the daemon's clock, which runs ``speed`` times faster from its start.

    The daemon's clock starts at the wall time it reads at start-up, after
    ``started`` (taken just before it is spawned), and runs from then at ``speed``;
    so at any moment it reads at least ``started`` and at most ``started`` plus the
    real time since, times the speed. Codes the simulator signs are valid over
    that whole span, as the app's codes are valid around the store's time.
    """

    started: datetime
    started_mono: float
    speed: float

    def earliest(self) -> datetime:
        return self.started

    def latest(self) -> datetime:
        real = time.monotonic() - self.started_mono
        return self.started + timedelta(seconds=real * max(1.0, self.speed))


@dataclass
class LiveResult:
    label: str
    speed: float
    scanners: dict[str, str]
    """Store scanner id -> the mocked BlueZ adapter it is."""
    shoppers: int
    advertisements_sent: int = 0
    """UpdateProperties made (one per scanner that heard an advertisement)."""
    dbus_calls: int = 0
    peak_updates_per_s: int = 0
    max_lag_s: float = 0.0
    """How far playback fell behind its schedule at worst (real seconds)."""
    wall_s: float = 0.0
    daemon: dict[str, Any] = field(default_factory=dict)
    """What the daemon said: its backend and scanners, BLE readings from /metrics,
    offers published from its last log line, its exit code."""
    offers: list[Received] = field(default_factory=list)
    readers: list[ReaderStats] = field(default_factory=list)
    """The store's readers the acts were played at (none when nobody acts)."""
    acts: Counter[str] = field(default_factory=Counter)
    """Acts the daemon published on the broker's events topic, by kind."""
    redeemed: list[Redeemed] = field(default_factory=list)
    funnel: dict[str, dict[str, int]] = field(default_factory=dict)
    """The daemon's funnel file after the run: rule (rule/variant) -> stage -> count."""

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "via": "bluez",
            "speed": self.speed,
            "scanners": self.scanners,
            "shoppers": self.shoppers,
            "advertisements_sent": self.advertisements_sent,
            "dbus_calls": self.dbus_calls,
            "peak_updates_per_s": self.peak_updates_per_s,
            "max_lag_s": round(self.max_lag_s, 3),
            "wall_s": round(self.wall_s, 2),
            "daemon": self.daemon,
            "offers": [
                {
                    "shopper": o.shopper,
                    "at_s": round(o.at_s, 1),
                    "rule": o.rule,
                    "moment": o.moment,
                    "zone": o.zone,
                    "title": o.title,
                }
                for o in self.offers
            ],
            "readers": [r.to_json() for r in self.readers],
            "acts": dict(self.acts),
            "redeemed": [
                {"shopper": r.shopper, "at_s": round(r.at_s, 1), "rule": r.rule, "reader": r.reader}
                for r in self.redeemed
            ],
            "funnel": self.funnel,
        }


@dataclass(frozen=True)
class LivePlan:
    """What to play and against what: built by ``python -m firmware_sim run --via bluez``."""

    crowd: Crowd
    label: str
    rules: list[Path]
    store_id: str
    speed: float = 1.0
    broker: str | None = None
    """An MQTT 5 broker URL; None starts mosquitto for the run."""
    workdir: Path | None = None
    """Keep the daemon's config and every log here; None: a temporary folder."""
    presence: PresenceSettings = field(default_factory=PresenceSettings)
    acts: tuple[PlannedAct, ...] = ()
    """What shoppers do at the store's readers: :func:`firmware_sim.acts.plan_acts`, as the
    in-process run of the same store, crowd and seed plays it."""

    @property
    def linger_s(self) -> float:
        """Store time after the last advertisement for exit and visit timeouts to run out."""
        p = self.presence
        return (p.exit_timeout + p.visit_timeout + 2 * p.tick).total_seconds()


def peak_rate(heard: list[Heard], speed: float) -> int:
    """Updates in the busiest second of real time the plan would need."""
    per_second = Counter(int(h.t / speed) for h in heard)
    return max(per_second.values(), default=0)


def adapter_names(scanners: list[str]) -> dict[str, str]:
    """One mocked adapter per store scanner, in the store's order: hci0, hci1..."""
    return {scanner: f"hci{i}" for i, scanner in enumerate(scanners)}


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, timedelta):
        return repr(value.total_seconds())
    if isinstance(value, Path):
        return json.dumps(str(value.resolve()))
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def presence_lines(presence: PresenceSettings) -> list[str]:
    """The ``[presence]`` table of the daemon's config: every setting of ``presence`` (the
    run's ``--config``), so the daemon places shoppers as the in-process run would: its
    method and floor plan (an absolute path), thresholds, per-zone thresholds."""
    lines = ["[presence]"]
    zones = []
    for name, value in presence:
        if name == "zones":
            for zone, own in value.items():
                zones.append(f"[presence.zones.{json.dumps(zone)}]")
                zones += [f"{k} = {_toml_value(v)}" for k, v in own if v is not None]
        elif value is not None:
            lines.append(f"{name} = {_toml_value(value)}")
    return lines + zones


def daemon_config(
    plan: LivePlan,
    broker: str,
    adapters: dict[str, str],
    key: str,
    app_uuids: list[str],
    anonymous_uuids: list[str],
    readers: list[str] | None = None,
) -> str:
    """The ``proximity run`` config of one live run (TOML; strings written as JSON,
    which TOML's basic strings read the same). ``readers``: the store's readers' lines
    (:meth:`firmware_sim.checkout.Readers.config`), if shoppers act at them."""
    q = json.dumps
    adapter_map = ", ".join(f"{q(s)} = {q(a)}" for s, a in adapters.items())
    ble = [
        'backend = "bleak"',
        'mode = "active"',
        # the watchdog would restart a scan each time the store is empty (between
        # shoppers, after the last one): a restart proves nothing against a mock
        'silence = "24h"',
        f"adapters = {{ {adapter_map} }}",
    ]
    return run_config("bluez", plan, broker, ble, key, app_uuids, anonymous_uuids, readers)


def run_config(
    via: str,
    plan: LivePlan,
    broker: str,
    ble: list[str],
    key: str,
    app_uuids: list[str],
    anonymous_uuids: list[str],
    readers: list[str] | None = None,
    tail: list[str] | None = None,
) -> str:
    """A live run's ``proximity run`` config around its ``[ble]`` lines (``ble``) and
    whatever tables come last (``tail``)."""
    q = json.dumps
    return "\n".join(
        [
            f"# Written by `python -m firmware_sim run --via {via}` for one run.",
            "[store]",
            f"id = {q(plan.store_id)}",
            'gateway = "gw-sim"',
            "[broker]",
            f"url = {q(broker)}",
            "[ble]",
            *ble,
            "[ble.sim]",
            f"speed = {plan.speed!r}",
            "[identity]",
            f"app_uuids = [{', '.join(q(u) for u in app_uuids)}]",
            f"anonymous_uuids = [{', '.join(q(u) for u in anonymous_uuids)}]",
            f"pseudonym_key = {q(key)}",
            *presence_lines(plan.presence),
            "[rules]",
            f"paths = [{', '.join(q(str(r.resolve())) for r in plan.rules)}]",
            "watch = false",
            "[measurement]",
            f"store = {q(FUNNEL_FILE)}",
            *(readers or []),
            "[metrics]",
            "enabled = true",
            'host = "127.0.0.1"',
            "port = 0",
            "[logging]",
            'level = "info"',
            'format = "json"',
            *(tail or []),
            "",
        ]
    )


def read_funnel(path: Path) -> dict[str, dict[str, int]]:
    """The funnel the daemon recorded (``[measurement] store``): rule -> stage -> count."""
    store = MeasurementStore(path)
    try:
        rows = store.funnel()
    finally:
        store.close()
    return {
        f"{row.rule}/{row.variant}" if row.variant else row.rule: dict(sorted(row.stages.items()))
        for row in rows
    }


class _DaemonLog:
    """The daemon's JSON log lines, read as the file grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self.lines: list[dict[str, Any]] = []

    def read(self) -> list[dict[str, Any]]:
        with self.path.open("rb") as f:
            f.seek(self._offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self._offset += end
        new = []
        for raw in chunk[:end].splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(raw)
                if isinstance(entry, dict):
                    new.append(entry)
        self.lines.extend(new)
        return new

    def find(self, event: str) -> dict[str, Any] | None:
        return next((x for x in self.lines if x.get("event") == event), None)

    def tail(self, n: int = 20) -> str:
        text = self.path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-n:])


def _http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our loopback
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def ble_metrics(text: str) -> dict[str, Any]:
    """The BLE figures of a /metrics page: what the daemon made of the advertisements it
    heard (sightings, telemetry frames, others by outcome), and its scanners' health."""
    out: dict[str, Any] = {
        "sightings": 0,
        "telemetry": 0,
        "not_used": {},
        "scanner_restarts": 0,
        "scanner_errors": {},
    }
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            value = int(sample.value)
            if sample.name == "proximity_readings_total" and labels.get("adapter") == "ble":
                if labels.get("outcome") == "accepted":
                    out["sightings"] = value
                elif value:
                    out["not_used"][f"{labels['outcome']}:{labels['reason']}"] = value
            elif sample.name == "proximity_ble_telemetry_total":
                out["telemetry"] += value
            elif sample.name == "proximity_ble_scanner_restarts_total":
                out["scanner_restarts"] = value
            elif sample.name == "proximity_ble_scanner_errors_total":
                out["scanner_errors"][labels["error"]] = value
    out["heard"] = out["sightings"] + out["telemetry"] + sum(out["not_used"].values())
    return out


def act_metrics(text: str) -> dict[str, Any]:
    """What the daemon counted of the till's taps and scans on a /metrics page: acts by
    kind, codes refused by reason, and every journey event by kind."""
    out: dict[str, dict[str, int]] = {"acts": {}, "codes_refused": {}, "journey_events": {}}
    names = {
        "proximity_acts_total": ("acts", "kind"),
        "proximity_codes_refused_total": ("codes_refused", "reason"),
        "proximity_journey_events_total": ("journey_events", "kind"),
    }
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in names:
                key, label = names[sample.name]
                out[key][sample.labels[label]] = int(sample.value)
    return dict(out)


class LiveRun:
    """One live run; :meth:`run` sets everything up, plays, and tears everything down."""

    def __init__(self, plan: LivePlan, out: TextIO) -> None:
        self.plan = plan
        self.out = out
        crowd = plan.crowd
        self.scanners = [s.id for s in crowd.store.scanners]
        self.adapters = adapter_names(self.scanners)
        self.key = secrets.token_hex(32)
        uuids = sorted({str(s.phone.uuid) for s in crowd.shoppers.values()})
        self.app_uuids = uuids or [str(DEMO_APP_UUID)]
        # carts are anonymous presence, as the in-process run sees them
        has_carts = any(s.cart is not None for s in crowd.shoppers.values())
        self.anonymous_uuids = [str(CART_UUID)] if has_carts else []
        resolver = IdentityResolver(
            [s.phone.uuid for s in crowd.shoppers.values()], self.key.encode()
        )
        self.tokens = {
            i: resolver.token_for(s.phone.uuid, s.phone.major, s.phone.install)
            for i, s in crowd.shoppers.items()
        }
        self.shopper_of = {token: i for i, token in self.tokens.items()}
        self.heard = list(crowd.heard())
        self.acts = sorted(plan.acts)
        """The acts played, in time order: the plan the in-process run plays."""
        acted = {act.reader for act in self.acts}
        self.readers: list[LiveReader] = store_readers(crowd.store) if acted else []
        """The store's readers the daemon is given (all of them, when anybody acts)."""
        unknown = acted - {r.id for r in self.readers}
        if unknown:
            raise LiveError(f"acts at readers the store file does not have: {sorted(unknown)}")
        self.code_key = secrets.token_bytes(32)
        codes = CodeSettings(
            keys={CODE_KEY_ID: SecretStr("hex:" + self.code_key.hex())}, sign_with=CODE_KEY_ID
        )
        # tag UIDs are the emulated tags' own (phone_idm, cart_idm); the player's are unused
        self.player = ActPlayer(
            crowd.store, crowd.shoppers, self.tokens, codes, secrets.token_bytes(32)
        )
        self._clock: DaemonTime | None = None
        self.result = LiveResult(
            plan.label,
            plan.speed,
            dict(self.adapters),
            len(crowd.shoppers),
            peak_updates_per_s=peak_rate(self.heard, plan.speed),
        )
        self._t0 = time.monotonic()
        self._arrived = asyncio.Event()
        self._acted = asyncio.Event()

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _check_rate(self) -> None:
        """Refuse a plan faster than what carries it to the daemon can keep up with."""
        if self.result.peak_updates_per_s > MAX_UPDATES_PER_S:
            raise LiveError(
                f"{self.plan.label} at {self.plan.speed:g}x needs "
                f"{self.result.peak_updates_per_s:,} advertisement updates in its busiest "
                f"second; the mocked BlueZ keeps up with {MAX_UPDATES_PER_S:,}: lower --speed "
                "or --shoppers"
            )

    async def run(self) -> LiveResult:
        self._check_rate()
        if not self.heard:
            raise LiveError(f"{self.plan.label}: no scanner hears anything, nothing to play")
        started = time.perf_counter()
        with contextlib.ExitStack() as stack:
            workdir = self.plan.workdir
            if workdir is None:
                workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fwsim-")))
            workdir.mkdir(parents=True, exist_ok=True)
            async with contextlib.AsyncExitStack() as astack:
                await self._run(workdir, stack, astack)
        self.result.wall_s = time.perf_counter() - started
        return self.result

    async def _run(
        self, workdir: Path, stack: contextlib.ExitStack, astack: contextlib.AsyncExitStack
    ) -> None:
        binary = find_dbus_daemon()
        if binary is None:
            raise LiveError("dbus-daemon is not installed (apt-get install dbus, or make test)")
        bus = PrivateBus(binary, workdir)
        bus.start()
        stack.callback(bus.stop)
        with _system_bus(bus.address):
            bluez = MockBlueZ(bus, workdir)
            bluez.start()
        stack.callback(bluez.stop)
        devices = self._populate(bluez)
        self.say(
            f"mocked BlueZ on a private D-Bus: {len(self.adapters)} adapters "
            f"({', '.join(f'{s}={a}' for s, a in self.adapters.items())}), "
            f"{len({address for address, _ in devices})} devices (phones, carts, beacons)"
        )

        broker = self.plan.broker or self._start_mosquitto(workdir, stack)
        url = BrokerUrl.parse(broker)
        readers = self._open_readers(stack)

        config = workdir / "proximity.toml"
        config.write_text(
            daemon_config(
                self.plan,
                broker,
                self.adapters,
                self.key,
                self.app_uuids,
                self.anonymous_uuids,
                readers.config() if readers is not None else None,
            ),
            encoding="utf-8",
        )
        funnel = workdir / FUNNEL_FILE
        funnel.unlink(missing_ok=True)  # a kept --workdir: this run's funnel only
        log = _DaemonLog(workdir / "proximity.log")
        log_file = stack.enter_context(log.path.open("wb"))
        self._clock = DaemonTime(datetime.now(UTC), time.monotonic(), self.plan.speed)
        daemon = self._start_daemon(config, bus.address, log_file, workdir)
        stack.callback(stop_process, daemon, STOP_TIMEOUT_S)
        metrics_url = await self._wait_ready(daemon, log)
        self.say(f"proximity run (pid {daemon.pid}) ready: bleak backend, metrics {metrics_url}")

        feed = await astack.enter_async_context(JourneyFeed(url, self.plan.store_id))
        apps = await self._open_apps(url, astack)
        listening = [asyncio.create_task(self._read_offers(i, app)) for i, app in apps.items()]
        listening.append(asyncio.create_task(self._watch_acts(feed)))
        astack.push_async_callback(_cancel, listening)
        # dbus-python blocks: its calls run on one thread of their own, off the event loop
        radio = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="bluez-air"))
        self._t0 = time.monotonic()
        serving: list[asyncio.Task[None]] = []
        if readers is not None:
            # pyserial and nfcpy block: each reader works on a thread of its own, one act
            # at a time (stopping waits for a tag on a pad, HOLD_S at most)
            for stats in self.result.readers:
                worker = stack.enter_context(
                    ThreadPoolExecutor(1, thread_name_prefix=f"reader-{stats.id}")
                )
                serving.append(asyncio.create_task(self._serve(readers, stats, worker)))
            astack.push_async_callback(_cancel, serving)
        await self._play(bluez, devices, radio)

        linger = self.plan.linger_s
        self.say(f"all played: {linger:g} s of store time for exit and visit timeouts to run out")
        await asyncio.sleep(linger / self.plan.speed)
        for task in serving:  # done unless a phone is still on the pad: seconds at most
            await task

        status, body = await asyncio.to_thread(_http_get, metrics_url)
        if status == 200:
            self.result.daemon.update(ble_metrics(body.decode()))
            self.result.daemon.update(act_metrics(body.decode()))
        code = await asyncio.to_thread(stop_process, daemon, STOP_TIMEOUT_S)
        log.read()
        self._daemon_summary(log, code)
        if funnel.exists():
            self.result.funnel = read_funnel(funnel)
        await self._collect_stragglers()
        if code != 0:
            raise LiveError(f"proximity run exited with {code}:\n{log.tail()}")

    # -- setting up -------------------------------------------------------------------------

    def _populate(self, bluez: MockBlueZ) -> Devices:
        """Every adapter, and every device it will hear already known to it (added before
        the daemon scans: a device added during a scan is reported at once, with the
        template's badly typed advertising data)."""
        devices: Devices = {}
        for scanner, adapter in self.adapters.items():
            bluez.add_adapter(adapter, f"firmware-sim {scanner}")
        for h in self.heard:
            if (h.source.address, h.scanner) not in devices:
                path = bluez.add_device(self.adapters[h.scanner], h.source.address, "sim")
                devices[h.source.address, h.scanner] = path
        return devices

    def _start_mosquitto(self, workdir: Path, stack: contextlib.ExitStack) -> str:
        from firmware_sim.mosquitto import Mosquitto, find_mosquitto

        binary = find_mosquitto()
        if binary is None:
            raise LiveError(
                "mosquitto is not installed: apt-get install mosquitto (make test does), "
                "or give --broker mqtt://host:port"
            )
        broker = Mosquitto(binary, workdir)
        broker.start()
        stack.callback(broker.stop)
        self.say(f"mosquitto on {broker.url}")
        return str(broker.url)

    def _open_readers(self, stack: contextlib.ExitStack) -> Readers | None:
        """The store's readers, if shoppers act at them."""
        if not self.acts:
            self.say("no acts planned (--checkins, --redeem): no readers, no taps or scans")
            return None
        readers = Readers(self.readers, self.code_key)
        try:
            readers.open()
        except OSError as exc:
            raise LiveError(f"cannot set up the store's readers: {exc}") from exc
        stack.callback(readers.close)
        for r in self.readers:
            stats = ReaderStats(r.id, str(r.kind), r.role, r.zone, readers.path(r.id))
            self.result.readers.append(stats)
            what = "a code scanner on" if r.kind is ReaderKind.QR else "an NFC pad on"
            self.say(f"reader {r.id} ({r.role}) at {r.zone}: {what} {stats.path}")
        self.say(f"{len(self.acts)} acts to play (the in-process run's plan)")
        return readers

    def _start_daemon(
        self, config: Path, bus: str, log: IO[bytes], workdir: Path
    ) -> subprocess.Popen[bytes]:
        env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": bus}
        argv = [sys.executable, "-m", "proximity", "run", "--config", str(config)]
        return spawn(argv, stdout=log, stderr=log, env=env, cwd=workdir)

    async def _wait_ready(self, daemon: subprocess.Popen[bytes], log: _DaemonLog) -> str:
        """The daemon's /metrics URL, once /readyz says every radio scans and the broker
        is connected."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT_S
        metrics: str | None = None
        while loop.time() < deadline:
            if daemon.poll() is not None:
                raise LiveError(
                    f"proximity run exited with {daemon.returncode} at start:\n{log.tail()}"
                )
            for entry in log.read():
                if entry.get("event") == "metrics_listening":
                    metrics = str(entry["url"])
                elif entry.get("event") == "daemon_starting":
                    self.result.daemon["ble_backend"] = entry.get("ble_backend")
                    self.result.daemon["ble_scanners"] = entry.get("ble_scanners")
                    self.result.daemon["presence"] = entry.get("presence")
            if metrics is not None:
                status, _ = await asyncio.to_thread(
                    _http_get, metrics.removesuffix("/metrics") + "/readyz"
                )
                if status == 200:
                    return metrics
            await asyncio.sleep(0.1)
        raise LiveError(f"proximity run not ready within {READY_TIMEOUT_S:g}s:\n{log.tail()}")

    async def _open_apps(
        self, url: BrokerUrl, astack: contextlib.AsyncExitStack
    ) -> dict[int, ShopperApp]:
        """The store app of each shopper who consented (only they get personal offers)."""
        apps: dict[int, ShopperApp] = {}
        for index, shopper in self.plan.crowd.shoppers.items():
            if not shopper.phone.consent:
                continue
            app = ShopperApp(url, store=self.plan.store_id, token=self.tokens[index])
            apps[index] = await astack.enter_async_context(app)
        self.say(f"{len(apps)} shopper apps subscribed to their offers")
        return apps

    # -- playing ----------------------------------------------------------------------------

    def _now_s(self) -> float:
        """Store seconds since playback started."""
        return (time.monotonic() - self._t0) * self.plan.speed

    async def _until(self, at_s: float) -> None:
        """Wait until ``at_s`` store seconds into the run."""
        wait = (at_s - self._now_s()) / self.plan.speed
        if wait > 0:
            await asyncio.sleep(wait)

    async def _play(self, bluez: MockBlueZ, devices: Devices, radio: ThreadPoolExecutor) -> None:
        """Play every advertisement at its time from ``self._t0`` (set by the caller, so
        the till keeps the same time)."""
        plan, heard = self.plan, self.heard
        span = heard[-1].t
        self.say(
            f"playing {plan.label}: {span:.0f} s of store time at {plan.speed:g}x "
            f"({span / plan.speed:.1f} s), {len(heard):,} advertisement updates, "
            f"busiest second {self.result.peak_updates_per_s:,}/s"
        )
        loop = asyncio.get_running_loop()
        next_progress = PROGRESS_EVERY_S
        i = 0
        while i < len(heard):
            due = heard[i].t
            wait = (due - self._now_s()) / plan.speed
            if wait > 0:
                await asyncio.sleep(wait)
            now = self._now_s()
            self.result.max_lag_s = max(self.result.max_lag_s, (now - due) / plan.speed)
            horizon = now + BATCH_WINDOW_S * plan.speed
            batch: list[Update] = []
            while i < len(heard) and heard[i].t <= horizon:
                h = heard[i]
                path = devices[h.source.address, h.scanner]
                key, payload = h.frame
                batch.append(
                    Update(path, h.rssi, {key: payload})
                    if isinstance(key, int)
                    else Update(path, h.rssi, service_data={key: payload})
                )
                i += 1
            await loop.run_in_executor(radio, bluez.advertise_many, batch)
            self.result.advertisements_sent += len(batch)
            self.result.dbus_calls += 1
            if now / plan.speed >= next_progress:
                next_progress += PROGRESS_EVERY_S
                self.say(
                    f"  {now:.0f} s of store time: {self.result.advertisements_sent:,} "
                    f"updates sent, {len(self.result.offers)} offers received"
                )

    async def _serve(
        self, readers: Readers, stats: ReaderStats, worker: ThreadPoolExecutor
    ) -> None:
        """The acts planned at one reader, in turn, each at its store second (or as soon
        as the reader is free): what the player makes of each, scanned or tapped."""
        loop = asyncio.get_running_loop()
        clock = self._clock
        assert clock is not None
        for act in (a for a in self.acts if a.reader == stats.id):
            await self._until(act.t)
            stats.max_late_s = max(stats.max_late_s, self._now_s() - act.t)
            stats.acts += 1
            latest = clock.latest()
            valid = (clock.earliest(), latest + CODE_LIFETIME)
            coupons = self.player.counts.coupons
            readings = self.player.readings(act, latest, valid)
            stats.coupons += self.player.counts.coupons - coupons
            for reading in readings:
                try:
                    if isinstance(reading, NfcTap):
                        assert reading.ndef is not None
                        ndef = build_ndef(reading.ndef.records)
                        idm = self._idm(act)
                        stats.taps += 1
                        read = await loop.run_in_executor(worker, readers.tap, stats.id, ndef, idm)
                        stats.taps_read += read
                        await asyncio.sleep(SETTLE_S)  # the reader notices the tag left
                    else:
                        await loop.run_in_executor(worker, readers.scan, stats.id, reading.text)
                        stats.scans += 1
                        read = True
                except TillError as exc:
                    raise LiveError(str(exc)) from exc
                how = "scanned" if not isinstance(reading, NfcTap) else "tapped"
                outcome = "" if read else " (not read in time)"
                self.say(
                    f"  {stats.id} at {self._now_s():.0f} s: shopper {act.shopper}'s "
                    f"{act.kind} code {how}{outcome}"
                )

    def _idm(self, act: PlannedAct) -> bytes:
        """The NFC identifier of what ``act`` holds on a pad: the cart's tag, or the phone."""
        cart = self.plan.crowd.shoppers[act.shopper].cart
        if act.kind is ActKind.CART and cart is not None:
            return cart_idm(cart.number)
        return phone_idm(act.shopper)

    async def _watch_acts(self, feed: JourneyFeed) -> None:
        async for event in feed.events():
            if event.kind in ACTS:
                self._act(event)

    def _act(self, event: JourneyEvent) -> None:
        at_s = self._now_s()
        self.result.acts[str(event.kind)] += 1
        self._acted.set()
        shopper = self.shopper_of.get(event.shopper.token)
        who = "an anonymous shopper" if shopper is None else f"shopper {shopper}"
        where = f"{event.reader} ({event.zone})" if event.zone else str(event.reader)
        if event.kind is EventKind.OFFER_REDEEMED:
            rule = next((o.rule for o in self.result.offers if o.offer_id == event.offer), None)
            self.result.redeemed.append(Redeemed(shopper, at_s, rule, event.reader))
            self.say(f"  act at {at_s:.0f} s: {who} redeemed {rule or event.offer} at {where}")
        elif event.kind is EventKind.NFC_TAP:
            self.say(f"  act at {at_s:.0f} s: {who} tapped at {where}")
        else:
            self.say(f"  act at {at_s:.0f} s: {event.kind} by {who} at {where}")

    async def _read_offers(self, shopper: int, app: ShopperApp) -> None:
        async for received in app.offers():
            self._received(shopper, received)

    def _received(self, shopper: int, received: ReceivedOffer) -> None:
        offer = received.offer
        got = Received(
            shopper,
            self._now_s(),
            offer.rule,
            str(offer.moment),
            offer.zone,
            offer.cta.title,
            offer.id,
            offer.redeem_code,
        )
        self.result.offers.append(got)
        self.player.hold(self.tokens[shopper], offer)
        self._arrived.set()
        where = f" in {got.zone}" if got.zone else ""
        self.say(
            f"  offer at {got.at_s:.0f} s → shopper {shopper}{where}: {got.rule} "
            f"({got.moment}) “{got.title}”"
        )

    async def _collect_stragglers(self) -> None:
        """Let offers and acts the daemon published reach the apps and the watcher (the
        broker may still be sending)."""
        published = int(self.result.daemon.get("offers_published") or 0)
        acts = sum((self.result.daemon.get("acts") or {}).values())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3.0):
                while len(self.result.offers) < published:
                    self._arrived.clear()
                    await self._arrived.wait()
                while sum(self.result.acts.values()) < acts:
                    self._acted.clear()
                    await self._acted.wait()

    def _daemon_summary(self, log: _DaemonLog, code: int | None) -> None:
        self.result.daemon["exit_code"] = code
        stopped = log.find("daemon_stopped")
        if stopped is not None:
            for key in ("events", "offers_published", "offers_waiting", "publish_failures"):
                self.result.daemon[key] = stopped.get(key)


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.contextmanager
def _system_bus(address: str) -> Iterator[None]:
    """``DBUS_SYSTEM_BUS_ADDRESS`` set while dbusmock starts (it reads it), then restored."""
    before = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = address
    try:
        yield
    finally:
        if before is None:
            del os.environ["DBUS_SYSTEM_BUS_ADDRESS"]
        else:
            os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = before


def run_live(plan: LivePlan, out: TextIO) -> LiveResult:
    """Run ``plan`` to the end; Ctrl-C or SIGTERM stop it cleanly (KeyboardInterrupt)."""

    async def main() -> LiveResult:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await LiveRun(plan, out).run()
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None


def print_summary(result: LiveResult, out: TextIO) -> None:
    d = result.daemon
    print(
        f"{result.label} via the mocked BlueZ: {result.shoppers} shoppers at "
        f"{result.speed:g}x, {result.wall_s:.1f} s",
        file=out,
    )
    print(
        f"  played {result.advertisements_sent:,} advertisement updates in "
        f"{result.dbus_calls:,} D-Bus calls (busiest second {result.peak_updates_per_s:,}/s, "
        f"worst lag {result.max_lag_s * 1000:.0f} ms)",
        file=out,
    )
    scanners = ", ".join(d.get("ble_scanners") or [])
    print(
        f"  proximity run ({d.get('ble_backend')} backend; scanners {scanners}; presence "
        f"{d.get('presence')}): "
        f"heard {d.get('heard', '?')} advertisements ({d.get('sightings', '?')} sightings, "
        f"{d.get('telemetry', '?')} telemetry), {d.get('events', '?')} journey events, "
        f"{d.get('offers_published', '?')} offers published; scanner restarts "
        f"{d.get('scanner_restarts', '?')}, errors {d.get('scanner_errors') or 'none'}",
        file=out,
    )
    rules = Counter(o.rule for o in result.offers)
    listed = ", ".join(f"{rule} {n}" for rule, n in sorted(rules.items())) or "none"
    print(f"  offers received by the shopper apps: {len(result.offers)} ({listed})", file=out)
    if not result.readers:
        return
    for r in result.readers:
        late = f", up to {r.max_late_s:.0f} s late" if r.max_late_s >= 1 else ""
        print(
            f"  at {r.id} ({r.role}, {r.zone}): {r.acts} acts{late}; {r.scans} codes "
            f"scanned, {r.taps_read} of {r.taps} tags read on the NFC pad, "
            f"{r.coupons} coupons shown",
            file=out,
        )
    acts = d.get("acts") or {}
    refused = d.get("codes_refused") or {}
    print(
        f"  the daemon's acts: {_counts(acts)} (on the broker: {_counts(result.acts)}); "
        f"codes refused: {_counts(refused)}",
        file=out,
    )
    redeemed = {rule: stages.get("redeemed", 0) for rule, stages in result.funnel.items()}
    published = {rule: stages.get("published", 0) for rule, stages in result.funnel.items()}
    coupons = ", ".join(
        f"{rule} {redeemed[rule]} of {published[rule]}"
        for rule in sorted(result.funnel)
        if redeemed[rule] or any(o.rule == rule and o.redeem_code for o in result.offers)
    )
    print(
        f"  redemptions in the daemon's funnel: {sum(redeemed.values())} "
        f"({coupons or 'no coupon offers'})",
        file=out,
    )


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{key} {n}" for key, n in sorted(counts.items()) if n) or "none"
