"""The chain's central tier: facts rows per second into PostgreSQL through proximity hq,
and the chain report's query time over a month of a 500-store chain.

Ingest: a publisher process (pinned to the other core) sends realistic facts batches
(one a minute per store: every rule × stage that happened, about a dozen rows) for 500
store ids, QoS 1, as fast as it can, through a real mosquitto to
:class:`~proximity.chain.hq.Hq` (this process, pinned to one core) on a private
PostgreSQL (fsync off, as in the tests). The rate is fact rows committed (and acked)
per second, from the first publish to the last commit. The ceiling: the same rows
``COPY``'d straight into an empty ``facts`` table of the same schema (indexes and
partitions alike), in the same run. Issue target: hq at ≥ 0.5× the ceiling.

Report: a month of a 500-store chain's rows is generated in PostgreSQL (3,000,000 by default:
500 stores × 30 days × 200 grouped rows a day, what a store with a few hundred offers
a day makes — a busy store makes more; pass ``--month-rows``), then
:func:`~proximity.chain.report.chain_report` is timed over the whole month, over 10
stores, and over one rule (best of 3), against a bare ``SELECT sum(count)`` over the
same month as the floor. Every row says how busy the processes that did the work were:
hq's and its PostgreSQL backend's for ingest, the backend's for COPY and the queries.

A year, for sizing: 500 stores × 365 days × ~200-1,000 rows a day is 37-180 million
rows, in twelve monthly partitions (proximity/chain/schema/001_chain.sql).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from bench.report import CpuMeter, Row, load_text, one_core, write
from firmware_sim.mosquitto import Mosquitto, find_mosquitto
from proximity.chain.hq import Hq
from proximity.chain.hqconfig import HqSettings
from proximity.chain.pgstore import PgStore, ensure_partitions, month_of, next_month
from proximity.chain.report import chain_report
from proximity.logsetup import configure_logging
from tests.postgres import PostgresCluster, find_pg_bin

STORES = 500
BATCHES_PER_STORE = 20
"""Batches each store sends in the ingest run: 10,000 batches, about 120,000 rows."""
MONTH_ROWS = 3_000_000
TARGET_RATIO = 0.5
TIMEOUT_S = 120.0
RULES = ["welcome", "coffee-2for1", "bakery-morning", "wine-pairing"]
STAGES = [
    ("decided", "treatment"),
    ("published", "treatment"),
    ("delivered", "treatment"),
    ("opened", "treatment"),
    ("clicked", "treatment"),
    ("redeemed", "treatment"),
    ("converted", "treatment"),
    ("held_out", "holdout"),
    ("held_out_converted", "holdout"),
]
COPY_FACTS = (
    "COPY facts (store, gateway, seq, minute, rule, variant, arm, stage, reason, count) FROM STDIN"
)
START = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)


def readme_row(row: dict[str, Any]) -> bool:
    """The rows the README's table shows: both ingest rows and the whole-chain report."""
    case = str(row["case"])
    return case.startswith("hq ingest") or ", all stores " in case


def store_name(i: int) -> str:
    return f"store-{i:03d}"


def batch_rows(rnd: random.Random, minute: datetime) -> list[dict[str, object]]:
    """One store-minute: each rule fires with some stages (about a dozen rows)."""
    rows: list[dict[str, object]] = []
    for rule in rnd.sample(RULES, 2):
        for stage, arm in rnd.sample(STAGES, 6):
            rows.append(
                {
                    "minute": minute.isoformat(),
                    "rule": rule,
                    "variant": rnd.choice(["", "b"]) if arm == "treatment" else "",
                    "arm": arm,
                    "stage": stage,
                    "reason": "",
                    "count": rnd.randrange(1, 20),
                }
            )
    return rows


def messages(stores: int, per_store: int, seed: int = 1) -> list[tuple[str, bytes]]:
    rnd = random.Random(seed)
    out = []
    for seq in range(1, per_store + 1):
        minute = START + timedelta(minutes=seq)
        for i in range(stores):
            store = store_name(i)
            body = {
                "v": 1,
                "store": store,
                "gateway": "gw-1",
                "seq": seq,
                "sealed_at": (minute + timedelta(minutes=1)).isoformat(),
                "rows": batch_rows(rnd, minute),
            }
            out.append((f"proximity/v1/{store}/up/facts", json.dumps(body).encode()))
    return out


