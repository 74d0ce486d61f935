"""The ops console over HTTP, against a real daemon driven by the simulator.

The console runs on its own loopback server with the routing the daemon's metrics server
delegates to (tests/consoles.py); the daemon, its pipeline, rule watcher and funnel are
the real ones.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proximity.chain.report import Uplift
from proximity.cli.main import main
from proximity.clock import VirtualClock
from proximity.config import Settings
from proximity.console.feed import ConsoleFeed, Subscription, short
from proximity.console.server import GATHER_S, Request
from proximity.console.settings import ConsoleSettings
from proximity.events import EventKind, JourneyEvent, Shopper
from proximity.measurement.store import MeasurementStore, Stage
from tests.consoles import StartingClock, console_store, events, get, running
from tests.factories import T0

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_RULES = ROOT / "rules" / "example-store.toml"
FLOOR_PLAN = ROOT / "firmware_sim" / "stores" / "example.toml"
TOKEN = "console-test-token-0123456789"


class Cells(HTMLParser):
    """Every element's attributes and text, for reading numbers out of the pages."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[dict[str, str | None], str]] = []
        self._open: list[tuple[dict[str, str | None], list[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("input", "meta", "link", "br", "rect", "circle", "polygon"):
            return
        self._open.append((dict(attrs), []))

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            attrs, text = self._open.pop()
            joined = "".join(text)
            self.found.append((attrs, joined))
            if self._open:
                self._open[-1][1].append(joined)

    def handle_data(self, data: str) -> None:
        if self._open:
            self._open[-1][1].append(data)

    def where(self, **attrs: str) -> list[tuple[dict[str, str | None], str]]:
        return [
            (a, t)
            for a, t in self.found
            if all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]


def cells(body: bytes) -> Cells:
    parser = Cells()
    parser.feed(body.decode())
    return parser


async def test_the_live_stream_shows_a_simulated_shopper_in_the_right_zone() -> None:
    """The built-in walk: entrance, then coffee. The stream's zone counts follow the
    shopper (on the floor plan's fused presence), the feed shows them by 4 characters."""
    settings = Settings.model_validate(
        {"presence": {"method": "fused", "floor_plan": str(FLOOR_PLAN)}}
    )
    clock = StartingClock(T0, 10)  # the walk's entrance stay is 2 s long, its coffee 4 s
    async with console_store(settings, clock) as store:
        seen: list[dict[str, int]] = []
        raw: list[str] = []
        async with events(store.port) as stream, running(store.daemon, clock):
            name, first = await anext(stream)
            assert name == "snapshot"
            assert first["zones"] == {}
            async with asyncio.timeout(15):
                async for _, data in stream:
                    raw.append(json.dumps(data))
                    seen.append(data["zones"])
                    if data["zones"].get("coffee") == 1:
                        break
        assert {"entrance": 1} in seen  # first the entrance, alone
        assert seen[-1] == {"coffee": 1}  # then coffee, and no longer the entrance
        lines = [e for text in raw for e in json.loads(text)["feed"]]
        assert {"kind": "zone.enter", "zone": "entrance"}.items() <= lines[1].items()
        # nothing personal: the shopper only as the 4-character short form
        assert all(re.fullmatch(r"[0-9a-f]{4}", e["who"]) for e in lines)
        assert any(e["kind"] == "offer" and e["rule"] == "welcome-directions" for e in lines)
        # the page rendered now has the shopper where the stream said, on the floor plan
        status, _, page = await get(store.port, "/console/")
        assert status == 200
        assert cells(page).where(data_zone="coffee")  # the plan's zones drawn in the SVG
        assert b"<polygon" in page
        assert b"<circle" in page
        counts = {a["data-zone-count"]: t for a, t in cells(page).where() if "data-zone-count" in a}
        assert counts["coffee"] == "1"
        assert counts["entrance"] == "0"
        assert store.feed.subscribers == 0  # the closed stream was let go


async def test_a_broken_rule_file_shows_its_error_with_file_and_line(tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    shutil.copy(EXAMPLE_RULES, rules)
    settings = Settings.model_validate({"rules": {"paths": [str(rules)]}})
    async with console_store(settings, VirtualClock(T0)) as store:
        serving = store.runtime.table.version
        _, _, page = await get(store.port, "/console/rules")
        assert b'id="reload-ok"' in page
        text = rules.read_text().replace('moment = "go" ', 'moment = "maybe" ', 1)
        rules.write_text(text)
        assert await store.watcher.check() is None  # the watcher saw it, and kept the rules
        status, _, page = await get(store.port, "/console/rules")
        # mended (another title): valid on disk, not serving until the watcher looks
        rules.write_text(text.replace('"maybe"', '"go"').replace("Welcome!", "Hello!"))
        _, _, before = await get(store.port, "/console/rules")
        assert b"but not serving" in before
        assert await store.watcher.check() is not None
        _, _, after = await get(store.port, "/console/rules")
        assert b"but not serving" not in after
        assert b"1 reloaded, 1 failed" in after
        assert cells(after).where(data_live="version")[0][1] != serving
    assert status == 200
    errors = cells(page).where(id="reload-errors")
    assert errors, page.decode()
    assert re.search(rf"{re.escape(str(rules))}:50:\d+", errors[0][1])
    assert "moment" in errors[0][1]
    assert "1 failed" in page.decode()  # the watcher's count
    assert cells(page).where(data_live="version")[0][1] == serving  # the last good serves


async def test_explain_gives_the_same_verdicts_as_the_cli(
    capsys: pytest.CaptureFixture[str],
) -> None:
    at = "2026-11-24T10:00:00+01:00"
    event = {"kind": "zone.dwell", "zone": "coffee", "dwell": 30, "at": at, "consent": True}
    assert (
        main(["rules", "explain", "--json", "--event", json.dumps(event), str(EXAMPLE_RULES)]) == 0
    )
    cli = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    async with console_store(Settings(), VirtualClock(T0)) as store:
        query = f"kind=zone.dwell&zone=coffee&dwell=30&at={at.replace('+', '%2B')}&consent=on"
        status, _, page = await get(store.port, f"/console/rules?{query}&explain=1")
    assert status == 200
    rows = cells(page)
    shown = [a["data-rule"] for a, _ in rows.found if "data-rule" in a]
    verdicts = [a["data-verdict"] for a, _ in rows.found if "data-verdict" in a]
    controls = [a["data-control"] or None for a, _ in rows.found if "data-control" in a]
    assert shown == [line["rule"] for line in cli]
    assert verdicts == [line["verdict"] for line in cli]
    assert controls == [line.get("control") for line in cli]
    assert "matched" in verdicts  # the coffee coupon fires on this event


async def test_the_funnel_page_shows_the_measurement_stores_numbers() -> None:
    measure = MeasurementStore()
    counts = {
        ("coffee-coupon", None): {
            Stage.DECIDED: 40,
            Stage.PUBLISHED: 38,
            Stage.DELIVERED: 30,
            Stage.OPENED: 20,
            Stage.CLICKED: 9,
            Stage.REDEEMED: 5,
            Stage.CONVERTED: 7,
        },
        ("bakery-fresh-bread", "A"): {Stage.DECIDED: 5, Stage.PUBLISHED: 5, Stage.CONVERTED: 1},
        ("bakery-fresh-bread", "B"): {Stage.DECIDED: 6, Stage.PUBLISHED: 6, Stage.CLICKED: 2},
    }
    for (rule, variant), stages in counts.items():
        for stage, n in stages.items():
            for _ in range(n):
                measure.add(stage, rule, T0, variant)
    for _ in range(20):
        measure.add(Stage.HELD_OUT, "coffee-coupon", T0)
    measure.add(Stage.HELD_OUT_CONVERTED, "coffee-coupon", T0)
    async with console_store(Settings(), VirtualClock(T0), measure=measure) as store:
        status, _, page = await get(store.port, "/console/funnel")
    assert status == 200
    parsed = cells(page)
    funnel = measure.funnel()
    assert len(funnel) == 3
    for row in funnel:
        line = parsed.where(data_row=f"{row.rule}/{row.variant}")
        assert line, f"{row.rule}/{row.variant} missing"
        html = _row_html(page, f"{row.rule}/{row.variant}")
        for stage in ("decided", "published", "delivered", "opened", "clicked", "redeemed"):
            assert f'data-stage="{stage}">{row.stages[stage]}<' in html
        assert f'data-stage="converted">{row.stages["converted"]}<' in html
        ctr = "–" if row.ctr is None else f"{row.ctr:.1%}"
        assert f'data-rate="ctr">{ctr}<' in html
    coffee = Uplift("coffee-coupon", 38, 7, 20, 1)
    assert coffee.uplift is not None
    assert coffee.interval is not None
    low, high = coffee.interval
    expected = f"{coffee.uplift:+.1%} [{low:+.1%}, {high:+.1%}]"
    assert f'data-rate="uplift">{expected}<' in _row_html(page, "coffee-coupon/")
    assert b"<svg" in page  # the chart, inline


def _row_html(page: bytes, key: str) -> str:
    text = page.decode()
    start = text.index(f'data-row="{key}"')
    return text[start : text.index("</tr>", start)]


async def test_a_token_guards_the_console_when_configured() -> None:
    guarded = ConsoleSettings(token=TOKEN)
    async with console_store(Settings(), VirtualClock(T0), console=guarded) as store:
        assert (await get(store.port, "/console/"))[0] == 401
        assert (await get(store.port, "/console/events"))[0] == 401
        assert (await get(store.port, "/console/rules", {"Authorization": "Bearer nope"}))[0] == 401
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert (await get(store.port, "/console/", bearer))[0] == 200
        assert (await get(store.port, "/console/funnel", bearer))[0] == 200
        status, headers, _ = await get(store.port, f"/console/?token={TOKEN}")
        assert status == 303
        assert headers["location"] == "/console/"
        cookie = headers["set-cookie"].split(";")[0]
        assert "HttpOnly" in headers["set-cookie"]
        assert (await get(store.port, "/console/rules", {"Cookie": cookie}))[0] == 200
        async with events(store.port, {"Cookie": cookie}) as stream:
            assert (await anext(stream))[0] == "snapshot"
        assert (await get(store.port, "/console/", bearer, method="POST"))[0] == 405
        assert store.console.refused == 3


async def test_a_query_never_becomes_a_response_header() -> None:
    async with console_store(Settings(), VirtualClock(T0)) as store:  # open: loopback, no token
        status, headers, _ = await get(store.port, "/console/?token=x%0d%0aX-Evil:%201")
    assert status == 200
    assert "x-evil" not in headers
    assert "set-cookie" not in headers


async def test_off_loopback_the_console_serves_nothing_without_a_token() -> None:
    async with console_store(Settings(), VirtualClock(T0), host="0.0.0.0") as store:
        status, _, body = await get(store.port, "/console/")
    assert status == 403
    assert b"[console] token" in body


async def test_pages_are_safe_html_with_their_assets() -> None:
    async with console_store(Settings(), VirtualClock(T0)) as store:
        for path in ("/console/", "/console/funnel", "/console/rules"):
            status, headers, body = await get(store.port, path)
            assert status == 200
            assert "script-src 'self'" in headers["content-security-policy"]
            assert b"<nav" in body
            assert b"<h1>" in body
            assert b"<script>" not in body
            assert b"style=" not in body
        for asset in ("console.css", "console.js"):
            status, _, body = await get(store.port, f"/console/static/{asset}")
            assert status == 200
            assert body
        assert (await get(store.port, "/console/static/../server.py"))[0] == 404
        assert (await get(store.port, "/console/nothing"))[0] == 404
        # no floor plan (threshold presence): the zones as boxes
        _, _, page = await get(store.port, "/console/")
        assert b'<ul class="boxes">' in page
        assert b'class="unknown">unknown<' in page  # a local radio: nothing reports its health
        status, _, page = await get(store.port, "/console/rules?explain=1&kind=nonsense")
        assert status == 200
        assert b'id="explain-error"' in page


def in_and_out(shopper: Shopper, n: int) -> JourneyEvent:
    """The ``n``-th of a shopper's alternating entries to and exits from coffee, a second
    apart."""
    return JourneyEvent(
        kind=EventKind.ZONE_ENTER if n % 2 == 0 else EventKind.ZONE_EXIT,
        at=T0 + timedelta(seconds=n),
        store="s",
        shopper=shopper,
        visit="v1",
        zone="coffee",
    )


def test_a_slow_browser_loses_its_oldest_updates_and_the_feed_counts_them() -> None:
    feed = ConsoleFeed(lambda: T0, size=10, subscriber_queue=8)
    slow = feed.subscribe()
    assert slow is not None
    shopper = Shopper(token="shopper-secret-token", consent=True)
    for n in range(20):
        feed.event(in_and_out(shopper, n))
    assert slow.dropped == feed.dropped == 12
    waiting = slow.take()
    assert len(waiting) == 8
    assert waiting[-1]["at"].endswith("10:00:19+00:00")
    assert len(feed.recent()) == 10
    assert feed.occupancy() == {}  # entered and left, ten times
    assert "shopper-secret-token" not in json.dumps(feed.recent())
    assert feed.recent()[0]["who"] == short("shopper-secret-token")
    for _ in range(15):
        assert feed.subscribe() is not None or feed.subscribers == 16
    assert feed.subscribe() is None  # max_subscribers
    feed.close()
    assert feed.subscribers == 0


@given(st.binary(max_size=300))
def test_a_request_head_parses_or_is_refused_with_a_value_error(head: bytes) -> None:
    try:
        request = Request.parse(head)
    except ValueError:
        return
    assert request.path.startswith("/")


@given(st.text(max_size=40), st.text(max_size=40))
def test_a_request_with_any_query_and_cookie_is_parsed(query: str, cookie: str) -> None:
    head = f"GET /console/rules?{query} HTTP/1.1\r\nCookie: {cookie}\r\n\r\n"
    try:
        request = Request.parse(head.encode("utf-8"))
    except ValueError:
        return
    assert isinstance(request.query, dict)
    request.cookie("proximity_console")


async def test_a_busy_store_redraws_the_page_once_a_gather_not_once_an_event() -> None:
    """Events that come within GATHER_S of the first go to the page in one message, the
    state as it is when it goes: the browser draws once a second however busy the store
    (its drawing took a sixth of a core at 7 messages a second; on a gateway it shares
    the machine with the daemon)."""
    async with console_store(Settings(), VirtualClock(T0)) as store:
        async with events(store.port) as stream:
            name, _ = await anext(stream)
            assert name == "snapshot"
            shopper = Shopper(token="a-busy-shopper", consent=True)
            started = asyncio.get_running_loop().time()
            for n in range(6):  # an enter or exit every 0.12 s
                store.feed.event(in_and_out(shopper, n))
                await asyncio.sleep(0.12)
            async with asyncio.timeout(GATHER_S * 5):
                name, update = await anext(stream)
            waited = asyncio.get_running_loop().time() - started
        assert name == "update"
        assert [e["kind"] for e in update["feed"]] == ["zone.enter", "zone.exit"] * 3
        assert update["zones"] == {}  # entered and left three times: nobody is there now
        assert waited >= GATHER_S * 0.9 >= 0.9  # a second, at the most once a second


async def test_a_stream_wakes_only_for_updates_it_has_not_taken() -> None:
    """Updates that came while a stream gathered a burst (and took it) must not wake its
    next wait: it would send an empty update at once, doubling the messages a page gets."""
    subscription = Subscription(8)
    subscription.push({"n": 1})
    assert await subscription.wait() == [{"n": 1}]
    subscription.push({"n": 2})  # comes while the burst gathers...
    assert subscription.take() == [{"n": 2}]  # ...and goes with it
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await subscription.wait()
    subscription.push({"n": 3})
    assert await subscription.wait() == [{"n": 3}]
    subscription.close()
    assert await subscription.wait() == []
