"""The presence accuracy bench runs end to end in miniature and writes its JSON (no figure
asserted: accuracy and speed are the bench's to report, not the tests')."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import presence_accuracy, report
from bench.__main__ import BENCHMARKS
from firmware_sim.methods import supported
from firmware_sim.score import KindScore, Latency, Score
from firmware_sim.store import BUILTIN_STORES


def test_a_tiny_bench_writes_rows_in_the_bench_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(report, "OUT", tmp_path)
    methods = ["threshold", "multilateration"]
    argv = ["--stores", "example", "--scenarios", "node_failure", "--seeds", "101"]
    argv += ["--methods", ",".join(methods), "--window", "120", "--scale", "0.5"]
    presence_accuracy.main([*argv, "--tracked", "20", "--rate-seconds", "1", "--jobs", "1"])
    out = capsys.readouterr().out
    ran = [m for m in methods if supported(m, BUILTIN_STORES / "example.toml")]
    for method in set(methods) - set(ran):
        assert f"skipping {method}: presence method '{method}' is not supported" in out
    doc = json.loads((tmp_path / "presence_accuracy.json").read_text())
    assert doc["name"] == "presence_accuracy"
    assert set(doc) == {"name", "commit", "machine", "rows"}
    rows = doc["rows"]
    assert all({"case", "metric", "unit", "value"} <= set(row) for row in rows)
    cases = {row["case"].split(" · ")[2].split(":")[0] for row in rows}
    assert cases == set(ran)
    metrics = {row["metric"] for row in rows}
    assert {"enter precision", "exit recall", "wrong-zone time share"} <= metrics
    assert {"enter latency p50", "flaps per shopper-hour"} <= metrics
    assert "false exits while scanners are down" in metrics
    rates = [row for row in rows if row["metric"] == "readings per second, one core"]
    assert len(rates) == len(ran)
    assert all(row["value"] > 0 for row in rates)
    memory = [row for row in rows if row["metric"] == "memory per tracked shopper"]
    assert [row["unit"] for row in memory] == ["B"] * len(ran)
    assert all(row["case"].startswith("example · node_failure (6 shoppers)") for row in rows[:3])
    for row in rows:  # a baseline always comes with its ratio
        assert ("baseline" in row) == ("better" in row)


def test_the_bench_is_registered() -> None:
    assert "presence_accuracy" in BENCHMARKS


def test_rows_compare_the_candidate_with_the_best_comparator() -> None:
    def made(precision_hits: int, wrong_s: float) -> Score:
        kind = KindScore(precision_hits, 10 - precision_hits, 0, 0)
        lat = Latency.of([1.0, 2.0])
        return Score(
            {"enter": kind, "exit": kind, "dwell": kind},
            {"enter": lat, "exit": lat, "all": lat},
            wrong_s,
            100.0,
        )

    scores = {
        ("s", "sparse", "threshold"): made(6, 30.0),
        ("s", "sparse", "nearest"): made(8, 40.0),
        ("s", "sparse", "fused"): made(9, 10.0),
    }
    rows = presence_accuracy.accuracy_rows(scores, ["threshold", "nearest", "fused"], {"sparse": 5})
    by = {(r.case.split(" · ")[2], r.metric): r for r in rows}
    precision = by[("fused: enter precision", "enter precision")]
    assert (precision.baseline_name, precision.baseline_value) == ("nearest", 0.8)
    wrong = by[("fused: wrong-zone time share", "wrong-zone time share")]
    assert (wrong.baseline_name, wrong.baseline_value) == ("threshold", 0.3)
    assert wrong.better == pytest.approx(3.0)
    assert by[("threshold: enter precision", "enter precision")].baseline_name is None
