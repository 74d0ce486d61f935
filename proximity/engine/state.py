"""Delivery-control state on disk: caps, cooldowns and budgets survive a restart.

Every offer sent is one row in SQLite (WAL mode, so a crash loses at most the
last write), and so is every visit (for visit counts and recency). On start the
daemon loads the rows young enough to matter for the longest window any control
uses. If the file cannot be opened or written (a full disk, a corrupt file), the
error is logged once and the controls keep working from memory: a restart would
then forget, but offers never stop.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

from proximity.sqlite import FallbackDb

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
    """The rows on disk. Writes go at once, or — once :meth:`defer` was called, as the
    daemon does — wait for :meth:`flush`: the daemon flushes them right after the
    offers they belong to are committed to its outbox, never before (a crash in between
    leaves an offer without its cap row, which the restart reconciles from the outbox's
    journal; never a spent cap without its offer)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._deferred = False
        self._sent: list[tuple[str, str, str, str]] = []
        self._visits: list[tuple[str, str, str]] = []
        self._db = FallbackDb(
            path,
            _SCHEMA,
            name="delivery_state",
            consequence="caps and cooldowns are kept in memory only",
        )

    @property
    def failed(self) -> bool:
        return self._db.failed

    def load(self, since: datetime) -> Iterator[tuple[str, str, str, datetime]]:
        """(shopper, rule, visit, at) for every offer sent since ``since``, oldest first."""
        for shopper, rule, visit, at in self._db.query(
            "SELECT shopper, rule, visit, at FROM sent ORDER BY at"
        ):
            when = datetime.fromisoformat(at)
            if when >= since:
                yield shopper, rule, visit, when

    def load_visits(self, since: datetime) -> Iterator[tuple[str, str, datetime]]:
        """(shopper, visit, started) for every visit started since ``since``, oldest first."""
        for shopper, visit, started in self._db.query(
            "SELECT shopper, visit, started FROM visits ORDER BY started"
        ):
            when = datetime.fromisoformat(started)
            if when >= since:
                yield shopper, visit, when

    def append_visit(self, shopper: str, visit: str, started: datetime) -> None:
        self._visits.append((shopper, visit, started.isoformat()))
        if not self._deferred:
            self.flush()

    def append(self, shopper: str, rule: str, visit: str, at: datetime) -> None:
        self._sent.append((shopper, rule, visit, at.isoformat()))
        if not self._deferred:
            self.flush()

    def defer(self) -> None:
        """Keep writes until :meth:`flush`."""
        self._deferred = True

    def flush(self) -> None:
        """Write what waits, in one transaction."""
        if not self._sent and not self._visits:
            return
        sent, self._sent = self._sent, []
        visits, self._visits = self._visits, []
        self._db.transaction(
            [
                ("INSERT INTO sent (shopper, rule, visit, at) VALUES (?, ?, ?, ?)", sent),
                ("INSERT INTO visits (shopper, visit, started) VALUES (?, ?, ?)", visits),
            ]
        )

    def prune(self, before: datetime) -> None:
        self._db.execute("DELETE FROM sent WHERE at < ?", (before.isoformat(),))
        keep_visits = before - VISIT_MEMORY
        self._db.execute("DELETE FROM visits WHERE started < ?", (keep_visits.isoformat(),))

    def close(self) -> None:
        self.flush()
        self._db.close()
