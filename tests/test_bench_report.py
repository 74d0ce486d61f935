"""The benchmark report format: JSON rows, the combined table, the README block."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bench.__main__ as runner
from bench import report
from bench.report import Row


def test_rows_go_to_json_and_into_one_markdown_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(report, "OUT", tmp_path)
    report.write(
        "demo",
        [
            Row("3000 offers", "throughput", "1/s", 5305, "raw paho", 9123),
            Row("p99", "latency", "ms", 0.93, "raw paho", 0.46, higher_is_better=False),
            Row("photos read", "count", "count", 107),
        ],
    )
    doc = json.loads((tmp_path / "demo.json").read_text())
    assert doc["rows"][0]["better"] == 0.581
    assert doc["rows"][1]["better"] == 0.495
    assert "baseline" not in doc["rows"][2]
    table = report.markdown(report.load(["demo"]))
    assert table.splitlines()[2:] == [
        "| `demo` | 3000 offers | 5,305 1/s | raw paho: 9,123 | 0.58x |",
        "|  | p99 | 0.93 ms | raw paho: 0.46 | 0.49x |",
        "|  | photos read | 107 count |  |  |",
    ]
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:start -->\nold\n<!-- bench:end -->\nafter\n")
    monkeypatch.setattr(runner, "README", readme)
    runner.update_readme(report.load(["demo"]))
    text = readme.read_text()
    assert "old" not in text
    assert table in text
    assert text.startswith("intro\n<!-- bench:start -->\nMeasured on ")
    assert text.endswith("<!-- bench:end -->\nafter\n")


def test_the_readme_has_the_block_the_runner_rewrites() -> None:
    text = runner.README.read_text()
    assert text.count("<!-- bench:start -->") == 1
    assert text.count("<!-- bench:end -->") == 1


def test_a_latency_row_carries_its_cpu_share_and_says_when_saturated() -> None:
    plain = Row("p99", "latency", "ms", 0.93, "raw paho", 0.46, higher_is_better=False)
    assert set(plain.as_json()) == {"case", "metric", "unit", "value", "baseline", "better"}
    assert plain.saturated is None
    busy = Row("p99", "latency", "ms", 97.0, higher_is_better=False, cpu_share=0.98123)
    assert busy.as_json() == {
        "case": "p99",
        "metric": "latency",
        "unit": "ms",
        "value": 97.0,
        "cpu_share": 0.981,
        "saturated": True,
    }
    calm = Row("p99", "latency", "ms", 4.0, higher_is_better=False, cpu_share=0.35)
    assert calm.as_json()["saturated"] is False
    assert report.load_text(0.98, "daemon+simulator") == (
        "daemon+simulator CPU 98% of a core, saturated"
    )
    assert report.load_text(0.35) == "daemon CPU 35% of a core"
    assert report.load_text(None) == "daemon CPU not measured"


_CHILD = """
import sys, time
print("go", flush=True)
end = time.monotonic() + 0.5
if sys.argv[1] == "burn":
    while time.monotonic() < end:
        pass
else:
    time.sleep(0.5)
print("done", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize(("mode", "low", "high"), [("burn", 0.5, 1.2), ("sleep", 0.0, 0.2)])
def test_the_cpu_meter_tells_a_busy_child_from_an_idle_one(
    mode: str, low: float, high: float
) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _CHILD, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None
        assert child.stdin is not None
        meter = report.CpuMeter(child.pid)
        assert meter.share is None
        assert child.stdout.readline() == "go\n"
        meter.sample()
        assert child.stdout.readline() == "done\n"
        meter.sample()
        child.stdin.close()
        child.wait(5)
    share = meter.share
    assert share is not None
    assert low <= share <= high
    meter.sample()  # the child has gone: no sample, the share stands
    assert meter.share == share


def test_cpu_seconds_of_this_process_and_of_none() -> None:
    before = report.cpu_seconds()
    assert before is not None
    end = time.monotonic() + 0.1
    while time.monotonic() < end:
        pass
    after = report.cpu_seconds()
    assert after is not None
    assert after > before
    assert report.cpu_seconds(2**22 + 12345) is None


def test_trading_day_latency_rows_say_the_daemon_and_simulator_were_saturated() -> None:
    from bench import trading_day

    result = trading_day.Result(
        hours=1.0,
        speed=240.0,
        seconds=30.0,
        simulated_s=7200.0,
        published=900,
        received=900,
        expired=0,
        waiting=0,
        readings=1e6,
        readings_rate=33000.0,
        refused="none",
        latencies=[5.0, 7.0, 900.0],
        rss=(80.0, 82.0, 84.0, 85.0),
        errors=0,
        warnings=[],
        cpu_s=29.0,
        cpu_share=0.97,
        drift_ms=0.0,
    )
    latency = [r for r in trading_day.rows_for(result, memory=False) if r.metric == "latency"]
    assert [r.as_json()["saturated"] for r in latency] == [True, True]
    assert all("(daemon+simulator CPU 97% of a core, saturated)" in r.case for r in latency)
    others = [r for r in trading_day.rows_for(result, memory=True) if r.metric != "latency"]
    assert all("cpu_share" not in r.as_json() for r in others)


def test_trading_day_rows_of_a_fed_run_give_the_daemon_and_the_simulator_their_own_cpu() -> None:
    from bench import trading_day

    result = trading_day.Result(
        hours=1.0, speed=10.0, seconds=120.0, simulated_s=1200.0, published=40, received=40,
        expired=2, waiting=0, readings=1e5, readings_rate=900.0, refused="none",
        latencies=[2.0, 3.0, 8.0], rss=(80.0, 82.0, 84.0, 85.0), errors=0, warnings=[],
        cpu_s=30.0, cpu_share=0.25, drift_ms=0.0,
        fed={"heard": 1000, "messages": 1000, "max_lag_ms": 1.0, "cpu_share": 0.85},
        slice_s=120.0,
    )  # fmt: skip
    rows = trading_day.rows_for(result, memory=False)
    latency = [r for r in rows if r.metric == "latency"]
    assert [r.as_json()["saturated"] for r in latency] == [False, False]  # the daemon's share
    name = "1000 shoppers over 1 h, x10, the crowd in its own process through OMG scanner nodes"
    for r in latency:
        assert r.case.startswith(f"{name}, its first 120 s: p")
        assert " of 3 (daemon CPU 25% of a core; simulator CPU 85% of a core, saturated)" in r.case
    expired = [r for r in rows if r.case.endswith("offers expired before sending")]
    assert [r.value for r in expired] == [2]
    day = dataclasses.replace(result, fed=None, slice_s=None)
    assert not any("expired" in r.case for r in trading_day.rows_for(day, memory=False))
