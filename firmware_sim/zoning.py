"""A rule table for any store file: its zones, each with the scanners its geometry gives it.

The product's per-zone threshold presence places a shopper by the scanners a rule
file lists under each zone (``[zones.X] scanners = [...]``). A store file with a
ceiling grid (``firmware_sim/stores/grid.toml``) has no such rule file, so the
simulator derives the mapping from the floor plan, as an installer would:

1. a scanner hanging inside a zone belongs to it (the first zone listed, where
   zones share an edge);
2. a zone that got no scanner that way gets the nearest scanner still free (so
   every zone can be entered);
3. every other scanner belongs to the nearest zone if it hangs within ``reach_m``
   of its edge, else to none (an aisle scanner: the threshold method ignores it,
   rather than placing shoppers in a zone metres away from them).

Each scanner belongs to one zone at most, as rule files require. The generated rule
table has one ``zone.enter`` rule and one ``zone.dwell`` rule (after
:data:`DWELL_S`) per zone, so every zone's dwell events are scored too.

:func:`table_for` picks the table a run uses: the rule files given, else the example
store's rules when they cover the store (every zone of the store, every scanner
placed in one of them), else the generated table.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path

from firmware_sim.store import Point, Store, Zone
from proximity.engine.loader import load_rule_files
from proximity.engine.table import RuleTable

EXAMPLE_RULES = Path(__file__).resolve().parent.parent / "rules" / "example-store.toml"
DEFAULT_REACH_M = 3.0
"""How far outside a zone a scanner may hang and still be the zone's (rule 3)."""
DWELL_S = 30
"""The generated dwell rules' threshold, seconds (the example coffee coupon's)."""
GENERATED = "generated from the store's geometry"


def distance_to_zone(zone: Zone, p: Point) -> float:
    """Metres from ``p`` to the zone's edge on the floor; 0 inside."""
    if zone.contains(p):
        return 0.0
    if zone.circle is not None:
        (cx, cy), r = zone.circle.center, zone.circle.radius
        return max(0.0, math.dist(p, (cx, cy)) - r)
    assert zone.polygon is not None
    poly = zone.polygon
    return min(_to_segment(p, poly[i], poly[(i + 1) % len(poly)]) for i in range(len(poly)))


def _to_segment(p: Point, a: Point, b: Point) -> float:
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    length2 = dx * dx + dy * dy
    f = 0.0 if length2 == 0 else max(0.0, min(1.0, ((p[0] - ax) * dx + (p[1] - ay) * dy) / length2))
    return math.dist(p, (ax + f * dx, ay + f * dy))


def scanner_zones(store: Store, reach_m: float = DEFAULT_REACH_M) -> dict[str, list[str]]:
    """Zone → its scanners' ids (in the store file's order), by the rules in the docstring."""
    owner: dict[str, str] = {}
    for scanner in store.scanners:
        inside = store.zone_at(scanner.position)
        if inside is not None:
            owner[scanner.id] = inside
    for name, zone in store.zones.items():
        if name in owner.values():
            continue
        free = [s for s in store.scanners if s.id not in owner]
        if free:
            nearest = min(free, key=lambda s: distance_to_zone(zone, s.position))
            owner[nearest.id] = name
    for scanner in store.scanners:
        if scanner.id in owner:
            continue
        nearest_zone, gap = min(
            ((z, distance_to_zone(store.zones[z], scanner.position)) for z in store.zones),
            key=lambda item: item[1],
        )
        if gap <= reach_m:
            owner[scanner.id] = nearest_zone
    return {name: [s.id for s in store.scanners if owner.get(s.id) == name] for name in store.zones}


def rules_toml(store: Store, reach_m: float = DEFAULT_REACH_M, dwell_s: int = DWELL_S) -> str:
    """A rule file for ``store``: its zones with :func:`scanner_zones`, an enter and a
    dwell rule per zone."""
    q = json.dumps  # a TOML basic string is a JSON string
    lines = [
        f"# Rules for the simulator's store {store.name!r}, {GENERATED} (firmware_sim/zoning.py).",
        "[store]",
        'id = "store-001"',
        f"name = {q(store.name)}",
        'timezone = "UTC"',
        'version = "generated"',
        "",
    ]
    for name, scanners in scanner_zones(store, reach_m).items():
        lines += [f"[zones.{q(name)}]", f"scanners = {q(scanners)}"]
        if any(store.reader_zone(r) == name for r in store.readers):
            readers = [r.id for r in store.readers if store.reader_zone(r) == name]
            lines.append(f"readers = {q(readers)}")
        lines.append("")
    for name in store.zones:
        for on, extra in (("zone.enter", ""), ("zone.dwell", f'dwell = "{dwell_s}s"')):
            rule = f"{name}-{on.split('.')[1]}"
            lines += [
                "[[rules]]",
                f"id = {q(rule)}",
                f'on = "{on}"',
                f'moment = "{"go" if on == "zone.enter" else "know"}"',
                "[rules.when]",
                f"zone = {q(name)}",
                *([extra] if extra else []),
                "[rules.cta]",
                'format = "push"',
                f"title = {q(rule)}",
                "",
            ]
    return "\n".join(lines)


def generated_table(store: Store, reach_m: float = DEFAULT_REACH_M) -> RuleTable:
    """The rule table of :func:`rules_toml` (loaded by the product's own rule loader)."""
    with tempfile.TemporaryDirectory(prefix="firmware_sim-rules-") as folder:
        path = Path(folder) / f"{store.name}.toml"
        path.write_text(rules_toml(store, reach_m), encoding="utf-8")
        return RuleTable.from_ruleset(load_rule_files([path]))


def covers(table: RuleTable, store: Store) -> bool:
    """Whether ``table`` names every zone of ``store`` and places every scanner in a zone."""
    zones = table.ruleset.zones
    return all(z in zones for z in store.zones) and all(
        table.zone_for_scanner(s.id) in store.zones for s in store.scanners
    )


def table_for(store: Store, rules: Sequence[Path] | None) -> tuple[RuleTable, str]:
    """The rule table a run on ``store`` uses, and where it came from (see the docstring)."""
    if rules:
        return RuleTable.from_ruleset(load_rule_files(list(rules))), ", ".join(map(str, rules))
    example = RuleTable.from_ruleset(load_rule_files([EXAMPLE_RULES]))
    if covers(example, store):
        return example, str(EXAMPLE_RULES.relative_to(EXAMPLE_RULES.parent.parent))
    return generated_table(store), GENERATED
