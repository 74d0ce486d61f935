"""The chain drill: stores trade through a central broker outage, then an hq outage, and
PostgreSQL ends up with exactly the facts the gateways recorded — none lost, none twice.

    python -m bench.chain_drill [--stores 3] [--outage 30] [--shoppers 100] [--speed 60]

Real parts: one central mosquitto (the shipped deploy/mosquitto/chain.acl), one mosquitto
per store bridged to it with the shipped deploy/mosquitto/bridge.conf, one
``proximity run`` per store (a simulated crowd on an accelerated clock, ``[chain]
enabled``), ``proximity hq`` (in process) writing into a private PostgreSQL. The drill:

    trade (warm-up) -> central broker down N s -> back -> hq down N s -> back -> trade
    -> every gateway stopped (SIGTERM) -> what a gateway had not got acknowledged by then
    goes up as it would after a restart -> PostgreSQL compared with each measurement file

The table and bench/out/chain_drill.json report, per run: facts recorded by the
gateways, facts in PostgreSQL, lost, counted twice, the most batches a store held
unacknowledged, the batches sent again, and how long the stores took to catch up
after hq came back. tests/test_chain_drill.py runs the same with N = 5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg

from bench.report import Row, write
from proximity.chain.hq import Hq
from proximity.chain.hqconfig import HqSettings
from proximity.chain.uplink import ChainUplink
from proximity.clock import SystemClock
from proximity.config import ChainSettings
from proximity.measurement.store import MeasurementStore, group_facts
from tests.chain_brokers import PASSWORD, Chain, Client, chain_brokers

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules" / "example-store.toml"
Key = tuple[str, str, str, str, str, str, str]
"""store, minute, rule, variant, arm, stage, reason."""


@dataclass
class DrillResult:
    stores: int
    outage_s: float
    recorded: Counter[Key]
    in_database: Counter[Key]
    batches: int
    max_pending: int
    resent: int
    catch_up_s: float | None
    timeline: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return (self.recorded - self.in_database).total()

    @property
    def doubled(self) -> int:
        return (self.in_database - self.recorded).total()


def recorded_facts(store: str, path: Path) -> Counter[Key]:
    """The facts of a gateway's measurement file, counted per batch key."""
    measure = MeasurementStore(path)
    try:
        assert measure._db is not None
        rows = measure._db.query("SELECT at, stage, rule, variant, reason FROM facts")
    finally:
        measure.close()
    out: Counter[Key] = Counter()
    for row in group_facts(tuple(r) for r in rows):
        key = (store, str(row["minute"]), str(row["rule"]), str(row["variant"]))
        out[(*key, str(row["arm"]), str(row["stage"]), str(row["reason"]))] += int(row["count"])
    return out


def database_facts(dsn: str) -> tuple[Counter[Key], int]:
    """PostgreSQL's facts per key, and how many batches it holds."""
    out: Counter[Key] = Counter()
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT store, minute, rule, variant, arm, stage, reason, sum(count) FROM facts"
            " GROUP BY store, minute, rule, variant, arm, stage, reason"
        ).fetchall()
        batches = conn.execute("SELECT count(*) FROM batches").fetchone()
    for store, minute, rule, variant, arm, stage, reason, count in rows:
        at = minute.astimezone(UTC).isoformat()
        out[(store, at, rule, variant, arm, stage, reason)] += int(count)
    return out, int(batches[0]) if batches else 0


def gateway_config(
    workdir: Path, store: str, port: int, shoppers: int, speed: float, arrivals_s: float
) -> Path:
    """A store's `proximity run` config: its rules (the example's, for this store), a
    simulated crowd arriving over ``arrivals_s`` real seconds, [chain] enabled."""
    folder = workdir / f"gw-{store}"
    folder.mkdir()
    rules = RULES.read_text().replace('id = "store-001"', f'id = "{store}"', 1)
    (folder / "rules.toml").write_text(rules)
    config = folder / "config.toml"
    config.write_text(
        f'[store]\nid = "{store}"\ngateway = "gw-1"\n'
        f'[broker]\nurl = "mqtt://127.0.0.1:{port}"\n'
        '[rules]\npaths = ["rules.toml"]\nwatch = false\n'
        f'[ble.sim]\nscenario = "crowded"\nshoppers = {shoppers}\nspeed = {speed}\n'
        f'seed = {sum(map(ord, store))}\narrival_window = "{int(arrivals_s * speed)}s"\n'
        '[measurement]\nstore = "funnel.sqlite"\n[delivery]\noutbox = "outbox.sqlite"\n'
        '[chain]\nenabled = true\nseal_every = "20s"\nresend_after = "3m"\n'
        'status_interval = "30s"\n'
        '[metrics]\nenabled = false\n[logging]\nformat = "json"\nlevel = "warning"\n'
    )
    return config


