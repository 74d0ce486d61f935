"""The chain's console on a real ``proximity hq``: PostgreSQL (tests/postgres.py) with rows
the tests insert, mosquitto (tests/mosquitto.py) carrying gateways' statuses and rollout
reports, the pages over HTTP from hq's own /metrics server, and the fleet page in Debian's
chromium (tests/browser.py). With PROXIMITY_SCREENSHOTS=1 the fleet page is saved to
docs/img/console-fleet.png.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.publish as mqtt_publish
import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.client import MQTTv5

from proximity.chain.hq import Fleet, Hq
from proximity.chain.hqconfig import HqSettings
from proximity.chain.pgstore import PgStore
from proximity.chain.report import chain_report
from proximity.console import views
from proximity.console.chain import ChainConsole, parse_since
from proximity.console.server import Request
from tests.consoles import events, get
from tests.mosquitto import Mosquitto, eventually

if TYPE_CHECKING:
    from playwright.async_api import Page

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = os.environ.get("PROXIMITY_SCREENSHOTS") == "1"
TOKEN = "chain-console-token-0123456789"
NOW = datetime.now(UTC).replace(microsecond=0)
_ROW = re.compile(r'<tr data-store="([^"]+)" data-gateway="([^"]+)" data-state="([a-z]+)"')


def settings(broker: Mosquitto, dsn: str, stale_after: str = "30s", **console: Any) -> HqSettings:
    return HqSettings.model_validate(
        {
            "hq": {
                "broker": f"mqtt://127.0.0.1:{broker.port}",
                "database": dsn,
                "metrics_port": 0,
                "flush_every": "50ms",
                "share_group": "",
                "stale_after": stale_after,
            },
            "groups": {"north": ["store-001", "store-002"], "south": ["store-003"]},
            "console": console,
        }
    )


@asynccontextmanager
async def running_hq(config: HqSettings) -> AsyncIterator[tuple[Hq, int]]:
    async with Hq(config) as hq:
        assert hq.health is not None
        assert hq.console is not None
        yield hq, hq.health.port


def seed_fleet(dsn: str) -> None:
    """store-009: a gateway last heard an hour ago (stale), its latest rollout refused."""
    store = PgStore(dsn)
    store.migrate()
    store.close()
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO fleet (store, gateway, last_seen, online, version, rules_version,"
            " bundle, outbox_depth, uplink_pending, errors, status) VALUES"
            " ('store-009', 'gw-1', %s, true, '1.1.0', 'r-old', 6, 12, 3, 1, '{}')",
            (NOW - timedelta(hours=1),),
        )
        conn.execute(
            "INSERT INTO rollout_reports (store, gateway, bundle, outcome, reason, at) VALUES"
            " ('store-009', 'gw-1', 6, 'applied', '', %s),"
            " ('store-009', 'gw-1', 7, 'refused', 'signature: unknown key ops-2027', %s)",
            (NOW - timedelta(hours=3), NOW - timedelta(hours=2)),
        )


def status(store: str, **more: Any) -> bytes:
    return json.dumps(
        {"v": 1, "store": store, "gateway": "gw-1", "online": True, "at": NOW.isoformat()} | more
    ).encode()


async def send(broker: Mosquitto, store: str, kind: str, payload: bytes) -> None:
    topic = f"proximity/v1/{store}/up/{kind}"
    await asyncio.to_thread(
        mqtt_publish.single, topic, payload, qos=1, port=broker.port, protocol=MQTTv5
    )


def rows_of(html: str) -> list[tuple[str, str, str]]:
    """(store, gateway, state) of each fleet row, in the page's order."""
    return _ROW.findall(html)


def field(html: str, store: str, name: str) -> str:
    """The text of a row's ``data-field`` cell (tags stripped)."""
    row = html.split(f'<tr data-store="{store}"', 1)[1].split("</tr>", 1)[0]
    cell = row.split(f'data-field="{name}">', 1)[1].split("</td>", 1)[0]
    return re.sub(r"<[^>]+>", "", cell)


