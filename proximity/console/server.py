"""The ops console: read-only pages on the daemon's metrics HTTP server.

    GET /console/           the live store: floor plan, zones shaded by shoppers now,
                            scanners' health, the live feed, offers per minute
    GET /console/events     Server-Sent Events for the live page (no polling)
    GET /console/funnel     the funnel per rule and variant, uplift against the holdout
    GET /console/rules      the rules serving, the last reload, lint, tests, explain
    GET /console/static/*   the page's CSS and script (shipped in the package)

:class:`Console` answers one request at a time from its head (:meth:`Console.respond`),
so the daemon's :class:`~proximity.metrics.HealthServer` can hand it every request whose
path starts with ``/console``; :class:`ConsoleServer` is the same on a server of its own
(tests, or a console without ``/metrics``). Everything is computed from what the daemon
already keeps: a page view reads the daemon's state on the event loop and never blocks
it for longer than rendering one page.

A token (``[console] token``) is asked for whenever it is set, and the console refuses to
serve without one when it listens on anything but loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import structlog

from proximity import __version__
from proximity.console import views
from proximity.console.feed import ConsoleFeed, Subscription
from proximity.console.settings import ConsoleSettings
from proximity.daemon import Daemon
from proximity.engine.decide import Decider
from proximity.engine.loader import fingerprint, load_rule_files
from proximity.engine.reload import RuleWatcher
from proximity.engine.ruletests import CaseResult, run_all
from proximity.engine.table import RuleTable
from proximity.errors import RuleError, RuleFileError

log = structlog.get_logger(__name__)

Response = tuple[int, str, bytes]
HTML = "text/html; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
COOKIE = "proximity_console"
MAX_HEAD = 8192
HEARTBEAT_S = 5.0
"""An idle stream gets the scanners' health this often (and a dead browser is noticed)."""
GATHER_S = 1.0
"""What happens within this long of an update goes in one message: a busy store's page
is redrawn once a second, not once per event (the browser's drawing is CPU the gateway
may share)."""
_STATIC = {
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
}
_REASONS = {
    200: "OK",
    303: "See Other",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}
_SECURITY = (
    "Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'\r\n"
    "X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n"
    "Cache-Control: no-store\r\n"
)


class Request:
    """A request's head: method, path, query and headers (names lower-cased)."""

    def __init__(self, method: str, target: str, headers: dict[str, str]) -> None:
        parts = urlsplit(target)
        self.target = target
        self.method = method
        self.path = parts.path
        self.query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.headers = headers

    @classmethod
    def parse(cls, head: bytes) -> Request:
        """Raises ValueError for anything that is not an HTTP/1.x request head."""
        if len(head) > MAX_HEAD:
            raise ValueError("request too large")
        lines = head.decode("latin-1").split("\r\n")
        method, target, protocol = lines[0].split(" ", 2)
        if not protocol.startswith("HTTP/1.") or not target.startswith("/"):
            raise ValueError("not an HTTP/1.x request")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError("malformed header line")
            headers[name.strip().lower()] = value.strip()
        return cls(method, target, headers)

    def cookie(self, name: str) -> str | None:
        for part in self.headers.get("cookie", "").split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value
        return None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


ACCEPTED: Response = (303, TEXT, b"token accepted\n")
"""The answer to a request whose ``?token=`` was right: set the cookie, go to the path."""


class TokenGuard:
    """Who may see a console: anyone, on loopback with no token configured; else whoever
    gives the token (``Authorization: Bearer``, or ``?token=`` once, which sets a same-site
    cookie). Off loopback with no token, nobody: 403."""

    def __init__(self, settings: ConsoleSettings, host: str, setting: str) -> None:
        token = settings.token
        self.token = token.get_secret_value() if token is not None else None
        self.open = self.token is None and is_loopback(host)
        self.refused = 0
        """Requests refused for a missing or wrong token."""
        self._setting = setting
        if self.token is None and not self.open:
            log.error(
                "console_needs_token",
                host=host,
                consequence=f"the console answers 403 until {setting} is set",
            )

    def check(self, request: Request) -> Response | None:
        """None when the request may see the console; the refusal otherwise."""
        if self.open:
            return None
        if self.token is None:
            return 403, TEXT, f"the console needs {self._setting} when not on loopback\n".encode()
        given = request.query.get("token") or request.cookie(COOKIE)
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
            return None
        self.refused += 1
        return 401, TEXT, b"a token is needed: Authorization: Bearer ..., or /console/?token=\n"

    def accepted(self, request: Request) -> bool:
        """The request (already checked) gave the token in its query: answer :data:`ACCEPTED`."""
        return "token" in request.query and self.token is not None

    def headers(self, response: Response, request: Request) -> str:
        """The cookie and the redirect that go with :data:`ACCEPTED` (never a header taken
        from the request)."""
        if response[0] != 303 or self.token is None:
            return ""
        return (
            f"Location: {request.path}\r\nSet-Cookie: {COOKIE}={self.token}; "
            "Path=/console; HttpOnly; SameSite=Strict\r\n"
        )