def _run(config: Path) -> subprocess.Popen[bytes]:
    """``proximity run --config CONFIG`` in its folder, its output in run.log there."""
    with (config.parent / "run.log").open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "proximity", "run", "--config", str(config)],
            cwd=config.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )


class Gateways:
    """One ``proximity run`` per store: real processes (the benchmark), or the same
    service in this process (the test: no interpreter start per store, which takes
    seconds on a busy machine). ``stop()`` is SIGTERM: a graceful stop."""

    def __init__(self, configs: dict[str, Path], in_process: bool = False) -> None:
        self.configs = configs
        self.in_process = in_process
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._tasks: dict[str, asyncio.Task[object]] = {}
        self._stop = asyncio.Event()

    async def __aenter__(self) -> Gateways:
        for store, config in self.configs.items():
            if self.in_process:
                from proximity.config import load_settings
                from proximity.service import serve

                settings = load_settings(config)
                self._tasks[store] = asyncio.create_task(serve(settings, stop=self._stop))
                continue
            self._procs[store] = _run(config)
        return self

    async def stop(self) -> None:
        self._stop.set()
        for proc in self._procs.values():
            proc.send_signal(signal.SIGTERM)
        for store, proc in self._procs.items():
            code = await asyncio.to_thread(proc.wait, 30)
            if code != 0:
                log = (self.configs[store].parent / "run.log").read_text()[-3000:]
                raise RuntimeError(f"{store}'s gateway exited with {code}:\n{log}")
        for task in self._tasks.values():
            await asyncio.wait_for(task, 30)

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for task in self._tasks.values():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def catch_up(store: str, chain: Chain, path: Path, limit_s: float = 30.0) -> int:
    """What a stopped gateway had not got acknowledged goes up as after its restart (the
    same uplink, the same file); returns how many batches were waiting."""
    measure = MeasurementStore(path)
    waiting = measure.pending_summary()[0]
    if not waiting:
        measure.close()
        return 0
    uplink = ChainUplink(
        chain.stores[store].url,
        store=store,
        gateway="gw-1",
        measure=measure,
        clock=SystemClock(),
        settings=ChainSettings(enabled=True, seal_every=0.2, resend_after=1.0),
    )
    await uplink.start()
    try:
        for _ in range(int(limit_s / 0.05)):
            if not measure.pending_summary()[0]:
                break
            await asyncio.sleep(0.05)
    finally:
        await uplink.stop(flush_s=0)
        measure.close()
    return waiting


