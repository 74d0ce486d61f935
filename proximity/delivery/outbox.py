"""The durable outbox: an offer is committed before it is published, removed on PUBACK.

Offers wait here, in order, while the broker is away; a daemon killed with
SIGKILL finds them again on restart. An offer whose lifetime ended while it
waited is dropped and counted — never delivered late. The queue lives in
memory and, with a path, in SQLite (WAL mode: a committed offer survives a
crash). If the file cannot be used (a full disk, a corrupt file), the error is
logged once and the outbox goes on in memory: offers keep flowing, only a
restart would forget them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path

import structlog

from proximity.offers import Offer
from proximity.sqlite import FallbackDb

log = structlog.get_logger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    id      TEXT NOT NULL UNIQUE,
    kind    TEXT NOT NULL,
    target  TEXT NOT NULL,
    payload TEXT NOT NULL
);
"""


class Kind(StrEnum):
    OFFER = "offer"
    """To a shopper's app; ``target`` is the shopper token."""
    SIGNAGE = "signage"
    """To a zone's screens; ``target`` is the zone."""


@dataclass(frozen=True, slots=True)
class Item:
    seq: int
    kind: Kind
    target: str
    offer: Offer


class Outbox:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._items: deque[Item] = deque()
        self._ids: set[str] = set()
        self._seq = 0
        self._db: FallbackDb | None = None
        self.expired = 0
        self.corrupt_rows = 0
        if path is not None:
            self._open(path)

    @property
    def failed(self) -> bool:
        return self._db is not None and self._db.failed

    def __len__(self) -> int:
        return len(self._items)

    def put(self, kind: Kind, target: str, offer: Offer) -> bool:
        """Queue ``offer``; False when an offer with the same id is already waiting."""
        if offer.id in self._ids:
            return False
        self._seq += 1
        item = Item(self._seq, kind, target, offer)
        if self._db is not None:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO outbox (id, kind, target, payload) VALUES (?, ?, ?, ?)",
                (offer.id, str(kind), target, offer.model_dump_json()),
            )
            if cursor is not None and cursor.lastrowid:
                item = Item(cursor.lastrowid, kind, target, offer)
                self._seq = max(self._seq, cursor.lastrowid)
        self._items.append(item)
        self._ids.add(offer.id)
        return True

    def peek(self) -> Item | None:
        return self._items[0] if self._items else None

    def done(self, item: Item) -> None:
        """The broker has it (or it expired): forget it."""
        if self._items and self._items[0].seq == item.seq:
            self._items.popleft()
        else:
            self._items = deque(i for i in self._items if i.seq != item.seq)
        self._ids.discard(item.offer.id)
        if self._db is not None:
            self._db.execute("DELETE FROM outbox WHERE seq = ?", (item.seq,))

    def drop_if_expired(self, item: Item, now: datetime) -> bool:
        if item.offer.expires_at > now:
            return False
        self.done(item)
        self.expired += 1
        log.info("offer_expired_in_outbox", offer=item.offer.id, rule=item.offer.rule)
        return True

    def oldest_age(self, now: datetime) -> float:
        item = self.peek()
        return (now - item.offer.issued_at).total_seconds() if item else 0.0

    def close(self) -> None:
        if self._db is not None:
            self._db.close()

    def _open(self, path: Path) -> None:
        # synchronous=FULL: "committed" means on disk, before the offer is published
        self._db = FallbackDb(
            path,
            _SCHEMA,
            name="outbox",
            synchronous="FULL",
            consequence="offers are queued in memory only",
        )
        rows = self._db.query("SELECT seq, kind, target, payload FROM outbox ORDER BY seq")
        for seq, kind, target, payload in rows:
            try:
                offer = Offer.model_validate_json(payload)
                item = Item(seq, Kind(kind), target, offer)
            except ValueError:
                self.corrupt_rows += 1
                continue
            self._items.append(item)
            self._ids.add(offer.id)
            self._seq = max(self._seq, seq)
        if self.corrupt_rows:
            log.error("outbox_rows_unreadable", path=str(path), rows=self.corrupt_rows)
        if self._items:
            log.info("outbox_resumed", path=str(path), waiting=len(self._items))
