"""``proximity rules test``: run the ``[[tests]]`` cases written in the rule files.

Each case gets a fresh decider (no state from other cases), a shopper, a start
time (default: a Tuesday at 10:00 store time) and its events, and passes when
the offers made are exactly ``expect`` (rule ids, in order) and every
``expect_suppressed`` suppression happened.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from proximity.engine.decide import Decider
from proximity.engine.loader import Source
from proximity.engine.rules import RuleTest
from proximity.engine.table import RuleTable
from proximity.events import EventKind, JourneyEvent, Shopper

DEFAULT_START = datetime(2026, 11, 24, 10, 0)  # a Tuesday; store time


@dataclass(frozen=True)
class CaseResult:
    name: str
    source: Source
    passed: bool
    offers: tuple[str, ...]
    suppressed: tuple[tuple[str, str], ...]
    problem: str | None = None


def run_case(table: RuleTable, case: RuleTest, source: Source) -> CaseResult:
    decider = Decider(table)
    shopper = Shopper(
        token=case.shopper.token,
        consent=case.shopper.consent,
        anonymous=case.shopper.anonymous,
        segments=frozenset(case.shopper.segments),
    )
    at = case.start or DEFAULT_START.replace(tzinfo=table.timezone)
    offers: list[str] = []
    signage: list[str] = []
    suppressed: list[tuple[str, str]] = []
    for ev in case.events:
        at = at + ev.after
        event = JourneyEvent(
            kind=ev.kind,
            at=at.astimezone(UTC),
            store=table.store.id if table.store and table.store.id else "store",
            shopper=shopper,
            visit=ev.visit,
            zone=ev.zone,
            threshold_s=ev.dwell.total_seconds() if ev.dwell is not None else None,
            dwell_s=_dwell_s(ev.kind, ev.dwell, ev.stayed),
        )
        decision = decider.decide(event)
        offers.extend(o.rule for o in decision.offers)
        signage.extend(o.rule for o in decision.signage)
        suppressed.extend((rule, str(why)) for rule, why in decision.suppressed)
    problems = []
    if offers != case.expect:
        problems.append(f"expected offers: {_names(case.expect)}; got: {_names(offers)}")
    if case.expect_signage is not None and signage != case.expect_signage:
        problems.append(f"expected signage: {_names(case.expect_signage)}; got: {_names(signage)}")
    for want in case.expect_suppressed:
        if (want.rule, want.reason) not in suppressed:
            problems.append(f'expected "{want.rule}" suppressed by {want.reason}')
    if problems and suppressed:
        problems.append("suppressed: " + ", ".join(f"{r} ({w})" for r, w in suppressed))
    return CaseResult(
        case.name,
        source,
        not problems,
        tuple(offers),
        tuple(suppressed),
        "; ".join(problems) or None,
    )


def _names(rules: list[str]) -> str:
    return ", ".join(rules) if rules else "none"


def run_all(table: RuleTable) -> list[CaseResult]:
    return [run_case(table, case, source) for case, source in table.ruleset.tests]


def _dwell_s(kind: EventKind, dwell: timedelta | None, stayed: timedelta | None) -> float | None:
    if kind is EventKind.ZONE_EXIT and stayed is not None:
        return stayed.total_seconds()
    if kind is EventKind.ZONE_DWELL and dwell is not None:
        return dwell.total_seconds()
    return None
