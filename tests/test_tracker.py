from datetime import datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from proximity.events import EventKind, JourneyEvent
from proximity.journey.tracker import JourneyTracker
from proximity.presence.machine import PresenceConfig
from tests.factories import at, make_shopper

PRESENCE = PresenceConfig(exit_timeout=timedelta(seconds=5))


def tracker(**kw: object) -> JourneyTracker:
    return JourneyTracker(
        "store-001",
        PRESENCE,
        lambda zone: (10.0,) if zone == "coffee" else (),
        visit_timeout=timedelta(seconds=20),
        **kw,  # type: ignore[arg-type]
    )


def kinds(events: list[JourneyEvent]) -> list[tuple[str, str | None]]:
    return [(str(e.kind), e.zone) for e in events]


def test_a_visit_through_two_zones() -> None:
    t = tracker()
    shopper = make_shopper()
    out: list[JourneyEvent] = []
    for s in range(0, 5):
        out += t.observe(shopper, "entrance", -60, at(s))
        out += t.tick(at(s))
    for s in range(5, 20):
        out += t.observe(shopper, "coffee", -60, at(s))
        out += t.tick(at(s))
    for s in range(20, 60):
        out += t.tick(at(s))
    assert kinds(out) == [
        ("visit.start", None),
        ("zone.enter", "entrance"),
        ("zone.enter", "coffee"),
        ("zone.exit", "entrance"),
        ("zone.dwell", "coffee"),
        ("zone.exit", "coffee"),
        ("visit.end", None),
    ]
    assert len({e.visit for e in out}) == 1
    assert t.active_visits == 0
    assert out[-1].at == at(19 + 20)


def test_weak_sightings_alone_make_no_visit_events() -> None:
    t = tracker()
    out = [e for s in range(30) for e in t.observe(make_shopper(), "coffee", -95, at(s))]
    out += t.tick(at(60))
    assert out == []


def test_the_tracked_set_is_bounded_and_evicted_visits_end_cleanly() -> None:
    t = tracker(max_visits=3)
    out: list[JourneyEvent] = []
    for i in range(10):
        out += t.observe(make_shopper(token=f"s-flood-{i:03d}"), "entrance", -60, at(i))
    assert t.active_visits == 3
    ends = [e for e in out if e.kind is EventKind.VISIT_END]
    assert len(ends) == 7
    # every evicted visit that started also got its zone.exit before visit.end
    assert sum(e.kind is EventKind.ZONE_EXIT for e in out) == 7


def test_close_all_ends_every_open_visit() -> None:
    t = tracker()
    t.observe(make_shopper(), "coffee", -60, at(0))
    out = t.close_all(at(3))
    assert kinds(out) == [("zone.exit", "coffee"), ("visit.end", None)]


def test_new_dwell_thresholds_reach_visits_under_way() -> None:
    thresholds = {"coffee": (60.0,)}
    t = JourneyTracker("store-001", PRESENCE, lambda zone: thresholds.get(zone, ()))
    shopper = make_shopper()
    t.observe(shopper, "coffee", -60, at(0))
    assert t.tick(at(1)) == []
    thresholds["coffee"] = (3.0,)
    t.thresholds_changed()
    t.observe(shopper, "coffee", -60, at(2))
    assert kinds(t.tick(at(4))) == [("zone.dwell", "coffee")]


def exclusive(margin: float = 4.0) -> JourneyTracker:
    return JourneyTracker(
        "store-001",
        PRESENCE,
        lambda zone: (),
        visit_timeout=timedelta(seconds=20),
        switch_margin=margin,
    )


def test_exclusive_zones_hand_a_shopper_over_only_for_a_clearly_stronger_zone() -> None:
    t = exclusive()
    shopper = make_shopper()
    out = t.observe(shopper, "coffee", -60, at(0))
    # the bakery's scanner hears the shopper too, but not 4 dB stronger: still in coffee
    out += t.observe(shopper, "bakery", -58, at(1))
    out += t.observe(shopper, "coffee", -60, at(2))
    assert kinds(out) == [("visit.start", None), ("zone.enter", "coffee")]
    # walking over: the bakery is now heard far stronger, and takes the shopper over
    out = []
    for s in range(3, 8):
        out += t.observe(shopper, "bakery", -45, at(s))
    assert kinds(out) == [("zone.exit", "coffee"), ("zone.enter", "bakery")]
    assert out[0].at == out[1].at