async def test_the_fleet_page_marks_stale_stores_and_its_stream_follows_statuses(
    mosquitto: Mosquitto, pg_dsn: str
) -> None:
    seed_fleet(pg_dsn)
    async with running_hq(settings(mosquitto, pg_dsn, stale_after="2s")) as (hq, port):
        status_code, headers, body = await get(port, "/console/")
        assert status_code == 200
        assert "default-src 'none'" in headers["content-security-policy"]
        html = body.decode()
        assert '<a href="/console/funnel">Chain funnel</a>' in html
        assert rows_of(html) == [("store-009", "gw-1", "stale")]
        assert field(html, "store-009", "version") == "1.1.0"
        assert field(html, "store-009", "outbox_depth") == "12"
        # the latest report (rollout_latest), with its reason
        assert "bundle 7 refused: signature: unknown key ops-2027" in field(
            html, "store-009", "rollout"
        )

        async with events(port) as stream:
            name, first = await anext(stream)
            assert name == "snapshot"
            assert first["fleet"]["stale"] == 1
            # a gateway's status arrives: the stream carries it (no request from the page)
            await send(mosquitto, "store-001", "status", status("store-001", version="1.3.0"))
            name, update = await asyncio.wait_for(anext(stream), 5)
            fleet = update["fleet"]
            assert name == "update"
            assert fleet["stores"] == 2
            assert rows_of(fleet["rows"]) == [
                ("store-009", "gw-1", "stale"),  # stale first
                ("store-001", "gw-1", "online"),
            ]
            assert field(fleet["rows"], "store-001", "version") == "1.3.0"
            # a rollout report arrives for store-009
            report = {
                "v": 1,
                "store": "store-009",
                "gateway": "gw-1",
                "bundle": 8,
                "outcome": "applied",
                "rules_version": "r-new",
                "at": NOW.isoformat(),
            }
            await send(mosquitto, "store-009", "rollout", json.dumps(report).encode())
            name, update = await asyncio.wait_for(anext(stream), 5)
            assert "bundle 8 applied" in field(update["fleet"]["rows"], "store-009", "rollout")
            # store-001 says nothing more: after stale_after the stream marks it stale by
            # itself (the server's timer, not the browser asking)
            while True:
                name, update = await asyncio.wait_for(anext(stream), 5)
                if update["fleet"]["stale"] == 2:
                    break
            states = {store: state for store, _, state in rows_of(update["fleet"]["rows"])}
            assert states == {"store-009": "stale", "store-001": "stale"}
        await eventually(lambda: hq.console is not None and hq.console.feed.subscribers == 0)


def seed_facts(dsn: str) -> None:
    """Facts of three stores: this morning and ten days ago."""
    store = PgStore(dsn)
    store.migrate()
    store.close()
    today = (NOW - timedelta(hours=1)).replace(second=0)
    old = today - timedelta(days=10)
    facts = []
    for seq, (store, minute, scale) in enumerate(
        [
            ("store-001", today, 3),
            ("store-002", today, 1),
            ("store-003", today, 2),
            ("store-001", old, 5),
        ],
        1,
    ):
        for rule, variant, arm, stage, count in [
            ("welcome", "", "treatment", "decided", 40),
            ("welcome", "", "treatment", "published", 30),
            ("welcome", "", "treatment", "delivered", 28),
            ("welcome", "", "treatment", "clicked", 9),
            ("welcome", "", "treatment", "redeemed", 6),
            ("welcome", "", "treatment", "converted", 5),
            ("welcome", "", "holdout", "held_out", 20),
            ("welcome", "", "holdout", "held_out_converted", 1),
            ("coffee", "a", "treatment", "published", 11),
            ("coffee", "b", "treatment", "published", 13),
            ("coffee", "b", "treatment", "converted", 2),
        ]:
            facts.append((store, "gw-1", seq, minute, rule, variant, arm, stage, "", count * scale))
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO facts (store, gateway, seq, minute, rule, variant, arm, stage, reason,"
            " count) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            facts,
        )


async def test_the_chain_funnel_page_shows_chain_report_for_a_group_and_a_period(
    mosquitto: Mosquitto, pg_dsn: str
) -> None:
    seed_facts(pg_dsn)
    async with running_hq(settings(mosquitto, pg_dsn)) as (_, port):
        code, _, body = await get(port, "/console/funnel?group=north&since=2d")
        assert code == 200
        html = body.decode()
        with psycopg.connect(pg_dsn) as conn:
            # the page's "2d" is measured on hq's clock a moment earlier: the same facts
            report = chain_report(
                conn, stores=["store-001", "store-002"], since=NOW - timedelta(days=2)
            )
        assert report.funnel
        for row in report.funnel:
            line = html.split(f'data-row="{row.rule}/{row.variant}"', 1)[1].split("</tr>", 1)[0]
            for stage in views.FUNNEL:
                assert f'data-stage="{stage}">{row.stages[stage]}</td>' in line
        welcome = next(u for u in report.uplift if u.rule == "welcome")
        assert welcome.interval is not None
        uplift_row = html.split('data-uplift="welcome"', 1)[1].split("</tr>", 1)[0]
        assert views.uplift_text(welcome) in uplift_row
        league = re.findall(r'data-league="([^"]+)"', html)
        assert league == [s.store for s in report.league] == ["store-001", "store-002"]
        assert 'data-stage="published">120</td>' in html  # (3 + 1) x 30: sums, not rates
        assert "Group north: store-001, store-002; facts since" in html

        # every store, all time: store-003 and the older facts count too
        code, _, body = await get(port, "/console/funnel")
        assert code == 200
        assert re.findall(r'data-league="([^"]+)"', body.decode()) == [
            "store-001",
            "store-003",
            "store-002",
        ]
        # bad query values: a 400 page saying why, the server goes on
        code, _, body = await get(port, "/console/funnel?group=west")
        assert code == 400
        assert "no group &#x27;west&#x27; in [groups]" in body.decode()
        code, _, body = await get(port, "/console/funnel?since=yesterday")
        assert code == 400
        assert "neither a duration" in body.decode()
        code, _, _ = await get(port, "/console/funnel")
        assert code == 200


