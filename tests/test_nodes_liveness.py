"""A dead scanner node makes nobody leave: its zone's exits are held while it is down.

The node's will (or its silence) reaches the pipeline through ``NodeIngest.scanners_down``;
the per-zone threshold presence holds the exits of zones whose scanners are all down, and
a floor plan's estimators take the scanner for down at once.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import structlog

from proximity.adapters.ble.adapter import BeaconDecoder
from proximity.adapters.ble.ibeacon import IBeacon, build_ibeacon
from proximity.adapters.ble.merged import MergedBackend
from proximity.adapters.nodes.ingest import NodeIngest, NodeSpec
from proximity.engine.decide import Decision
from proximity.engine.loader import load_rule_files
from proximity.engine.table import RuleTable
from proximity.events import EventKind, JourneyEvent
from proximity.identity.resolver import IdentityResolver
from proximity.journey.tracker import JourneyTracker
from proximity.pipeline import Pipeline
from proximity.presence.estimate import Liveness
from proximity.presence.floorplan import FloorPlan, PlanScanner, Polygon, Zone
from proximity.presence.locator import Locator
from proximity.presence.machine import PresenceConfig
from tests.factories import APP_UUID, KEY, T0, at, make_shopper

RULES = """
[store]
id = "store-001"

[zones.coffee]
scanners = ["gw-coffee"]

[zones.bakery]
scanners = ["gw-bakery"]

[zones.deli]
scanners = ["gw-deli-1", "gw-deli-2"]

[[rules]]
id = "hello"
on = "zone.enter"
moment = "go"
cta = { format = "push", title = "Hello" }
"""
PRESENCE = PresenceConfig(exit_timeout=timedelta(seconds=5))
VISIT_TIMEOUT = timedelta(seconds=60)


class Ticks:
    """The gateway's monotonic clock (seconds since T0), moved by the test."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return T0.timestamp() + self.now


def exits(events: list[JourneyEvent] | list[Decision]) -> list[tuple[str | None, float]]:
    out = []
    for item in events:
        event = item.event if isinstance(item, Decision) else item
        if event.kind is EventKind.ZONE_EXIT:
            out.append((event.zone, (event.at - T0).total_seconds()))
    return out


# -- the tracker ------------------------------------------------------------------------------


def tracker() -> JourneyTracker:
    return JourneyTracker("store-001", PRESENCE, lambda zone: (), visit_timeout=VISIT_TIMEOUT)


def test_a_zone_down_holds_its_shoppers_until_an_exit_timeout_after_it_is_back() -> None:
    t = tracker()
    shopper = make_shopper()
    out: list[JourneyEvent] = []
    for s in range(3):
        out += t.observe(shopper, "coffee", -60, at(s))
    t.zones_down(["coffee"], at(4))  # the node died after hearing the shopper at 2 s
    for s in range(3, 30):
        out += t.tick(at(s))
    assert exits(out) == []  # no reading for 27 s, exit_timeout 5 s: held
    t.zones_down([], at(30))  # back, and the shopper is still unheard
    for s in range(30, 40):
        out += t.tick(at(s))
    assert exits(out) == [("coffee", 35.0)]  # an exit timeout after it came back
    exit_ = next(e for e in out if e.kind is EventKind.ZONE_EXIT)
    assert exit_.dwell_s == 2.0  # the stay ended when the shopper was last heard


def test_a_shopper_heard_again_after_the_node_is_back_stays() -> None:
    t = tracker()
    shopper = make_shopper()
    out = t.observe(shopper, "coffee", -60, at(0))
    t.zones_down(["coffee"], at(1))
    out += [e for s in range(1, 20) for e in t.tick(at(s))]
    t.zones_down([], at(20))
    for s in range(20, 40):
        out += t.observe(shopper, "coffee", -60, at(s))
        out += t.tick(at(s))
    assert exits(out) == []
    out += [e for s in range(40, 50) for e in t.tick(at(s))]
    assert exits(out) == [("coffee", 44.0)]  # the usual exit timeout after the last reading


