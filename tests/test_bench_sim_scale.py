"""The simulator's scale benchmark runs end to end and writes its JSON (no timing asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import report, sim_scale
from firmware_sim.store import builtin_store


def test_a_small_crowd_runs_through_every_case_and_writes_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(report, "OUT", tmp_path)
    sim_scale.main(["--shoppers", "100", "--rate", "10", "--seconds", "5", "--stack-seconds", "5"])
    doc = json.loads((tmp_path / "sim_scale.json").read_text())
    assert doc["name"] == "sim_scale"
    rows = doc["rows"]
    factors = [r for r in rows if r["metric"] == "real-time factor"]
    assert [r["case"].split(": ")[1] for r in factors] == [
        "simulator (5 s), store s per wall s",
        "simulator → bleak objects (5 s), store s per wall s",
        "simulator + whole pipeline (5 s), store s per wall s",
    ]
    assert all(r["case"].startswith("100 shoppers × 10 Hz") for r in rows)
    assert all(r["value"] > 0 for r in rows)
    assert all(r["baseline"] == {"name": "real time", "value": 1.0} for r in factors)
    assert "sim_scale" in capsys.readouterr().out


def test_the_benchmark_crowd_is_the_same_every_time() -> None:
    store = builtin_store()
    first = sim_scale.make_crowd(store, 20, 10.0, 3.0)
    again = sim_scale.make_crowd(store, 20, 10.0, 3.0)
    assert [(h.t, h.scanner, h.rssi) for h in first.heard()] == [
        (h.t, h.scanner, h.rssi) for h in again.heard()
    ]
