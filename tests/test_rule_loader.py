"""Rule files: what loads, and exactly where each problem is reported."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from proximity.engine.loader import check_rule_files, load_rule_files
from proximity.errors import RuleFileError
from proximity.events import EventKind

ROOT = Path(__file__).resolve().parent.parent
FILES = Path(__file__).parent / "rule_files"


def lines(paths: list[Path]) -> list[str]:
    return [f"{e.path.name}:{e.line}:{e.column}: {e.message}" for e in check_rule_files(paths)]


def test_the_example_store_loads() -> None:
    rs = load_rule_files([ROOT / "rules" / "example-store.toml"])
    assert rs.store is not None
    assert rs.store.id == "store-001"
    assert set(rs.zones) == {"entrance", "coffee", "bakery", "checkout"}
    coupon = next(r for r in rs.rules if r.id == "coffee-coupon")
    assert coupon.on is EventKind.ZONE_DWELL
    assert coupon.when.dwell == timedelta(seconds=30)
    assert coupon.coupon == "COFFEE-20"
    assert str(rs.sources["coffee-coupon"]).endswith("example-store.toml:65:6")


def test_a_folder_loads_every_toml_file_in_it(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('[zones.coffee]\nscanners = ["gw"]\n')
    (tmp_path / "b.toml").write_text(
        '[[rules]]\nid = "x"\non = "zone.enter"\nmoment = "go"\n'
        '[rules.when]\nzone = "coffee"\n[rules.cta]\nformat = "push"\ntitle = "t"\n'
    )
    (tmp_path / "notes.txt").write_text("ignored")
    rs = load_rule_files([tmp_path])
    assert [r.id for r in rs.rules] == ["x"]
    assert rs.files == (tmp_path / "a.toml", tmp_path / "b.toml")


def test_a_toml_syntax_error_points_at_its_line() -> None:
    (line,) = lines([FILES / "syntax.toml"])
    assert line.startswith("syntax.toml:5:")
    assert "TOML syntax error" in line
    assert "(at line" not in line


def test_every_semantic_problem_is_reported_at_its_place() -> None:
    assert lines([FILES / "semantic.toml"]) == [
        'semantic.toml:7:10: rule "coffee-coupon": moment must be one of know, go, do, buy, '
        'not "purchase"',
        'semantic.toml:8:1: rule "coffee-coupon": unknown field "tll" (did you mean "ttl"?)',
        'semantic.toml:12:9: rule "coffee-coupon": when.dwell: bad duration "30 seconds": '
        'use a number and a unit (ms, s, m, h, d), e.g. "45s", "10m", "1h30m"',
        'semantic.toml:18:1: rule "welcome": "cta" is required',
    ]


def test_problems_across_files_name_both_places() -> None:
    got = lines([FILES / "zones_a.toml", FILES / "zones_b.toml"])
    a = FILES / "zones_a.toml"
    assert got == [
        f'zones_b.toml:2:6: [store] id is "store-002" here but "store-001" at {a}:2:6',
        f'zones_b.toml:5:21: scanner "gw-1" is already in zone "entrance" (at {a}:5:13); '
        "a scanner belongs to one zone",
        f'zones_b.toml:8:6: duplicate rule id "welcome" (first defined at {a}:8:6)',
    ]


def test_unknown_zones_are_caught_once_the_files_are_merged(tmp_path: Path) -> None:
    (tmp_path / "r.toml").write_text(
        '[zones.coffee]\nscanners = ["gw"]\n[[rules]]\nid = "x"\non = "zone.enter"\n'
        'moment = "go"\n[rules.when]\nzone = ["coffee", "cofee"]\n'
        '[rules.cta]\nformat = "push"\ntitle = "t"\n'
    )
    assert lines([tmp_path / "r.toml"]) == [
        'r.toml:8:19: rule "x" uses unknown zone "cofee" (did you mean "coffee"?) '
        "(known zones: coffee)"
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            'on = "zone.enter"\n[rules.when]\ndwell = "5s"',
            '"dwell" is only allowed with on = "zone.dwell"',
        ),
        ('on = "zone.dwell"', 'on = "zone.dwell" needs when.dwell'),
        ('on = "visit.start"\n[rules.when]\nzone = "coffee"', "visit.start events have no zone"),
        ('on = "zone.enter"\npriority = "high"', 'priority must be a whole number, not "high"'),
        ('on = "zone.enter"\nttl = 5', 'bad duration 5: give it in quotes with a unit, e.g. "5s"'),
        ('on = "zone.enter"\nttl = "-5m"', 'bad duration "-5m"'),
    ],
)
def test_rule_level_checks(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "r.toml"
    path.write_text(
        '[zones.coffee]\nscanners = ["gw"]\n[[rules]]\nid = "x"\nmoment = "go"\n'
        f'cta = {{ format = "push", title = "t" }}\n{body}\n'
    )
    errors = check_rule_files([path])
    assert len(errors) == 1, errors
    assert message in errors[0].message


def test_unreadable_files_and_empty_folders(tmp_path: Path) -> None:
    assert lines([tmp_path / "missing.toml"]) == [
        "missing.toml:1:1: cannot read rule file: No such file or directory"
    ]
    errors = check_rule_files([tmp_path])
    assert errors[0].message == "no *.toml rule files in this folder"


def test_load_raises_with_every_error_in_the_message() -> None:
    with pytest.raises(RuleFileError) as info:
        load_rule_files([FILES / "semantic.toml"])
    assert len(info.value.errors) == 4
    assert str(info.value).count("semantic.toml:") == 4
