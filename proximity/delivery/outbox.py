"""The durable outbox: an offer is on disk before it is published, removed on PUBACK.

Offers wait here, in order, while the broker is away; a daemon killed with
SIGKILL finds them again on restart. An offer whose lifetime ended while it
waited is dropped and counted — never delivered late. The queue lives in
memory and, with a path, in SQLite (WAL mode). If the file cannot be used (a full
disk, a corrupt file), the error is logged once and the outbox goes on in memory:
offers keep flowing, only a restart would forget them.

Two steps make an offer durable. :meth:`commit` writes the loop turn's offers in one
transaction with ``synchronous=NORMAL``: the rows are then in the operating system's
hands, which a killed process cannot lose, but not yet on the disk, which a power cut
can. Then the log is synced to the disk, and :meth:`durable`, which the drainer awaits
before it publishes, returns once a sync that began after the offer's commit has ended.
One sync serves every commit made before it began. Where it runs depends on the disk:

- While the disk is quick (fewer than ``SLOW_SYNCS`` of the last ``SYNC_SAMPLES`` syncs
  on the loop took over ``QUICK_SYNC_S``, 1 ms), :meth:`durable` syncs on the loop, once
  for all the commits made since the last sync. Handing a sync to a worker thread costs
  more than that: the thread must be woken, take the interpreter's lock from the busy
  loop and wake the loop again — about a millisecond on this project's machines even
  when the loop is idle, and several under load. In bench/delivery (500 readings a
  second into a daemon, fdatasync 0.14 ms typically) the daemon's reading-to-offer p99
  was 8-10 ms with syncs on the loop against 11-24 ms with every sync in the thread,
  its CPU 65-77 % of a core against 78-91 % (four alternating runs each).
- When the disk is slow (``SLOW_SYNCS``, 4, of the last ``SYNC_SAMPLES``, 16, syncs on
  the loop took longer: with ``synchronous=FULL`` commits once took 2 ms typically and
  10 ms one time in ten here), the next ``SYNC_WINDOW`` syncs run in a worker thread,
  each begun by the commit itself (one at a time, the next for every commit made
  meanwhile): the loop does not wait for a slow disk, and the disk works while the loop
  finishes the turn. Then the syncs come back to the loop and the disk is judged
  again; slow again, twice as many go to the thread (up to ``SYNC_WINDOW_MAX``), so a
  disk that stays slow holds the loop up 4 times in 4,096 syncs. One slow sync now and
  then (2-9 ms, a few in a thousand here) stays on the loop: the thread would cost
  more than it saves. (A sync in the thread cannot judge the disk: its time includes
  waiting for the interpreter's lock while the loop is busy.)

Removals (on PUBACK) are never synced on their own: a power cut can only bring back an
offer the broker already had, and the next sync carries them anyway.

The file is also the journal of decisions. With each offer the same transaction
writes an ``issued`` row: which shopper it went to, its rule, variant and visit,
and how long a redemption or app feedback may still name it. That row outlives
the offer's departure (until ``keep_until``), so after a restart — a clean one
or a kill at any instant — the gateway still knows every coupon it issued, and
caps and the funnel, kept in other files and written after this transaction,
are reconciled from it (see ``proximity.service``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Literal

import structlog

from proximity.offers import Offer
from proximity.sqlite import FallbackDb

log = structlog.get_logger(__name__)
Step = tuple[str, Sequence[Sequence[object]]]

QUICK_SYNC_S = 0.001
"""A sync to disk that took longer was slow."""
SYNC_SAMPLES = 16
SLOW_SYNCS = 4
"""The disk is slow when this many of the last ``SYNC_SAMPLES`` syncs on the loop were."""
SYNC_WINDOW = 64
"""Syncs that then run in a worker thread (twice as many each time the disk is still
slow when they are done, up to ``SYNC_WINDOW_MAX``)."""
SYNC_WINDOW_MAX = 4096

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    id      TEXT NOT NULL UNIQUE,
    kind    TEXT NOT NULL,
    target  TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS issued (
    id         TEXT PRIMARY KEY,
    shopper    TEXT NOT NULL,
    rule       TEXT NOT NULL,
    variant    TEXT NOT NULL,   -- "" without variants
    visit      TEXT NOT NULL,
    issued_at  TEXT NOT NULL,   -- ISO 8601 with offset
    keep_until TEXT NOT NULL,   -- ISO 8601, UTC: a redemption or feedback may name it until then
    outcome    TEXT NOT NULL DEFAULT ''  -- published, expired, unpublishable; '' while waiting
);
CREATE INDEX IF NOT EXISTS issued_keep_until ON issued (keep_until);
"""


