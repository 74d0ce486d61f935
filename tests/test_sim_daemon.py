"""A simulated crowd drives `proximity run` on an accelerated clock, against mosquitto."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mosquitto import Mosquitto, Subscriber

pytestmark = pytest.mark.timeout(90)


def test_a_crowd_walks_the_store_and_the_daemon_publishes_their_offers(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    (tmp_path / "config.toml").write_text(
        f'[broker]\nurl = "mqtt://127.0.0.1:{mosquitto.port}"\n'
        '[ble.sim]\nscenario = "quiet"\nshoppers = 8\nspeed = 300\nseed = 3\n'
        'arrival_window = "20m"\n'  # the eight arrive within 4 s, not the scenario's 12 s
        "[metrics]\nenabled = false\n"
        '[logging]\nformat = "json"\n'
    )
    offers = Subscriber(mosquitto.port, "proximity/v1/store-001/shoppers/+/offers")
    try:
        run = subprocess.run(
            [sys.executable, "-m", "proximity", "run", "--config", str(tmp_path / "config.toml")],
            capture_output=True,
            text=True,
            timeout=80,
            cwd=tmp_path,
            check=False,
        )
    finally:
        offers.close()
    assert run.returncode == 0, run.stderr[-2000:]
    logged = [json.loads(x) for x in run.stderr.splitlines() if x.startswith("{")]
    stopped = next(x for x in logged if x["event"] == "daemon_stopped")
    assert stopped["offers_published"] > 0
    assert stopped["offers_waiting"] == 0
    received = {json.loads(p)["id"] for p in offers.payloads()}
    assert len(received) == stopped["offers_published"]  # every offer reached the broker
    tokens = {m.topic.split("/")[4] for m in offers.messages}
    assert len(tokens) > 1  # several shoppers, each on their own topic
