import math
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proximity.presence.smoothing import RssiFilter
from tests.factories import at


def test_empty_filter_is_minus_infinity() -> None:
    assert RssiFilter(timedelta(seconds=5)).value == -math.inf


def test_one_outlier_is_trimmed_away() -> None:
    f = RssiFilter(timedelta(seconds=20), trim=0.1)
    for i in range(9):
        f.add(-60, at(i))
    value = f.add(-100, at(9))
    assert value == -60


def test_old_samples_leave_the_window() -> None:
    f = RssiFilter(timedelta(seconds=5), trim=0.0)
    f.add(-90, at(0))
    f.add(-60, at(10))
    assert f.value == -60
    assert f.last_seen == at(10)


def test_out_of_order_samples_do_not_move_time_back() -> None:
    f = RssiFilter(timedelta(seconds=5))
    f.add(-60, at(10))
    f.add(-62, at(3))
    assert f.last_seen == at(10)


@pytest.mark.parametrize(("window", "trim"), [(timedelta(0), 0.1), (timedelta(seconds=1), 0.5)])
def test_bad_parameters_are_refused(window: timedelta, trim: float) -> None:
    with pytest.raises(ValueError):
        RssiFilter(window, trim)


@given(st.lists(st.integers(-127, 20), min_size=1, max_size=60))
def test_smoothed_value_stays_within_the_samples(values: list[int]) -> None:
    f = RssiFilter(timedelta(seconds=1000))
    for i, v in enumerate(values):
        f.add(v, at(i))
    window = values[-64:]
    assert min(window) <= f.value <= max(window)


@settings(max_examples=300)
@given(
    st.lists(st.tuples(st.integers(0, 2000), st.integers(-127, 20)), min_size=1, max_size=120),
    st.sampled_from([0.0, 0.1, 0.2, 0.45]),
    st.integers(2, 70),
)
def test_the_trimmed_mean_is_that_of_the_samples_in_the_window(
    steps: list[tuple[int, int]], trim: float, max_samples: int
) -> None:
    """Kept incrementally (a running sum, an ordered list updated as samples come and
    go), the value must be the trimmed mean computed afresh from the window's samples."""
    window = timedelta(seconds=5)
    f = RssiFilter(window, trim=trim, max_samples=max_samples)
    kept: list[tuple[int, int]] = []
    t = 0  # milliseconds: exact in both the filter's datetimes and here
    for gap, rssi in steps:
        t += gap
        value = f.add(rssi, at(t / 1000))
        kept = [*kept, (t, rssi)][-max_samples:]
        while len(kept) > 1 and kept[0][0] < t - 5000:
            kept.pop(0)
        ordered = sorted(r for _, r in kept)
        cut = int(len(ordered) * trim)
        expected = ordered[cut : len(ordered) - cut]
        assert value == pytest.approx(sum(expected) / len(expected))
        assert f.value == value