class Kind(StrEnum):
    OFFER = "offer"
    """To a shopper's app; ``target`` is the shopper token."""
    SIGNAGE = "signage"
    """To a zone's screens; ``target`` is the zone."""


Outcome = Literal["published", "expired", "unpublishable"]
"""How an offer left the outbox."""


@dataclass(frozen=True, slots=True)
class Issued:
    """What the gateway must remember of an offer after it left: whose it is, for how long."""

    offer: str
    shopper: str
    rule: str
    variant: str | None
    visit: str
    issued_at: datetime
    keep_until: datetime
    outcome: Outcome | None = None
    """How it left the outbox; None while it waits (or when the journal was written)."""


@dataclass(frozen=True, slots=True)
class Item:
    seq: int
    kind: Kind
    target: str
    offer: Offer
    payload: str
    """The offer as JSON, made once: what the outbox writes and the drainer publishes."""


class Outbox:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._items: deque[Item] = deque()
        self._ids: set[str] = set()
        self._seq = 0
        self._db: FallbackDb | None = None
        self._unwritten: list[Item] = []
        self._unwritten_issued: list[Issued] = []
        self._commit_scheduled = False
        self._written = 0
        """Commits made (in the operating system's hands)."""
        self._synced = 0
        """Commits known to be on disk."""
        self._syncing: asyncio.Future[OSError | None] | None = None
        self._threaded = 0
        """Syncs still to run in a worker thread (the disk was found slow)."""
        self._window = SYNC_WINDOW
        """How many syncs go to the thread when the disk is next found slow."""
        self._slow: deque[bool] = deque(maxlen=SYNC_SAMPLES)
        """Whether each of the last syncs on the loop was slow."""
        self.syncs_on_loop = 0
        """Syncs :meth:`durable` made on the loop (the disk quick)."""
        self.syncs_in_thread = 0
        """Syncs made in the worker thread (the disk slow)."""
        self.expired = 0
        self.corrupt_rows = 0
        self.commits = 0
        """Transactions that wrote queued offers (several offers each under load)."""
        if path is not None:
            self._open(path)

    @property
    def failed(self) -> bool:
        return self._db is not None and self._db.failed

    def __len__(self) -> int:
        return len(self._items)

    def put(self, kind: Kind, target: str, offer: Offer, issued: Issued | None = None) -> bool:
        """Queue ``offer``; False when an offer with the same id is already waiting.

        ``issued``: the facts to journal with it (written in the same transaction).

        Inside a running event loop the offer is written at the end of the loop's
        current turn, together with every other offer queued in that turn (one
        transaction), and in any case on disk before it is published (the drainer
        awaits :meth:`durable` first). Outside a loop it is written and synced at once.
        """
        if offer.id in self._ids:
            return False
        self._seq += 1
        item = Item(self._seq, kind, target, offer, offer.model_dump_json())
        self._items.append(item)
        self._ids.add(offer.id)
        if self._db is not None:
            self._unwritten.append(item)
            if issued is not None:
                self._unwritten_issued.append(issued)
            if not self._commit_scheduled:
                try:
                    asyncio.get_running_loop().call_soon(self.commit)
                    self._commit_scheduled = True
                except RuntimeError:  # no loop: write it now
                    self.commit()
                    self._sync_now()
        return True

    def commit(self) -> None:
        """Write every offer queued since the last commit, in one transaction. While
        syncs run in a worker thread (the disk was slow), begin syncing it at once: the
        disk works while the loop goes on with the rest of the turn's work, and
        :meth:`durable` finds the sync done or under way. Otherwise :meth:`durable`
        syncs, on the loop, when an offer is about to go."""
        if self._write() and self._threaded:
            self._sync_soon()

    def _write(self) -> bool:
        """The transaction of :meth:`commit`; True if it wrote anything."""
        self._commit_scheduled = False
        if (not self._unwritten and not self._unwritten_issued) or self._db is None:
            self._unwritten.clear()
            self._unwritten_issued.clear()
            return False
        rows = [(i.seq, i.offer.id, str(i.kind), i.target, i.payload) for i in self._unwritten]
        facts = [
            (
                f.offer,
                f.shopper,
                f.rule,
                f.variant or "",
                f.visit,
                f.issued_at.isoformat(),
                _utc(f.keep_until),
            )
            for f in self._unwritten_issued
        ]
        self._unwritten.clear()
        self._unwritten_issued.clear()
        self._db.transaction(
            [
                *_rows_at_once(
                    "INSERT OR IGNORE INTO outbox (seq, id, kind, target, payload) VALUES ", rows
                ),
                *_rows_at_once(
                    "INSERT OR IGNORE INTO issued"
                    " (id, shopper, rule, variant, visit, issued_at, keep_until) VALUES ",
                    facts,
                ),
            ]
        )
        self.commits += 1
        self._written += 1
        return True

    def _sync_soon(self) -> None:
        """Start a sync in a worker thread if none is under way (one at a time: the next
        begins when it ends, for every commit made meanwhile)."""
        if self._syncing is not None or self._db is None or self._db.failed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: put() and close() sync at once
            return
        # handed to the thread now, not at the loop's next turn (as a coroutine would be)
        target, db = self._written, self._db
        syncing = self._syncing = loop.run_in_executor(None, db.sync_log)
        syncing.add_done_callback(lambda done: self._synced_to(target, db, done))

    def _synced_to(
        self,
        target: int,
        db: FallbackDb,
        done: asyncio.Future[OSError | None],
    ) -> None:
        """A sync that began after commit number ``target`` ended."""
        self._syncing = None
        if done.cancelled():
            return
        failure = done.exception()
        error = failure if failure is not None else done.result()
        if error is not None:
            db.fail("write_failed", error)
            return
        self.syncs_in_thread += 1
        self._threaded = max(0, self._threaded - 1)
        self._synced = max(self._synced, target)
        if self._written > self._synced and self._threaded:  # committed while it synced
            self._sync_soon()

    def _timed(self, took: float) -> None:
        """A sync on the loop took ``took`` seconds. A slow disk sends the next syncs to a
        worker thread (twice as many as last time if it was slow then too)."""
        self._slow.append(took > QUICK_SYNC_S)
        if sum(self._slow) >= SLOW_SYNCS:
            if self._window == SYNC_WINDOW:
                log.info("outbox_syncs_off_the_loop", sync_ms=round(took * 1000, 2))
            self._threaded = self._window
            self._window = min(2 * self._window, SYNC_WINDOW_MAX)
            self._slow.clear()
        elif len(self._slow) == SYNC_SAMPLES:
            self._window = SYNC_WINDOW

    async def durable(self) -> None:
        """Return once every offer put so far is on disk: committed (now, if it waits
        for the end of the loop's turn) and the log synced, here on the loop while the
        disk is quick, in the worker thread while it is slow. One sync serves every
        commit made before it began; returns at once when nothing waits."""
        self.commit()
        target = self._written
        while self._synced < target and self._db is not None and not self._db.failed:
            if self._syncing is None and not self._threaded:  # a quick disk: here, now
                self._sync_now()
                self.syncs_on_loop += 1
                continue
            if self._syncing is None:
                self._sync_soon()
            syncing = self._syncing
            if syncing is not None and not syncing.done():
                await asyncio.shield(syncing)
            else:  # ended, and its callback (_synced_to) is due in this turn: let it run
                await asyncio.sleep(0)

    def _sync_now(self) -> None:
        if self._db is not None and not self._db.failed:
            once = not self._db.folder_synced  # the first sync also syncs the folder
            error, took = _timed_sync(self._db)
            if error is not None:
                self._db.fail("write_failed", error)
                return
            if not once:
                self._timed(took)
            self._synced = self._written

    def issued(self, now: datetime) -> list[Issued]:
        """The offers journalled that a redemption or feedback may still name at ``now``,
        oldest first; older rows are pruned."""
        if self._db is None:
            return []
        self._db.execute("DELETE FROM issued WHERE keep_until < ?", (_utc(now),))
        out: list[Issued] = []
        for offer, shopper, rule, variant, visit, issued_at, keep_until, left in self._db.query(
            "SELECT id, shopper, rule, variant, visit, issued_at, keep_until, outcome"
            " FROM issued ORDER BY issued_at"
        ):
            try:
                out.append(
                    Issued(
                        offer,
                        shopper,
                        rule,
                        variant or None,
                        visit,
                        datetime.fromisoformat(issued_at),
                        datetime.fromisoformat(keep_until),
                        _OUTCOMES.get(left),
                    )
                )
            except (TypeError, ValueError):
                self.corrupt_rows += 1
        return out

    def peek(self) -> Item | None:
        return self._items[0] if self._items else None

    def head(self, n: int) -> list[Item]:
        """The ``n`` oldest waiting offers, oldest first."""
        return self.after(0, n)

    def after(self, seq: int, n: int) -> list[Item]:
        """The ``n`` oldest waiting offers queued after sequence number ``seq``.

        Sequence numbers grow in queue order, so this skips only offers queued
        earlier that are still waiting (those in flight: a handful).
        """
        out: list[Item] = []
        for item in self._items:
            if item.seq <= seq:
                continue
            out.append(item)
            if len(out) == n:
                break
        return out

    def done(self, item: Item, outcome: Outcome = "published") -> None:
        """The broker has it (or it expired): forget it."""
        self.done_many([item], [outcome])

    def done_many(self, items: Sequence[Item], outcomes: Sequence[Outcome] = ()) -> None:
        """Forget several offers at once: one transaction, so one sync to disk for all.

        Either all of them are gone from the file or (after a crash in between) none:
        a crash can only make offers the broker already had come back, never lose one.
        ``outcomes`` (one per item; "published" for all by default) go into the journal
        in the same transaction, for the funnel to be reconciled from after a crash.

        """
        if not items:
            return
        if not outcomes:
            outcomes = ["published"] * len(items)
        seqs = {item.seq for item in items}
        left = set(seqs)
        while self._items and self._items[0].seq in left:  # the usual case: the oldest
            left.discard(self._items.popleft().seq)
        if left:
            self._items = deque(i for i in self._items if i.seq not in left)
        for item in items:
            self._ids.discard(item.offer.id)
        if self._unwritten:  # gone before it was written: it must not be written after
            # (its journal row, if any, still is: the offer was decided all the same)
            self._unwritten = [i for i in self._unwritten if i.seq not in seqs]
        if self._db is not None:
            by_outcome: dict[Outcome, list[str]] = {}
            for item, how in zip(items, outcomes, strict=True):
                if item.kind is Kind.OFFER:
                    by_outcome.setdefault(how, []).append(item.offer.id)
            steps = _in_list("DELETE FROM outbox WHERE seq IN ", [], sorted(seqs))
            for ending, ids in by_outcome.items():
                steps += _in_list("UPDATE issued SET outcome = ? WHERE id IN ", [ending], ids)
            self._db.transaction(steps)

    def expire(self, items: Sequence[Item]) -> None:
        """Drop offers whose lifetime ended while they waited; counted, never delivered."""
        self.done_many(items, ["expired"] * len(items))
        self.expired += len(items)
        for item in items:
            log.info("offer_expired_in_outbox", offer=item.offer.id, rule=item.offer.rule)

    def oldest_age(self, now: datetime) -> float:
        item = self.peek()
        return (now - item.offer.issued_at).total_seconds() if item else 0.0

    def close(self) -> None:
        if self._db is not None:
            self._write()
            self._sync_now()
            self._db.close()

    def _open(self, path: Path) -> None:
        # synchronous=NORMAL: a commit leaves the rows with the operating system; durable()
        # syncs them to the disk off the loop before an offer is published
        self._db = FallbackDb(
            path,
            _SCHEMA,
            name="outbox",
            synchronous="NORMAL",
            consequence="offers are queued in memory only",
        )
        rows = self._db.query("SELECT seq, kind, target, payload FROM outbox ORDER BY seq")
        for seq, kind, target, payload in rows:
            try:
                offer = Offer.model_validate_json(payload)
                # written anew: this version's form of the offer, as a new one is sent
                item = Item(seq, Kind(kind), target, offer, offer.model_dump_json())
            except ValueError:
                self.corrupt_rows += 1
                continue
            self._items.append(item)
            self._ids.add(offer.id)
            self._seq = max(self._seq, seq)
        for (last,) in self._db.query("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'"):
            self._seq = max(self._seq, int(last))
        if self.corrupt_rows:
            log.error("outbox_rows_unreadable", path=str(path), rows=self.corrupt_rows)
        if self._items:
            log.info("outbox_resumed", path=str(path), waiting=len(self._items))


