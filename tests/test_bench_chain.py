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
    chain.main(
        [
            *("--stores", "5", "--batches", "2", "--month-rows", "3000", "--rate", "2000"),
            *("--rollout-stores", "4", "--server", postgres),
        ]
    )
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
    queryable = [r for r in doc["rows"] if r["metric"].startswith("publish → queryable")]
    assert [r["metric"].rsplit(" ", 1)[1] for r in queryable] == ["p50", "p99", "max"]
    assert all(r["unit"] == "ms" and r["value"] > 0 for r in queryable)
    assert queryable[1]["baseline"] == {"name": "target (issue #16)", "value": 2000.0}
    assert "2,000 fact rows/s offered" in queryable[1]["case"]
    rollout = [r for r in doc["rows"] if r["metric"].startswith("published → applied")]
    assert len(rollout) == 3
    assert all(r["unit"] == "s" and r["value"] > 0 for r in rollout)
    assert "4 of 4 applied" in rollout[1]["case"]
    (apply,) = [r for r in doc["rows"] if r["metric"] == "apply time, median"]
    assert apply["value"] > 0
    assert "median of 4" in apply["case"]
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


def test_the_publishers_packets_are_mqtt_publishes_paho_reads() -> None:
    """The raw publisher's bytes, fed to paho's own packet reader, are the messages."""
    todo = chain.messages(2, 70)
    packets = chain.publish_packets(todo)
    assert len(packets) == 140
    for n in (0, 1, 139):
        packet = packets[n]
        assert packet[0] == 0x32  # PUBLISH, QoS 1
        length, shift, i = 0, 0, 1
        while True:
            length |= (packet[i] & 0x7F) << shift
            shift += 7
            i += 1
            if not packet[i - 1] & 0x80:
                break
        body = packet[i:]
        assert len(body) == length
        topic_len = int.from_bytes(body[:2], "big")
        assert body[2 : 2 + topic_len].decode() == todo[n][0]
        assert int.from_bytes(body[2 + topic_len : 4 + topic_len], "big") == n + 1
        assert body[4 + topic_len :] == todo[n][1]


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert chain.percentile(values, 99) == 99.0
    assert chain.percentile(values, 50) == 50.0
    assert chain.percentile([3.0], 99) == 3.0
    assert chain.percentile([], 99) == 0.0