async def test_the_token_guards_every_console_path_but_not_metrics(
    mosquitto: Mosquitto, pg_dsn: str
) -> None:
    async with running_hq(settings(mosquitto, pg_dsn, token=TOKEN)) as (hq, port):
        for path in ("/console/", "/console/funnel", "/console/events", "/console/static/x"):
            code, _, _ = await get(port, path)
            assert code == 401, path
        code, _, _ = await get(port, "/console/", {"Authorization": "Bearer wrong-token-000000"})
        assert code == 401
        code, _, _ = await get(port, "/console/", {"Authorization": f"Bearer {TOKEN}"})
        assert code == 200
        code, headers, _ = await get(port, f"/console/funnel?token={TOKEN}")
        assert code == 303
        assert headers["location"] == "/console/funnel"
        cookie = headers["set-cookie"].split(";", 1)[0]
        assert "HttpOnly" in headers["set-cookie"]
        assert "SameSite=Strict" in headers["set-cookie"]
        code, _, body = await get(port, "/console/funnel", {"Cookie": cookie})
        assert code == 200
        assert b"No facts yet" in body
        code, _, _ = await get(port, "/console/", {"Authorization": f"Bearer {TOKEN}"}, "POST")
        assert code == 405
        code, _, _ = await get(port, "/metrics")
        assert code == 200
        assert hq.console is not None
        assert hq.console.refused == 5
    # off loopback without a token: nothing is served; with [console] enabled = false, no console
    config = settings(mosquitto, pg_dsn)
    console = ChainConsole(config, Fleet(config.hq.stale_after), host="192.0.2.10")
    denied = console.guard.check(Request("GET", "/console/", {}))
    assert denied is not None
    assert denied[0] == 403
    assert Hq(settings(mosquitto, pg_dsn, enabled=False)).console is None


async def test_without_postgresql_the_fleet_shows_hqs_memory_and_the_funnel_says_why(
    mosquitto: Mosquitto,
) -> None:
    config = settings(mosquitto, "postgresql://nobody@127.0.0.1:1/none")
    console = ChainConsole(config, Fleet(config.hq.stale_after))
    console.heard("proximity/v1/store-001/up/status", status("store-001", version="1.4.0"))
    html = (await console.fleet_page()).decode()
    assert "PostgreSQL could not be read" in html
    assert field(html, "store-001", "version") == "1.4.0"
    code, _, body = await console.funnel_page({})
    assert code == 503
    assert b"PostgreSQL could not be read" in body


@given(st.text(max_size=40))
def test_since_is_a_time_or_a_reason(text: str) -> None:
    try:
        since: datetime | str | None = parse_since(text, NOW)
    except ValueError as exc:
        since = str(exc)
    if isinstance(since, str):
        assert since  # a reason for people
    else:
        assert since is None or since.tzinfo is not None


async def test_the_fleet_page_in_a_browser_follows_a_status_and_is_keyboard_navigable(
    page: Page, mosquitto: Mosquitto, pg_dsn: str
) -> None:
    from playwright.async_api import expect

    seed_fleet(pg_dsn)
    async with running_hq(settings(mosquitto, pg_dsn)) as (_, port):
        await page.goto(f"http://127.0.0.1:{port}/console/")
        await expect(page.locator("[data-live=stream]")).to_have_text("live")
        await expect(page.locator("#fleet-rows tr").first).to_have_attribute("data-state", "stale")
        await send(mosquitto, "store-001", "status", status("store-001", version="2.0.0"))
        store_001 = page.locator('tr[data-store="store-001"]')
        await expect(store_001.locator("[data-field=version]")).to_have_text("2.0.0")
        await expect(store_001).to_have_attribute("data-state", "online")
        await expect(page.locator("[data-live=stores]")).to_have_text("2")
        await expect(page.locator("#fleet-rows tr").first).to_have_attribute(
            "data-store", "store-009"
        )
        if SCREENSHOTS:
            await _screenshot(page, "console-fleet.png")
        # by keyboard: the skip link, the nav, Enter on the funnel
        await page.keyboard.press("Tab")
        await expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
        await page.keyboard.press("Tab")
        await expect(page.get_by_role("link", name="Fleet")).to_be_focused()
        await page.keyboard.press("Tab")
        await expect(page.get_by_role("link", name="Chain funnel")).to_be_focused()
        await page.keyboard.press("Enter")
        await expect(page.locator("h1")).to_have_text("Chain funnel")
        await expect(page.get_by_label("Group", exact=False)).to_be_visible()


async def _screenshot(page: Page, name: str) -> None:
    """The viewport as a small PNG (a 64-colour palette: the page is flat colours)."""
    import io

    from PIL import Image

    shot = Image.open(io.BytesIO(await page.screenshot(full_page=False)))
    shot.convert("RGB").quantize(64).save(ROOT / "docs" / "img" / name, optimize=True)
