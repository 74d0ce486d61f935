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


def test_the_exit_timeout_is_learned_from_the_phones_advertising_interval() -> None:
    learned = PresenceConfig(
        enter_rssi=-70,
        exit_rssi=-80,
        exit_timeout=timedelta(seconds=30),
        exit_after_missed=10,
        min_exit_timeout=timedelta(seconds=3),
    )
    fast = ZonePresence("coffee", learned)  # a phone advertising every 0.5 s
    for n in range(20):
        fast.observe(-60, at(n * 0.5))
    assert fast.exit_timeout == timedelta(seconds=5)
    assert fast.tick(at(9.5 + 4.9)) == []
    assert kinds(fast.tick(at(9.5 + 5.0))) == [TransitionKind.EXIT]
    slow = ZonePresence("coffee", learned)  # every 5 s: capped at exit_timeout
    for n in range(5):
        slow.observe(-60, at(n * 5))
    assert slow.exit_timeout == timedelta(seconds=30)
    burst = ZonePresence("coffee", learned)  # every 0.1 s: never below the minimum
    for n in range(30):
        burst.observe(-60, at(n * 0.1))
    assert burst.exit_timeout == timedelta(seconds=3)
    assert ZonePresence("coffee", CONFIG).exit_timeout == CONFIG.exit_timeout  # off by default


def test_the_asymmetric_filter_rises_fast_and_falls_slowly() -> None:
    config = PresenceConfig(enter_rssi=-70, exit_rssi=-80, filter="asymmetric", rise=0.5, fall=0.1)
    zone = ZonePresence("coffee", config)
    assert zone.observe(-60, at(0))[0].kind is TransitionKind.ENTER
    # a body between phone and scanner for three samples: -95 dBm, but no exit
    for s in (1, 2, 3):
        assert zone.observe(-95, at(s)) == []
    assert zone.present


@given(st.lists(st.integers(-127, 20), min_size=1, max_size=50))
def test_the_asymmetric_filter_stays_within_the_samples(values: list[int]) -> None:
    from proximity.presence.smoothing import AsymmetricFilter

    smooth = AsymmetricFilter(rise=0.6, fall=0.2)
    for n, value in enumerate(values):
        smoothed = smooth.add(value, at(n))
        assert min(values[: n + 1]) - 1e-9 <= smoothed <= max(values[: n + 1]) + 1e-9


@given(
    tx=st.integers(-100, 0),
    rssi=st.floats(-127, 20),
    closer=st.floats(0.1, 30),
    exponent=st.floats(1.5, 4.0),
)
def test_distance_grows_as_the_signal_weakens(
    tx: int, rssi: float, closer: float, exponent: float
) -> None:
    from proximity.presence.smoothing import estimate_distance

    near = estimate_distance(tx, rssi + closer, exponent)
    far = estimate_distance(tx, rssi, exponent)
    assert 0 < near < far
    assert estimate_distance(-59, -59) == pytest.approx(1.0)
    assert estimate_distance(-59, -79) == pytest.approx(10.0)


def test_zones_can_have_their_own_thresholds() -> None:
    from proximity.config import PresenceSettings

    settings = PresenceSettings.model_validate(
        {"zones": {"checkout": {"enter_rssi": -65, "exit_timeout": "5s"}}}
    )
    checkout = settings.machine_config("checkout")
    assert (checkout.enter_rssi, checkout.exit_rssi) == (-65, -85)
    assert checkout.exit_timeout == timedelta(seconds=5)
    assert settings.machine_config("coffee").enter_rssi == -75
    with pytest.raises(
        ValueError, match=r"presence\.zones\.checkout: exit_rssi -60 is above enter_rssi -75"
    ):
        PresenceSettings.model_validate({"zones": {"checkout": {"exit_rssi": -60}}})


class _Rules:
    """Dwell thresholds that a test can change, as a rule reload does."""

    def __init__(self) -> None:
        self.thresholds: tuple[float, ...] = (2.0, 5.0, 15.0)

    def __call__(self) -> tuple[float, ...]:
        return self.thresholds


steps_with_reloads = st.lists(
    st.tuples(
        st.floats(0.1, 8.0),
        st.integers(-100, -40) | st.none() | st.sampled_from(["reload"]),
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=300)
@given(steps_with_reloads, st.sampled_from([0, 3]), st.sampled_from(["trimmed_mean", "asymmetric"]))
def test_ticks_that_skip_work_until_something_is_due_miss_nothing(
    steps: list[tuple[float, int | str | None]], missed: int, kind: str
) -> None:
    """A tick before the presence's next possible transition returns at once. The same
    samples, ticks and rule reloads must give the same transitions as a presence made to
    look every time."""
    config = PresenceConfig(
        enter_rssi=-70,
        exit_rssi=-80,
        exit_timeout=timedelta(seconds=10),
        window=timedelta(seconds=3),
        exit_after_missed=missed,
        filter=kind,  # type: ignore[arg-type]
    )
    outs: list[list[Transition]] = []
    for shortcut in (True, False):
        rules = _Rules()
        zone = ZonePresence("z", config, thresholds=rules)
        out: list[Transition] = []
        t = 0.0
        for gap, step in steps:
            t += gap
            if step == "reload":
                rules.thresholds = (1.0, 4.0) if rules.thresholds[0] == 2.0 else (2.0, 5.0, 15.0)
                zone.refresh_thresholds()
            elif isinstance(step, int):
                out += zone.observe(step, at(t))
            else:
                if not shortcut:
                    zone._due = None  # look every time
                out += zone.tick(at(t))
        outs.append(out)
    assert outs[0] == outs[1]


def test_new_rules_take_effect_in_a_stay_already_under_way() -> None:
    rules = _Rules()
    rules.thresholds = (60.0,)
    zone = ZonePresence("coffee", CONFIG, thresholds=rules)
    zone.observe(-60, at(0))
    assert zone.tick(at(1)) == []
    rules.thresholds = (5.0,)  # a reload: the 5 s dwell is due at once, not after 60 s
    zone.refresh_thresholds()
    (dwell,) = zone.tick(at(6))
    assert (dwell.kind, dwell.threshold_s) == (TransitionKind.DWELL, 5.0)
