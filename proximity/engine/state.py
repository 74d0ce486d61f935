"""Delivery-control state on disk: caps, cooldowns and budgets survive a restart.

Every offer sent is one row in SQLite (WAL mode, so a crash loses at most the
last write). On start the daemon loads the rows young enough to matter for
the longest window any control uses. If the file cannot be opened or written
(a full disk, a corrupt file), the error is logged once and the controls keep
working from memory: a restart would then forget, but offers never stop.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

#: How long visits are remembered, for visit counts and recency.
VISIT_MEMORY = timedelta(days=400)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sent (
    shopper TEXT NOT NULL,
    rule    TEXT NOT NULL,
    visit   TEXT NOT NULL,
    at      TEXT NOT NULL  -- ISO 8601 with offset, store time
);
CREATE INDEX IF NOT EXISTS sent_at ON sent (at);
CREATE TABLE IF NOT EXISTS visits (
    shopper TEXT NOT NULL,
    visit   TEXT NOT NULL,
    started TEXT NOT NULL  -- ISO 8601 with offset, store time
);
CREATE INDEX IF NOT EXISTS visits_started ON visits (started);
"""


class StateStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self.failed = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            self._fail("delivery_state_unavailable", exc)

    def load(self, since: datetime) -> Iterator[tuple[str, str, str, datetime]]:
        """(shopper, rule, visit, at) for every offer sent since ``since``, oldest first."""
        if self._db is None:
            return
        try:
            rows = self._db.execute(
                "SELECT shopper, rule, visit, at FROM sent ORDER BY at"
            ).fetchall()
        except sqlite3.Error as exc:
            self._fail("delivery_state_unreadable", exc)
            return
        for shopper, rule, visit, at in rows:
            when = datetime.fromisoformat(at)
            if when >= since:
                yield shopper, rule, visit, when

    def load_visits(self, since: datetime) -> Iterator[tuple[str, str, datetime]]:
        """(shopper, visit, started) for every visit started since ``since``, oldest first."""
        if self._db is None:
            return
        try:
            rows = self._db.execute(
                "SELECT shopper, visit, started FROM visits ORDER BY started"
            ).fetchall()
        except sqlite3.Error as exc:
            self._fail("delivery_state_unreadable", exc)
            return
        for shopper, visit, started in rows:
            when = datetime.fromisoformat(started)
            if when >= since:
                yield shopper, visit, when

    def append_visit(self, shopper: str, visit: str, started: datetime) -> None:
        if self._db is None:
            return
        try:
            self._db.execute(
                "INSERT INTO visits (shopper, visit, started) VALUES (?, ?, ?)",
                (shopper, visit, started.isoformat()),
            )
        except sqlite3.Error as exc:
            self._fail("delivery_state_write_failed", exc)

    def append(self, shopper: str, rule: str, visit: str, at: datetime) -> None:
        if self._db is None:
            return
        try:
            self._db.execute(
                "INSERT INTO sent (shopper, rule, visit, at) VALUES (?, ?, ?, ?)",
                (shopper, rule, visit, at.isoformat()),
            )
        except sqlite3.Error as exc:
            self._fail("delivery_state_write_failed", exc)

    def prune(self, before: datetime) -> None:
        if self._db is None:
            return
        try:
            self._db.execute("DELETE FROM sent WHERE at < ?", (before.isoformat(),))
            keep_visits = before - VISIT_MEMORY
            self._db.execute("DELETE FROM visits WHERE started < ?", (keep_visits.isoformat(),))
        except sqlite3.Error as exc:
            self._fail("delivery_state_write_failed", exc)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _fail(self, event: str, exc: BaseException) -> None:
        if not self.failed:
            log.error(
                event,
                path=str(self.path),
                error=str(exc),
                consequence="caps and cooldowns are kept in memory only",
            )
        self.failed = True
        if self._db is not None:
            self._db.close()
            self._db = None