def rows_of(payloads: list[tuple[str, bytes]]) -> list[tuple[object, ...]]:
    """The facts rows of ``payloads`` as the COPY ceiling writes them."""
    out: list[tuple[object, ...]] = []
    for _, payload in payloads:
        b = json.loads(payload)
        for r in b["rows"]:
            out.append(
                (
                    b["store"],
                    b["gateway"],
                    b["seq"],
                    r["minute"],
                    r["rule"],
                    r["variant"],
                    r["arm"],
                    r["stage"],
                    r["reason"],
                    r["count"],
                )
            )
    return out


# -- the publisher (a child process) ------------------------------------------------------------


def publish(port: int, stores: int, per_store: int) -> None:
    todo = messages(stores, per_store)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    acked = 0
    done = asyncio.Event()  # only as a flag: set from paho's thread, read below

    def on_publish(*args: object) -> None:
        nonlocal acked
        acked += 1
        if acked == len(todo):
            done.set()

    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    started = time.monotonic()
    for topic, payload in todo:
        client.publish(topic, payload, qos=1)
    deadline = time.monotonic() + TIMEOUT_S
    while not done.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    seconds = time.monotonic() - started
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"messages": len(todo), "seconds": seconds}))


def _child(args: list[str], core: int | None) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.chain", *args], stdout=subprocess.PIPE, text=True
    )
    if core is not None and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(child.pid, {core})
    return child


