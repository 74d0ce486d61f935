"""What ``proximity rollout`` reads and writes in the chain's database (``[hq] database``;
the tables are hq's, proximity/chain/schema): the bundles it published, and what every
store runs. Best effort: without a reachable database with those tables, a rollout still
goes (the broker is what the stores listen to) and says it was not recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
import structlog

log = structlog.get_logger(__name__)

CONNECT_TIMEOUT_S = 3


class PublishedLog:
    """One connection to the chain's database, with hq's tables in it."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    @classmethod
    def open(cls, dsn: str) -> tuple[PublishedLog | None, str]:
        """The log, or None and why not (unreachable, or hq has not created its tables)."""
        try:
            conn = psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as exc:
            return None, f"database not reachable ({_first_line(exc)})"
        row = conn.execute(
            "SELECT to_regclass('bundles_published') IS NOT NULL"
            " AND to_regclass('rollout_latest') IS NOT NULL AND to_regclass('fleet') IS NOT NULL"
        ).fetchone()
        if not row or not row[0]:
            conn.close()
            return None, "the database has no hq tables yet (`proximity hq migrate`)"
        return cls(conn), ""

    def close(self) -> None:
        self._conn.close()

    def highest(self) -> int | None:
        row = self._conn.execute("SELECT max(bundle) FROM bundles_published").fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def record(self, stores: Sequence[str], bundle: int, stage: str, key: str) -> None:
        with self._conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO bundles_published (store, bundle, stage, key) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (store, bundle) DO UPDATE SET stage = EXCLUDED.stage,"
                " key = EXCLUDED.key, published_at = now()",
                [(store, bundle, stage, key) for store in stores],
            )

    def status(self, stores: Sequence[str] | None) -> dict[str, dict[str, Any]]:
        """Per store: ``rollout`` (the latest report) and ``status`` (the fleet row) and
        ``published`` (the newest bundle sent), as :func:`retained_status` gives them."""
        found: dict[str, dict[str, Any]] = {}
        args = {"stores": list(stores) if stores is not None else None}
        for store, gateway, bundle, outcome, reason, version, at in self._conn.execute(
            "SELECT store, gateway, bundle, outcome, reason, rules_version, at"
            " FROM rollout_latest WHERE (%(stores)s::text[] IS NULL OR store = ANY(%(stores)s))",
            args,
        ):
            found.setdefault(store, {})["rollout"] = {
                "store": store,
                "gateway": gateway,
                "bundle": bundle,
                "outcome": outcome,
                "reason": reason,
                "rules_version": version,
                "at": at.isoformat(),
            }
        for store, gateway, online, bundle, version, errors, seen in self._conn.execute(
            "SELECT DISTINCT ON (store) store, gateway, online, bundle, rules_version, errors,"
            " last_seen FROM fleet WHERE (%(stores)s::text[] IS NULL OR store = ANY(%(stores)s))"
            " ORDER BY store, last_seen DESC",
            args,
        ):
            found.setdefault(store, {})["status"] = {
                "store": store,
                "gateway": gateway,
                "online": online,
                "bundle": bundle,
                "rules_version": version,
                "errors": errors,
                "at": seen.isoformat(),
            }
        for store, bundle in self._conn.execute(
            "SELECT store, max(bundle) FROM bundles_published"
            " WHERE (%(stores)s::text[] IS NULL OR store = ANY(%(stores)s)) GROUP BY store",
            args,
        ):
            found.setdefault(store, {})["published"] = {"bundle": bundle}
        return found


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
