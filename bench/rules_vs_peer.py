"""Rule evaluation: decisions per second and latency per event, against zen-engine.

The same generated tables (8, 50, 500 and 2,000 rules over event kind, zone,
dwell threshold and time of day) are evaluated by Proximity's compiled table
and by GoRules' zen-engine (as its JSON Decision Model, hit policy "first",
evaluated on its fast path: a loader returning cached ``ZenDecisionContent``,
then ``engine.evaluate``). Both must give the same rule for every event before
anything is timed.
"""

from __future__ import annotations

import importlib.metadata
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from bench.report import Row, write
from proximity.engine.loader import load_rule_files
from proximity.engine.table import RuleTable
from proximity.events import EventKind, JourneyEvent, Shopper

SIZES = (8, 50, 500, 2000)
EVENTS = 4000
KINDS = (EventKind.ZONE_ENTER, EventKind.ZONE_DWELL, EventKind.ZONE_EXIT)
DWELLS = (10, 30, 60)
MIDNIGHT = datetime(2026, 11, 24, 0, 0, tzinfo=UTC)  # the store's zone is UTC here


def generate(n: int, rng: random.Random) -> tuple[str, list[dict[str, Any]]]:
    """A rule file of ``n`` rules, and the same rules as plain dicts (rank order)."""
    zones = [f"z{i}" for i in range(max(4, n // 4))]
    specs = []
    for i in range(n):
        kind = rng.choice(KINDS)
        zone = None if rng.random() < 0.1 else rng.choice(zones)
        start = rng.randrange(0, 20) * 60
        specs.append(
            {
                "id": f"r{i}",
                "on": kind,
                "zone": zone,
                "dwell": rng.choice(DWELLS) if kind is EventKind.ZONE_DWELL else None,
                "hours": (start, start + rng.choice((60, 120, 240)))
                if rng.random() < 0.5
                else None,
                "priority": rng.randrange(0, 5),
            }
        )
    lines = ['[store]\ntimezone = "UTC"\n[defaults]\nhit_policy = "first"\n']
    for z in zones:
        lines.append(f'[zones.{z}]\nscanners = ["gw-{z}"]\n')
    for s in specs:
        lines.append(
            f'[[rules]]\nid = "{s["id"]}"\non = "{s["on"]}"\nmoment = "know"\n'
            f'priority = {s["priority"]}\ncap = "1000/visit"\n'
            f'cta = {{ format = "banner", title = "t" }}\n[rules.when]'
        )
        if s["zone"]:
            lines.append(f'zone = "{s["zone"]}"')
        if s["dwell"]:
            lines.append(f'dwell = "{s["dwell"]}s"')
        if s["hours"]:
            a, b = s["hours"]
            lines.append(f'hours = "{a // 60:02d}:{a % 60:02d}-{b // 60:02d}:{b % 60:02d}"')
        lines.append("")
    ranked = sorted(specs, key=lambda s: -s["priority"])  # stable: file order within a priority
    return "\n".join(lines), ranked


def jdm(ranked: list[dict[str, Any]]) -> dict[str, Any]:
    """The same table as a zen-engine decision table, rows in rank order."""
    inputs = [
        {"id": "kind", "name": "kind", "type": "expression", "field": "kind"},
        {"id": "zone", "name": "zone", "type": "expression", "field": "zone"},
        {"id": "dwell", "name": "dwell", "type": "expression", "field": "dwell"},
        {"id": "minute", "name": "minute", "type": "expression", "field": "minute"},
    ]
    rows = []
    for s in ranked:
        hours = s["hours"]
        rows.append(
            {
                "_id": s["id"],
                "kind": json.dumps(str(s["on"])),
                "zone": json.dumps(s["zone"]) if s["zone"] else "",
                "dwell": str(s["dwell"]) if s["dwell"] else "",
                "minute": f"[{hours[0]}..{hours[1]})" if hours else "",
                "rule": json.dumps(s["id"]),
            }
        )
    return {
        "contentType": "application/vnd.gorules.decision",
        "nodes": [
            {"id": "in", "type": "inputNode", "name": "Request", "position": {"x": 0, "y": 0}},
            {
                "id": "table",
                "type": "decisionTableNode",
                "name": "rules",
                "position": {"x": 200, "y": 0},
                "content": {
                    "hitPolicy": "first",
                    "inputs": inputs,
                    "outputs": [
                        {"id": "rule", "name": "rule", "type": "expression", "field": "rule"}
                    ],
                    "rules": rows,
                },
            },
            {"id": "out", "type": "outputNode", "name": "Response", "position": {"x": 400, "y": 0}},
        ],
        "edges": [
            {"id": "e1", "sourceId": "in", "targetId": "table", "type": "edge"},
            {"id": "e2", "sourceId": "table", "targetId": "out", "type": "edge"},
        ],
    }


def events(n_zones: int, rng: random.Random) -> list[tuple[JourneyEvent, dict[str, Any]]]:
    shopper = Shopper(token="s-bench-0001", consent=True)
    out = []
    for _ in range(EVENTS):
        kind = rng.choice(KINDS)
        zone = f"z{rng.randrange(n_zones)}"
        dwell = rng.choice(DWELLS) if kind is EventKind.ZONE_DWELL else None
        minute = rng.randrange(0, 24 * 60)
        event = JourneyEvent(
            kind=kind,
            at=MIDNIGHT + timedelta(minutes=minute),
            store="bench",
            shopper=shopper,
            visit="v-bench",
            zone=zone,
            threshold_s=float(dwell) if dwell else None,
        )
        ctx = {"kind": str(kind), "zone": zone, "dwell": dwell, "minute": minute}
        out.append((event, ctx))
    return out


def best_of(fn: Callable[[], object], runs: int = 3) -> float:
    """The best wall time of ``runs`` passes (the least disturbed by the machine)."""
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def latencies(calls: list[Callable[[], object]]) -> tuple[float, float]:
    """p50 and p99 of one call each, in microseconds."""
    out = []
    for call in calls:
        t0 = time.perf_counter_ns()
        call()
        out.append((time.perf_counter_ns() - t0) / 1000)
    out.sort()
    return statistics.median(out), out[int(len(out) * 0.99) - 1]


@dataclass(frozen=True)
class Measured:
    rate: float
    zen_rate: float
    p50: float
    p99: float
    zen_p50: float
    zen_p99: float


def measure(size: int, zen: Any) -> Measured:
    rng = random.Random(size)
    text, ranked = generate(size, rng)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rules.toml"
        path.write_text(text)
        table = RuleTable.from_ruleset(load_rule_files([path]))
    content = zen.ZenDecisionContent(json.dumps(jdm(ranked)))
    engine = zen.ZenEngine({"loader": lambda key: content})
    sample = events(max(4, size // 4), rng)

    ours = [(r[0].id if (r := table.match(e)) else None) for e, _ in sample]
    theirs = [engine.evaluate("t", c)["result"].get("rule") for _, c in sample]
    mismatches = sum(a != b for a, b in zip(ours, theirs, strict=True))
    if mismatches:
        raise SystemExit(f"{size} rules: {mismatches} events decided differently; not timing")

    ours_s = best_of(lambda: [table.match(e) for e, _ in sample])
    zen_s = best_of(lambda: [engine.evaluate("t", c) for _, c in sample])
    p50, p99 = latencies([partial(table.match, e) for e, _ in sample])
    z50, z99 = latencies([partial(engine.evaluate, "t", c) for _, c in sample])
    return Measured(len(sample) / ours_s, len(sample) / zen_s, p50, p99, z50, z99)


def main() -> None:
    import zen

    version = importlib.metadata.version("zen-engine")
    rows: list[Row] = []
    first_rate = None
    print(
        f"{'rules':>6}  {'proximity /s':>13}  {'zen-engine /s':>13}  {'p50 µs':>7}  "
        f"{'p99 µs':>7}  {'zen p50':>7}  {'zen p99':>7}"
    )
    for size in SIZES:
        m = measure(size, zen)
        first_rate = first_rate or m.rate
        print(
            f"{size:>6}  {m.rate:>13,.0f}  {m.zen_rate:>13,.0f}  {m.p50:>7.1f}  {m.p99:>7.1f}  "
            f"{m.zen_p50:>7.1f}  {m.zen_p99:>7.1f}"
        )
        rows.append(
            Row(
                f"{size} rules, {EVENTS} events, same outcomes",
                "decisions per second",
                "1/s",
                round(m.rate),
                f"zen-engine {version}",
                round(m.zen_rate),
            )
        )
        rows.append(
            Row(
                f"{size} rules: p99 per event",
                "latency",
                "µs",
                round(m.p99, 2),
                f"zen-engine {version}",
                round(m.zen_p99, 2),
                higher_is_better=False,
            )
        )
        if size == SIZES[-1]:
            rows.append(
                Row(
                    f"{size} rules against {SIZES[0]} rules",
                    "decisions per second",
                    "1/s",
                    round(m.rate),
                    f"{SIZES[0]} rules (target: at most 2x slower)",
                    round(first_rate),
                )
            )
    write("rules_vs_peer", rows)


if __name__ == "__main__":
    main()
