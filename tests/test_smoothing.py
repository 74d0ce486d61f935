import math
from datetime import timedelta

import pytest
from hypothesis import given
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
