"""structlog, configured once by the CLI (library modules only call ``get_logger``).

Console rendering on a terminal, JSON lines otherwise (systemd, files, log shippers).
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


LogLevel = Literal["debug", "info", "warning", "error"]


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
