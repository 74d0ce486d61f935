"""`proximity rules test | explain | schema` as a user runs them."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import jsonschema
import pytest

from proximity.cli.main import main
from proximity.engine.loader import load_rule_files
from proximity.engine.ruletests import run_all
from proximity.engine.table import RuleTable

ROOT = Path(__file__).resolve().parent.parent
GROCERY = ROOT / "rules" / "grocery"


def test_the_grocery_example_is_realistic_and_its_tests_pass() -> None:
    table = RuleTable.from_ruleset(load_rule_files([GROCERY]))
    assert len(table.rules) >= 12
    assert {str(r.moment) for r in table.rules} == {"know", "go", "do", "buy"}
    results = run_all(table)
    assert len(results) >= 10
    assert all(r.passed for r in results), [r.problem for r in results if not r.passed]


def test_rules_test_reports_a_failing_case_with_its_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for path in GROCERY.glob("*.toml"):
        shutil.copy(path, tmp_path / path.name)
    tests = tmp_path / "tests.toml"
    tests.write_text(tests.read_text().replace('expect = ["welcome-map"]', "expect = []", 1))
    assert main(["rules", "test", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL  a shopper walking in gets the map" in out
    assert f"{tests}:" in out
    assert "expected offers: none; got: welcome-map" in out
    cases = len(load_rule_files([GROCERY]).tests)
    assert out.rstrip().endswith(f"{cases - 1} passed, 1 failed")


def test_explain_says_why_for_every_rule(capsys: pytest.CaptureFixture[str]) -> None:
    event = '{"kind": "zone.enter", "zone": "entrance", "at": "2026-12-05T10:00:00"}'
    assert main(["rules", "explain", "--json", "--event", event, str(GROCERY)]) == 0
    rows = {row["rule"]: row for row in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["advent-deals"]["verdict"] == "matched"
    assert rows["welcome-map"]["verdict"] == "suppressed"
    assert rows["welcome-map"]["control"] == "min_gap"
    assert rows["pharmacy-flu-shots"]["reason"] == "zone is entrance, the rule wants pharmacy"
    assert len(rows) == len(load_rule_files([GROCERY]).rules)


@pytest.mark.parametrize(
    ("event", "message"),
    [("{nope", "not valid JSON"), ('{"kind": "zone.walk"}', '"kind" must be one of')],
)
def test_explain_refuses_a_bad_event(
    event: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["rules", "explain", "--event", event, str(GROCERY)]) == 2
    assert message in capsys.readouterr().err


def test_the_schema_accepts_the_examples_and_rejects_mistakes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["rules", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    validator = jsonschema.Draft202012Validator(schema)
    for path in [ROOT / "rules" / "example-store.toml", *GROCERY.glob("*.toml")]:
        errors = list(validator.iter_errors(tomllib.loads(path.read_text())))
        assert errors == [], (path, errors[:1])
    broken = tomllib.loads((ROOT / "rules" / "example-store.toml").read_text())
    broken["rules"][0]["tll"] = "5m"
    broken["rules"][1]["moment"] = "purchase"
    broken["rules"][2]["ttl"] = "10 minutes"
    assert len(list(validator.iter_errors(broken))) == 3


def test_rules_without_a_subcommand_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules"]) == 2
    assert "check" in capsys.readouterr().out
