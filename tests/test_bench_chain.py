"""The chain benchmark runs end to end on a real mosquitto and PostgreSQL, small, and writes
its JSON (no speed asserted: only that every row is there, well-formed and measured)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import chain, report
from proximity.chain.messages import FactsBatch, parse_uplink

pytestmark = pytest.mark.timeout(60)


def test_a_small_run_measures_ingest_and_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres: str
) -> None:
    monkeypatch.setattr(report, "OUT", tmp_path)
    chain.main(["--stores", "5", "--batches", "2", "--month-rows", "3000", "--server", postgres])
    doc = json.loads((tmp_path / "chain.json").read_text())
    assert doc["name"] == "chain"
    ingest = [r for r in doc["rows"] if r["metric"] == "fact rows per second"]
    assert [r["case"].split(":")[0] for r in ingest] == [
        "hq ingest, while the publisher sends",
        "hq ingest, a backlog queued while hq was down",
    ]
    for row in ingest:
        assert row["value"] > 0
        assert row["baseline"]["name"] == "COPY straight into facts"
        assert row["baseline"]["value"] > 0
        assert isinstance(row["saturated"], bool)
    queries = [r for r in doc["rows"] if r["metric"] == "query time"]
    assert len(queries) == 3
    assert all(r["unit"] == "ms" and r["value"] > 0 for r in queries)
    assert all("3,000 rows, 500 stores" in r["case"] for r in queries)


def test_the_messages_are_batches_hq_takes() -> None:
    (topic, payload), *_ = chain.messages(3, 1)
    batch = parse_uplink(topic, payload)
    assert isinstance(batch, FactsBatch)
    assert len(batch.rows) == 12
    assert len(chain.rows_of(chain.messages(3, 2))) == 3 * 2 * 12
