"""An SQLite file that never takes the daemon down.

Opened in WAL mode; on any error — a full disk, a corrupt or unreadable file —
it logs once (``<name>_unavailable``, ``<name>_unreadable`` or
``<name>_write_failed``, with what that costs) and steps aside: callers keep
their state in memory and carry on.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import structlog

log = structlog.get_logger(__name__)


class FallbackDb:
    def __init__(
        self,
        path: Path,
        schema: str,
        *,
        name: str,
        consequence: str,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    ) -> None:
        self.path = path
        self.name = name
        self.consequence = consequence
        self.failed = False
        self._db: sqlite3.Connection | None = None
        self._dir_synced = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.executescript(schema)
        except (sqlite3.Error, OSError) as exc:
            self.fail("unavailable", exc)

    @property
    def ok(self) -> bool:
        return self._db is not None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor | None:
        """Run a write; None (logged once) if the file failed."""
        if self._db is None:
            return None
        try:
            return self._db.execute(sql, params)
        except sqlite3.Error as exc:
            self.fail("write_failed", exc)
            return None

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> bool:
        """Run one write per row in a single transaction (one sync to disk for all of
        them); False (logged once) if the file failed, and then none of them happened."""
        return self.transaction([(sql, rows)])

    def transaction(self, steps: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> bool:
        """Several statements, each run once per row, in ONE transaction: after a crash
        either every row of every step is on disk or none is. False (logged once) if the
        file failed, and then none of them happened."""
        if self._db is None:
            return False
        try:
            with self._db:  # BEGIN ... COMMIT, or ROLLBACK on an error
                self._db.execute("BEGIN")
                for sql, rows in steps:
                    if rows:
                        self._db.executemany(sql, rows)
        except sqlite3.Error as exc:
            self.fail("write_failed", exc)
            return False
        return True

    def add_column(self, table: str, column: str, declaration: str) -> None:
        """Give a file made by an earlier version a column this one needs."""
        if self._db is None:
            return
        try:
            columns = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in columns:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        except sqlite3.Error as exc:
            self.fail("unavailable", exc)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Rows of a read; [] (logged once) if the file failed."""
        if self._db is None:
            return []
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            self.fail("unreadable", exc)
            return []

    @property
    def folder_synced(self) -> bool:
        """The folder has been synced (the first :meth:`sync_log` does it, once)."""
        return self._dir_synced

    def sync_log(self) -> OSError | None:
        """fsync the write-ahead log, for a file opened with ``synchronous="NORMAL"``:
        every transaction committed before the call (written to the OS, which a killed
        process cannot lose, but not yet to the disk, which a power cut can) is on disk
        when it returns. The first time, the folder too (the log file's entry in it).

        Blocking: meant for a worker thread while the connection goes on writing (the
        sync covers at least what was written before it began). Returns the error
        instead of raising it; None when synced, or when there is no log to sync."""
        if self._db is None:
            return None
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return exc
        try:
            os.fdatasync(fd)  # as SQLite syncs its log: the data and the size, not the times
            if not self._dir_synced:
                folder = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(folder)
                finally:
                    os.close(folder)
                self._dir_synced = True
        except OSError as exc:
            return exc
        finally:
            os.close(fd)
        return None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def fail(self, what: str, exc: BaseException) -> None:
        if not self.failed:
            log.error(
                f"{self.name}_{what}",
                path=str(self.path),
                error=str(exc),
                consequence=self.consequence,
            )
        self.failed = True
        self.close()
