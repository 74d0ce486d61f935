"""proximity hq on a real mosquitto and a real PostgreSQL: ingest, idempotence, acks after
the commit, malformed uplink, a restart that finds the queued messages, stale stores."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, get_args

import paho.mqtt.client as mqtt
import psycopg
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from proximity.chain.hq import Hq
from proximity.chain.hqconfig import HqSettings, load_hq_settings
from proximity.chain.messages import (
    REJECT_REASONS,
    FactsBatch,
    Rejected,
    StageName,
    parse_uplink,
)
from proximity.chain.pgstore import PgStore
from proximity.errors import ConfigError
from proximity.measurement.store import Stage
from tests.mosquitto import Mosquitto, eventually

pytestmark = pytest.mark.timeout(60)


def batch(store: str, seq: int, *rows: tuple[str, str, int], gateway: str = "gw-1") -> bytes:
    """A facts batch: rows (rule, stage, count) in minute 10:14."""
    return json.dumps(
        {
            "v": 1,
            "store": store,
            "gateway": gateway,
            "seq": seq,
            "sealed_at": "2026-12-02T10:15:00+00:00",
            "rows": [
                {
                    "minute": "2026-12-02T10:14:00+00:00",
                    "rule": rule,
                    "variant": "",
                    "arm": "holdout" if stage.startswith("held_out") else "treatment",
                    "stage": stage,
                    "reason": "",
                    "count": count,
                }
                for rule, stage, count in rows
            ],
        }
    ).encode()


def status(store: str, online: bool = True, **more: Any) -> bytes:
    return json.dumps(
        {"v": 1, "store": store, "gateway": "gw-1", "online": online, "at": "2026-12-02T10:00Z"}
        | more
    ).encode()


def settings(broker: Mosquitto, dsn: str, **hq: Any) -> HqSettings:
    return HqSettings.model_validate(
        {
            "hq": {
                "broker": f"mqtt://127.0.0.1:{broker.port}",
                "database": dsn,
                "metrics_port": 0,
                "flush_every": "50ms",
            }
            | hq
        }
    )


class Gateways:
    """A paho client playing every store's gateway: publishes uplink, records acks, and
    for each ack whether its batches were in PostgreSQL when it arrived."""

    def __init__(self, port: int, dsn: str) -> None:
        self.acks: list[dict[str, Any]] = []
        self.committed_at_ack: list[bool] = []
        self.dsn = dsn
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._ack
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe("proximity/v1/+/down/acks", qos=1)
        assert subscribed.wait(5)

    def _ack(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        ack = json.loads(msg.payload) | {"store": msg.topic.split("/")[2]}
        with psycopg.connect(self.dsn) as conn:
            found = conn.execute(
                "SELECT count(*) FROM batches WHERE store = %s AND gateway = %s AND seq = ANY(%s)",
                (ack["store"], ack["gateway"], ack["seqs"]),
            ).fetchone()
        self.committed_at_ack.append(found == (len(ack["seqs"]),))
        self.acks.append(ack)

    def send(self, store: str, kind: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(f"proximity/v1/{store}/up/{kind}", payload, qos=1, retain=retain)

    def acked(self, store: str) -> list[int]:
        return sorted(s for a in self.acks if a["store"] == store for s in a["seqs"])

    def refused(self, store: str) -> list[tuple[str, int, str]]:
        """(gateway, seq, reason) of the batches hq answered it could not commit."""
        return [
            (a["gateway"], r["seq"], r["reason"])
            for a in self.acks
            if a["store"] == store
            for r in a.get("refused", [])
        ]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client._reset_sockets()


@asynccontextmanager
async def gateways(broker: Mosquitto, dsn: str) -> AsyncIterator[Gateways]:
    gw = await asyncio.to_thread(Gateways, broker.port, dsn)
    try:
        yield gw
    finally:
        await asyncio.to_thread(gw.close)


def query(dsn: str, sql: str, *args: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, args).fetchall()


def scrape(hq: Hq, path: str = "/metrics") -> str:
    """The body at ``path`` (also of a 503)."""
    assert hq.health is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{hq.health.port}{path}", timeout=5) as r:
            return str(r.read().decode())
    except urllib.error.HTTPError as error:
        with error:
            return f"{error.code} {error.read().decode()}"


def sample(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_batches_of_two_stores_are_committed_once_and_acked_after_the_commit(
    mosquitto: Mosquitto, pg_dsn: str
) -> None:
    async with Hq(settings(mosquitto, pg_dsn)) as hq, gateways(mosquitto, pg_dsn) as gw:
        gw.send("store-001", "facts", batch("store-001", 1, ("welcome", "published", 3)))
        gw.send("store-002", "facts", batch("store-002", 1, ("welcome", "published", 5)))
        gw.send(
            "store-001",
            "facts",
            batch("store-001", 2, ("welcome", "converted", 1), ("welcome", "held_out", 2)),
        )
        await eventually(lambda: gw.acked("store-001") == [1, 2] and gw.acked("store-002") == [1])
        # the same batch again (a re-send after a lost ack): acked again, counted once
        gw.send("store-001", "facts", batch("store-001", 1, ("welcome", "published", 3)))
        await eventually(lambda: gw.acked("store-001") == [1, 1, 2])
        assert all(gw.committed_at_ack)
        rows = query(
            pg_dsn,
            "SELECT store, stage, sum(count)::int FROM facts GROUP BY 1, 2 ORDER BY 1, 2",
        )
        assert rows == [
            ("store-001", "converted", 1),
            ("store-001", "held_out", 2),
            ("store-001", "published", 3),
            ("store-002", "published", 5),
        ]
        assert query(pg_dsn, "SELECT count(*) FROM batches") == [(3,)]
        assert query(pg_dsn, "SELECT count(*) FROM facts_2026_12") == [(4,)]
        text = await asyncio.to_thread(scrape, hq)
        assert sample(text, 'proximity_hq_batches_total{result="new"}') == 3
        assert sample(text, 'proximity_hq_batches_total{result="duplicate"}') == 1
        assert sample(text, "proximity_hq_facts_rows_total") == 4
        assert sample(text, "proximity_hq_commit_seconds_count") == hq.committed


async def test_malformed_uplink_is_counted_and_hq_keeps_going(
    mosquitto: Mosquitto, pg_dsn: str
) -> None:
    with structlog.testing.capture_logs() as logs:
        async with Hq(settings(mosquitto, pg_dsn)) as hq, gateways(mosquitto, pg_dsn) as gw:
            gw.send("store-001", "facts", b"\xff\x00 not json")
            gw.send("store-001", "facts", b"\xff\x00 not json")
            gw.send("store-001", "facts", b'{"v": 2}')
            gw.send("store-002", "facts", batch("store-001", 7, ("welcome", "published", 1)))
            gw.send("store-001", "status", b'{"v": 1, "online": "maybe"}')
            gw.send("store-001", "weather", b"{}")
            gw.send("store-001", "facts", batch("store-001", 1, ("welcome", "published", 2)))
            await eventually(lambda: gw.acked("store-001") == [1])
            text = await asyncio.to_thread(scrape, hq)
    counts = {
        reason: sample(text, f'proximity_hq_rejected_total{{reason="{reason}"}}')
        for reason in REJECT_REASONS
    }
    assert counts == {
        "unknown_topic": 1,
        "not_json": 2,
        "invalid_facts": 1,
        "invalid_status": 1,
        "invalid_rollout": 0,
        "store_mismatch": 1,
        "db_refused": 0,
    }
    rejected = [e for e in logs if e["event"] == "uplink_rejected"]
    assert len(rejected) == 5  # the second not_json of store-001 is not logged again
    assert query(pg_dsn, "SELECT store, seq FROM batches") == [("store-001", 1)]


@given(
    st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(
                    st.sampled_from(["v", "store", "gateway", "seq", "rows", "minute", "count"])
                    | st.text(max_size=8),
                    inner,
                    max_size=6,
                )
            ),
            max_leaves=20,
        ).map(lambda v: json.dumps(v).encode()),
    ),
    st.sampled_from(["facts", "status", "rollout", "other"]),
)
def test_any_payload_is_a_message_or_a_declared_rejection(payload: bytes, kind: str) -> None:
    result = parse_uplink(f"proximity/v1/store-001/up/{kind}", payload)
    if isinstance(result, Rejected):
        assert result.reason in REJECT_REASONS
        assert result.reason != "db_refused"
    else:
        assert result.store == "store-001"


def test_a_batch_with_a_holdout_stage_in_the_treatment_arm_is_refused() -> None:
    payload = json.loads(batch("store-001", 1, ("welcome", "held_out", 1)))
    payload["rows"][0]["arm"] = "treatment"
    result = parse_uplink("proximity/v1/store-001/up/facts", json.dumps(payload).encode())
    assert isinstance(result, Rejected)
    assert result.reason == "invalid_facts"
    assert isinstance(
        parse_uplink("proximity/v1/store-001/up/facts", batch("store-001", 1)), FactsBatch
    )


async def test_hq_restarted_gets_what_the_broker_queued_while_it_was_down(
    mosquitto: Mosquitto, pg_dsn: str
) -> None:
    config = settings(mosquitto, pg_dsn)
    async with gateways(mosquitto, pg_dsn) as gw:
        async with Hq(config):
            gw.send("store-001", "facts", batch("store-001", 1, ("welcome", "published", 1)))
            await eventually(lambda: gw.acked("store-001") == [1])
        # hq is down: the broker keeps these for hq's session
        gw.send("store-001", "facts", batch("store-001", 2, ("welcome", "published", 2)))
        gw.send("store-002", "facts", batch("store-002", 1, ("welcome", "published", 4)))
        await asyncio.sleep(0.2)
        assert query(pg_dsn, "SELECT count(*) FROM batches") == [(1,)]
        async with Hq(config):
            await eventually(lambda: gw.acked("store-001") == [1, 2] and gw.acked("store-002"))
    assert query(pg_dsn, "SELECT sum(count)::int FROM facts") == [(7,)]


async def test_a_silent_or_offline_store_is_stale_on_metrics(
    mosquitto: Mosquitto, pg_dsn: str
) -> None:
    def stale(text: str, store: str) -> float | None:
        return sample(text, f'proximity_hq_store_stale{{store="{store}"}}')

    # a plain subscription this time (share_group ""): hq gets retained statuses too
    config = settings(mosquitto, pg_dsn, stale_after="400ms", share_group="")
    with structlog.testing.capture_logs() as logs:
        async with Hq(config) as hq, gateways(mosquitto, pg_dsn) as gw:
            gw.send("store-001", "status", status("store-001", outbox_depth=4, uplink_pending=2))
            gw.send("store-002", "status", status("store-002"))
            gw.send("store-003", "status", status("store-003", online=False))
            await eventually(lambda: len(hq.fleet.gateways) == 3)
            text = await asyncio.to_thread(scrape, hq)
            assert sample(text, "proximity_hq_stores") == 3
            assert [stale(text, s) for s in ("store-001", "store-002", "store-003")] == [0, 0, 1]
            assert sample(text, 'proximity_hq_store_outbox_depth{store="store-001"}') == 4
            assert sample(text, 'proximity_hq_store_uplink_pending{store="store-001"}') == 2
            # store-002 keeps talking, store-001 falls silent
            for _ in range(6):
                await asyncio.sleep(0.15)
                gw.send("store-002", "status", status("store-002"))
            text = await asyncio.to_thread(scrape, hq)
            assert [stale(text, s) for s in ("store-001", "store-002")] == [1, 0]
            await eventually(
                lambda: (
                    {e["store"] for e in logs if e["event"] == "store_stale"}
                    == {"store-001", "store-003"}
                )
            )
            assert await asyncio.to_thread(scrape, hq, "/healthz") == "ok\n"
    assert len([e for e in logs if e["event"] == "store_stale"]) == 2  # once per episode
    fleet = query(pg_dsn, "SELECT store, online, outbox_depth FROM fleet ORDER BY store")
    assert fleet == [("store-001", True, 4), ("store-002", True, 0), ("store-003", False, 0)]
    assert timedelta(milliseconds=400) == config.hq.stale_after


def test_the_stages_are_the_funnels_and_nul_is_refused() -> None:
    assert set(get_args(StageName)) == {s.value for s in Stage}
    payload = batch("store-001", 1, ("wel\u0000come", "published", 1))
    result = parse_uplink("proximity/v1/store-001/up/facts", payload)
    assert isinstance(result, Rejected)
    assert result.reason == "invalid_facts"
    assert "NUL" in result.detail
    # an escaped backslash before "u0000" is no NUL
    ok = parse_uplink(
        "proximity/v1/store-001/up/facts", batch("store-001", 1, ("a\\u0000", "published", 1))
    )
    assert isinstance(ok, FactsBatch)


def test_rows_with_tabs_backslashes_and_newlines_are_stored_as_sent(pg_dsn: str) -> None:
    store = PgStore(pg_dsn)
    store.migrate()
    odd = "coffee\t2\\for\n1\r"
    message = parse_uplink(
        "proximity/v1/store-001/up/facts", batch("store-001", 1, (odd, "published", 2))
    )
    assert isinstance(message, FactsBatch)
    written = store.write([message, message])
    assert (written.new, written.duplicate, written.rows) == ([("store-001", "gw-1", 1)], [], 1)
    assert store.write([message]).duplicate == [("store-001", "gw-1", 1)]
    store.close()
    assert query(pg_dsn, "SELECT rule, count FROM facts") == [(odd, 2)]


def test_the_example_hq_toml_loads_and_a_bad_one_names_the_file(tmp_path: Path) -> None:
    example = load_hq_settings(Path(__file__).parent.parent / "deploy" / "hq.example.toml")
    assert example.hq.share_group == "hq"
    assert example.hq.stale_after == timedelta(minutes=5)
    assert example.group("north") == ["store-001", "store-002"]
    bad = tmp_path / "hq.toml"
    bad.write_text('[hq]\nbroker = "mqtt://u:s3cret@:1"\nstale_after = "soon"\nport = 1\n')
    with pytest.raises(ConfigError) as caught:
        load_hq_settings(bad)
    text = str(caught.value)
    assert f"{bad}:2:" in text
    assert f"{bad}:3:15: hq.stale_after: bad duration" in text
    assert f"{bad}:4:1: hq.port: unknown key" in text
    assert "s3cret" not in text


async def test_while_postgresql_is_away_nothing_is_acked_and_the_batch_waits(
    mosquitto: Mosquitto, pg_dsn: str, postgres: str
) -> None:
    name = pg_dsn.rsplit("/", 1)[1]

    def admin(sql: str) -> None:
        with psycopg.connect(postgres, autocommit=True) as conn:
            conn.execute(sql)

    with structlog.testing.capture_logs() as logs:
        async with Hq(settings(mosquitto, pg_dsn)) as hq, gateways(mosquitto, pg_dsn) as gw:
            gw.send("store-001", "facts", batch("store-001", 1, ("welcome", "published", 1)))
            await eventually(lambda: gw.acked("store-001") == [1])
            admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            admin(
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
            )
            gw.send("store-001", "facts", batch("store-001", 2, ("welcome", "published", 2)))
            await eventually(lambda: hq.metrics.ready["database"] == "unavailable")
            await asyncio.sleep(1.2)  # a retry or two, refused
            assert gw.acked("store-001") == [1]
            ready = await asyncio.to_thread(scrape, hq, "/readyz")
            admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            await eventually(lambda: gw.acked("store-001") == [1, 2])
    assert ready.startswith("503 ")
    assert '"database": "unavailable"' in ready
    assert [e["event"] for e in logs].count("db_unavailable") == 1
    assert query(pg_dsn, "SELECT seq, count FROM facts ORDER BY seq") == [(1, 1), (2, 2)]


def test_hq_migrate_applies_the_schema_once(
    pg_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from proximity.cli.main import main

    config = tmp_path / "hq.toml"
    config.write_text(f'[hq]\ndatabase = "{pg_dsn}"\n')
    assert main(["hq", "migrate", "--config", str(config)]) == 0
    assert "applied 001_chain" in capsys.readouterr().out
    assert main(["hq", "migrate", "--config", str(config)]) == 0
    assert "up to date" in capsys.readouterr().out
    tables = query(pg_dsn, "SELECT version, name FROM schema_migrations")
    assert tables == [(1, "chain")]
    dead = "postgresql://postgres@127.0.0.1:1/none"
    assert main(["hq", "migrate", "--config", str(config), "--database", dead]) == 1
    assert "proximity hq migrate: error:" in capsys.readouterr().err


async def test_a_batch_postgresql_refuses_does_not_hold_back_the_others(
    mosquitto: Mosquitto, pg_dsn: str
) -> None:
    async with Hq(settings(mosquitto, pg_dsn, flush_every="300ms")) as hq:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN IF NEW.rule = 'poison' THEN RAISE EXCEPTION 'refused'; END IF; "
                "RETURN NEW; END $$"
            )
            conn.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON facts "
                "FOR EACH ROW EXECUTE FUNCTION refuse()"
            )
        async with gateways(mosquitto, pg_dsn) as gw:
            gw.send("store-001", "facts", batch("store-001", 1, ("poison", "published", 1)))
            gw.send("store-002", "facts", batch("store-002", 1, ("welcome", "published", 2)))
            await eventually(lambda: gw.acked("store-002") == [1])
            await eventually(lambda: hq.metrics.rejected.labels("db_refused")._value.get() == 1)
            assert gw.acked("store-001") == []
            # the gateway is told, so that it stops sending a batch refused for ever
            await eventually(lambda: len(gw.refused("store-001")) == 1)
            [(gateway, seq, reason)] = gw.refused("store-001")
            assert (gateway, seq) == ("gw-1", 1)
            assert "refused" in reason
    assert query(pg_dsn, "SELECT store, count FROM facts") == [("store-002", 2)]
    assert query(pg_dsn, "SELECT store FROM batches") == [("store-002",)]
