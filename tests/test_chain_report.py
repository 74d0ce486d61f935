"""proximity report --hq: the chain's funnel from PostgreSQL, checked against sums computed
here from the rows the test inserted (not by the report's SQL)."""

from __future__ import annotations

import csv
import io
import json
import math
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from proximity.chain.pgstore import PgStore
from proximity.cli.main import main

STORES = ["store-001", "store-002", "store-003", "store-004"]
RULES = ["welcome", "coffee"]
STAGES = [
    "decided",
    "suppressed",
    "published",
    "delivered",
    "clicked",
    "redeemed",
    "converted",
    "held_out",
    "held_out_converted",
]
BIG = {"decided", "published", "delivered", "held_out"}
NOW = datetime.now(UTC).replace(second=0, microsecond=0)
Row = tuple[str, str, int, datetime, str, str, str, str, str, int]


def make_rows(seed: int = 7) -> list[Row]:
    rnd = random.Random(seed)
    rows: list[Row] = []
    for store in STORES:
        for seq in (1, 2):
            for _ in range(40):
                stage = rnd.choice(STAGES)
                # half the rows two hours ago, half ten days ago (for --since)
                minute = NOW - (timedelta(hours=2) if seq == 1 else timedelta(days=10))
                rows.append(
                    (
                        store,
                        "gw-1",
                        seq,
                        minute - timedelta(minutes=rnd.randrange(60)),
                        rnd.choice(RULES),
                        rnd.choice(["", "b"]) if stage not in ("held_out",) else "",
                        "holdout" if stage.startswith("held_out") else "treatment",
                        stage,
                        rnd.choice(["cap", "quiet"]) if stage == "suppressed" else "",
                        rnd.randrange(50, 200) if stage in BIG else rnd.randrange(1, 30),
                    )
                )
    return rows


@pytest.fixture
def chain(pg_dsn: str) -> tuple[str, list[Row]]:
    store = PgStore(pg_dsn)
    store.migrate()
    store.close()
    rows = make_rows()
    with psycopg.connect(pg_dsn) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO facts (store, gateway, seq, minute, rule, variant, arm, stage, "
            "reason, count) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            rows,
        )
    return pg_dsn, rows


def report(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    assert main(["report", *args]) == 0
    return capsys.readouterr().out


def totals(rows: list[Row], key: Any) -> dict[Any, Counter[str]]:
    out: dict[Any, Counter[str]] = {}
    for row in rows:
        out.setdefault(key(row), Counter())[row[7]] += row[9]
    return out


def test_totals_rates_uplift_and_league_across_the_chain(
    chain: tuple[str, list[Row]], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    dsn, rows = chain
    chart = tmp_path / "c.svg"
    doc = json.loads(report(capsys, "--hq", dsn, "--format", "json", "--chart", str(chart)))
    funnel = totals(rows, lambda r: (r[4], r[5]))
    assert [(f["rule"], f["variant"] or "") for f in doc["funnel"]] == sorted(funnel)
    for line in doc["funnel"]:
        counts = funnel[(line["rule"], line["variant"] or "")]
        for stage in STAGES:
            assert line[stage] == counts[stage], (line["rule"], stage)
        published = counts["published"]
        assert line["conversion"] == (counts["converted"] / published if published else None)
    per_rule = totals(rows, lambda r: r[4])
    for up in doc["uplift"]:
        c = per_rule[up["rule"]]
        p1 = c["converted"] / c["published"]
        p2 = c["held_out_converted"] / c["held_out"]
        assert up["uplift"] == pytest.approx(p1 - p2)
        half = 1.96 * math.sqrt(p1 * (1 - p1) / c["published"] + p2 * (1 - p2) / c["held_out"])
        assert up["uplift_low"] == pytest.approx(p1 - p2 - half, abs=1e-4)
        assert up["uplift_high"] == pytest.approx(p1 - p2 + half, abs=1e-4)
    per_store = totals(rows, lambda r: r[0])
    expected = sorted(
        STORES,
        key=lambda s: -per_store[s]["converted"] / per_store[s]["published"],
    )
    assert [s["store"] for s in doc["league"]] == expected
    for line in doc["league"]:
        c = per_store[line["store"]]
        assert (line["published"], line["redeemed"], line["converted"]) == (
            c["published"],
            c["redeemed"],
            c["converted"],
        )
        assert line["conversion"] == pytest.approx(c["converted"] / c["published"])
    assert chart.read_text().startswith("<svg")


def test_stores_group_rule_and_since_narrow_the_sums(
    chain: tuple[str, list[Row]], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    dsn, rows = chain
    hq_toml = tmp_path / "hq.toml"
    hq_toml.write_text('[groups]\nnorth = ["store-002", "store-003"]\n')
    picked = [
        r
        for r in rows
        if r[0] in ("store-002", "store-003")
        and r[4] == "coffee"
        and r[3] > NOW - timedelta(days=1)
    ]
    args = ["--hq", dsn, "--rule", "coffee", "--since", "1d", "--format", "json"]
    by_group = json.loads(report(capsys, *args, "--group", "north", "--groups-from", str(hq_toml)))
    by_list = json.loads(report(capsys, *args, "--stores", "store-002,store-003"))
    assert by_group == by_list | {"stores": ["store-002", "store-003"]}
    assert {s["store"] for s in by_group["league"]} == {"store-002", "store-003"}
    assert [u["rule"] for u in by_group["uplift"]] == ["coffee"]
    expected = totals(picked, lambda r: r[4])["coffee"]
    got: Counter[str] = Counter()
    for line in by_group["funnel"]:
        got.update({stage: line[stage] for stage in STAGES})
    assert +got == +expected


def test_csv_and_table_output(
    chain: tuple[str, list[Row]], capsys: pytest.CaptureFixture[str]
) -> None:
    dsn, rows = chain
    lines = list(csv.DictReader(io.StringIO(report(capsys, "--hq", dsn, "--format", "csv"))))
    assert {line["table"] for line in lines} == {"funnel", "uplift", "league"}
    league = [line for line in lines if line["table"] == "league"]
    per_store = totals(rows, lambda r: r[0])
    assert {line["store"]: int(line["published"]) for line in league} == {
        s: per_store[s]["published"] for s in STORES
    }
    text = report(capsys, "--hq", dsn)
    assert "uplift per rule across the chain" in text
    assert "stores, best conversion first" in text
    assert all(store in text for store in STORES)


def test_bad_chain_options_say_why(
    chain: tuple[str, list[Row]], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    dsn, _ = chain
    assert main(["report", "--hq", dsn, "--group", "north"]) == 2
    assert "--group needs --groups-from" in capsys.readouterr().err
    (tmp_path / "hq.toml").write_text("[groups]\nsouth = ['store-001']\n")
    assert (
        main(
            ["report", "--hq", dsn, "--group", "north", "--groups-from", str(tmp_path / "hq.toml")]
        )
        == 1
    )
    assert "no group 'north'" in capsys.readouterr().err
    assert main(["report", "--store", str(tmp_path / "x.db"), "--rule", "welcome"]) == 2
    assert main(["report", "--hq", "postgresql://nobody@127.0.0.1:1/none"]) == 1
    assert "--hq:" in capsys.readouterr().err
