"""Journey logs: the daemon's events as JSON lines, for ``proximity replay``.

One line per journey event, exactly the event's JSON. Reading is forgiving: a
line that is not a valid event is skipped, counted and reported with its line
number, so a log cut short by a crash still replays.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from pydantic import ValidationError

from proximity.events import JourneyEvent


class JourneyRecorder:
    """Appends events to a JSON-lines file, one flushed line each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self.written = 0

    def __enter__(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def record(self, event: JourneyEvent) -> None:
        assert self._file is not None, "use JourneyRecorder as a context manager"
        self._file.write(event.model_dump_json() + "\n")
        self._file.flush()
        self.written += 1


@dataclass
class JourneyLog:
    events: list[tuple[int, JourneyEvent]] = field(default_factory=list)
    """(line number, event)"""
    rejected: list[tuple[int, str]] = field(default_factory=list)
    """(line number, reason)"""


def read_journey(path: Path) -> JourneyLog:
    log = JourneyLog()
    with path.open(encoding="utf-8") as lines:
        for number, line in _numbered(lines):
            if not line.strip():
                continue
            try:
                log.events.append((number, JourneyEvent.model_validate_json(line)))
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "line"
                log.rejected.append((number, f"{where}: {first['msg']}"))
    log.events.sort(key=lambda item: item[1].at)
    return log


def _numbered(lines: IO[str]) -> Iterator[tuple[int, str]]:
    yield from enumerate(lines, start=1)