def test_a_zone_down_longer_than_the_visit_timeout_lets_its_shoppers_go() -> None:
    t = tracker()
    shopper = make_shopper()
    out = t.observe(shopper, "coffee", -60, at(0))
    t.zones_down(["coffee"], at(1))
    out += [e for s in range(1, 90) for e in t.tick(at(s))]
    assert exits(out) == [("coffee", 60.0)]
    assert [e.kind for e in out][-1] is EventKind.VISIT_END
    assert t.active_visits == 0


def test_shoppers_of_zones_that_are_up_exit_as_usual() -> None:
    t = tracker()
    coffee, bakery = make_shopper(token="s-coffee"), make_shopper(token="s-bakery")
    out = t.observe(coffee, "coffee", -60, at(0)) + t.observe(bakery, "bakery", -60, at(0))
    t.zones_down(["coffee"], at(1))
    out += [e for s in range(1, 20) for e in t.tick(at(s))]
    assert exits(out) == [("bakery", 5.0)]


# -- node status to pipeline --------------------------------------------------------------------

FRAME = build_ibeacon(IBeacon(APP_UUID, 1, 0x8001, -59)).hex()
ADDRESS = "C4:7C:8D:6A:11:22"


def status_topic(node: str) -> str:
    return f"proximity/v1/store-001/nodes/{node}/status"


def batch(node: str, seq: int, at_s: float, rssi: int = -60) -> tuple[str, bytes, datetime]:
    readings = [{"addr": ADDRESS, "rssi": rssi, "dt": 0.0, "mfr": {"76": FRAME}}]
    sent = T0.timestamp() + at_s
    body = json.dumps({"boot": "b", "seq": seq, "sent": sent, "readings": readings})
    return f"proximity/v1/store-001/nodes/{node}/readings", body.encode(), at(at_s)


class Gateway:
    """NodeIngest → decoder → Pipeline, as the daemon runs them (minus the MQTT)."""

    def __init__(self, tmp_path: Path, locator: Locator | None = None) -> None:
        path = tmp_path / "rules.toml"
        path.write_text(RULES)
        self.ticks = Ticks()
        self.ingest = NodeIngest(
            "store-001",
            [
                NodeSpec("ours", "pi-coffee", "gw-coffee", silence_s=15.0),
                NodeSpec("ours", "pi-bakery", "gw-bakery", silence_s=15.0),
                NodeSpec("ours", "pi-deli-1", "gw-deli-1", silence_s=15.0),
                NodeSpec("ours", "pi-deli-2", "gw-deli-2", silence_s=15.0),
            ],
            monotonic=self.ticks,
            stale_after=timedelta(days=1),
        )
        self.pipeline = Pipeline(
            "store-001",
            RuleTable.from_ruleset(load_rule_files([path])),
            IdentityResolver([APP_UUID], KEY),
            PRESENCE,
            visit_timeout=VISIT_TIMEOUT,
            locator=locator,
        )
        self.pipeline.watch_scanners(self.ingest.scanners_down)
        self.decoder = BeaconDecoder()
        self.seq = 0
        self.next_tick = 0
        self.decisions: list[Decision] = []

    def hear(self, node: str, at_s: float) -> None:
        self.seq += 1
        for adv in self.ingest.handle(*batch(node, self.seq, at_s)):
            sighting = self.decoder.to_sighting(adv)
            assert sighting is not None
            self.decisions += self.pipeline.on_sighting(sighting)

    def status(self, node: str, state: str) -> None:
        self.ingest.handle(status_topic(node), state.encode(), at(self.ticks.now))

    def run(self, until_s: int) -> None:
        """Ticks every second (the daemon's default) up to ``until_s``."""
        for s in range(self.next_tick, until_s):
            self.ticks.now = float(s)
            self.ingest.check_silence()
            self.decisions += self.pipeline.tick(at(s))
        self.next_tick = max(self.next_tick, until_s)