def test_zones_that_are_not_exclusive_hold_a_shopper_at_once() -> None:
    t = tracker()
    shopper = make_shopper()
    out = t.observe(shopper, "coffee", -60, at(0)) + t.observe(shopper, "bakery", -60, at(1))
    assert ("zone.enter", "bakery") in kinds(out)
    assert ("zone.enter", "coffee") in kinds(out)


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["coffee", "bakery", "entrance"]),
            st.integers(-100, -40),
            st.floats(0.0, 7.0),
        ),
        min_size=1,
        max_size=60,
    ),
    st.floats(0.0, 10.0),
)
def test_with_exclusive_zones_a_shopper_is_never_in_two_at_once(
    steps: list[tuple[str, int, float]], margin: float
) -> None:
    t = exclusive(margin)
    shopper = make_shopper()
    inside: set[str] = set()
    clock = 0.0
    for zone, rssi, gap in steps:
        clock += gap
        for event in t.observe(shopper, zone, rssi, at(clock)) + t.tick(at(clock)):
            if event.kind is EventKind.ZONE_ENTER:
                assert event.zone not in inside
                inside.add(event.zone or "")
            elif event.kind is EventKind.ZONE_EXIT:
                assert event.zone in inside, "exit without an enter"
                inside.discard(event.zone or "")
            assert len(inside) <= 1, f"in {sorted(inside)} at once"


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=8),
    steps=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=11),  # which shopper
            st.sampled_from(["entrance", "coffee"]),
            st.integers(min_value=-95, max_value=-45),
            st.integers(min_value=0, max_value=9),  # seconds to the next reading
        ),
        max_size=80,
    ),
)
def test_a_tick_in_slices_is_the_whole_tick_when_no_reading_comes_between(
    size: int, steps: list[tuple[int, str, int, int]]
) -> None:
    """The same readings and ticks, a tick in slices of ``size`` visits or whole: the same
    journey events, in the same order within each visit."""
    whole, sliced = tracker(), tracker()
    out_whole: list[JourneyEvent] = []
    out_sliced: list[JourneyEvent] = []
    second = 0
    for who, zone, rssi, wait in [*steps, (0, "entrance", -99, 40)]:
        shopper = make_shopper(token=f"s-test-{who:04d}")
        out_whole += whole.observe(shopper, zone, rssi, at(second))
        out_sliced += sliced.observe(shopper, zone, rssi, at(second))
        for _ in range(wait):
            second += 1
            out_whole += whole.tick(at(second))
            for part in sliced.tick_in_slices(at(second), size):
                out_sliced += part

    def per_visit(events: list[JourneyEvent]) -> dict[str, list[tuple[str, str | None, datetime]]]:
        out: dict[str, list[tuple[str, str | None, datetime]]] = {}
        for e in events:
            out.setdefault(e.visit, []).append((str(e.kind), e.zone, e.at))
        return out

    assert per_visit(out_sliced) == per_visit(out_whole)
    assert whole.active_visits == sliced.active_visits


def test_a_reading_between_two_slices_is_not_undone_by_the_rest_of_the_tick() -> None:
    """Three shoppers gone quiet in the coffee zone; the tick that ends their stays runs a
    visit at a time, and between its slices one of them not yet ticked is heard again,
    later than the tick: that one stays, the others leave, and the one who stayed leaves
    an exit timeout after its reading."""
    t = tracker()
    people = [make_shopper(token=f"s-test-{n:04d}") for n in range(3)]
    for shopper in people:
        t.observe(shopper, "coffee", -60, at(0))
    now = at(6)  # past the 5 s exit timeout
    slices = t.tick_in_slices(now, 1)
    out = next(slices)
    later = now + timedelta(milliseconds=500)
    out += t.observe(people[2], "coffee", -60, later)  # handled between two slices
    for part in slices:
        out += part
    exits = [(e.shopper.token, e.at) for e in out if e.kind is EventKind.ZONE_EXIT]
    assert exits == [("s-test-0000", now), ("s-test-0001", now)]

    def exits_at(moment: datetime) -> list[str]:
        return [e.shopper.token for e in t.tick(moment) if e.kind is EventKind.ZONE_EXIT]

    assert exits_at(later + timedelta(seconds=4)) == []
    assert exits_at(later + timedelta(seconds=5)) == ["s-test-0002"]
