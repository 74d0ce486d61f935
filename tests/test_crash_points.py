"""Three kill points of the crash-point drill (bench/crash_points.py runs hundreds): a real
``proximity run`` killed with SIGKILL, restarted on its files, every invariant checked."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from bench.crash_points import KillPoint, Outcome, _check, drill, kill_points
from firmware_sim.mosquitto import find_mosquitto
from proximity.delivery.outbox import _SCHEMA

pytestmark = pytest.mark.timeout(120)

POINTS = [
    # the first drill of the durability issue: QoS 1 events, the broker frozen, then the kill
    KillPoint(seed=11, kill_after_s=5.0, freeze_s=2.0, events_qos=1),
    # early, a rule file rewritten in the same instant, events at QoS 0
    KillPoint(seed=12, kill_after_s=3.0, events_qos=0, reload=True),
    # mid drain, QoS 1 events, the broker up
    KillPoint(seed=13, kill_after_s=4.0, events_qos=1),
]


@pytest.mark.parametrize("point", POINTS, ids=lambda p: p.describe())
def test_a_kill_at_any_instant_loses_nothing_and_counts_everything(
    point: KillPoint, tmp_path: Path
) -> None:
    binary = find_mosquitto()
    assert binary is not None, "mosquitto is not installed: run `make test`"
    outcome = drill(point, tmp_path, binary)
    assert outcome.violations == []
    assert outcome.journalled > 0  # the kill came after offers were decided: not a dry run
    assert outcome.recovered["journalled"] == outcome.journalled


def test_a_drill_that_loses_an_offer_is_reported(tmp_path: Path) -> None:
    """The checks can fail: an offer journalled but never sent is a violation."""
    db = sqlite3.connect(tmp_path / "outbox.sqlite")
    db.executescript(_SCHEMA)
    db.execute(
        "INSERT INTO issued VALUES ('o-1', 's-1', 'r', '', 'v-1', '2026-12-02T10:00:00+00:00',"
        " '2026-12-03T10:00:00+00:00', '')"
    )
    db.commit()
    db.close()
    (tmp_path / "daemon.log").write_text("")
    outcome = Outcome(POINTS[0])
    _check(outcome, tmp_path, [], tmp_path / "daemon.log")
    assert any(v.startswith("lost: 1 journalled") for v in outcome.violations)
    assert any(v.startswith("caps:") for v in outcome.violations)
    assert any(v.startswith("funnel: 0 decided") for v in outcome.violations)


def test_kill_points_cover_the_drill_s_dimensions() -> None:
    points = kill_points(200, seed=1)
    assert len({p.seed for p in points}) == 200
    assert {p.events_qos for p in points} == {0, 1}
    assert 40 <= sum(1 for p in points if p.freeze_s) <= 100
    assert 25 <= sum(1 for p in points if p.reload) <= 75
    assert points == kill_points(200, seed=1)  # the same seed, the same drill
