"""The funnel's facts: one row per thing that happened to an offer, kept in SQLite.

Stages, in funnel order: decided, suppressed (with its reason), published,
expired (dropped unsent), delivered, opened, clicked, dismissed, converted —
plus held_out and held_out_converted for the holdout group. ``proximity
report`` aggregates them per rule and variant over any period. Without a path
the facts are kept in memory (the daemon's own lifetime).

For a chain (docs/chain.md) the same file keeps the uplink's batches:
:meth:`MeasurementStore.seal` moves every fact recorded since the last batch into
the next numbered batch — grouped per minute x rule x variant x arm x stage x reason,
in ONE transaction with the cursor that says which facts are sealed — and a batch
stays in ``uplink_batches`` until :meth:`MeasurementStore.acknowledge` deletes it.
After a crash at any point a fact is in exactly one batch or in none yet, never in
two and never lost. Facts recorded while the file had failed live in memory only
and cannot be sealed: :attr:`MeasurementStore.unsealable` counts them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from proximity.sqlite import FallbackDb


class Stage(StrEnum):
    DECIDED = "decided"
    SUPPRESSED = "suppressed"
    PUBLISHED = "published"
    EXPIRED = "expired"
    DELIVERED = "delivered"
    OPENED = "opened"
    CLICKED = "clicked"
    DISMISSED = "dismissed"
    REDEEMED = "redeemed"
    """The offer's coupon was scanned at checkout (a verified, unused code)."""
    CONVERTED = "converted"
    HELD_OUT = "held_out"
    HELD_OUT_CONVERTED = "held_out_converted"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS facts (
    at      TEXT NOT NULL,   -- ISO 8601, UTC
    stage   TEXT NOT NULL,
    rule    TEXT NOT NULL,
    variant TEXT NOT NULL,   -- "" without variants
    reason  TEXT NOT NULL,   -- the suppression reason, or ""
    offer   TEXT NOT NULL DEFAULT ''  -- the offer's id, for decided offers
);
CREATE INDEX IF NOT EXISTS facts_at ON facts (at);
CREATE TABLE IF NOT EXISTS uplink_batches (
    seq       INTEGER PRIMARY KEY,  -- 1, 2, 3... per gateway, no gaps, never reused
    sealed_at TEXT NOT NULL,        -- ISO 8601, UTC
    facts     INTEGER NOT NULL,     -- how many fact rows it holds (their counts' sum)
    rows      TEXT NOT NULL         -- JSON list of grouped rows (docs/chain.md)
);
CREATE TABLE IF NOT EXISTS uplink_refused (
    seq        INTEGER PRIMARY KEY,  -- a batch hq's PostgreSQL refused: kept, never re-sent
    sealed_at  TEXT NOT NULL,
    facts      INTEGER NOT NULL,
    rows       TEXT NOT NULL,
    reason     TEXT NOT NULL,        -- hq's words (PostgreSQL's error, its first line)
    refused_at TEXT NOT NULL         -- ISO 8601, UTC
);
CREATE TABLE IF NOT EXISTS uplink_cursor (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    last_rowid  INTEGER NOT NULL,  -- facts up to this rowid are in a batch
    last_seq    INTEGER NOT NULL   -- the last batch sealed (acknowledged or not)
);
"""

MAX_BATCH_BYTES = 256 * 1024
"""A batch's rows stay under this (a backlog of many minutes and rules is split further),
far below a broker's packet limit (deploy/mosquitto/mosquitto.conf: 1 MiB): a batch the
broker refused would be sent again for ever."""

#: Stages counted against the holdout arm; every other stage is the treatment's.
HOLDOUT_STAGES = frozenset({"held_out", "held_out_converted"})


@dataclass(frozen=True, slots=True)
class Batch:
    """A sealed batch of grouped facts, as the uplink sends it (docs/chain.md)."""

    seq: int
    sealed_at: str
    facts: int
    rows: list[dict[str, str | int]]


def group_facts(facts: Iterable[tuple[str, str, str, str, str]]) -> list[dict[str, str | int]]:
    """Facts ``(at, stage, rule, variant, reason)`` as batch rows: one per minute x rule x
    variant x arm x stage x reason, with its count (nothing else: no offer id)."""
    counts: Counter[tuple[str, str, str, str, str]] = Counter()
    for at, stage, rule, variant, reason in facts:
        minute = datetime.fromisoformat(at).replace(second=0, microsecond=0).isoformat()
        counts[(minute, rule, variant, stage, reason)] += 1
    return [
        {
            "minute": minute,
            "rule": rule,
            "variant": variant,
            "arm": "holdout" if stage in HOLDOUT_STAGES else "treatment",
            "stage": stage,
            "reason": reason,
            "count": count,
        }
        for (minute, rule, variant, stage, reason), count in sorted(counts.items())
    ]


@dataclass
class RuleFunnel:
    rule: str
    variant: str
    stages: Counter[str] = field(default_factory=Counter)
    suppressed: Counter[str] = field(default_factory=Counter)

    def rate(self, numerator: Stage, denominator: Stage) -> float | None:
        bottom = self.stages[denominator]
        return self.stages[numerator] / bottom if bottom else None

    @property
    def ctr(self) -> float | None:
        """Clicks per offer delivered to the phone."""
        return self.rate(Stage.CLICKED, Stage.DELIVERED)

    @property
    def redemption(self) -> float | None:
        """Coupons redeemed per offer published."""
        return self.rate(Stage.REDEEMED, Stage.PUBLISHED)

    @property
    def conversion(self) -> float | None:
        """Conversions (within the rule's attribution window) per offer published."""
        return self.rate(Stage.CONVERTED, Stage.PUBLISHED)

    @property
    def holdout_conversion(self) -> float | None:
        return self.rate(Stage.HELD_OUT_CONVERTED, Stage.HELD_OUT)


class MeasurementStore:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._memory: Counter[tuple[str, str, str, str, str]] = Counter()
        """Facts kept in memory (no file, or it failed), counted per minute: bounded by
        minutes x rules x stages, not by how many offers a long run decides."""
        self.unsealable = 0
        """Facts kept in memory because the file had failed: no batch can hold them (the
        batches live in the file), so the chain never hears of them."""
        self._db = (
            FallbackDb(
                path,
                _SCHEMA,
                name="measurement_store",
                consequence="the funnel is kept in memory only (and the chain's uplink "
                "gets none of it)",
            )
            if path is not None
            else None
        )
        if self._db is not None:
            self._db.add_column("facts", "offer", "TEXT NOT NULL DEFAULT ''")

    def add(
        self,
        stage: Stage,
        rule: str,
        at: datetime,
        variant: str | None = None,
        reason: str = "",
        offer: str = "",
    ) -> None:
        """One fact; ``offer``: the offer's id (decided offers carry it, for
        :meth:`decided_offers`)."""
        row = (at.isoformat(), str(stage), rule, variant or "", reason)
        if self._db is not None:
            written = self._db.execute(
                "INSERT INTO facts (at, stage, rule, variant, reason, offer)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (*row, offer),
            )
            if written is not None:
                return
            self.unsealable += 1
        minute = at.replace(second=0, microsecond=0).isoformat()
        self._memory[(minute, *row[1:])] += 1

    def counted_offers(self, stage: Stage, since: datetime) -> set[str]:
        """The ids of the offers with a ``stage`` fact since ``since`` (from the file)."""
        if self._db is None:
            return set()
        rows = self._db.query(
            "SELECT offer, at FROM facts WHERE stage = ? AND offer != ''", (str(stage),)
        )
        return {offer for offer, at in rows if datetime.fromisoformat(at) >= since}

    def funnel(self, since: datetime | None = None) -> list[RuleFunnel]:
        """The funnel per rule and variant (facts kept in memory count from their minute)."""
        counted: list[tuple[tuple[str, str, str, str, str], int]] = []
        if self._db is not None:
            rows = self._db.query("SELECT at, stage, rule, variant, reason FROM facts")
            counted = [(tuple(r), 1) for r in rows]
        counted += self._memory.items()
        out: dict[tuple[str, str], RuleFunnel] = {}
        for (at, stage, rule, variant, reason), count in counted:
            if since is not None and datetime.fromisoformat(at) < since:
                continue
            row = out.setdefault((rule, variant), RuleFunnel(rule, variant))
            row.stages[stage] += count
            if stage == Stage.SUPPRESSED:
                row.suppressed[reason] += count
        return [out[key] for key in sorted(out)]

    # -- the chain's uplink batches -----------------------------------------------------------

    @property
    def sealable(self) -> bool:
        """The file is there to seal facts into batches (and to keep them)."""
        return self._db is not None and self._db.ok

    def seal(
        self, sealed_at: datetime, max_facts: int = 5000, max_bytes: int = MAX_BATCH_BYTES
    ) -> list[int]:
        """Seal every fact not in a batch yet into new batches of at most ``max_facts``
        facts and about ``max_bytes`` of rows each; returns their seqs (none: nothing
        new, or no file).

        Each batch is one transaction (the batch and the cursor move together): a crash
        leaves a fact in exactly one batch or in none yet.
        """
        if self._db is None:
            return []
        seqs: list[int] = []
        while True:
            cursor = self._db.query("SELECT last_rowid, last_seq FROM uplink_cursor")
            last_rowid, last_seq = cursor[0] if cursor else (0, 0)
            facts = self._db.query(
                "SELECT rowid, at, stage, rule, variant, reason FROM facts WHERE rowid > ?"
                " ORDER BY rowid LIMIT ?",
                (last_rowid, max_facts),
            )
            if not facts or self._db.failed:
                return seqs
            seq = last_seq + 1
            rows = _json(group_facts(tuple(f[1:]) for f in facts))
            while len(rows) > max_bytes and len(facts) > 1:  # long names, many minutes
                facts = facts[: len(facts) // 2]
                rows = _json(group_facts(tuple(f[1:]) for f in facts))
            done = self._db.transaction(
                [
                    (
                        "INSERT INTO uplink_batches (seq, sealed_at, facts, rows)"
                        " VALUES (?, ?, ?, ?)",
                        [(seq, sealed_at.isoformat(), len(facts), rows)],
                    ),
                    (
                        "INSERT INTO uplink_cursor (id, last_rowid, last_seq) VALUES (1, ?, ?)"
                        " ON CONFLICT (id) DO UPDATE SET last_rowid = excluded.last_rowid,"
                        " last_seq = excluded.last_seq",
                        [(facts[-1][0], seq)],
                    ),
                ]
            )
            if not done:
                return seqs
            seqs.append(seq)

    def pending(self, limit: int | None = None, after: int = 0) -> list[Batch]:
        """Sealed batches not acknowledged yet, oldest first (those with seq > ``after``)."""
        if self._db is None:
            return []
        rows = self._db.query(
            "SELECT seq, sealed_at, facts, rows FROM uplink_batches WHERE seq > ?"
            " ORDER BY seq LIMIT ?",
            (after, -1 if limit is None else limit),
        )
        return [Batch(seq, sealed_at, facts, json.loads(r)) for seq, sealed_at, facts, r in rows]

    def pending_summary(self) -> tuple[int, str | None]:
        """How many batches wait for hq's acknowledgement, and the oldest one's sealed_at."""
        if self._db is None:
            return 0, None
        rows = self._db.query("SELECT count(*), min(seq) FROM uplink_batches")
        count, oldest = rows[0] if rows else (0, None)
        if not count:
            return 0, None
        sealed = self._db.query("SELECT sealed_at FROM uplink_batches WHERE seq = ?", (oldest,))
        return int(count), (sealed[0][0] if sealed else None)

    @property
    def last_seq(self) -> int:
        """The last batch sealed (0: none yet)."""
        if self._db is None:
            return 0
        rows = self._db.query("SELECT last_seq FROM uplink_cursor")
        return int(rows[0][0]) if rows else 0

    def acknowledge(self, seqs: Iterable[int]) -> set[int]:
        """Delete the batches hq committed; returns the seqs that were still waiting."""
        found = self._waiting(seqs)
        if found and self._db is not None:
            self._db.execute_many("DELETE FROM uplink_batches WHERE seq = ?", [(s,) for s in found])
        return found

    def _waiting(self, seqs: Iterable[int]) -> set[int]:
        """Those of ``seqs`` whose batch is still in ``uplink_batches``."""
        wanted = sorted(set(seqs))
        if self._db is None or not wanted:
            return set()
        waiting = self._db.query(
            "SELECT seq FROM uplink_batches WHERE seq BETWEEN ? AND ?", (wanted[0], wanted[-1])
        )
        return {int(r[0]) for r in waiting} & set(wanted)

    def refuse(self, refused: Sequence[tuple[int, str]], at: datetime) -> set[int]:
        """Batches hq could not commit for their content (PostgreSQL refused them: sending
        them again would be refused again, for ever): each moves, with hq's ``reason``,
        from ``uplink_batches`` to ``uplink_refused`` (one transaction), where ops can
        read it; it is not sent again. Returns the seqs that were still waiting."""
        reasons = dict(refused)
        found = sorted(self._waiting(reasons))
        if not found or self._db is None:
            return set()
        moved = self._db.transaction(
            [
                (
                    "INSERT OR REPLACE INTO uplink_refused"
                    " (seq, sealed_at, facts, rows, reason, refused_at)"
                    " SELECT seq, sealed_at, facts, rows, ?, ? FROM uplink_batches WHERE seq = ?",
                    [(reasons[seq], at.astimezone(UTC).isoformat(), seq) for seq in found],
                ),
                ("DELETE FROM uplink_batches WHERE seq = ?", [(seq,) for seq in found]),
            ]
        )
        return set(found) if moved else set()

    def refused(self) -> list[tuple[int, str, str]]:
        """The batches hq refused, oldest first: (seq, reason, refused_at)."""
        if self._db is None:
            return []
        rows = self._db.query("SELECT seq, reason, refused_at FROM uplink_refused ORDER BY seq")
        return [(int(seq), reason, at) for seq, reason, at in rows]

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
