from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proximity.presence.machine import PresenceConfig, Transition, TransitionKind, ZonePresence
from tests.factories import at

CONFIG = PresenceConfig(
    enter_rssi=-70, exit_rssi=-80, exit_timeout=timedelta(seconds=10), window=timedelta(seconds=3)
)


def kinds(transitions: list[Transition]) -> list[TransitionKind]:
    return [t.kind for t in transitions]


def test_enter_dwell_and_timeout_exit() -> None:
    zone = ZonePresence("coffee", CONFIG, thresholds=lambda: (30.0, 5.0))
    out: list[Transition] = []
    for s in range(0, 41):
        out += zone.observe(-60, at(s))
        out += zone.tick(at(s))
    assert kinds(out) == [TransitionKind.ENTER, TransitionKind.DWELL, TransitionKind.DWELL]
    assert [t.threshold_s for t in out[1:]] == [5.0, 30.0]
    assert out[0].at == at(0)
    assert out[2].at == at(30)
    assert zone.tick(at(49)) == []
    (exit_,) = zone.tick(at(50))
    assert exit_.kind is TransitionKind.EXIT
    assert exit_.dwell_s == 40.0
    assert not zone.present


def test_weak_signal_never_enters() -> None:
    zone = ZonePresence("coffee", CONFIG)
    assert all(zone.observe(-75, at(s)) == [] for s in range(20))
    assert not zone.present


def test_signal_dropping_below_exit_threshold_exits_before_the_timeout() -> None:
    zone = ZonePresence("coffee", CONFIG)
    zone.observe(-60, at(0))
    out = []
    for s in range(1, 10):
        out += zone.observe(-95, at(s))
    assert kinds(out) == [TransitionKind.EXIT]


def test_hysteresis_must_be_consistent() -> None:
    with pytest.raises(ValueError, match="hysteresis"):
        PresenceConfig(enter_rssi=-80, exit_rssi=-70)


samples = st.lists(
    st.tuples(st.floats(0.1, 8.0), st.integers(-100, -40) | st.none()), min_size=1, max_size=80
)


def run(zone: ZonePresence, steps: list[tuple[float, int | None]]) -> list[Transition]:
    t = 0.0
    out: list[Transition] = []
    for gap, rssi in steps:
        t += gap
        out += zone.observe(rssi, at(t)) if rssi is not None else zone.tick(at(t))
    return out


@settings(max_examples=200)
@given(samples)
def test_transitions_alternate_and_dwell_grows(steps: list[tuple[float, int | None]]) -> None:
    out = run(ZonePresence("z", CONFIG, thresholds=lambda: (2.0, 5.0, 15.0)), steps)
    inside = False
    last_dwell = -1.0
    for t in out:
        if t.kind is TransitionKind.ENTER:
            assert not inside, "enter while already inside"
            inside, last_dwell = True, -1.0
        elif t.kind is TransitionKind.EXIT:
            assert inside, "exit without an enter"
            inside = False
        else:
            assert inside, "dwell outside the zone"
            assert t.threshold_s is not None
            assert t.threshold_s > last_dwell, "dwell thresholds must grow within a stay"
            last_dwell = t.threshold_s
    times = [t.at for t in out]
    assert times == sorted(times)


@given(st.lists(st.integers(-79, -71), min_size=1, max_size=100), st.integers(-69, -40))
def test_noise_inside_the_hysteresis_band_never_flaps(noise: list[int], first: int) -> None:
    zone = ZonePresence("z", CONFIG)
    out = zone.observe(first, at(0))
    for i, rssi in enumerate(noise, start=1):
        out += zone.observe(rssi, at(i * 0.5))
    assert kinds(out) == [TransitionKind.ENTER]
