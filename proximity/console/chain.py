"""The chain's console: read-only pages on ``proximity hq``'s /metrics server (the
handler and the fleet's state here, the HTML in :mod:`.chainviews`).

    GET /console/           Fleet: every store's gateways (the ``fleet`` table and hq's own
                            fleet state), stale stores first, each store's latest rollout
    GET /console/events     Server-Sent Events for the fleet page (no polling)
    GET /console/funnel     the chain funnel (proximity/chain/report.py): ?since=, ?group=
    GET /console/static/*   the gateway console's stylesheet and script

:func:`mount` puts a :class:`ChainConsole` on hq's HTTP server and taps hq's uplink for
statuses and rollout reports: when one arrives, every browser following the fleet page
gets the fleet again (a bounded queue each, like the gateway console's feed; hq never
waits on a browser). A store that goes stale with time is noticed by each stream on a
timer of its own on the server (the period of hq's stale watch), never by the browser
asking again.

The layout, stylesheet, script and funnel table and chart are the gateway console's
(:mod:`.views`); the token guard works as the gateway console's (``[console] token`` in
hq.toml, required off loopback). PostgreSQL is read in a worker thread, on a connection
of the page's own: hq's ingest connection is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg
import structlog

from proximity import __version__
from proximity.chain.hqconfig import HqSettings
from proximity.chain.messages import GatewayStatus, RolloutReport, parse_uplink
from proximity.chain.report import ChainReport, chain_report
from proximity.console import views
from proximity.console.chainviews import (
    GatewayRow,
    RolloutRow,
    chain_funnel,
    fleet,
    fleet_rows,
    funnel_form,
    scope,
)
from proximity.console.feed import Broadcast, Subscription
from proximity.console.server import (
    ACCEPTED,
    HTML,
    TEXT,
    Request,
    Response,
    TokenGuard,
    sse_message,
    static_file,
    write_response,
)
from proximity.console.settings import ConsoleSettings
from proximity.engine.durations import parse_duration
from proximity.errors import ConfigError

if TYPE_CHECKING:
    from proximity.chain.hq import Fleet, Hq

log = structlog.get_logger(__name__)

PAGES = [("/console/", "Fleet"), ("/console/funnel", "Chain funnel")]
DB_TIMEOUT_S = 5
GATHER_S = 0.5
"""A stream sends at most about two messages a second (the whole table each time: a
500-store chain's statuses every 30 s are ~17 a second), gathering what came between."""
Messages = Callable[[list[tuple[str, bytes]]], None]


# -- the fleet as the page shows it ------------------------------------------------------------

_FLEET_SQL = (
    "SELECT store, gateway, last_seen, online, version, rules_version, bundle, outbox_depth,"
    " uplink_pending, errors FROM fleet"
)
_ROLLOUT_SQL = (
    "SELECT store, gateway, bundle, outcome, reason, rules_version, at FROM rollout_latest"
)


def read_fleet(dsn: str) -> tuple[list[GatewayRow], list[RolloutRow]]:
    """The ``fleet`` table and ``rollout_latest`` (blocking: run it in a thread)."""
    with psycopg.connect(dsn, connect_timeout=DB_TIMEOUT_S) as conn:
        gateways = [GatewayRow(*row) for row in conn.execute(_FLEET_SQL)]
        rollouts = [RolloutRow(*row) for row in conn.execute(_ROLLOUT_SQL)]
    return gateways, rollouts


class FleetState:
    """What the fleet page shows: the database's rows (as last read), overlaid with what
    this hq has received since (statuses and rollout reports: with several hq processes
    in one share group, each receives some stores only) and hq's :class:`Fleet` (last
    seen, also by facts batches; online; the outbox and uplink counts)."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.gateways: dict[tuple[str, str], GatewayRow] = {}
        self.rollouts: dict[str, RolloutRow] = {}
        self.loaded = False

    def load(self, gateways: Sequence[GatewayRow], rollouts: Sequence[RolloutRow]) -> None:
        """The database's rows; a row older than one received here is not taken."""
        for row in gateways:
            key = (row.store, row.gateway)
            known = self.gateways.get(key)
            if known is None or known.last_seen <= row.last_seen:
                self.gateways[key] = row
        for report in rollouts:
            self._rollout(report)
        self.loaded = True

    def status(self, status: GatewayStatus, at: datetime) -> None:
        self.gateways[(status.store, status.gateway)] = GatewayRow(
            status.store,
            status.gateway,
            at,
            status.online,
            status.version,
            status.rules_version,
            status.bundle,
            status.outbox_depth,
            status.uplink_pending,
            status.errors,
        )

    def report(self, report: RolloutReport) -> None:
        self._rollout(
            RolloutRow(
                report.store,
                report.gateway,
                report.bundle,
                report.outcome,
                report.reason,
                report.rules_version,
                report.at,
            )
        )

    def _rollout(self, row: RolloutRow) -> None:
        known = self.rollouts.get(row.store)
        if known is None or known.at <= row.at:
            self.rollouts[row.store] = row

    def rows(self) -> list[GatewayRow]:
        """Every gateway, with hq's in-memory state where it is newer."""
        out = dict(self.gateways)
        for key, seen in self.fleet.gateways.items():
            row = out.get(key)
            if row is None:
                out[key] = GatewayRow(
                    seen.store,
                    seen.gateway,
                    seen.last_seen,
                    seen.online,
                    outbox_depth=seen.outbox_depth,
                    uplink_pending=seen.uplink_pending,
                    errors=seen.errors,
                )
            elif seen.last_seen >= row.last_seen:
                out[key] = replace(
                    row,
                    last_seen=seen.last_seen,
                    online=seen.online,
                    outbox_depth=seen.outbox_depth,
                    uplink_pending=seen.uplink_pending,
                    errors=seen.errors,
                )
        return list(out.values())

    def stale(self, rows: Sequence[GatewayRow], now: datetime) -> dict[str, bool]:
        """Store → stale: none of its gateways online and heard from within stale_after
        (hq's rule for ``proximity_hq_store_stale``)."""
        limit = now - self.fleet.stale_after
        out: dict[str, bool] = {}
        for row in rows:
            fresh = row.online and row.last_seen >= limit
            out[row.store] = out.get(row.store, True) and not fresh
        return out


class FleetFeed(Broadcast):
    """The browsers following the fleet page."""

    def __init__(self, subscriber_queue: int = 256, max_subscribers: int = 16) -> None:
        super().__init__(subscriber_queue, max_subscribers)
        self.changes = 0

    def changed(self, store: str) -> None:
        """Something of ``store`` changed (a status or rollout report arrived)."""
        self.changes += 1
        self.broadcast({"store": store})


# -- the console -----------------------------------------------------------------------------


class ChainConsole:
    def __init__(
        self,
        settings: HqSettings,
        fleet: Fleet,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        host: str = "127.0.0.1",
    ) -> None:
        """``fleet``: hq's; ``host``: the address the server listens on (not loopback:
        a token is needed)."""
        self.hq_settings = settings
        self.settings: ConsoleSettings = settings.console
        self.dsn = settings.hq.database
        self.clock = clock
        self.state = FleetState(fleet)
        self.feed = FleetFeed(self.settings.subscriber_queue, self.settings.max_subscribers)
        stale_s = fleet.stale_after.total_seconds()
        self.period = min(5.0, max(0.1, stale_s / 4))
        """How often a stream looks whether a store went stale with time."""
        self.guard = TokenGuard(self.settings, host, "[console] token in hq.toml")

    @property
    def refused(self) -> int:
        """Requests refused for a missing or wrong token."""
        return self.guard.refused

    # -- what hq hands over ----------------------------------------------------------------

    def tap(self, then: Messages) -> Messages:
        """hq's ``on_messages`` (``then``), followed by the fleet page's share: statuses
        and rollout reports (a few a minute per store; facts batches pass untouched)."""

        def both(messages: list[tuple[str, bytes]]) -> None:
            then(messages)
            for topic, payload in messages:
                if topic.endswith(("/up/status", "/up/rollout")):
                    self.heard(topic, payload)

        return both

    def heard(self, topic: str, payload: bytes) -> None:
        message = parse_uplink(topic, payload)  # a bad one: hq itself counted and logged it
        if isinstance(message, GatewayStatus):
            self.state.status(message, self.clock())
        elif isinstance(message, RolloutReport):
            self.state.report(message)
        else:
            return
        self.feed.changed(message.store)

    # -- the HTTP side ---------------------------------------------------------------------

    async def respond(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Answer the request whose head was read (hq's HealthServer hands over every
        path that starts with /console); the caller closes ``writer``."""
        try:
            request = Request.parse(head)
        except ValueError:
            await write_response(writer, (400, TEXT, b"bad request\n"))
            return
        denied = self.guard.check(request)
        if denied is not None:
            await write_response(writer, denied)
            return
        if request.path == "/console/events" and request.method == "GET":
            await self.stream(writer, reader)
            return
        response = await self.handle(request)
        await write_response(writer, response, self.guard.headers(response, request))

    async def handle(self, request: Request) -> Response:
        """One page (not the stream), its token already checked: (status, type, body). A 303
        means the token in the query was right: set the cookie, go to the same path."""
        if request.method != "GET":
            return 405, TEXT, b"the console is read-only: GET only\n"
        if self.guard.accepted(request):
            return ACCEPTED
        path = request.path
        try:
            if path in ("/console", "/console/"):
                return 200, HTML, await self.fleet_page()
            if path == "/console/funnel":
                return await self.funnel_page(request.query)
            if path.startswith("/console/static/"):
                return static_file(path.removeprefix("/console/static/"))
        except Exception:  # one page's bug must not take hq's HTTP server down
            log.exception("console_page_failed", path=path)
            return 503, TEXT, b"this page failed; hq is unaffected (see its log)\n"
        return 404, TEXT, b"not found: /console/, /console/funnel\n"

    async def stream(
        self, writer: asyncio.StreamWriter, reader: asyncio.StreamReader | None = None
    ) -> None:
        """Server-Sent Events: the fleet now, then the fleet again whenever a status or
        rollout report arrives or a store goes stale or fresh with time."""
        subscription = self.feed.subscribe()
        if subscription is None:
            await write_response(writer, (503, TEXT, b"too many browsers follow the fleet page\n"))
            return
        gone: asyncio.Future[bytes] | None = None
        if reader is not None:  # a browser sends nothing more; EOF means it left
            gone = asyncio.ensure_future(reader.read(1))
            gone.add_done_callback(lambda _: subscription.close())
        try:
            if not self.state.loaded:
                await self.refresh()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Cache-Control: no-store\r\nX-Accel-Buffering: no\r\n"
                b"Connection: close\r\n\r\nretry: 2000\n\n"
            )
            sent = self.live()
            writer.write(sse_message("snapshot", {"fleet": sent}))
            await writer.drain()
            await self._follow(subscription, writer, sent)
        except (ConnectionError, TimeoutError):
            pass  # the browser went away, or reads too slowly to keep
        finally:
            self.feed.unsubscribe(subscription)
            if gone is not None:
                gone.cancel()

    async def _follow(
        self, subscription: Subscription, writer: asyncio.StreamWriter, sent: dict[str, Any]
    ) -> None:
        while not subscription.closed:
            changes: list[dict[str, Any]] = []
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.period):
                    changes = await subscription.wait()
            if subscription.closed:
                return
            if changes:
                await asyncio.sleep(GATHER_S)  # let a burst gather: one message, not dozens
                subscription.take()
            now = self.live()
            if now == sent:  # the timer found nothing gone stale or fresh
                continue
            sent = now
            writer.write(sse_message("update", {"fleet": now, "dropped": subscription.dropped}))
            await asyncio.wait_for(writer.drain(), 10.0)

    def live(self) -> dict[str, Any]:
        """The fleet page's live part: its figures and the table's rows (HTML)."""
        rows = self.state.rows()
        stale = self.state.stale(rows, self.clock())
        return {
            "stores": len(stale),
            "stale": sum(stale.values()),
            "rows": fleet_rows(rows, stale, self.state.rollouts),
        }

    async def refresh(self) -> str | None:
        """Read the fleet from PostgreSQL again; the reason when it could not be read."""
        try:
            gateways, rollouts = await asyncio.to_thread(read_fleet, self.dsn)
        except psycopg.Error as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            log.warning("console_fleet_unread", error=reason)
            return reason
        self.state.load(gateways, rollouts)
        return None

    # -- pages -----------------------------------------------------------------------------

    async def fleet_page(self) -> bytes:
        problem = await self.refresh()
        body = fleet(self.live(), problem, self.hq_settings.hq.stale_after)
        return views.page("Fleet", "/console/", body, __version__, PAGES)

    async def funnel_page(self, query: dict[str, str]) -> Response:
        settings = self.hq_settings
        group = query.get("group") or None
        try:
            since = parse_since(query.get("since", ""), self.clock())
            stores = settings.group(group) if group is not None else None
        except (ValueError, ConfigError) as exc:
            form = funnel_form(sorted(settings.groups), query)
            body = form + views.problem(str(exc))
            return (
                400,
                HTML,
                views.page("Chain funnel", "/console/funnel", body, __version__, PAGES),
            )
        try:
            report = await asyncio.to_thread(_report, self.dsn, stores, since)
        except psycopg.Error as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            log.warning("console_report_failed", error=reason)
            body = views.problem(f"PostgreSQL could not be read: {reason}")
            return (
                503,
                HTML,
                views.page("Chain funnel", "/console/funnel", body, __version__, PAGES),
            )
        body = (
            funnel_form(sorted(settings.groups), query)
            + scope(group, stores, since)
            + chain_funnel(report)
        )
        return 200, HTML, views.page("Chain funnel", "/console/funnel", body, __version__, PAGES)


def _report(dsn: str, stores: list[str] | None, since: datetime | None) -> ChainReport:
    with psycopg.connect(dsn, connect_timeout=DB_TIMEOUT_S) as conn:
        return chain_report(conn, stores=stores, since=since)


def parse_since(text: str, now: datetime) -> datetime | None:
    """``?since=``: empty (everything), a duration back from ``now`` ("2h", "7d") or an ISO
    time (UTC when it has no offset), as ``proximity report --since``. ValueError with the
    reason otherwise."""
    text = text.strip()
    if not text:
        return None
    try:
        back = parse_duration(text)
    except ValueError:
        pass
    else:
        try:
            return now - back
        except OverflowError:
            raise ValueError(f"since {text!r} is before the calendar starts") from None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f'since {text!r} is neither a duration ("2h", "7d") nor an ISO time '
            '("2026-12-01" or "2026-12-01T08:00:00+01:00")'
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def mount(hq: Hq) -> ChainConsole | None:
    """The chain's console on ``hq``'s HTTP server (None when ``[console] enabled`` is
    false or hq serves no /metrics). hq's uplink goes through :meth:`ChainConsole.tap`:
    give ``console.tap(hq._received)`` as the link's ``on_messages``."""
    health = hq.health
    if not hq.settings.console.enabled or health is None:
        return None
    console = ChainConsole(hq.settings, hq.fleet, hq.clock, health.host)
    health.console = console
    log.info("chain_console_mounted", path="/console/")
    return console
