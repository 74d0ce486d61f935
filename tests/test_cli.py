"""The command line as a user runs it: a real process, its exit code and its output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def proximity(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "error::DeprecationWarning"}
    return subprocess.run(
        [sys.executable, "-m", "proximity", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
        check=False,
    )


def test_help_names_every_command() -> None:
    result = proximity("--help")
    assert result.returncode == 0
    for command in ("demo", "run", "rules"):
        assert command in result.stdout
    assert "examples:" in result.stdout


def test_no_command_prints_help_and_exits_2() -> None:
    result = proximity()
    assert result.returncode == 2
    assert "usage:" in result.stdout


def test_rules_check_accepts_the_example_store() -> None:
    result = proximity("rules", "check", "rules/example-store.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok" in result.stdout


def test_rules_check_points_at_a_toml_syntax_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.toml"
    bad.write_text('[store]\nid = "store-001"\n\n[[rules]]\nid = "x\non = "zone.enter"\n')
    result = proximity("rules", "check", str(bad))
    assert result.returncode == 1
    (line,) = result.stdout.splitlines()
    assert line.startswith(f"{bad}:5:")
    assert "TOML syntax error" in line


def test_rules_check_points_at_a_semantic_error(tmp_path: Path) -> None:
    text = (ROOT / "rules" / "example-store.toml").read_text()
    lines = text.splitlines()
    index = next(i for i, line in enumerate(lines) if line.strip().startswith("ttl ="))
    lines[index] = lines[index].replace("ttl =", "tll =")
    bad = tmp_path / "typo.toml"
    bad.write_text("\n".join(lines) + "\n")
    result = proximity("rules", "check", str(bad))
    assert result.returncode == 1
    assert result.stdout.splitlines()[0].startswith(f"{bad}:{index + 1}:")
    assert '"tll"' in result.stdout


def test_demo_json_in_virtual_time_on_the_embedded_broker() -> None:
    result = proximity("demo", "--json", "--speed", "0")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert {line["type"] for line in lines} == {"event", "offer"}
    offers = [line for line in lines if line["type"] == "offer"]
    assert sorted(o["offer"]["moment"] for o in offers) == ["buy", "go", "know"]
    for o in offers:
        assert o["topic"].startswith("proximity/v1/store-001/shoppers/")
        assert {"id", "moment", "cta", "expires_at"} <= o["offer"].keys()
    events = [line["kind"] for line in lines if line["type"] == "event"]
    assert events[0] == "visit.start"
    assert events[-1] == "visit.end"
    (coupon,) = [o["offer"] for o in offers if o["offer"]["coupon"]]
    assert coupon["redeem_code"].startswith("PX1:")
    (redeemed,) = [line for line in lines if line.get("kind") == "offer.redeemed"]
    assert (redeemed["offer"], redeemed["zone"]) == (coupon["id"], "checkout")


def test_demo_human_output_ends_with_a_summary_and_a_funnel_report_can_read(
    tmp_path: Path,
) -> None:
    funnel = tmp_path / "funnel.sqlite"
    result = proximity("demo", "--speed", "0", "--funnel", str(funnel))
    assert result.returncode == 0, result.stderr
    assert "Summary: " in result.stdout
    assert "3 offers published, 3 received by the shopper app" in result.stdout
    assert "Funnel: decided 3, published 3, delivered 3, opened 3, redeemed 1" in result.stdout
    report = proximity("report", "--store", str(funnel), "--format", "json")
    assert report.returncode == 0, report.stderr
    rows = {row["rule"]: row for row in json.loads(report.stdout)}
    assert set(rows) == {"welcome-directions", "coffee-coupon", "bakery-fresh-bread"}
    for row in rows.values():
        assert (row["decided"], row["published"], row["delivered"], row["opened"]) == (1, 1, 1, 1)
    # the till scanned the coffee coupon's signed code at the checkout
    assert [r for r in rows if rows[r]["redeemed"]] == ["coffee-coupon"]
    assert rows["coffee-coupon"]["redemption"] == 1.0


def test_config_check_says_ok_or_lists_every_problem(tmp_path: Path) -> None:
    good = proximity("config", "check", str(ROOT / "config.example.toml"))
    assert good.returncode == 0, good.stderr
    assert "ok — store store-001" in good.stdout
    bad = tmp_path / "gateway.toml"
    bad.write_text(
        '[store]\nid = "store-002"\n[identity]\nsegments = "nope.csv"\n'
        '[[nfc]]\nid = "shelf-1"\npath = "usb"\n'
    )
    result = proximity("config", "check", str(bad))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert (
        f"{bad}: identity.segments: {tmp_path / 'nope.csv'} does not exist or is not a file"
        in lines
    )
    assert any("the rules are for store 'store-001'" in line for line in lines)


def test_the_systemd_unit_runs_commands_the_cli_accepts() -> None:
    import shlex

    unit = (ROOT / "deploy" / "systemd" / "proximity.service").read_text()
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")
    )
    assert settings["User"] == "proximity"
    assert "bluetooth" in settings["SupplementaryGroups"].split()
    assert settings["Restart"] == "on-failure"
    assert settings["NoNewPrivileges"] == "true"
    from proximity.cli.main import _parser

    for key in ("ExecStartPre", "ExecStart"):
        argv = shlex.split(settings[key])
        assert argv[0] == "/opt/proximity/.venv/bin/proximity"
        _parser().parse_args(argv[1:])  # exits (SystemExit) on anything the CLI refuses
