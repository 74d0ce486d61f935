"""The benchmark report format: JSON rows, the combined table, the README block."""

from __future__ import annotations

import json
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
