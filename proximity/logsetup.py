"""structlog, configured once by the CLI (library modules only call ``get_logger``).

Console rendering on a terminal, JSON lines otherwise (systemd, files, log shippers).
Every event name is rate-limited (a token bucket per name: a burst of 200, then
50 a second): a flood of bad frames or a broker flapping cannot fill the disk.
The first line let through after a dropped stretch says how many were dropped
(``"suppressed": N``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any, Literal, TextIO

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


LogLevel = Literal["debug", "info", "warning", "error"]


class RateLimit:
    """A structlog processor: at most ``burst`` lines of one event name at once, then
    ``per_second``; dropped lines are counted onto the next line let through."""

    def __init__(
        self,
        per_second: float = 50.0,
        burst: int = 200,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = per_second
        self._burst = float(burst)
        self._monotonic = monotonic
        self._buckets: dict[str, tuple[float, float]] = {}
        self._dropped: dict[str, int] = {}

    def __call__(
        self, logger: object, method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        name = str(event.get("event", ""))
        now = self._monotonic()
        tokens, at = self._buckets.get(name, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        if tokens < 1.0:
            self._buckets[name] = (tokens, now)
            self._dropped[name] = self._dropped.get(name, 0) + 1
            raise structlog.DropEvent
        self._buckets[name] = (tokens - 1.0, now)
        dropped = self._dropped.pop(name, 0)
        if dropped:
            event["suppressed"] = dropped
        if len(self._buckets) > 10_000:  # event names are a fixed set; never grow anyway
            self._buckets.clear()
        return event


def configure_logging(
    level: LogLevel = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    stream: TextIO | None = None,
) -> None:
    out = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    processors: list[structlog.types.Processor] = [
        RateLimit(),
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if use_json:  # the console renderer formats exceptions itself
        processors.append(structlog.processors.format_exc_info)
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # Third-party libraries log through the standard library; keep them quiet.
    logging.basicConfig(
        level=logging.WARNING, stream=out, format="%(levelname)s %(name)s: %(message)s"
    )
    # nfcpy sets its own loggers to INFO ("searching for reader"...) and its DEBUG lines
    # carry raw tag UIDs: they stay at WARNING whatever the daemon's own level is
    logging.getLogger("nfc").setLevel(logging.WARNING)