class Console:
    def __init__(
        self,
        daemon: Daemon,
        feed: ConsoleFeed,
        settings: ConsoleSettings | None = None,
        watcher: RuleWatcher | None = None,
        host: str = "127.0.0.1",
        rule_paths: Sequence[Path] = (),
    ) -> None:
        """``host``: the address the server listens on (not loopback: a token is needed);
        ``watcher``: the hot reload, when rules are watched; ``rule_paths``: the files the
        rules came from when they are not watched."""
        self.daemon = daemon
        self.feed = feed
        self.settings = settings or ConsoleSettings()
        self.watcher = watcher
        self.host = host
        self._rule_paths = list(rule_paths)
        self.guard = TokenGuard(self.settings, host, "[console] token")
        self._on_disk: tuple[str, list[RuleError], str | None] | None = None
        self._checked: tuple[RuleTable, list[CaseResult]] | None = None

    @property
    def refused(self) -> int:
        """Requests refused for a missing or wrong token."""
        return self.guard.refused

    # -- the HTTP side ---------------------------------------------------------------------

    async def respond(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Answer the request whose head (up to the blank line) was read; the caller closes
        ``writer`` afterwards. A stream (``/console/events``) returns when it ends."""
        try:
            request = Request.parse(head)
        except ValueError:
            await write_response(writer, (400, TEXT, b"bad request\n"))
            return
        if request.path == "/console/events" and request.method == "GET":
            denied = self.guard.check(request)
            if denied is not None:
                await write_response(writer, denied)
                return
            await self.stream(writer, reader)
            return
        response = self.handle(request.method, request.target, request.headers)
        await write_response(writer, response, self.guard.headers(response, request))

    def handle(self, method: str, target: str, headers: dict[str, str]) -> Response:
        """One request (not the event stream): (status, content type, body). A 303 means:
        the token in the query was right; set it as the cookie and go to the same path."""
        request = Request(method, target, {k.lower(): v for k, v in headers.items()})
        if method != "GET":
            return 405, TEXT, b"the console is read-only: GET only\n"
        denied = self.guard.check(request)
        if denied is not None:
            return denied
        if self.guard.accepted(request):
            return ACCEPTED
        path = request.path
        try:
            if path in ("/console", "/console/"):
                return 200, HTML, self.live_page()
            if path == "/console/funnel":
                return 200, HTML, self.funnel_page()
            if path == "/console/rules":
                return 200, HTML, self.rules_page(request.query)
            if path.startswith("/console/static/"):
                return static_file(path.removeprefix("/console/static/"))
        except Exception:  # one page's bug must not take the daemon's HTTP server down
            log.exception("console_page_failed", path=path)
            return 503, TEXT, b"this page failed; the daemon is unaffected (see its log)\n"
        return 404, TEXT, b"not found: /console/, /console/funnel, /console/rules\n"

    async def stream(
        self, writer: asyncio.StreamWriter, reader: asyncio.StreamReader | None = None
    ) -> None:
        """Server-Sent Events: a snapshot, then the feed's updates as they come (several
        in one message when they come fast), the scanners' health when idle. ``reader``:
        the connection's, to notice at once that the browser has gone."""
        subscription = self.feed.subscribe()
        if subscription is None:
            await write_response(writer, (503, TEXT, b"too many browsers follow the live page\n"))
            return
        gone: asyncio.Future[bytes] | None = None
        if reader is not None:  # a browser sends nothing more; EOF means it left
            gone = asyncio.ensure_future(reader.read(1))
            gone.add_done_callback(lambda _: subscription.close())
        try:
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Cache-Control: no-store\r\nX-Accel-Buffering: no\r\n"
                b"Connection: close\r\n\r\nretry: 2000\n\n"
            )
            writer.write(sse_message("snapshot", self._state(self.feed.recent(50))))
            await writer.drain()
            await self._follow(subscription, writer)
        except (ConnectionError, TimeoutError):
            pass  # the browser went away, or reads too slowly to keep
        finally:
            self.feed.unsubscribe(subscription)
            if gone is not None:
                gone.cancel()

    async def _follow(self, subscription: Subscription, writer: asyncio.StreamWriter) -> None:
        while not subscription.closed:
            entries: list[dict[str, Any]] = []
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HEARTBEAT_S):
                    entries = await subscription.wait()
            if subscription.closed:
                return
            if entries:
                await asyncio.sleep(GATHER_S)  # let a burst gather: one message, not dozens
                entries += subscription.take()
            state = self._state(entries)
            state["dropped"] = subscription.dropped
            writer.write(sse_message("update", state))
            await asyncio.wait_for(writer.drain(), 10.0)

    def _state(self, entries: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "feed": entries,
            "zones": self.feed.occupancy(),
            "opm": self.feed.offers_per_minute(),
            "scanners": {s.id: s.alive for s in self._scanners()},
        }

    # -- pages -----------------------------------------------------------------------------

    def live_page(self) -> bytes:
        table = self.daemon.pipeline.table
        locator = self.daemon.pipeline.locator
        plan = locator.plan if locator is not None else None
        if plan is not None:
            zones = [(z.id, z.name) for z in plan.zones]
        else:
            zones = [(zid, z.name) for zid, z in table.ruleset.zones.items()]
        body = views.live(
            zones,
            self.feed.occupancy(),
            self._scanners(),
            self._nodes(),
            plan,
            self.feed.recent(50),
            self.feed.offers_per_minute(),
        )
        return views.page("Live store", "/console/", body, __version__)

    def funnel_page(self) -> bytes:
        from proximity.chain.report import Uplift
        from proximity.measurement.store import Stage

        rows = self.daemon.measure.funnel()
        per_rule: dict[str, list[int]] = {}
        for row in rows:
            sums = per_rule.setdefault(row.rule, [0, 0, 0, 0])
            for n, stage in enumerate(
                (Stage.PUBLISHED, Stage.CONVERTED, Stage.HELD_OUT, Stage.HELD_OUT_CONVERTED)
            ):
                sums[n] += row.stages[stage]
        uplift = {rule: Uplift(rule, *sums) for rule, sums in per_rule.items()}
        return views.page("Funnel", "/console/funnel", views.funnel(rows, uplift), __version__)

    def rules_page(self, query: dict[str, str]) -> bytes:
        from proximity.engine.lint import lint

        table = self.daemon.pipeline.table
        watcher = self.watcher
        paths = watcher.paths if watcher is not None else self._rule_paths
        locator = self.daemon.pipeline.locator
        placed = frozenset(locator.plan.zone_ids) if locator is not None else frozenset()
        today = table.local_time(self.daemon.clock.now()).date()
        errors, on_disk = self._disk(paths)
        view = views.RulesView(
            version=table.version,
            rules=len(table.rules),
            files=[str(p) for p in paths],
            reloads=watcher.reloads if watcher is not None else None,
            failures=watcher.failures if watcher is not None else None,
            errors=errors,
            on_disk=on_disk,
            findings=lint(table.ruleset, today, placed),
            tests=self._tests(table),
        )
        explained = ""
        if "explain" in query:
            try:
                heading, lines = explain(table, query)
                explained = views.explained(heading, lines)
            except ValueError as exc:
                explained = views.problem(str(exc))
        zones = sorted(table.ruleset.zones) or (list(placed) if placed else [])
        form = views.explain_form(zones, query)
        body = views.rules(view, form, explained)
        return views.page("Rules", "/console/rules", body, __version__)

    def _disk(self, paths: Sequence[Path]) -> tuple[list[RuleError], str | None]:
        """The problems of the rule files as they are on disk now, and their version when
        they are valid (checked again only when the files change): what the hot reload
        finds at its next look, or found at its last."""
        if not paths:
            return [], None
        current = fingerprint(paths)
        if self._on_disk is None or self._on_disk[0] != current:
            try:
                version = RuleTable.from_ruleset(load_rule_files(paths)).version
                self._on_disk = (current, [], version)
            except RuleFileError as exc:
                self._on_disk = (current, list(exc.errors), None)
        return self._on_disk[1], self._on_disk[2]

    def _tests(self, table: RuleTable) -> list[CaseResult]:
        if self._checked is None or self._checked[0] is not table:
            self._checked = (table, run_all(table))
        return self._checked[1]

    def _scanners(self) -> list[views.ScannerHealth]:
        """Every scanner the floor plan or the rule files name: alive, or silent (a node
        that said it is offline or went quiet; with a floor plan, a scanner nobody has
        been heard by lately) — the sources /metrics and the presence layer use; unknown
        when neither reports on it (a local radio without a floor plan)."""
        daemon = self.daemon
        backend = daemon.adapter.backend
        down_of = getattr(backend, "scanners_down", None)
        watched = callable(down_of)
        down = set(down_of()) if callable(down_of) else set()
        locator = daemon.pipeline.locator
        if locator is not None:
            now = locator.seconds(daemon.clock.now())
            return [
                views.ScannerHealth(
                    s.id, s.id not in down and locator.liveness.alive(s.id, now), s.position
                )
                for s in locator.plan.scanners
            ]
        names = sorted(
            {s for zone in daemon.pipeline.table.ruleset.zones.values() for s in zone.scanners}
            | down
        )
        return [views.ScannerHealth(s, (s not in down) if watched else None) for s in names]

    def _nodes(self) -> dict[str, str]:
        backend = self.daemon.adapter.backend
        out: dict[str, str] = {}
        for part in getattr(backend, "parts", (backend,)):
            ingest = getattr(part, "ingest", None)
            for node, health in getattr(ingest, "nodes", {}).items():
                out[str(node)] = str(health.state)
        return out


