"""The node ingest benchmark runs end to end on a real mosquitto, small, and writes its JSON
(no speed asserted: only that every row is there, well-formed and measured)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import node_ingest, report
from proximity.adapters.nodes.formats import Batch, parse_espresense, parse_omg, parse_ours

pytestmark = pytest.mark.timeout(60)


def test_a_small_run_measures_every_format_and_the_latency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(report, "OUT", tmp_path)
    node_ingest.main(["--batches", "20", "--messages", "300", "--seconds", "1", "--rate", "200"])
    doc = json.loads((tmp_path / "node_ingest.json").read_text())
    assert doc["name"] == "node_ingest"
    rows = doc["rows"]
    rates = [r for r in rows if r["metric"] == "readings per second"]
    assert [r["case"].split(":")[0] for r in rates] == ["ours", "ours", "espresense", "omg"]
    for row in rates:
        assert row["value"] > 0
        assert row["baseline"]["value"] > 0
        assert row["better"] > 0
    for row in (rates[0], *rates[2:]):
        assert row["baseline"]["name"] == "raw paho subscriber counting messages"
        assert row["cpu_share"] > 0
        assert isinstance(row["saturated"], bool)
        assert ("saturated" in row["case"]) == row["saturated"]
    assert rates[1]["baseline"]["name"] == "json.loads alone"
    latency = [r for r in rows if r["metric"] == "latency"]
    assert [r["case"].rsplit(": ", 1)[1].split(" ")[0] for r in latency] == ["p50", "p99", "max"]
    assert all(r["unit"] == "ms" and r["value"] > 0 for r in latency)
    assert 0 < latency[0]["value"] <= latency[1]["value"] <= latency[2]["value"]
    assert latency[1]["baseline"] == {"name": "issue target", "value": 250.0}
    assert all(r["case"].startswith("10 nodes × 200 readings/s") for r in latency)
    out = capsys.readouterr().out
    assert "node_ingest" in out
    assert "node-to-gateway p99" in out


def test_the_messages_are_what_the_gateway_reads() -> None:
    """The benchmark's bytes are valid node messages of each format (parsed as the ingest
    parses them), so the throughput counts readings, not rejections."""
    (topic, payload), *_ = node_ingest.messages("ours", 1)
    parts = topic.split("/")
    batch = parse_ours(parts[4], parts[5], payload)
    assert isinstance(batch, Batch)
    assert len(batch.readings) == node_ingest.BATCH
    (topic, payload), *_ = node_ingest.messages("espresense", 1)
    one = parse_espresense(topic.split("/"), payload)
    assert isinstance(one, Batch)
    assert len(one.readings) == 1
    (topic, payload), *_ = node_ingest.messages("omg", 1)
    one = parse_omg(topic.split("/"), payload)
    assert isinstance(one, Batch)
    assert len(one.readings) == 1
