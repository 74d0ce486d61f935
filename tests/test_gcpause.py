"""The garbage collector's pauses, timed by generation."""

from __future__ import annotations

import gc

from proximity.gcpause import BUCKETS, GcPauses


def test_each_collection_is_counted_in_its_generation_until_uninstalled() -> None:
    pauses = GcPauses().install()
    try:
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
        assert pauses.count[0] >= 1
        assert pauses.count[2] >= 2
        assert pauses.longest[2] > 0
        assert pauses.seconds[2] >= pauses.longest[2]
        for generation in range(3):
            assert sum(pauses.buckets[generation]) == pauses.count[generation]
    finally:
        pauses.uninstall()
    seen = list(pauses.count)
    gc.collect(2)
    assert pauses.count == seen
    assert pauses._callback not in gc.callbacks


def test_installing_twice_registers_one_callback() -> None:
    pauses = GcPauses().install().install()
    try:
        assert sum(1 for cb in gc.callbacks if cb == pauses._callback) == 1
        before = pauses.count[2]
        gc.collect(2)
        assert pauses.count[2] == before + 1
    finally:
        pauses.uninstall()


def test_the_histogram_is_cumulative_and_ends_with_every_pause() -> None:
    pauses = GcPauses()
    for took in (0.0001, 0.003, 0.003, 0.2, 5.0):  # seconds: the last beyond every bucket
        pauses._callback("start", {"generation": 1})
        assert pauses._started is not None
        pauses._started -= took
        pauses._callback("stop", {"generation": 1})
    rows = pauses.cumulative(1)
    assert [le for le, _ in rows] == [*map(str, BUCKETS), "+Inf"]
    counts = [n for _, n in rows]
    assert counts == sorted(counts)
    assert counts[-1] == pauses.count[1] == 5
    assert dict(rows)["0.0005"] == 1
    assert dict(rows)["0.005"] == 3
    assert dict(rows)["0.25"] == 4
    assert pauses.longest[1] >= 5.0
    assert pauses.cumulative(0)[-1] == ("+Inf", 0)
