"""The chain end to end with real processes: ``proximity rollout publish`` (canary stage)
→ a running ``proximity run`` gateway verifies, tests and applies the bundle → its report
goes up → ``proximity hq`` records it in PostgreSQL → ``proximity rollout status`` reads
it there. A forged bundle is refused by the same gateway, which keeps its rules."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import paho.mqtt.client as mqtt
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from proximity.chain.bundle import sign_bundle
from proximity.cli.main import main
from tests.factories import T0
from tests.mosquitto import Mosquitto, Subscriber

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules" / "example-store.toml"
T = TypeVar("T")


def eventually(value: Callable[[], T | None], timeout: float, what: str) -> T:
    """``value()`` once it is not None (or empty), polling; fails naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        found = value()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:g} s")
        time.sleep(0.1)


def start(tmp_path: Path, name: str, *argv: str) -> subprocess.Popen[bytes]:
    with (tmp_path / f"{name}.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "proximity", *argv],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


@pytest.fixture
def chain(mosquitto: Mosquitto, pg_dsn: str, tmp_path: Path) -> Iterator[Path]:
    """One broker playing the store's and the centre's (the topics are the same on both
    sides of a bridge: tests/test_chain_bridge.py covers the bridge), hq on PostgreSQL,
    and a gateway that takes bundles signed by ops-2026."""
    assert main(["rollout", "keygen", "--out", str(tmp_path / "keys"), "--key-id", "ops-2026"]) == 0
    (tmp_path / "hq.toml").write_text(
        f'[hq]\nbroker = "mqtt://127.0.0.1:{mosquitto.port}"\ndatabase = "{pg_dsn}"\n'
        'flush_every = "100ms"\nmetrics_port = 0\n'
        '[rollout]\nsigning_key = "keys/ops-2026.pem"\nkey_id = "ops-2026"\n'
        'canary_watch = "4s"\n'
    )
    (tmp_path / "gateway.toml").write_text(
        f'[broker]\nurl = "mqtt://127.0.0.1:{mosquitto.port}"\n'
        f'[rules]\npaths = ["{RULES}"]\nwatch_interval = "200ms"\n'
        '[ble.sim]\nscenario = "quiet"\nshoppers = 3\narrival_window = "10m"\n'
        '[measurement]\nstore = "funnel.sqlite"\n'
        '[chain]\nenabled = true\nbundles = "bundles"\n'
        'rollout_keys = { "ops-2026" = "keys/ops-2026.pub.pem" }\n'
        '[metrics]\nenabled = false\n[logging]\nformat = "json"\n'
    )
    hq = start(tmp_path, "hq", "hq", "run", "--config", "hq.toml")
    gateway = start(tmp_path, "gateway", "run", "--config", "gateway.toml")
    status = Subscriber(mosquitto.port, "proximity/v1/store-001/up/status")

    def hq_has_its_tables() -> bool:
        with psycopg.connect(pg_dsn) as db:
            row = db.execute("SELECT to_regclass('bundles_published')").fetchone()
        return row is not None and row[0] is not None

    try:
        eventually(lambda: status.messages, timeout=20, what="the gateway's first status")
        # rollout publish records what it sent only in hq's tables (hq makes them at start)
        eventually(hq_has_its_tables, timeout=20, what="hq's tables")
        yield tmp_path
    finally:
        status.close()
        assert stop(gateway) == 0, (tmp_path / "gateway.log").read_text()[-3000:]
        assert stop(hq) == 0, (tmp_path / "hq.log").read_text()[-3000:]


def rollout_status(config: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    capsys.readouterr()
    argv = ["rollout", "status", "--config", str(config), "--source", "database"]
    assert main([*argv, "--stores", "store-001", "--format", "json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["source"] == "database"
    (row,) = found["stores"]
    assert isinstance(row, dict)
    return row


def test_a_canary_bundle_reaches_a_real_gateway_and_hq_records_what_it_did(
    chain: Path, mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    hq = chain / "hq.toml"
    argv = ["rollout", "publish", "--config", str(hq), "--rules", str(RULES)]
    assert main([*argv, "--stores", "store-001", "--canary", "100%", "--bundle", "41"]) == 0
    out = capsys.readouterr().out
    assert "published bundle 41 to store-001" in out
    assert (chain / "bundles" / "current").resolve().name == "41"
    assert (chain / "bundles" / "current" / RULES.name).read_text() == RULES.read_text()

    def recorded() -> dict[str, object] | None:
        row = rollout_status(hq, capsys)
        return row if row.get("bundle") == 41 else None

    row = eventually(recorded, timeout=15, what="hq's record of bundle 41")
    assert (row["outcome"], row["published"]) == ("applied", 41), row
    # the gateway's status says what runs (hq keeps the latest)
    eventually(lambda: rollout_status(hq, capsys)["running"] == 41, 15, "status bundle 41")

    # a bundle signed by a key the gateway does not know: refused, bundle 41 keeps running
    forged = sign_bundle(
        store="store-001",
        bundle=42,
        files={RULES.name: RULES.read_text()},
        key_id="ops-2026",
        private_key=Ed25519PrivateKey.generate(),
        created_at=T0,
    ).payload()
    reports = Subscriber(mosquitto.port, "proximity/v1/store-001/up/rollout")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    try:
        client.publish("proximity/v1/store-001/down/rules", forged, qos=1, retain=True)

        def refusal() -> dict[str, object] | None:
            for payload in reports.payloads():
                report = json.loads(payload)
                if report["bundle"] == 42:
                    return report  # type: ignore[no-any-return]
            return None

        report = eventually(refusal, timeout=15, what="the gateway's refusal")
        assert report["outcome"] == "refused"
        assert report["reason"] == "bad signature", report
    finally:
        client.loop_stop()
        client.disconnect()
        reports.close()
    assert (chain / "bundles" / "current").resolve().name == "41"

    def refused() -> dict[str, object] | None:
        row = rollout_status(hq, capsys)
        return row if row.get("outcome") == "refused" else None

    row = eventually(refused, timeout=15, what="hq's record of the refusal")
    assert (row["bundle"], row["reason"], row["running"]) == (42, "bad signature", 41)
