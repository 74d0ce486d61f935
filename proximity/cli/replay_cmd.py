"""``proximity replay``: a recorded journey through the rules, and what a rule change changes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from proximity.adapters.ble.replay import Header, LineError, parse_line
from proximity.engine.loader import load_rule_files
from proximity.engine.replay import replay
from proximity.engine.table import RuleTable
from proximity.journey.record import read_journey

EXIT_OK, EXIT_FAIL = 0, 1


def add_command(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "replay",
        parents=[common],
        help="re-run a recorded journey log through rules; compare two rule versions",
        description="Re-run a journey log (JSON lines, as `proximity run` records with "
        "events.record, or `proximity demo --record`) through rule files, with the events' "
        "own times: offers per rule and suppressions per reason. With --against, list every "
        "event whose outcome differs between the two rule versions.",
    )
    parser.add_argument("journey", type=Path, metavar="JOURNEY.jsonl")
    parser.add_argument(
        "--rules",
        nargs="+",
        type=Path,
        required=True,
        metavar="PATH",
        help="the rules to replay with (files or folders)",
    )
    parser.add_argument(
        "--against", nargs="+", type=Path, metavar="OLD_PATH", help="older rules to compare with"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(run_command=run)


def run(args: argparse.Namespace) -> int:
    if _is_readings(args.journey):
        print(
            f"proximity replay: error: {args.journey} is a raw BLE readings recording, not a "
            "journey log: turn it into journey events first with `python -m firmware_sim "
            "replay FILE --record JOURNEY.jsonl` (or `proximity run` with [ble] backend = "
            '"replay" and [events] record), then replay JOURNEY.jsonl here',
            file=sys.stderr,
        )
        return EXIT_FAIL
    try:
        log = read_journey(args.journey)
    except OSError as exc:
        print(
            f"proximity replay: error: cannot read {args.journey}: {exc.strerror}", file=sys.stderr
        )
        return EXIT_FAIL
    for number, reason in log.rejected:
        print(f"{args.journey}:{number}: skipped: {reason}", file=sys.stderr)
    events = [event for _, event in log.events]
    new = replay(RuleTable.from_ruleset(load_rule_files(args.rules)), events)
    old = (
        replay(RuleTable.from_ruleset(load_rule_files(args.against)), events)
        if args.against
        else None
    )
    changes = []
    if old is not None:
        for (number, event), before, after in zip(
            log.events, old.outcomes, new.outcomes, strict=True
        ):
            if before != after:
                changes.append((number, event, before, after))
    if args.json:
        report: dict[str, Any] = {
            "events": len(events),
            "skipped": len(log.rejected),
            "offers": dict(new.offers),
            "suppressed": dict(new.suppressed),
            "conversions": [
                {"rule": r.rule, "arm": r.arm, "exposed": r.exposed, "converted": r.converted}
                for r in new.funnel
            ],
            "uplift": new.uplift,
        }
        if old is not None:
            report["against"] = {"offers": dict(old.offers), "suppressed": dict(old.suppressed)}
            report["changes"] = [
                {
                    "line": n,
                    "kind": str(e.kind),
                    "zone": e.zone,
                    "at": e.at.isoformat(),
                    "visit": e.visit,
                    "before": str(b),
                    "after": str(a),
                }
                for n, e, b, a in changes
            ]
        print(json.dumps(report, indent=2))
        return EXIT_OK
    print(
        f"{len(events)} events replayed"
        + (f", {len(log.rejected)} lines skipped" if log.rejected else "")
    )
    rules = sorted(set(new.offers) | set(old.offers if old else ()))
    print("\noffers per rule" + ("          new    old" if old else ""))
    for rule in rules or ["(none)"]:
        line = f"  {rule:<28} {new.offers.get(rule, 0):>5}"
        if old is not None:
            line += f"  {old.offers.get(rule, 0):>5}"
        print(line)
    if new.suppressed or (old and old.suppressed):
        print("\nsuppressed per reason")
        for why in sorted(set(new.suppressed) | set(old.suppressed if old else ())):
            line = f"  {why:<28} {new.suppressed.get(why, 0):>5}"
            if old is not None:
                line += f"  {old.suppressed.get(why, 0):>5}"
            print(line)
    if new.funnel:
        print("\nconversions (attribution window per rule)")
        for row in new.funnel:
            print(
                f"  {row.rule:<28} {row.arm:<10} {row.converted:>5} of {row.exposed:<5} "
                f"{row.rate:6.1%}"
            )
        for rule, uplift in sorted(new.uplift.items()):
            print(f"  {rule:<28} uplift against the holdout: {uplift:+.1%}")
    if old is not None:
        print(f"\n{len(changes)} event{'s' if len(changes) != 1 else ''} change outcome")
        for number, event, before, after in changes:
            zone = f" {event.zone}" if event.zone else ""
            print(
                f"  line {number}: {event.kind}{zone} at {event.at:%Y-%m-%d %H:%M:%S}Z "
                f"(visit {event.visit})\n      before: {before}\n      after:  {after}"
            )
    return EXIT_OK


def _is_readings(path: Path) -> bool:
    """Whether ``path`` starts like a readings recording (its session header)."""
    try:
        with path.open(encoding="utf-8", errors="replace") as lines:
            first = next((line for line in lines if line.strip()), "")
    except OSError:
        return False  # reported by read_journey
    try:
        return isinstance(parse_line(first), Header)
    except LineError:
        return False