def test_a_node_that_dies_mid_visit_makes_no_false_exit_and_is_exited_after_it_is_back(
    tmp_path: Path,
) -> None:
    gw = Gateway(tmp_path)
    gw.status("pi-coffee", "online")
    for s in range(5):
        gw.ticks.now = s
        gw.hear("pi-coffee", s)
        gw.run(s + 1)
    assert [d.event.zone for d in gw.decisions if d.event.kind is EventKind.ZONE_ENTER] == [
        "coffee"
    ]
    gw.ticks.now = 5
    with structlog.testing.capture_logs() as logs:
        gw.status("pi-coffee", "offline")  # its will: the broker lost it
        gw.run(40)
        assert exits(gw.decisions) == []  # unheard for 35 s, held
        gw.ticks.now = 40
        gw.status("pi-coffee", "online")  # back, without hearing the shopper
        gw.run(54)  # (silent, with no heartbeat, after 15 s)
    assert exits(gw.decisions) == [("coffee", 45.0)]
    changes = [e for e in logs if e["event"] in ("node_down", "node_up")]
    assert [(e["event"], e["scanner"]) for e in changes] == [
        ("node_down", "gw-coffee"),
        ("node_up", "gw-coffee"),
    ]
    assert all(ADDRESS not in str(e) for e in logs)


def test_a_silent_node_counts_as_down_as_well(tmp_path: Path) -> None:
    gw = Gateway(tmp_path)
    gw.hear("pi-coffee", 0)
    gw.run(60)  # the node sends nothing more, no heartbeat: silent after 15 s
    # exit_timeout (5 s) passes before the silence (15 s) is noticed: that exit stands
    assert exits(gw.decisions) == [("coffee", 5.0)]
    assert gw.ingest.scanners_down() == {"gw-coffee"}


def test_a_zone_with_one_of_two_scanners_down_exits_as_usual(tmp_path: Path) -> None:
    gw = Gateway(tmp_path)
    gw.status("pi-deli-2", "online")
    gw.hear("pi-deli-1", 0)
    gw.status("pi-deli-2", "offline")  # the other node of the zone still hears (nobody)
    gw.run(20)
    assert exits(gw.decisions) == [("deli", 5.0)]
    gw.status("pi-deli-1", "offline")
    gw.hear("pi-deli-2", 20)  # pi-deli-2 is back by sending
    gw.run(60)
    assert exits(gw.decisions) == [("deli", 5.0), ("deli", 25.0)]


def test_scanners_down_pass_through_a_merged_backend() -> None:
    class Part:
        def __init__(self, down: set[str]) -> None:
            self.down = down

        def scanners_down(self) -> frozenset[str]:
            return frozenset(self.down)

    merged = MergedBackend([Part({"a"}), Part({"b"}), object()])  # type: ignore[list-item]
    assert merged.scanners_down() == {"a", "b"}


# -- floor plans --------------------------------------------------------------------------------


def test_a_scanner_known_down_is_down_however_recently_it_was_heard() -> None:
    live = Liveness(silence_s=10.0)
    live.heard("gw-coffee", 100.0)
    assert live.alive("gw-coffee", 101.0)
    live.known_down({"gw-coffee"})
    assert not live.alive("gw-coffee", 101.0)
    live.known_down(())
    assert live.alive("gw-coffee", 101.0)
    assert not live.alive("gw-coffee", 120.0)  # and silence still counts


def test_the_pipeline_tells_a_floor_plans_liveness(tmp_path: Path) -> None:
    plan = FloorPlan.build(
        "two rooms",
        [
            Zone(name, Polygon(((x, 0.0), (x + 4.0, 0.0), (x + 4.0, 4.0), (x, 4.0))))
            for name, x in (("coffee", 0.0), ("bakery", 4.0))
        ],
        [PlanScanner("gw-coffee", (2.0, 2.0), 2.8), PlanScanner("gw-bakery", (6.0, 2.0), 2.8)],
        width=8.0,
        depth=4.0,
    )
    locator = Locator(plan, "nearest")
    gw = Gateway(tmp_path, locator)
    gw.hear("pi-coffee", 0)
    gw.hear("pi-bakery", 0)
    gw.run(1)
    assert locator.liveness.alive("gw-coffee", 0.5)
    gw.status("pi-coffee", "offline")
    gw.run(2)
    assert not locator.liveness.alive("gw-coffee", 1.0)  # at once, not after its silence
    assert locator.liveness.alive("gw-bakery", 1.0)
