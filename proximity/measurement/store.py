"""The funnel's facts: one row per thing that happened to an offer, kept in SQLite.

Stages, in funnel order: decided, suppressed (with its reason), published,
expired (dropped unsent), delivered, opened, clicked, dismissed, converted —
plus held_out and held_out_converted for the holdout group. ``proximity
report`` aggregates them per rule and variant over any period. Without a path
the facts are kept in memory (the daemon's own lifetime).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
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
"""


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
        self._db = (
            FallbackDb(
                path,
                _SCHEMA,
                name="measurement_store",
                consequence="the funnel is kept in memory only",
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

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
