"""``proximity rules``: check, test, explain, schema — the tools for people who edit rules."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from proximity.engine.loader import check_rule_files, load_rule_files
from proximity.engine.rules import RuleFile, one_or_many
from proximity.engine.ruletests import run_all
from proximity.engine.table import RuleTable, Verdict
from proximity.events import EventKind, JourneyEvent, Shopper

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def add_commands(rules_sub: Any, common: argparse.ArgumentParser) -> None:
    check = rules_sub.add_parser(
        "check",
        parents=[common],
        help="validate rule files; errors as path:line:column: message",
        description="Validate rule files (or folders of *.toml). Exit 0 when all are valid, "
        "1 with one 'path:line:column: message' line per problem otherwise.",
    )
    check.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    check.set_defaults(rules_run=_check)

    test = rules_sub.add_parser(
        "test",
        parents=[common],
        help="run the [[tests]] cases written in the rule files",
        description="Run every [[tests]] case in the rule files: each gives a shopper, a start "
        "time and events, and the offers expected. Exit 0 when all pass, 1 otherwise.",
    )
    test.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    test.set_defaults(rules_run=_test)

    lint = rules_sub.add_parser(
        "lint",
        parents=[common],
        help="find rules that are valid but probably wrong (shadowed, unreachable, overlapping)",
        description="Semantic checks on valid rule files: rules shadowed under hit policy "
        '"first", overlaps that break "unique", unreachable conditions, zones without scanners '
        "or rules, caps that can never be reached. Findings as 'path:line:column: severity: "
        "message'. Exit 1 on an error (or on a warning with --strict).",
    )
    lint.add_argument("--strict", action="store_true", help="warnings fail too")
    lint.add_argument(
        "--floor-plan",
        type=Path,
        metavar="FILE",
        help="the store's floor plan ([presence] floor_plan): its zones need no scanners",
    )
    lint.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    lint.set_defaults(rules_run=_lint)

    explain = rules_sub.add_parser(
        "explain",
        parents=[common],
        help="every rule's verdict on one event, and why",
        description="Show, for one journey event, which rules match, which are shadowed by the "
        "hit policy, which are suppressed by a delivery control and which do not match, with "
        "the condition that failed. The event is JSON: "
        '{"kind": "zone.dwell", "zone": "coffee", "dwell": 30, "at": "2026-11-24T10:00:00+01:00", '
        '"consent": true}; "at" defaults to now, "consent" to true.',
    )
    explain.add_argument("--event", required=True, metavar="JSON", help="the event, as JSON")
    explain.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    explain.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    explain.set_defaults(rules_run=_explain)

    schema = rules_sub.add_parser(
        "schema",
        parents=[common],
        help="print the JSON Schema of rule files (for editor validation and completion)",
        description="Print the JSON Schema of the rule file format. Editors with a TOML "
        "language server (e.g. Taplo / Even Better TOML) validate and complete with it.",
    )
    schema.set_defaults(rules_run=_schema)


def run(args: argparse.Namespace) -> int:
    handler = getattr(args, "rules_run", None)
    if handler is None:
        args.print_rules_help()
        return EXIT_USAGE
    result: int = handler(args)
    return result


def _check(args: argparse.Namespace) -> int:
    paths: Sequence[Path] = args.paths
    errors = check_rule_files(list(paths))
    for error in errors:
        print(f"{error.path}:{error.line}:{error.column}: {error.message}")
    if errors:
        print(f"{len(errors)} problem{'s' if len(errors) != 1 else ''} found", file=sys.stderr)
        return EXIT_FAIL
    print(f"ok: {len(paths)} path{'s' if len(paths) != 1 else ''} checked, no problems")
    return EXIT_OK


def _test(args: argparse.Namespace) -> int:
    table = RuleTable.from_ruleset(load_rule_files(list(args.paths)))
    results = run_all(table)
    if not results:
        print("no [[tests]] cases in these files")
        return EXIT_FAIL
    for result in results:
        if result.passed:
            print(f"PASS  {result.name}")
        else:
            print(f"FAIL  {result.name}\n      {result.source}: {result.problem}")
    failed = sum(not r.passed for r in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    return EXIT_FAIL if failed else EXIT_OK


def _lint(args: argparse.Namespace) -> int:
    from proximity.engine.lint import Severity, lint

    placed: frozenset[str] = frozenset()
    if args.floor_plan is not None:
        from proximity.errors import ConfigError
        from proximity.presence.floorplan import load_floor_plan

        try:
            placed = frozenset(load_floor_plan(args.floor_plan).zone_ids)
        except ConfigError as exc:
            print(str(exc), file=sys.stderr)
            return EXIT_FAIL
    findings = lint(load_rule_files(list(args.paths)), datetime.now(UTC).date(), placed)
    for finding in findings:
        print(finding)
    errors = sum(f.severity is Severity.ERROR for f in findings)
    warnings = len(findings) - errors
    print(
        f"{errors} error{'s' if errors != 1 else ''}, "
        f"{warnings} warning{'s' if warnings != 1 else ''}",
        file=sys.stderr,
    )
    return EXIT_FAIL if errors or (args.strict and warnings) else EXIT_OK


def _explain(args: argparse.Namespace) -> int:
    table = RuleTable.from_ruleset(load_rule_files(list(args.paths)))
    try:
        event = parse_event(args.event, table)
    except ValueError as exc:
        print(f"proximity rules explain: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from proximity.engine.decide import Decider

    rows = Decider(table).explain(event)
    if args.json:
        for verdict, control in rows:
            line: dict[str, str | None] = {"rule": verdict.rule, "verdict": str(verdict.verdict)}
            if control is not None:
                line.update(verdict="suppressed", control=str(control[0]), reason=control[1])
            else:
                line["reason"] = verdict.reason
            print(json.dumps(line))
        return EXIT_OK
    local = table.local_time(event.at)
    zone = f" in {event.zone}" if event.zone else ""
    print(
        f"{event.kind}{zone} at {local:%a %Y-%m-%d %H:%M} store time, "
        f"consent {'yes' if event.shopper.consent else 'no'}:"
    )
    width = max((len(v.rule) for v, _ in rows), default=4)
    for verdict, control in rows:
        if control is not None:
            status, reason = "SUPPRESSED", control[1]
        else:
            status = {
                Verdict.MATCHED: "MATCHED",
                Verdict.NOT_MATCHED: "no match",
                Verdict.SHADOWED: "shadowed",
                Verdict.DISABLED: "disabled",
            }[verdict.verdict]
            reason = verdict.reason or "fires: an offer would be sent"
        print(f"  {verdict.rule:<{width}}  {status:<10}  {reason}")
    return EXIT_OK


def parse_event(text: str, table: RuleTable) -> JourneyEvent:
    """An event for ``explain`` from the short JSON form ops type."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--event is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError("--event must be a JSON object")
    kinds = ", ".join(k.value for k in EventKind)
    try:
        kind = EventKind(str(data.get("kind")))
    except ValueError as exc:
        raise ValueError(f'"kind" must be one of {kinds}') from exc
    at = datetime.now(UTC)
    if "at" in data:
        try:
            at = datetime.fromisoformat(str(data["at"]))
        except ValueError as exc:
            raise ValueError('"at" must be an ISO time like 2026-11-24T10:00:00+01:00') from exc
        if at.tzinfo is None:
            at = at.replace(tzinfo=table.timezone)
    dwell = data.get("dwell")
    try:
        return JourneyEvent(
            kind=kind,
            at=at,
            store=table.store.id if table.store and table.store.id else "store",
            shopper=Shopper(token="s-explain", consent=bool(data.get("consent", True))),
            visit="v-explain",
            zone=data.get("zone"),
            threshold_s=float(dwell)
            if dwell is not None and kind is EventKind.ZONE_DWELL
            else None,
            dwell_s=float(dwell) if dwell is not None else None,
        )
    except (ValidationError, TypeError, ValueError) as exc:
        raise ValueError(f"--event: {exc}") from exc


def _schema(args: argparse.Namespace) -> int:
    schema = RuleFile.model_json_schema(mode="validation")
    for definition in schema.get("$defs", {}).values():
        for name, prop in definition.get("properties", {}).items():
            if name in one_or_many() and prop.get("type") == "array":
                items = prop.pop("items")
                prop.pop("type")
                prop["anyOf"] = [items, {"type": "array", "items": items}]
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Proximity rule file"
    print(json.dumps(schema, indent=2))
    return EXIT_OK
