"""The simulator's radio model: physics where it is deterministic, statistics where not."""

from __future__ import annotations

import math
import random
import statistics

from hypothesis import given
from hypothesis import strategies as st

from firmware_sim.radio import RadioModel, RadioParams, distance_3d

QUIET = RadioParams(
    shadowing_db=0.0, fading=False, body_probability=0.0, packet_loss=0.0, device_spread_db=0.0
)


def model(seed: int = 1, **changes: object) -> RadioModel:
    params = RadioParams.model_validate({**QUIET.model_dump(), **changes})
    return RadioModel(params, random.Random(seed))


@given(
    st.floats(0.05, 200),
    st.floats(0.05, 200),
    st.floats(1.0, 6.0),
)
def test_path_loss_is_monotone_in_distance(d1: float, d2: float, exponent: float) -> None:
    radio = model(exponent=exponent)
    near, far = sorted((d1, d2))
    assert radio.mean_rssi(-59, near) >= radio.mean_rssi(-59, far)


def test_the_reference_and_the_slope() -> None:
    radio = model(exponent=2.0)
    assert radio.mean_rssi(-59, 1.0) == -59
    assert math.isclose(radio.mean_rssi(-59, 10.0), -79.0)  # 10·n dB per decade
    assert math.isclose(model(exponent=3.0).mean_rssi(-59, 10.0), -89.0)


def test_without_noise_the_rssi_is_the_mean() -> None:
    radio = model()
    assert radio.receive(0, 0, -59, 4.0, 0.0, -100) == round(radio.mean_rssi(-59, 4.0))


def test_distance_is_three_dimensional() -> None:
    assert distance_3d((0, 0), 1.2, (3, 4), 1.2) == 5.0
    assert math.isclose(distance_3d((1, 1), 1.2, (1, 1), 2.8), 1.6)


def _stream(seed: int) -> list[int | None]:
    radio = RadioModel(RadioParams(), random.Random(seed))
    return [
        radio.receive(phone, scanner, -59, 2.0 + phone + scanner, t * 0.7, -94)
        for t in range(200)
        for phone in range(3)
        for scanner in range(4)
    ]


def test_the_same_seed_gives_the_same_numbers() -> None:
    assert _stream(5) == _stream(5)
    assert _stream(5) != _stream(6)


def test_nothing_below_the_sensitivity_is_heard() -> None:
    radio = RadioModel(RadioParams(shadowing_db=8.0, rician_k=0.0), random.Random(2))
    heard = [radio.receive(0, 0, -59, 15.0, t, -90) for t in range(5000)]
    got = [r for r in heard if r is not None]
    assert got
    assert min(got) >= -90
    assert None in heard
    deaf = [radio.receive(0, 0, -59, 1.0, t, -20) for t in range(200)]
    assert deaf == [None] * 200


def test_shadowing_is_normal_with_sigma() -> None:
    radio = model(seed=3, shadowing_db=6.0, shadowing_time_s=0.0)
    samples = [radio.shadowing(0, 0, float(t)) for t in range(20_000)]
    assert abs(statistics.fmean(samples)) < 0.15
    assert abs(statistics.pstdev(samples) - 6.0) < 0.15


def test_correlated_shadowing_keeps_sigma_and_is_correlated() -> None:
    radio = model(seed=4, shadowing_db=5.0, shadowing_time_s=10.0)
    samples = [radio.shadowing(0, 0, t * 1.0) for t in range(40_000)]
    assert abs(statistics.fmean(samples)) < 0.5
    assert abs(statistics.pstdev(samples) - 5.0) < 0.3
    lag1 = statistics.correlation(samples[:-1], samples[1:])
    assert abs(lag1 - math.exp(-1 / 10)) < 0.03  # ρ = exp(-Δt/τ)


def test_rayleigh_fading_has_unit_mean_power() -> None:
    radio = model(seed=5, fading=True, rician_k=0.0)
    db = [radio.fading_db() for _ in range(40_000)]
    power = [10 ** (x / 10) for x in db]
    assert abs(statistics.fmean(power) - 1.0) < 0.03
    assert abs(statistics.fmean(db) - (-2.51)) < 0.1  # −10·γ/ln 10 for an exponential power


def test_a_strong_line_of_sight_fades_less() -> None:
    rayleigh = model(seed=6, fading=True, rician_k=0.0)
    rician = model(seed=6, fading=True, rician_k=10.0)
    spread = statistics.pstdev([rayleigh.fading_db() for _ in range(10_000)])
    assert statistics.pstdev([rician.fading_db() for _ in range(10_000)]) < spread / 2


def test_packet_loss_and_body_blocking_rates() -> None:
    lossy = model(seed=7, packet_loss=0.3)
    heard = [lossy.receive(0, 0, -59, 2.0, t, -100) for t in range(20_000)]
    assert abs(heard.count(None) / len(heard) - 0.3) < 0.015
    blocked = model(seed=8, body_probability=0.25, body_loss_db=8.0)
    clear = blocked.mean_rssi(-59, 3.0)
    got = [blocked.receive(0, 0, -59, 3.0, t, -100) for t in range(20_000)]
    low = sum(1 for r in got if r is not None and r < clear - 4)
    assert abs(low / len(got) - 0.25) < 0.015


def test_a_phone_that_left_is_forgotten() -> None:
    radio = model(shadowing_db=3.0)
    radio.receive(1, 0, -59, 2.0, 0.0, -100)
    assert radio.phones == 1
    radio.forget(1)
    assert radio.phones == 0
