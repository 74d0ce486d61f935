"""Log lines are rate-limited per event name, and say how many were dropped."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import structlog

from proximity.logsetup import RateLimit, configure_logging


def test_a_flood_of_one_event_is_cut_and_the_next_line_counts_what_was_dropped() -> None:
    now = [0.0]
    limit = RateLimit(per_second=10, burst=5, monotonic=lambda: now[0])
    passed = []
    for n in range(50):
        with contextlib.suppress(structlog.DropEvent):
            passed.append(limit(None, "warning", {"event": "ble_frame_rejected", "n": n}))
    assert [e["n"] for e in passed] == [0, 1, 2, 3, 4]
    # another event name has its own budget
    assert limit(None, "info", {"event": "offer_published"})["event"] == "offer_published"
    now[0] = 0.5  # half a second later: five more
    after = []
    for n in range(10):
        with contextlib.suppress(structlog.DropEvent):
            after.append(limit(None, "warning", {"event": "ble_frame_rejected", "n": n}))
    assert len(after) == 5
    assert after[0]["suppressed"] == 45
    assert "suppressed" not in after[1]


def test_the_configured_logger_is_rate_limited() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    try:
        log = structlog.get_logger("test")
        for _ in range(500):
            log.warning("flood")
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
    finally:
        structlog.reset_defaults()
    assert 200 <= len(lines) < 260  # the burst, and what the rate refills meanwhile
    assert {line["event"] for line in lines} == {"flood"}


@pytest.fixture(autouse=True)
def _restore_logging() -> object:
    yield
    structlog.reset_defaults()
