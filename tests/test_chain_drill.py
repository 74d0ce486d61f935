"""The chain drill (bench/chain_drill.py with 2 s outages): three stores trade through a
central broker outage, then an hq outage; PostgreSQL ends up with exactly the facts each
gateway's measurement store recorded — none lost, none counted twice. The three gateways
are `proximity run`'s service in this process (the benchmark runs them as processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chain_drill import drill, rows

pytestmark = [pytest.mark.timeout(120), pytest.mark.mosquitto]


async def test_central_broker_then_hq_down_loses_nothing_and_counts_nothing_twice(
    tmp_path: Path, pg_dsn: str
) -> None:
    result = await drill(
        tmp_path,
        pg_dsn,
        stores=3,
        outage_s=2.0,
        shoppers=20,
        speed=100.0,
        settle_s=0.5,
        in_process=True,
    )
    assert result.recorded.total() > 0, result.timeline
    assert {key[0] for key in result.recorded} == {"store-001", "store-002", "store-003"}
    assert result.lost == 0, (result.recorded - result.in_database, result.timeline)
    assert result.doubled == 0, (result.in_database - result.recorded, result.timeline)
    assert result.in_database == result.recorded
    assert result.max_pending > 1  # the stores did hold batches while hq was away
    figures = {row.metric: row.value for row in rows(result)}  # the benchmark's table
    assert figures["facts lost"] == 0
    assert figures["facts in PostgreSQL"] == result.recorded.total()