def explain(table: RuleTable, query: dict[str, str]) -> tuple[str, list[dict[str, str | None]]]:
    """The explain form's event through the engine, exactly as ``proximity rules explain``
    parses and decides it: one dict per rule, as its ``--json`` lines. Raises ValueError
    (with the reason) for an event that cannot be built."""
    from proximity.cli.rules_cmd import parse_event

    short: dict[str, Any] = {
        "kind": query.get("kind", ""),
        "consent": query.get("consent", "on") in ("on", "true", "1"),
    }
    if query.get("zone"):
        short["zone"] = query["zone"]
    if query.get("dwell"):
        try:
            short["dwell"] = float(query["dwell"])
        except ValueError as exc:
            raise ValueError("dwell must be a number of seconds") from exc
    if query.get("at"):
        short["at"] = query["at"]
    event = parse_event(json.dumps(short), table)
    segments = frozenset(s.strip() for s in query.get("segments", "").split(",") if s.strip())
    if segments:
        event = event.model_copy(
            update={"shopper": event.shopper.model_copy(update={"segments": segments})}
        )
    lines: list[dict[str, str | None]] = []
    for verdict, control in Decider(table).explain(event):
        line: dict[str, str | None] = {"rule": verdict.rule, "verdict": str(verdict.verdict)}
        if control is not None:
            line.update(verdict="suppressed", control=str(control[0]), reason=control[1])
        else:
            line["reason"] = verdict.reason
        lines.append(line)
    local = table.local_time(event.at)
    zone = f" in {event.zone}" if event.zone else ""
    heading = (
        f"{event.kind}{zone} at {local:%a %Y-%m-%d %H:%M} store time, "
        f"consent {'yes' if event.shopper.consent else 'no'}"
    )
    return heading, lines


class ConsoleServer:
    """The console on an HTTP server of its own (the daemon's normally delegates to it)."""

    def __init__(self, console: Console, host: str = "127.0.0.1", port: int = 0) -> None:
        self.console = console
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("console_listening", url=f"http://{self.host}:{self.port}/console/")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.console.feed.close()  # open streams end (at their next wake-up)...
        if self._handlers:  # ...and their handlers return
            await asyncio.wait(self._handlers, timeout=2.0)
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            head = b""
        try:
            await self.console.respond(head, reader, writer)
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def static_file(name: str) -> Response:
    kind = _STATIC.get(name)
    if kind is None:
        return 404, TEXT, b"not found\n"
    body = resources.files("proximity.console").joinpath("static", name).read_bytes()
    return 200, kind, body


def sse_message(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def write_response(writer: asyncio.StreamWriter, response: Response, extra: str = "") -> None:
    status, kind, body = response
    writer.write(
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: {kind}\r\n"
        f"Content-Length: {len(body)}\r\n{_SECURITY}{extra}Connection: close\r\n\r\n".encode()
        + body
    )
    await writer.drain()
