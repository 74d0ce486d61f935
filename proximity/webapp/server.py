"""A tiny static server for the shopper web app (``proximity app --web``), for development.

The app itself is static files (this package's ``index.html``, ``app.js``, ``mqtt.js``,
``app.css`` and ``vendor/``) that any web server can serve; this one serves exactly
those files and nothing else (no directory listing, no path outside the list), GET and
HEAD only, one request per connection, on loopback unless told otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from importlib import resources

import structlog

log = structlog.get_logger(__name__)

MAX_REQUEST_BYTES = 8192
READ_TIMEOUT_S = 10.0
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    "": "text/plain; charset=utf-8",  # vendor/LICENSE
}
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
}


def webapp_files() -> dict[str, bytes]:
    """The app's files by URL path (``/index.html``, ``/vendor/qrcode.js``, …), read once."""
    root = resources.files("proximity.webapp")
    files: dict[str, bytes] = {}
    for folder, prefix in ((root, "/"), (root / "vendor", "/vendor/")):
        for item in folder.iterdir():
            suffix = "." + item.name.rsplit(".", 1)[1] if "." in item.name else ""
            if item.is_file() and suffix in TYPES and not item.name.startswith("."):
                files[prefix + item.name] = item.read_bytes()
    files["/"] = files["/index.html"]
    return files


class WebappServer:
    """``async with WebappServer(host, port) as server: print(server.url)``; port 0 picks one."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8080) -> None:
        self.host = host
        self.port = port
        self.files = webapp_files()
        self.rejected: Counter[str] = Counter()
        """Requests refused, per reason (bad_request, not_found, method, timeout)."""
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def __aenter__(self) -> WebappServer:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def serve_forever(self) -> None:
        assert self._server is not None, "use: async with WebappServer(...) as server"
        await self._server.serve_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
        except TimeoutError:
            await self._answer(writer, 408, "timeout")
            return
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            self._refuse("bad_request")
            writer.close()
            return
        if len(head) > MAX_REQUEST_BYTES:
            await self._answer(writer, 400, "bad_request")
            return
        method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
        target = rest.partition(" ")[0]
        if method not in ("GET", "HEAD"):
            await self._answer(writer, 405, "method")
            return
        path = target.split("?", 1)[0].split("#", 1)[0]
        body = self.files.get(path)
        if body is None:
            await self._answer(writer, 404, "not_found")
            return
        name = path.rsplit("/", 1)[1] or "index.html"
        suffix = "." + name.rsplit(".", 1)[1] if "." in name else ""
        await self._send(writer, 200, TYPES[suffix], body, head_only=method == "HEAD")

    def _refuse(self, reason: str) -> None:
        self.rejected[reason] += 1
        if self.rejected[reason] == 1:
            log.warning("webapp_request_refused", reason=reason)

    async def _answer(self, writer: asyncio.StreamWriter, status: int, reason: str) -> None:
        self._refuse(reason)
        text = f"{status} {REASONS[status]}\n".encode()
        await self._send(writer, status, TYPES[""], text, head_only=False)

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        content_type: str,
        body: bytes,
        *,
        head_only: bool,
    ) -> None:
        headers = (
            f"HTTP/1.1 {status} {REASONS[status]}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\n"
            "X-Content-Type-Options: nosniff\r\n"
            "Referrer-Policy: no-referrer\r\n"
            "Connection: close\r\n\r\n"
        )
        with contextlib.suppress(ConnectionError):
            writer.write(headers.encode() + (b"" if head_only else body))
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
