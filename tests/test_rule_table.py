"""The compiled rule table against a naive reference, and the decisions made from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from proximity.engine.decide import Decider, Suppression
from proximity.engine.loader import load_rule_files
from proximity.engine.table import RuleTable
from proximity.events import EventKind, JourneyEvent
from proximity.offers import Moment, offer_id
from tests.factories import at, make_event, make_shopper
from tests.strategies import DWELLS, ZONES, render_rules, rule_specs

ROOT = Path(__file__).resolve().parent.parent


def table_from(text: str, tmp: Path) -> RuleTable:
    path = tmp / "rules.toml"
    path.write_text(text)
    return RuleTable.from_ruleset(load_rule_files([path]))


def reference(specs: list[dict[str, Any]], event: JourneyEvent, policy: str) -> list[str]:
    """What should match, by reading every rule, in the documented order."""
    hits = []
    for n, spec in enumerate(specs):
        if not spec["enabled"] or spec["on"] is not event.kind:
            continue
        if spec["zones"] is not None and event.zone not in spec["zones"]:
            continue
        if spec["dwell"] is not None and event.threshold_s != spec["dwell"]:
            continue
        if spec["hours"] is not None:
            start, end = spec["hours"][0] * 60, spec["hours"][1] * 60 + spec["hours"][2]
            now = event.at.hour * 60 + event.at.minute  # the rule files use UTC
            inside = start <= now < end if start < end else (now >= start or now < end)
            if not inside:
                continue
        hits.append((-spec["priority"], n, spec["id"]))
    ordered = [rule_id for _, _, rule_id in sorted(hits)]
    return ordered[:1] if policy == "first" else ordered


events = st.builds(
    lambda kind, zone, threshold, minute: make_event(
        kind=kind,
        zone=None if kind in (EventKind.VISIT_START, EventKind.VISIT_END) else zone,
        threshold_s=threshold if kind is EventKind.ZONE_DWELL else None,
        at=at(minute * 60 - 10 * 3600),  # any minute of the day (T0 is 10:00 UTC)
    ),
    st.sampled_from(list(EventKind)),
    st.sampled_from(ZONES),
    st.sampled_from([*DWELLS, 45]).map(float),
    st.integers(0, 24 * 60 - 1),
)


@settings(max_examples=150, deadline=None)
@given(rule_specs(), st.sampled_from(["first", "collect"]), st.lists(events, max_size=8))
def test_match_equals_the_naive_reference(
    tmp_path_factory: Any, specs: list[dict[str, Any]], policy: str, evs: list[JourneyEvent]
) -> None:
    table = table_from(render_rules(specs, policy), tmp_path_factory.mktemp("t"))
    for event in evs:
        assert [r.id for r in table.match(event)] == reference(specs, event, policy)


@settings(max_examples=60, deadline=None)
@given(rule_specs())
def test_dwell_thresholds_are_exactly_those_the_rules_use(
    tmp_path_factory: Any, specs: list[dict[str, Any]]
) -> None:
    table = table_from(render_rules(specs, "collect"), tmp_path_factory.mktemp("t"))
    for zone in ZONES:
        want = sorted(
            {
                float(s["dwell"])
                for s in specs
                if s["enabled"]
                and s["dwell"] is not None
                and (s["zones"] is None or zone in s["zones"])
            }
        )
        assert list(table.dwell_thresholds(zone)) == want


def example_table() -> RuleTable:
    return RuleTable.from_ruleset(load_rule_files([ROOT / "rules" / "example-store.toml"]))


def test_the_example_store_compiles() -> None:
    table = example_table()
    assert table.zone_for_scanner("gw-coffee") == "coffee"
    assert table.zone_for_scanner("gw-unknown") is None
    assert table.dwell_thresholds("coffee") == (30.0,)
    assert table.dwell_thresholds("entrance") == ()


def test_decisions_make_deterministic_offers_once_per_visit() -> None:
    decider = Decider(example_table())
    enter = make_event(kind=EventKind.ZONE_ENTER, zone="entrance", at=at(5))
    first = decider.decide(enter)
    (offer,) = first.offers
    assert offer.rule == "welcome-directions"
    assert offer.moment is Moment.GO
    assert offer.id == offer_id("welcome-directions", enter.shopper.token, enter.visit, "n0")
    assert offer.expires_at - offer.issued_at == decider.table.ttl_for(
        decider.table.rule("welcome-directions")
    )
    again = decider.decide(enter.model_copy(update={"at": at(50)}))
    assert again.offers == ()
    assert again.suppressed == (("welcome-directions", Suppression.CAP),)
    next_visit = decider.decide(enter.model_copy(update={"visit": "v-0002"}))
    assert len(next_visit.offers) == 1
    assert next_visit.offers[0].id != offer.id


def test_no_consent_no_personal_offer() -> None:
    decider = Decider(example_table())
    event = make_event(
        kind=EventKind.ZONE_ENTER, zone="entrance", shopper=make_shopper(consent=False)
    )
    decision = decider.decide(event)
    assert decision.offers == ()
    assert decision.suppressed == (("welcome-directions", Suppression.NO_CONSENT),)
    assert decider.stats.suppressed[("welcome-directions", Suppression.NO_CONSENT)] == 1
