"""`proximity rules lint`: semantic findings, compared the way the evaluator runs rules."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from proximity.cli.main import main
from proximity.engine.lint import Severity, lint
from proximity.engine.loader import load_rule_files
from proximity.engine.table import RuleTable
from tests.factories import make_event
from tests.test_conditions_and_controls import HEAD, TUE_0830, rule

ROOT = Path(__file__).resolve().parent.parent
TODAY = date(2026, 11, 24)


def findings(tmp_path: Path, *rules: str, defaults: str = "") -> list[str]:
    path = tmp_path / "r.toml"
    path.write_text(HEAD + (f"[defaults]\n{defaults}\n" if defaults else "") + "".join(rules))
    return [f"{f.severity}: {f.message}" for f in lint(load_rule_files([path]), TODAY)]


def test_the_grocery_example_is_clean(capsys: object) -> None:
    assert lint(load_rule_files([ROOT / "rules" / "grocery"]), TODAY) == []
    assert main(["rules", "lint", "--strict", str(ROOT / "rules" / "grocery")]) == 0


def test_shadowed_rules_under_first(tmp_path: Path) -> None:
    got = findings(
        tmp_path,
        rule("broad", "zone.enter", extra="priority = 5", when='hours = "08:00-20:00"'),
        rule("narrow", "zone.enter", when='zone = "coffee"\nhours = "09:00-10:00"'),
        rule("outside", "zone.enter", when='zone = "coffee"\nhours = "19:00-21:00"'),
        rule("bakery", "zone.enter", when='zone = "bakery"'),
        defaults='hit_policy = "first"',
    )
    shadowed = [g for g in got if "is shadowed" in g]
    assert shadowed == [
        'warning: rule "narrow" is shadowed by "broad" (hit_policy "first"): "broad" matches '
        "every event it does and ranks higher"
    ]
    # "outside" runs to 21:00, past "broad"; "bakery" has no hours, so it fires after 20:00


def test_overlaps_break_unique_only_when_intervals_meet(tmp_path: Path) -> None:
    got = findings(
        tmp_path,
        rule("morning", "zone.enter", when='zone = "coffee"\nhours = "08:00-11:00"'),
        rule("noon", "zone.enter", when='zone = "coffee"\nhours = "11:00-14:00"'),
        rule("late-morning", "zone.enter", when='zone = "coffee"\nhours = "10:30-12:00"'),
        rule("weekend", "zone.enter", when='zone = "bakery"\nweekdays = ["sat", "sun"]'),
        rule("weekday", "zone.enter", when='zone = "bakery"\nweekdays = ["mon", "tue"]'),
        defaults='hit_policy = "unique"',
    )
    errors = sorted(g for g in got if g.startswith("error"))
    assert errors == [
        'error: rules "morning" and "late-morning" can match the same event, '
        'but hit_policy is "unique"',
        'error: rules "noon" and "late-morning" can match the same event, '
        'but hit_policy is "unique"',
    ]


def test_unreachable_rules_and_conflicting_caps(tmp_path: Path) -> None:
    got = findings(
        tmp_path,
        rule("night", "zone.enter", when='hours = "23:00-05:00"'),
        rule("contradiction", "zone.enter", when='visited = "coffee"\nnot_visited = "coffee"'),
        rule("last-year", "zone.enter", when='dates = "2025-12-01..2025-12-24"'),
        rule("greedy", "zone.enter", extra='cap = ["5/visit", "9/day"]'),
        rule("slow", "zone.enter", extra='cap = "4/1h"\ncooldown = "30m"'),
        defaults='quiet_hours = "22:00-06:00"\nmax_per_visit = 3\nmax_per_day = 6',
    )
    assert 'warning: rule "night" is unreachable: all its hours fall in quiet hours' in got
    assert (
        'warning: rule "contradiction" is unreachable: coffee is both visited and not_visited'
    ) in got
    assert 'warning: rule "last-year" can no longer fire: its dates are past' in got
    assert 'warning: rule "greedy": cap 5/visit can never be reached, max_per_visit is 3' in got
    assert 'warning: rule "greedy": cap 9/day can never be reached, max_per_day is 6' in got
    assert any(g.startswith('warning: rule "slow": with cooldown') for g in got)


def test_zones_without_scanners_or_rules(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text(
        '[zones.coffee]\nscanners = []\n[zones.bakery]\nscanners = ["b"]\n'
        + rule("x", "zone.dwell", when='zone = "coffee"\ndwell = "10s"')
    )
    got = [
        (f.source.line, f"{f.severity}: {f.message}") for f in lint(load_rule_files([path]), TODAY)
    ]
    assert (1, 'warning: zone "coffee" has no scanners or readers: no shopper is ever in it') in got
    assert (3, 'warning: zone "bakery" is not used by any rule') in got


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(["06:00-09:00", "08:00-12:00", "11:30-11:45", "22:00-02:00"]),
    st.sampled_from(["07:00-08:00", "08:30-09:30", "23:00-23:30", "12:00-13:00"]),
    st.integers(0, 23 * 60 + 59),
)
def test_a_unique_overlap_finding_means_an_event_can_really_match_both(
    tmp_path_factory: object, a: str, b: str, minute: int
) -> None:
    tmp = tmp_path_factory.mktemp("u")  # type: ignore[attr-defined]
    path = tmp / "r.toml"
    path.write_text(
        HEAD
        + '[defaults]\nhit_policy = "collect"\n'
        + rule("a", "zone.enter", when=f'hours = "{a}"')
        + rule("b", "zone.enter", when=f'hours = "{b}"')
    )
    rs = load_rule_files([path])
    unique = replace(rs, defaults=rs.defaults.model_copy(update={"hit_policy": "unique"}))
    overlap = any(f.severity is Severity.ERROR for f in lint(unique, TODAY))
    table = RuleTable.from_ruleset(rs)
    # Paris is UTC+1 in November: local minute m is UTC minute m - 60
    at = TUE_0830.replace(hour=0, minute=0) + timedelta(minutes=minute - 60)
    if len(table.match(make_event(zone="coffee", at=at))) == 2:
        assert overlap  # the linter never misses a real overlap
    if not overlap:
        assert len(table.match(make_event(zone="coffee", at=at))) < 2