_OUTCOMES: dict[str, Outcome] = {
    "published": "published",
    "expired": "expired",
    "unpublishable": "unpublishable",
}


_CHUNK = 200
"""Rows per statement: SQLite takes up to 32,766 parameters in one."""


def _rows_at_once(head: str, rows: Sequence[tuple[object, ...]]) -> list[Step]:
    """``rows`` as multi-row INSERT statements (``head`` + ``(?, ...), (?, ...)``).

    One statement for many rows, not one per row: Python's sqlite3 lets go of the GIL
    around every statement it steps, and taking it back waits for any other busy thread
    (paho's network threads) for up to the interpreter's switch interval, 5 ms. Measured
    with a busy thread beside it, 27 rows one statement each took 38 ms, not 0.2 ms."""
    steps: list[Step] = []
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start : start + _CHUNK]
        marks = "(" + ", ".join("?" * len(chunk[0])) + ")"
        flat = [value for row in chunk for value in row]
        steps.append((head + ", ".join([marks] * len(chunk)), [flat]))
    return steps


def _in_list(head: str, before: list[object], values: Sequence[object]) -> list[Step]:
    """``head`` + ``(?, ...)`` over ``values`` in chunks, each run once with ``before``
    first (see :func:`_rows_at_once` for why one statement)."""
    steps: list[Step] = []
    for start in range(0, len(values), _CHUNK):
        chunk = list(values[start : start + _CHUNK])
        steps.append((head + "(" + ", ".join("?" * len(chunk)) + ")", [[*before, *chunk]]))
    return steps


def _timed_sync(db: FallbackDb) -> tuple[OSError | None, float]:
    """``db.sync_log()``: its error (None: synced) and how many seconds it took."""
    started = time.perf_counter()
    error = db.sync_log()
    return error, time.perf_counter() - started


def _utc(at: datetime) -> str:
    """ISO 8601 in UTC: strings that sort as the instants they name."""
    return at.astimezone(UTC).isoformat()