async def drill(
    workdir: Path,
    dsn: str,
    *,
    stores: int = 3,
    outage_s: float = 5.0,
    shoppers: int = 12,
    speed: float = 100.0,
    settle_s: float = 2.0,
    in_process: bool = False,
    say: Callable[[str], None] = lambda line: None,
) -> DrillResult:
    """The drill (module docstring); ``in_process``: the gateways run as tasks of this
    process (the same service `proximity run` starts) instead of as processes."""
    ids = [f"store-{n:03d}" for n in range(1, stores + 1)]
    started = time.monotonic()
    timeline: list[str] = []

    def mark(what: str) -> None:
        line = f"{time.monotonic() - started:6.1f}s  {what}"
        timeline.append(line)
        say(line)

    with chain_brokers(workdir, ids) as chain:
        central = chain.central
        hq_settings = HqSettings.model_validate(
            {
                "hq": {
                    "broker": f"mqtt://127.0.0.1:{central.port}",
                    "database": dsn,
                    "metrics_port": 0,
                    "flush_every": "50ms",
                    "username": "hq",
                    "password": PASSWORD,
                }
            }
        )
        arrivals_s = 1.5 + 3 * settle_s + 2 * outage_s  # shoppers come all along the drill
        configs = {
            s: gateway_config(workdir, s, chain.stores[s].port, shoppers, speed, arrivals_s)
            for s in ids
        }
        # a persistent session: it hears what the stores said while the central broker was away
        watch = Client(central.port, "proximity/v1/+/up/#", username="observer", session="drill")
        statuses: list[tuple[float, str, int]] = []

        batches_seen: Counter[tuple[str, int]] = Counter()

        def on_status(_: object, __: object, message: mqtt.MQTTMessage) -> None:
            payload = json.loads(message.payload)
            if message.topic.endswith("/up/facts"):
                batches_seen[(payload["store"], payload["seq"])] += 1
            elif message.topic.endswith("/up/status"):
                pending = payload["uplink_pending"]
                statuses.append((time.monotonic(), payload["store"], pending))

        watch.client.on_message = on_status
        first = Hq(hq_settings, serve_metrics=False)
        await first.__aenter__()
        hq: Hq | None = first
        mark("hq up; gateways starting")
        try:
            async with Gateways(configs, in_process) as running:
                for _ in range(1200):  # each gateway's first status: it is up and trading
                    if {store for _, store, _ in statuses} == set(ids):
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise RuntimeError("the gateways did not report within 60 s")
                mark("every gateway up")
                await asyncio.sleep(settle_s)
                mark("central broker down")
                central.stop()
                await asyncio.sleep(outage_s)
                central.start()
                mark("central broker back")
                await asyncio.sleep(settle_s)
                mark("hq down")
                hq = None
                await first.close()
                await asyncio.sleep(outage_s)
                second = Hq(hq_settings, serve_metrics=False)
                await second.__aenter__()
                hq = second
                hq_back = time.monotonic()
                mark("hq back")
                await asyncio.sleep(settle_s)
                mark("gateways stopping (SIGTERM)")
                await running.stop()
            mark("gateways stopped")
            left = [await catch_up(s, chain, configs[s].parent / "funnel.sqlite") for s in ids]
            mark(f"batches left at stop, sent after: {left}")
        finally:
            if hq is not None:
                await hq.close()
            watch.close()
    recorded: Counter[Key] = Counter()
    for s in ids:
        recorded += recorded_facts(s, configs[s].parent / "funnel.sqlite")
    in_database, batches = database_facts(dsn)
    resent = batches_seen.total() - len(batches_seen)  # reached the centre more than once
    caught: dict[str, float] = {}
    for at, store, pending in statuses:
        if at > hq_back and pending <= 1 and store not in caught:
            caught[store] = at - hq_back
    return DrillResult(
        stores=stores,
        outage_s=outage_s,
        recorded=recorded,
        in_database=in_database,
        batches=batches,
        max_pending=max((p for _, _, p in statuses), default=0),
        resent=resent,
        catch_up_s=max(caught.values()) if len(caught) == stores else None,
        timeline=timeline,
    )


def rows(result: DrillResult) -> list[Row]:
    """The drill's figures; each row's case says what it counts and under what outage."""
    where = f"{result.stores} stores, central then hq down {result.outage_s:g} s"
    figures: list[tuple[str, str, float, bool]] = [
        ("facts recorded by the gateways", "facts", result.recorded.total(), True),
        ("facts in PostgreSQL", "facts", result.in_database.total(), True),
        ("facts lost", "facts", result.lost, False),
        ("facts counted twice", "facts", result.doubled, False),
        ("batches committed", "batches", result.batches, True),
        ("most batches a store held unacknowledged", "batches", result.max_pending, False),
        ("batch copies at the centre again (re-sends)", "msgs", result.resent, False),
    ]
    if result.catch_up_s is not None:
        figures.append(
            ("hq back -> every store <= 1 batch waiting", "s", round(result.catch_up_s, 2), False)
        )
    return [
        Row(f"{what} ({where})", what, unit, value, higher_is_better=higher)
        for what, unit, value, higher in figures
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.chain_drill", description=__doc__)
    parser.add_argument("--stores", type=int, default=3)
    parser.add_argument("--outage", type=float, default=30.0, help="seconds each is down")
    parser.add_argument("--shoppers", type=int, default=100, help="per store")
    parser.add_argument("--speed", type=float, default=60.0, help="the stores' clock speed")
    args = parser.parse_args(argv if argv is not None else [])
    from tests.postgres import PostgresCluster, find_pg_bin

    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise SystemExit("PostgreSQL is not installed: run `make setup` (postgresql-15)")
    cluster = PostgresCluster(bin_dir)
    cluster.start()
    try:
        with tempfile.TemporaryDirectory(prefix="chain-drill-") as folder:
            result = asyncio.run(
                drill(
                    Path(folder),
                    cluster.dsn,
                    stores=args.stores,
                    outage_s=args.outage,
                    shoppers=args.shoppers,
                    speed=args.speed,
                    settle_s=5.0,
                    say=print,
                )
            )
    finally:
        cluster.stop()
    write("chain_drill", rows(result))
    if result.lost or result.doubled:
        raise SystemExit(f"the drill lost {result.lost} and doubled {result.doubled} facts")


if __name__ == "__main__":
    main(sys.argv[1:])
