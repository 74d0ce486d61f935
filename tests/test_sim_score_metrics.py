"""The presence score's flaps, p95 latencies and false exits in outages; ``score --method``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_sim.__main__ import main
from firmware_sim.crowd import Stay
from firmware_sim.methods import METHODS, MethodUnsupported, presence_settings, supported
from firmware_sim.score import FLAP_WINDOW_S, Latency, Observed, count_flaps, score
from firmware_sim.store import BUILTIN_STORES

GRID = BUILTIN_STORES / "grid.toml"


def stays_of(zone: str, *spans: tuple[float, float]) -> list[Observed]:
    """The events a perfect presence layer gives for these stays in ``zone``."""
    out: list[Observed] = []
    for start, end in spans:
        out += [Observed("s", "enter", zone, start), Observed("s", "exit", zone, end)]
    return out


@st.composite
def long_stays(draw: st.DrawFn) -> tuple[float, float, float, float]:
    """A true stay [start, end) and a spurious exit at t re-entered ``gap`` seconds later,
    well inside it."""
    start = draw(st.floats(0, 1000))
    length = draw(st.floats(200, 3000))
    gap = draw(st.floats(0.5, FLAP_WINDOW_S))
    t = draw(st.floats(start + 50, start + length - 50 - gap))
    return start, start + length, t, gap


@given(long_stays())
def test_a_spurious_exit_and_reenter_is_one_flap(case: tuple[float, float, float, float]) -> None:
    start, end, t, gap = case
    truth = {"s": [Stay("a", start, end)]}
    clean = stays_of("a", (start, end))
    assert count_flaps(truth, clean) == 0
    flicker = stays_of("a", (start, t), (t + gap, end))
    assert count_flaps(truth, flicker) == 1
    result = score(truth, {"s": [(start, end)]}, flicker, {})
    assert result.flaps == 1
    assert result.flaps_per_shopper_hour == pytest.approx(3600 / (end - start))


@given(st.floats(1.0, FLAP_WINDOW_S - 1), st.floats(0.0, 5.0))
def test_a_true_step_out_and_back_is_no_flap(gap: float, late: float) -> None:
    truth = {"s": [Stay("a", 0.0, 100.0), Stay("a", 100.0 + gap, 300.0)]}
    events = stays_of("a", (late, 100.0 + late), (100.0 + gap + late, 300.0 + late))
    assert count_flaps(truth, events) == 0


def test_a_switch_to_a_neighbour_and_back_flaps_the_zone_left() -> None:
    truth = {"s": [Stay("a", 0.0, 300.0)]}
    events = [
        Observed("s", "enter", "a", 1.0),
        Observed("s", "exit", "a", 100.0),
        Observed("s", "enter", "b", 100.0),
        Observed("s", "exit", "b", 110.0),
        Observed("s", "enter", "a", 110.0),
        Observed("s", "exit", "a", 301.0),
    ]
    assert count_flaps(truth, events) == 1
    late = [*events[:4], Observed("s", "enter", "a", 100.0 + FLAP_WINDOW_S + 1)]
    assert count_flaps(truth, late) == 0  # out of the window: a (wrong) exit, not a flap


def test_exits_of_shoppers_still_there_are_counted_while_a_scanner_is_down() -> None:
    truth = {"s": [Stay("a", 0.0, 1000.0)]}
    visits = {"s": [(0.0, 1000.0)]}
    events = [
        *stays_of("a", (1.0, 500.0)),  # exit at 500: the scanner went down at 485
        Observed("s", "enter", "a", 800.0),
        Observed("s", "exit", "a", 1001.0),  # a true exit: not counted
    ]
    result = score(truth, visits, events, {}, outages=[(485.0, 700.0)])
    assert result.outage_false_exits == 1
    assert score(truth, visits, events, {}).outage_false_exits is None
    far = score(truth, visits, events, {}, outages=[(100.0, 200.0)])
    assert far.outage_false_exits == 0
    late = {"s": [Stay("a", 0.0, 490.0)]}  # out at 490, exit heard at 500: late, not false
    assert score(late, visits, events, {}, outages=[(485.0, 700.0)]).outage_false_exits == 0
    assert result.to_json()["outage_false_exits"] == 1


@given(st.lists(st.floats(-20, 60), min_size=1, max_size=50))
def test_p95_lies_between_p90_and_p99(values: list[float]) -> None:
    lat = Latency.of(values)
    assert lat.p90 is not None
    assert lat.p95 is not None
    assert lat.p99 is not None
    assert lat.p90 <= lat.p95 + 1e-9
    assert lat.p95 <= lat.p99 + 1e-9
    assert lat.to_json()["p95"] == round(lat.p95, 4)


def test_threshold_is_the_settings_as_they_are_and_others_need_the_product() -> None:
    base = presence_settings("threshold", GRID)
    assert base == presence_settings("threshold", GRID, base)
    assert supported("threshold", GRID)
    assert all(supported(method, GRID) for method in METHODS)  # the product runs them all
    # a method the product does not take (as an older product would refuse "fused"): one line
    with pytest.raises(MethodUnsupported, match="presence method 'kalman' is not supp") as info:
        presence_settings("kalman", GRID)
    assert "\n" not in str(info.value)


def test_score_reports_flaps_and_p95_per_scenario_on_a_grid_store(tmp_path: Path) -> None:
    path = tmp_path / "score.json"
    out = io.StringIO()
    argv = ["score", "--store", str(GRID), "--scenarios", "sparse,node_failure"]
    argv += ["--shoppers", "4", "--duration", "20m", "--seed", "101", "--tolerance", "10"]
    code = main([*argv, "--method", "threshold", "--json", str(path)], out)
    assert code == 0
    assert "flaps/h" in out.getvalue()
    report = json.loads(path.read_text(encoding="utf-8"))
    assert report["method"] == "threshold"
    assert report["tolerance_s"] == 10.0
    sparse, failing = report["scenarios"]["sparse"], report["scenarios"]["node_failure"]
    for scenario in (sparse, failing):
        assert {"enter", "exit", "wrong_zone", "flaps_per_shopper_hour"} <= set(scenario)
        assert "p95" in scenario["latency_s"]["enter"]
    assert sparse["outage_false_exits"] is None
    assert len(failing["scanners_down"]) == 4  # a quarter of 15
    metrics = {row["metric"] for row in report["rows"]}
    assert {"flaps per shopper-hour", "detection latency p95", "precision", "recall"} <= metrics
    assert "false exits while scanners are down" in metrics


def test_score_with_a_method_nobody_has_is_refused_by_its_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["score", "--method", "kalman", "--json", str(tmp_path / "x.json")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'kalman'" in err
    assert "multilateration" in err  # the choices are listed
    assert not (tmp_path / "x.json").exists()
