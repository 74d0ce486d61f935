"""Conditions (with their reasons) and delivery controls, on small rule files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from proximity.engine.controls import Suppression
from proximity.engine.decide import Decider
from proximity.engine.loader import check_rule_files, load_rule_files
from proximity.engine.table import RuleTable, Verdict
from proximity.events import EventKind, JourneyEvent
from tests.factories import make_event, make_shopper

HEAD = """
[store]
id = "store-001"
timezone = "Europe/Paris"
[zones.entrance]
scanners = ["gw-e"]
[zones.coffee]
scanners = ["gw-c"]
[zones.bakery]
scanners = ["gw-b"]
"""
# Tuesday 24 Nov 2026, 07:30 UTC = 08:30 in Paris
TUE_0830 = datetime(2026, 11, 24, 7, 30, tzinfo=UTC)


def rule(rule_id: str, on: str, extra: str = "", when: str = "") -> str:
    return (
        f'[[rules]]\nid = "{rule_id}"\non = "{on}"\nmoment = "know"\n{extra}\n'
        f'cta = {{ format = "banner", title = "{rule_id}" }}\n[rules.when]\n{when}\n'
    )


def table(tmp_path: Path, *rules: str, defaults: str = "") -> RuleTable:
    path = tmp_path / "r.toml"
    path.write_text(HEAD + (f"[defaults]\n{defaults}\n" if defaults else "") + "".join(rules))
    return RuleTable.from_ruleset(load_rule_files([path]))


def enter(zone: str = "coffee", at: datetime = TUE_0830, **kw: object) -> JourneyEvent:
    return make_event(kind=EventKind.ZONE_ENTER, zone=zone, at=at, **kw)


def reasons(t: RuleTable, event: JourneyEvent) -> dict[str, str | None]:
    return {v.rule: v.reason for v in t.explain(event)}


def test_time_conditions_use_the_store_time_zone(tmp_path: Path) -> None:
    t = table(
        tmp_path,
        rule("morning", "zone.enter", when='hours = "08:00-11:00"'),
        rule("evening", "zone.enter", when='hours = ["17:00-19:00", "21:00-02:00"]'),
        rule("weekend", "zone.enter", when='weekdays = ["sat", "sun"]'),
        rule("advent", "zone.enter", when='dates = "2026-12-01..2026-12-24"'),
        rule("november", "zone.enter", when='dates = "2026-11-01..2026-11-30"'),
    )
    assert [r.id for r in t.match(enter())] == ["morning", "november"]
    why = reasons(t, enter())
    assert why["evening"] == "local time 08:30 is outside 17:00-19:00, 21:00-02:00"
    assert why["weekend"] == "tue is not one of sat, sun"
    assert why["advent"] == "2026-11-24 is outside 2026-12-01..2026-12-24"
    late = enter(at=datetime(2026, 11, 24, 23, 30, tzinfo=UTC))  # 00:30 Wednesday in Paris
    assert [r.id for r in t.match(late)] == ["evening", "november"]


def test_visit_history_conditions(tmp_path: Path) -> None:
    t = table(
        tmp_path,
        rule("welcome", "zone.enter", when='zone = "entrance"'),
        rule("cross-sell", "zone.enter", when='zone = "bakery"\nvisited = "coffee"'),
        rule("first-stop", "zone.enter", when='zone = "bakery"\nnot_visited = ["coffee"]'),
        rule("follow-up", "zone.enter", when='zone = "coffee"\nafter_offer = "welcome"'),
    )
    decider = Decider(t)
    shopper = make_shopper()
    got = []
    for n, zone in enumerate(["entrance", "coffee", "bakery"]):
        event = enter(zone, at=TUE_0830 + timedelta(minutes=n), shopper=shopper)
        got += [o.rule for o in decider.decide(event).offers]
    assert got == ["welcome", "follow-up", "cross-sell"]
    fresh = enter("bakery", visit="v-other")
    assert [r.id for r in t.match(fresh)] == ["first-stop"]
    assert reasons(t, fresh)["cross-sell"] == "not yet visited coffee"


def test_stay_ranges_on_exit(tmp_path: Path) -> None:
    t = table(
        tmp_path,
        rule(
            "browsed",
            "zone.exit",
            when='zone = "coffee"\nstayed_at_least = "1m"\nstayed_at_most = "10m"',
        ),
    )

    def exit_after(seconds: float) -> JourneyEvent:
        return make_event(kind=EventKind.ZONE_EXIT, zone="coffee", dwell_s=seconds, at=TUE_0830)

    assert [r.id for r in t.match(exit_after(90))] == ["browsed"]
    assert reasons(t, exit_after(30))["browsed"] == "stayed 30s, less than 1m"
    assert reasons(t, exit_after(900))["browsed"] == "stayed 15m, more than 10m"


def test_explain_gives_every_verdict(tmp_path: Path) -> None:
    t = table(
        tmp_path,
        rule("low", "zone.enter", when='zone = "coffee"'),
        rule("high", "zone.enter", extra="priority = 5", when='zone = "coffee"'),
        rule("off", "zone.enter", extra="enabled = false"),
        rule("bakery", "zone.enter", when='zone = "bakery"'),
        rule("dwell", "zone.dwell", when='zone = "coffee"\ndwell = "30s"'),
        defaults='hit_policy = "first"',
    )
    verdicts = [(v.rule, v.verdict) for v in t.explain(enter())]
    assert verdicts == [
        ("high", Verdict.MATCHED),
        ("low", Verdict.SHADOWED),
        ("bakery", Verdict.NOT_MATCHED),
        ("dwell", Verdict.NOT_MATCHED),
        ("off", Verdict.DISABLED),
    ]
    why = reasons(t, enter())
    assert why["bakery"] == "zone is coffee, the rule wants bakery"
    assert why["dwell"] == "the event is zone.enter, the rule is on zone.dwell"


def test_each_delivery_control_suppresses_with_its_reason(tmp_path: Path) -> None:
    t = table(
        tmp_path,
        rule("capped", "zone.enter", extra='cap = "2/day"', when='zone = "coffee"'),
        rule(
            "cooling", "zone.enter", extra='cap = "9/day"\ncooldown = "10m"', when='zone = "bakery"'
        ),
        rule(
            "budget",
            "zone.enter",
            extra='cap = "9/day"\ndaily_budget = 2',
            when='zone = "entrance"',
        ),
        defaults='quiet_hours = "21:00-08:00"',
    )
    decider = Decider(t)

    def outcome(event: JourneyEvent) -> list[str]:
        d = decider.decide(event)
        return [o.rule for o in d.offers] + [str(why) for _, why in d.suppressed]

    at = TUE_0830
    assert outcome(enter("coffee", at)) == ["capped"]
    assert outcome(enter("coffee", at + timedelta(minutes=1), visit="v-2")) == ["capped"]
    assert outcome(enter("coffee", at + timedelta(minutes=2), visit="v-3")) == ["cap"]
    assert outcome(enter("bakery", at)) == ["cooling"]
    assert outcome(enter("bakery", at + timedelta(minutes=5))) == ["cooldown"]
    assert outcome(enter("bakery", at + timedelta(minutes=11))) == ["cooling"]
    for n in range(2):
        other = make_shopper(token=f"s-other-{n:04d}")
        assert outcome(enter("entrance", at, shopper=other)) == ["budget"]
    assert outcome(enter("entrance", at, shopper=make_shopper(token="s-third-0001"))) == [
        "daily_budget"
    ]
    night = datetime(2026, 11, 24, 21, 0, tzinfo=UTC)  # 22:00 in Paris
    assert outcome(enter("bakery", night, visit="v-9")) == ["quiet_hours"]
    assert outcome(enter("coffee", at, shopper=make_shopper(consent=False))) == ["no_consent"]
    assert decider.stats.suppressed[("capped", Suppression.CAP)] == 1


def test_visit_and_gap_limits_across_rules(tmp_path: Path) -> None:
    t = table(
        tmp_path,
        rule("a", "zone.enter", when='zone = "entrance"'),
        rule("b", "zone.enter", when='zone = "coffee"'),
        rule("c", "zone.enter", when='zone = "bakery"'),
        defaults='max_per_visit = 2\nmin_gap = "5m"',
    )
    decider = Decider(t)
    got = []
    for minutes, zone in [(0, "entrance"), (2, "coffee"), (6, "coffee"), (12, "bakery")]:
        d = decider.decide(enter(zone, TUE_0830 + timedelta(minutes=minutes)))
        got.append([o.rule for o in d.offers] + [str(w) for _, w in d.suppressed])
    # "b" at 2 min: too soon after "a"; at 6 min: allowed (its 1/visit cap is unused);
    # "c" at 12 min: the visit already had two offers
    assert got == [["a"], ["min_gap"], ["b"], ["max_per_visit"]]


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 3),
    st.sampled_from(["1h", "1d", "7d"]),
    st.lists(st.integers(0, 5 * 24 * 60), min_size=1, max_size=40),
)
def test_a_rolling_cap_is_never_exceeded(
    tmp_path_factory: object, count: int, window: str, minutes: list[int]
) -> None:
    tmp = tmp_path_factory.mktemp("cap")  # type: ignore[attr-defined]
    t = table(tmp, rule("r", "zone.enter", extra=f'cap = "{count}/{window}"'))
    decider = Decider(t)
    sent: list[datetime] = []
    for n, minute in enumerate(sorted(minutes)):
        at = TUE_0830 + timedelta(minutes=minute)
        if decider.decide(enter("coffee", at, visit=f"v-{n}")).offers:
            sent.append(at)
    span = {"1h": timedelta(hours=1), "1d": timedelta(days=1), "7d": timedelta(days=7)}[window]
    for at in sent:
        assert sum(1 for s in sent if at - span < s <= at) <= count
    assert sent  # the first event is always sent


def test_mistakes_in_the_new_conditions_are_located(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(
        HEAD
        + rule("a", "zone.enter", extra='cap = "often"', when='hours = "8am-11am"')
        + rule(
            "b",
            "zone.enter",
            when='stayed_at_least = "1m"\nvisited = ["cofee"]\n'
            'after_offer = "nope"\nweekdays = ["monday"]',
        )
    )
    got = [f"{e.line}:{e.column}: {e.message}" for e in check_rule_files([path])]
    assert got == [
        '15:7: rule "a": cap: bad cap "often": use "N/visit", "N/day" or "N/<duration>", '
        'e.g. "1/visit", "2/day", "3/7d"',
        '18:9: rule "a": when.hours: bad time range "8am-11am": use "HH:MM-HH:MM", '
        'e.g. "08:00-11:30"',
        '29:13: rule "b": when.weekdays must be one of mon, tue, wed, thu, fri, sat, sun, '
        'not "monday"',
    ]
    path.write_text(
        HEAD
        + rule(
            "b",
            "zone.enter",
            when='stayed_at_least = "1m"\nvisited = ["cofee"]\nafter_offer = "nope"',
        )
    )
    got = [f"{e.line}:{e.column}: {e.message}" for e in check_rule_files([path])]
    assert got == [
        '18:19: rule "b": "stayed_at_least" is only allowed with on = "zone.exit"',
        '19:12: rule "b": when.visited names unknown zone "cofee"',
        '20:15: rule "b": when.after_offer names unknown rule "nope"',
    ]


def test_caps_and_cooldowns_survive_a_restart(tmp_path: Path) -> None:
    from proximity.engine.controls import DeliveryState, memory_horizon
    from proximity.engine.state import StateStore

    t = table(
        tmp_path,
        rule("daily", "zone.enter", extra='cap = "1/day"', when='zone = "coffee"'),
        rule("weekly", "zone.enter", extra='cap = "1/7d"', when='zone = "bakery"'),
    )
    db = tmp_path / "state" / "delivery.sqlite"

    def decider_after_restart(now: datetime) -> Decider:
        state = DeliveryState(store=StateStore(db))
        state.restore(t.local_time(now), memory_horizon(t.rules, t.ruleset.defaults))
        return Decider(t, state=state)

    first = decider_after_restart(TUE_0830)
    assert [o.rule for o in first.decide(enter("coffee")).offers] == ["daily"]
    assert [o.rule for o in first.decide(enter("bakery")).offers] == ["weekly"]

    later = TUE_0830 + timedelta(hours=2)
    again = decider_after_restart(later)  # a new process: only the file remembers
    d = again.decide(enter("coffee", later, visit="v-after-restart"))
    assert d.offers == ()
    assert d.suppressed == (("daily", Suppression.CAP),)
    three_days = TUE_0830 + timedelta(days=3)
    d = decider_after_restart(three_days).decide(enter("bakery", three_days, visit="v-3"))
    assert d.suppressed == (("weekly", Suppression.CAP),)
    next_day = TUE_0830 + timedelta(days=1)
    d = decider_after_restart(next_day).decide(enter("coffee", next_day, visit="v-4"))
    assert [o.rule for o in d.offers] == ["daily"]


def test_an_unusable_state_file_is_reported_and_memory_takes_over(tmp_path: Path) -> None:
    import structlog

    from proximity.engine.controls import DeliveryState
    from proximity.engine.state import StateStore

    bad = tmp_path / "delivery.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    t = table(tmp_path, rule("daily", "zone.enter", extra='cap = "1/day"', when='zone = "coffee"'))
    with structlog.testing.capture_logs() as logs:
        store = StateStore(bad)
        decider = Decider(t, state=DeliveryState(store=store))
        assert [o.rule for o in decider.decide(enter("coffee")).offers] == ["daily"]
        assert decider.decide(enter("coffee", visit="v-2")).suppressed == (
            ("daily", Suppression.CAP),
        )
    assert store.failed
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["delivery_state_unavailable"]


def test_visit_number_recency_and_engagement(tmp_path: Path) -> None:
    t = table(
        tmp_path,
        rule("first-time", "zone.enter", when='zone = "entrance"\nvisit_number_at_most = 1'),
        rule(
            "regular",
            "zone.enter",
            when='zone = "entrance"\nvisit_number_at_least = 2\nlast_visit_within = "10d"',
        ),
        rule("lapsed", "zone.enter", when='zone = "entrance"\nlast_visit_over = "30d"'),
        rule("engaged", "zone.enter", when='zone = "bakery"\nengagement_at_least = 4'),
    )
    decider = Decider(t)
    shopper = make_shopper()

    def offers(zone: str, days: float, visit: str) -> list[str]:
        at = TUE_0830 + timedelta(days=days)
        return [
            o.rule for o in decider.decide(enter(zone, at, shopper=shopper, visit=visit)).offers
        ]

    assert offers("entrance", 0, "v1") == ["first-time"]
    assert offers("entrance", 3, "v2") == ["regular"]
    assert offers("entrance", 50, "v3") == ["lapsed"]
    why = {v.rule: v.reason for v, _ in Decider(t).explain(enter("bakery"))}
    assert why["engaged"] == "engagement 1, the rule wants 4"  # entering the bakery counts 1
    # zones 1+1+1 (entrance, coffee, bakery) and a dwell 2 make 5
    for n, (kind, zone) in enumerate(
        [(EventKind.ZONE_ENTER, "coffee"), (EventKind.ZONE_DWELL, "coffee")]
    ):
        decider.decide(
            make_event(
                kind=kind,
                zone=zone,
                threshold_s=30.0 if n else None,
                at=TUE_0830 + timedelta(days=50, minutes=n + 1),
                shopper=shopper,
                visit="v3",
            )
        )
    assert offers("bakery", 50.01, "v3") == ["engaged"]


def test_visit_counts_survive_a_restart(tmp_path: Path) -> None:
    from proximity.engine.controls import DeliveryState
    from proximity.engine.state import StateStore

    t = table(tmp_path, rule("regular", "zone.enter", when="visit_number_at_least = 3"))
    db = tmp_path / "state.sqlite"
    for n in range(3):  # three visits, each by a new process
        state = DeliveryState(store=StateStore(db))
        at = TUE_0830 + timedelta(days=n)
        state.restore(t.local_time(at), timedelta(days=1))
        got = Decider(t, state=state).decide(enter("coffee", at, visit=f"v{n}")).offers
        assert [o.rule for o in got] == (["regular"] if n == 2 else [])
