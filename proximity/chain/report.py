"""The chain's funnel from PostgreSQL: totals per rule, uplift per rule, a league of stores.

Rates are summed right: counts are added across stores first, then divided (never an
average of the stores' rates). Uplift is treatment conversion (converted per published)
minus holdout conversion (held_out_converted per held_out) over the whole chain, with a
95 % confidence interval for that difference of two proportions (normal approximation,
unpooled: ``z * sqrt(p1 (1 - p1) / n1 + p2 (1 - p2) / n2)``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # psycopg loads only for a query: the console's pages use Uplift alone
    import psycopg
    from psycopg import sql

from proximity.measurement.store import RuleFunnel, Stage

Z95 = 1.959964


@dataclass(frozen=True, slots=True)
class Uplift:
    rule: str
    published: int
    converted: int
    held_out: int
    held_out_converted: int

    @property
    def conversion(self) -> float | None:
        return self.converted / self.published if self.published else None

    @property
    def holdout_conversion(self) -> float | None:
        return self.held_out_converted / self.held_out if self.held_out else None

    @property
    def uplift(self) -> float | None:
        if self.conversion is None or self.holdout_conversion is None:
            return None
        return self.conversion - self.holdout_conversion

    @property
    def interval(self) -> tuple[float, float] | None:
        """The 95 % confidence interval of :attr:`uplift`."""
        uplift, p1, p2 = self.uplift, self.conversion, self.holdout_conversion
        if uplift is None or p1 is None or p2 is None or p1 > 1 or p2 > 1:
            return None  # more conversions than offers: no proportion to have an interval of
        half = Z95 * math.sqrt(p1 * (1 - p1) / self.published + p2 * (1 - p2) / self.held_out)
        return (uplift - half, uplift + half)

    def as_dict(self) -> dict[str, Any]:
        low, high = self.interval or (None, None)
        return {
            "rule": self.rule,
            "published": self.published,
            "converted": self.converted,
            "conversion": self.conversion,
            "held_out": self.held_out,
            "held_out_converted": self.held_out_converted,
            "holdout_conversion": self.holdout_conversion,
            "uplift": self.uplift,
            "uplift_low": low,
            "uplift_high": high,
        }


@dataclass(frozen=True, slots=True)
class StoreLine:
    store: str
    published: int
    redeemed: int
    converted: int

    @property
    def conversion(self) -> float | None:
        return self.converted / self.published if self.published else None

    @property
    def redemption(self) -> float | None:
        return self.redeemed / self.published if self.published else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "published": self.published,
            "redeemed": self.redeemed,
            "converted": self.converted,
            "conversion": self.conversion,
            "redemption": self.redemption,
        }


@dataclass(frozen=True, slots=True)
class ChainReport:
    funnel: list[RuleFunnel]
    uplift: list[Uplift]
    league: list[StoreLine]
    """Best conversion first (stores with nothing published last), then most published."""


def _where(
    stores: Sequence[str] | None, rule: str | None, since: datetime | None, *more: str
) -> tuple[sql.Composable, list[Any]]:
    from psycopg import sql

    clauses: list[sql.Composable] = [sql.SQL(text) for text in more]
    args: list[Any] = []
    if stores is not None:
        clauses.append(sql.SQL("store = ANY(%s)"))
        args.append(list(stores))
    if rule is not None:
        clauses.append(sql.SQL("rule = %s"))
        args.append(rule)
    if since is not None:
        clauses.append(sql.SQL("minute >= %s"))
        args.append(since)
    if not clauses:
        return sql.SQL(""), args
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(clauses), args


def chain_report(
    conn: psycopg.Connection[Any],
    *,
    stores: Sequence[str] | None = None,
    rule: str | None = None,
    since: datetime | None = None,
) -> ChainReport:
    """The report over the facts of ``stores`` (all when None), ``rule`` and ``since``."""
    from psycopg import sql

    where, args = _where(stores, rule, since)
    funnels: dict[tuple[str, str], RuleFunnel] = {}
    per_rule: dict[str, Counter[str]] = {}
    rows = conn.execute(
        sql.SQL("SELECT rule, variant, stage, reason, sum(count)::bigint FROM facts")
        + where
        + sql.SQL(" GROUP BY rule, variant, stage, reason"),
        args,
    )
    for rule_name, variant, stage, reason, count in rows:
        row = funnels.setdefault((rule_name, variant), RuleFunnel(rule_name, variant))
        row.stages[stage] += count
        if stage == Stage.SUPPRESSED:
            row.suppressed[reason] += count
        per_rule.setdefault(rule_name, Counter())[stage] += count
    uplift = [
        Uplift(
            name,
            c[Stage.PUBLISHED],
            c[Stage.CONVERTED],
            c[Stage.HELD_OUT],
            c[Stage.HELD_OUT_CONVERTED],
        )
        for name, c in sorted(per_rule.items())
    ]
    where, args = _where(stores, rule, since, "stage IN ('published', 'redeemed', 'converted')")
    league_sql = (
        sql.SQL("SELECT store, stage, sum(count)::bigint FROM facts")
        + where
        + sql.SQL(" GROUP BY store, stage")
    )
    per_store: dict[str, Counter[str]] = {}
    for store, stage, count in conn.execute(league_sql, args):
        per_store.setdefault(store, Counter())[stage] += count
    league = [
        StoreLine(store, c[Stage.PUBLISHED], c[Stage.REDEEMED], c[Stage.CONVERTED])
        for store, c in per_store.items()
    ]
    league.sort(key=lambda s: (s.conversion is None, -(s.conversion or 0.0), -s.published, s.store))
    return ChainReport([funnels[k] for k in sorted(funnels)], uplift, league)