def _other_core() -> int | None:
    if not hasattr(os, "sched_getaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    return cores[-1] if len(cores) > 1 else None


# -- the measurements ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """A PostgreSQL server the benchmark may create databases on (``bench_chain_*``)."""

    dsn: str
    """Of its maintenance database (a superuser's)."""

    def dsn_for(self, database: str) -> str:
        return self.dsn.rsplit("/", 1)[0] + "/" + database


def _create(server: Server, name: str) -> str:
    name = f"bench_chain_{name}"
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    dsn = server.dsn_for(name)
    store = PgStore(dsn)
    store.migrate()
    store.close()
    return dsn


def _hq_settings(broker: Mosquitto, dsn: str) -> HqSettings:
    return HqSettings.model_validate(
        {
            "hq": {
                "broker": f"mqtt://127.0.0.1:{broker.port}",
                "database": dsn,
                "metrics_port": 0,
                "client_id": "bench-hq",
            }
        }
    )


def _published(child: subprocess.Popen[str]) -> float:
    """The publisher's own rate, messages per second."""
    out, _ = child.communicate(timeout=TIMEOUT_S)
    if child.returncode != 0:
        raise RuntimeError(f"the publisher exited with {child.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    return float(result["messages"]) / float(result["seconds"])


@dataclass(frozen=True)
class Ingest:
    rows_per_s: float
    cpu_share: float | None
    publisher_per_s: float
    backend_share: float | None
    """The CPU share of hq's PostgreSQL backend process."""


async def hq_rate(
    broker: Mosquitto, dsn: str, stores: int, per_store: int, expected_rows: int, backlog: bool
) -> Ingest:
    """Rows per second through hq, from the first message it receives to the last commit.

    ``backlog``: the publisher sends everything while hq is down (its persistent session
    queues it in mosquitto), then hq starts and catches up: hq, mosquitto and PostgreSQL
    without the publisher on the machine. Otherwise the publisher sends while hq runs.
    """
    config = _hq_settings(broker, dsn)
    args = ["--publish", str(broker.port), str(stores), str(per_store)]
    publisher_per_s = 0.0
    if backlog:
        async with Hq(config, serve_metrics=False):
            pass  # the session exists from now on: the broker keeps what comes
        publisher_per_s = await asyncio.to_thread(_published, _child(args, _other_core()))
    meter = CpuMeter()
    async with Hq(config, serve_metrics=False) as hq:
        backend = CpuMeter(hq.db.connect().info.backend_pid)
        child = None if backlog else _child(args, _other_core())
        while not hq.received:
            if child is not None and child.poll() is not None:
                raise RuntimeError("the publisher exited early")
            await asyncio.sleep(0.001)
        started = time.monotonic()
        meter.sample()
        backend.sample()
        deadline = started + TIMEOUT_S
        polls = 0
        while hq.rows_committed < expected_rows and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
            polls += 1
            if polls % 20 == 0:  # reading /proc costs: not at every poll
                meter.sample()
                backend.sample()
        seconds = time.monotonic() - started
        meter.sample()
        backend.sample()
        if child is not None:
            publisher_per_s = await asyncio.to_thread(_published, child)
    if hq.rows_committed < expected_rows:
        raise RuntimeError(f"hq committed {hq.rows_committed} of {expected_rows} rows")
    return Ingest(expected_rows / seconds, meter.share, publisher_per_s, backend.share)


def copy_rate(dsn: str, rows: list[tuple[object, ...]]) -> tuple[float, float | None]:
    """The ceiling: the same rows COPY'd into facts in one transaction; and the CPU share
    of the PostgreSQL backend that took them."""
    with psycopg.connect(dsn) as conn:
        meter = CpuMeter(conn.info.backend_pid)
        months = {month_of(datetime.fromisoformat(str(r[3]))) for r in rows}
        ensure_partitions(conn, months)
        conn.commit()
        meter.sample()
        started = time.monotonic()
        with (
            conn.cursor() as cur,
            cur.copy(COPY_FACTS) as copy,
        ):
            for row in rows:
                copy.write_row(row)
        conn.commit()
        seconds = time.monotonic() - started
        meter.sample()
    return len(rows) / seconds, meter.share


def fill_month(dsn: str, total: int, stores: int) -> None:
    """``total`` facts rows spread over the 30 days of a month of ``stores`` stores,
    generated by PostgreSQL itself (``generate_series``: quicker than any COPY from here)."""
    month = month_of(START)
    with psycopg.connect(dsn) as conn:
        ensure_partitions(conn, {month, next_month(month)})
        conn.execute(
            """
            INSERT INTO facts (store, gateway, seq, minute, rule, variant, arm, stage, reason,
                               count)
            SELECT 'store-' || lpad((n %% %(stores)s)::text, 3, '0'), 'gw-1',
                   n / %(stores)s + 1,
                   %(start)s::timestamptz + ((n * 7919) %% (30 * 1440)) * interval '1 minute',
                   (%(rules)s::text[])[1 + n %% 4], '',
                   CASE WHEN n %% 9 >= 7 THEN 'holdout' ELSE 'treatment' END,
                   (%(stages)s::text[])[1 + n %% 9], '', 1 + n %% 7
            FROM generate_series(0::bigint, %(total)s - 1) AS n
            """,
            {
                "stores": stores,
                "start": datetime.combine(month, datetime.min.time(), UTC),
                "rules": RULES,
                "stages": [stage for stage, _ in STAGES],
                "total": total,
            },
        )
        conn.commit()
        conn.execute("ANALYZE facts")
        conn.commit()


def best_of(times: int, job: object, pid: int | None = None) -> tuple[float, float | None]:
    """The best time of ``times`` runs, and the CPU share of process ``pid`` meanwhile."""
    meter = CpuMeter(pid)
    best = float("inf")
    meter.sample()
    for _ in range(times):
        started = time.perf_counter()
        job()  # type: ignore[operator]
        best = min(best, time.perf_counter() - started)
    meter.sample()
    return best, meter.share


def report_rows(dsn: str, total: int, stores: int) -> list[Row]:
    fill_month(dsn, total, stores)
    since = START.replace(day=1, hour=0)
    ten = [store_name(i) for i in range(10)]
    with psycopg.connect(dsn) as conn:

        def floor() -> None:
            conn.execute("SELECT sum(count) FROM facts WHERE minute >= %s", (since,)).fetchone()

        floor_s, _ = best_of(3, floor)
        out = []
        for case, kwargs in (
            ("all stores", {}),
            ("10 stores", {"stores": ten}),
            ("one rule", {"rule": RULES[0]}),
        ):
            seconds, share = best_of(
                3,
                lambda kwargs=kwargs: chain_report(conn, since=since, **kwargs),
                conn.info.backend_pid,
            )
            out.append(
                Row(
                    f"report --hq over a month ({total:,} rows, {stores} stores), {case} "
                    f"({load_text(share, 'PostgreSQL backend')})",
                    "query time",
                    "ms",
                    round(seconds * 1000, 1),
                    "SELECT sum(count) over the month",
                    round(floor_s * 1000, 1),
                    higher_is_better=False,
                    cpu_share=share,
                )
            )
    return out


def run(stores: int, per_store: int, month_rows: int, server_dsn: str | None = None) -> list[Row]:
    """Every row; on a private PostgreSQL cluster unless ``server_dsn`` names a server."""
    binary = find_mosquitto()
    bin_dir = find_pg_bin()
    if binary is None or (bin_dir is None and server_dsn is None):
        raise SystemExit("bench/chain needs mosquitto and PostgreSQL: run `make test` first")
    with contextlib.ExitStack() as stack:
        if server_dsn is None:
            assert bin_dir is not None
            server = Server(stack.enter_context(PostgresCluster(bin_dir)).dsn)
        else:
            server = Server(server_dsn)
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-chain-"))
        return _run(binary, server, Path(tmp), stores, per_store, month_rows)


def _run(
    binary: str, pg: Server, tmp: Path, stores: int, per_store: int, month_rows: int
) -> list[Row]:
    payloads = messages(stores, per_store)
    rows = rows_of(payloads)
    broker = Mosquitto(binary, tmp)
    broker.start()
    try:
        results = {}
        for backlog in (False, True):
            dsn = _create(pg, "backlog" if backlog else "live")
            with one_core():
                results[backlog] = asyncio.run(
                    hq_rate(broker, dsn, stores, per_store, len(rows), backlog)
                )
            with psycopg.connect(dsn) as conn:
                got = conn.execute("SELECT count(*), count(DISTINCT store) FROM facts").fetchone()
            if got != (len(rows), stores):
                raise RuntimeError(f"hq stored {got}, expected ({len(rows)}, {stores})")
        ceiling_dsn = _create(pg, "ceiling")
        with one_core():
            ceiling, ceiling_share = copy_rate(ceiling_dsn, rows)
    finally:
        broker.stop()
    size = f"{stores} stores × {per_store} batches ({len(rows):,} rows)"
    out = []
    for backlog, text in (
        (False, "while the publisher sends"),
        (True, "a backlog queued while hq was down"),
    ):
        ingest = results[backlog]
        out.append(
            Row(
                f"hq ingest, {text}: {size} through mosquitto, committed and acked "
                f"(publisher {ingest.publisher_per_s * len(rows) / (stores * per_store):,.0f}"
                f" rows/s; {load_text(ingest.cpu_share, 'hq process')}, "
                f"{load_text(ingest.backend_share, 'its PostgreSQL backend')}; "
                f"COPY: {load_text(ceiling_share, 'PostgreSQL backend')})",
                "fact rows per second",
                "1/s",
                round(ingest.rows_per_s),
                "COPY straight into facts",
                round(ceiling),
                cpu_share=ingest.cpu_share,
            )
        )
    out += report_rows(_create(pg, "month"), month_rows, STORES)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m bench`` calls this with no arguments: the full-size run."""
    parser = argparse.ArgumentParser(prog="python -m bench.chain", description=__doc__)
    parser.add_argument("--stores", type=int, default=STORES)
    parser.add_argument("--batches", type=int, default=BATCHES_PER_STORE, help="per store")
    parser.add_argument("--month-rows", type=int, default=MONTH_ROWS)
    parser.add_argument(
        "--server", metavar="DSN", help="a PostgreSQL server to use (default: a private one)"
    )
    parser.add_argument("--publish", nargs=3, metavar=("PORT", "STORES", "BATCHES"))
    args = parser.parse_args(list(argv) if argv is not None else [])
    configure_logging("error")
    if args.publish:
        port, stores, per_store = (int(v) for v in args.publish)
        publish(port, stores, per_store)
        return
    rows = run(args.stores, args.batches, args.month_rows, args.server)
    write("chain", rows)
    for ours in rows[:2]:
        better = ours.better or 0.0
        verdict = "meets" if better >= TARGET_RATIO else "does NOT meet"
        print(
            f"{ours.case.split(':')[0]}: {ours.value:,.0f} rows/s, {better:.2f}x the COPY "
            f"ceiling: {verdict} the ≥ {TARGET_RATIO:g}x target"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
