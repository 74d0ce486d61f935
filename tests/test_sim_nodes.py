"""The simulator through scanner nodes: `python -m firmware_sim run --via nodes` publishes
what each store scanner hears as a node of ours, ESPresense or OpenMQTTGateway to a real
mosquitto, and a real `proximity run` (ble.backend = "nodes") reads them; the shopper's
app receives the offers. Faults: a node's clock off, a node down mid-visit.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from firmware_sim.__main__ import main
from firmware_sim.live_nodes import parse_down, parse_skew
from firmware_sim.nodes import NodeClock, NodeFormat, make_node
from proximity.clock import SystemClock
from proximity.delivery.url import BrokerUrl
from tests.mosquitto import Mosquitto, Subscriber
from tests.test_sim_live import PHONE_ADDRESS, SHORT_WALK, _left_behind, quick_presence

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
DEMO_OFFERS = ["welcome-directions", "coffee-coupon"]


def _run(tmp_path: Path, mosquitto: Mosquitto, *extra: str, quick: bool = True) -> dict[str, Any]:
    """``run --via nodes`` of the short walk; ``quick``: with :data:`QUICK_PRESENCE`."""
    walk = tmp_path / "walk.toml"
    walk.write_text(SHORT_WALK)
    argv = [
        sys.executable,
        "-m",
        "firmware_sim",
        "run",
        "--via",
        "nodes",
        "--walk",
        str(walk),
        "--workdir",
        str(tmp_path / "run"),
        "--speed",
        "40",
        "--json",
        "--broker",
        str(mosquitto.url),
        *(quick_presence(tmp_path) if quick else []),
        *extra,
    ]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=50, cwd=ROOT, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    result: dict[str, Any] = json.loads(run.stdout)
    assert not _left_behind(tmp_path / "run")
    return result


def _zone_events(sub: Subscriber) -> list[tuple[str, str | None]]:
    out = []
    for payload in sub.payloads("/events"):
        event = json.loads(payload)
        if event["kind"].startswith("zone."):
            out.append((event["kind"], event.get("zone")))
    return out


@pytest.mark.parametrize("node_format", ["ours", "espresense", "omg"])
def test_the_demo_walk_through_nodes_of_each_format_gives_the_demos_offers(
    mosquitto: Mosquitto, tmp_path: Path, node_format: str
) -> None:
    result = _run(tmp_path, mosquitto, "--node-format", node_format)
    daemon = result["daemon"]
    assert result["via"] == "nodes"
    assert result["node_format"] == node_format
    assert daemon["ble_backend"] == "nodes"
    config = (tmp_path / "run" / "proximity.toml").read_text()
    assert config.count("[[nodes]]") == 4
    assert f'source = "{node_format}"' in config
    # what the nodes published, the daemon took: nothing malformed, nothing dropped
    assert daemon["node_readings"] == result["nodes"]["readings"] > 0
    assert daemon["rejected"] == {}
    assert daemon["dropped"] == {}
    assert daemon["sightings"] > 0
    assert daemon["exit_code"] == 0
    assert [o["rule"] for o in result["offers"]] == DEMO_OFFERS
    assert daemon["offers_published"] == 2
    log = (tmp_path / "run" / "proximity.log").read_text()
    assert PHONE_ADDRESS not in log.upper()


def test_nodes_with_their_clocks_off_still_give_the_demos_offers(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Skew far beyond the stale limit (10 s) and the exit timeout: uncorrected, the coffee
    node's readings would be dropped as stale, the entrance node's be in the future."""
    result = _run(
        tmp_path, mosquitto, "--node-skew", "gw-coffee=-30", "--node-skew", "gw-entrance=45"
    )
    assert result["node_faults"] == ["gw-coffee clock -30 s", "gw-entrance clock +45 s"]
    assert result["daemon"]["dropped"] == {}
    assert [o["rule"] for o in result["offers"]] == DEMO_OFFERS


def test_a_node_down_mid_visit_makes_no_false_exit(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """The coffee node dies 5 s into the shopper's stay there and is back 19 s later
    (longer than the exit timeout, 15 s): no exit from coffee meanwhile, and the coupon
    (30 s at coffee) still comes."""
    events = Subscriber(mosquitto.port, "proximity/v1/store-001/events")
    try:
        # the daemon's own timeouts: the outage outlasts its exit timeout, not its visit's
        result = _run(tmp_path, mosquitto, "--node-down", "gw-coffee@33-52", quick=False)
    finally:
        events.close()
    assert result["nodes"]["lost"] > 0  # it did miss the shopper while down
    assert result["daemon"]["node_changes"] == ["node_down gw-coffee", "node_up gw-coffee"]
    zones = _zone_events(events)
    coffee = [kind for kind, zone in zones if zone == "coffee"]
    assert coffee == ["zone.enter", "zone.dwell", "zone.exit"]
    assert [o["rule"] for o in result["offers"]] == DEMO_OFFERS


def test_faults_are_read_and_checked_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert parse_down("gw-coffee@20-35.5") == ("gw-coffee", (20.0, 35.5))
    assert parse_skew("gw-coffee=-4.5") == ("gw-coffee", -4.5)
    for bad in ("gw-coffee", "gw-coffee@30-20", "@1-2"):
        with pytest.raises(ValueError, match="--node-down"):
            parse_down(bad)
    with pytest.raises(ValueError, match="--node-skew"):
        parse_skew("gw-coffee=soon")
    walk = tmp_path / "walk.toml"
    walk.write_text(SHORT_WALK)
    code = main(
        ["run", "--via", "nodes", "--walk", str(walk), "--node-down", "gw-nowhere@1-2"],
        io.StringIO(),
    )
    assert code == 1
    assert "gw-nowhere" in capsys.readouterr().err


@pytest.mark.parametrize("via", ["bluez", "nodes"])
def test_the_live_runs_write_a_config_the_daemon_loads(via: str, tmp_path: Path) -> None:
    """Both live runs' daemon configs (one writer, their [ble] lines apart) load as
    ``proximity run`` loads them, with the run's presence and nodes."""
    import secrets

    from firmware_sim.harness import build_crowd
    from firmware_sim.live import LivePlan, adapter_names, daemon_config
    from firmware_sim.live_nodes import nodes_config
    from firmware_sim.store import builtin_store
    from proximity.config import PresenceSettings, load_settings

    store = builtin_store("example")
    scanners = [s.id for s in store.scanners]
    plan = LivePlan(
        build_crowd(store, None, 1),
        "test",
        rules=[Path("rules/example-store.toml")],
        store_id="store-001",
        presence=PresenceSettings(exit_timeout=20),
    )
    key, uuid = secrets.token_hex(32), "f7826da6-4fa2-4e98-8024-bc5b71e0893e"
    broker = "mqtt://127.0.0.1:1883"
    if via == "bluez":
        text = daemon_config(plan, broker, adapter_names(scanners), key, [uuid], [])
    else:
        text = nodes_config(plan, broker, "espresense", scanners, key, [uuid], [])
    path = tmp_path / "proximity.toml"
    path.write_text(text)
    settings = load_settings(path)
    assert settings.presence.exit_timeout.total_seconds() == 20
    assert str(settings.ble.backend) == ("bleak" if via == "bluez" else "nodes")
    assert [n.node for n in settings.nodes] == ([] if via == "bluez" else scanners)


@pytest.mark.parametrize(
    ("node_format", "status", "heartbeat"),
    [
        ("espresense", "espresense/rooms/s-coffee/status", "espresense/rooms/s-coffee/telemetry"),
        ("omg", "home/s-coffee/LWT", "home/s-coffee/SYStoMQTT"),
    ],
)
async def test_third_party_nodes_publish_at_qos_0_as_their_firmware_does(
    node_format: NodeFormat, status: str, heartbeat: str, mosquitto: Mosquitto
) -> None:
    """ESPresense and OpenMQTTGateway publish everything at QoS 0 (their status and will
    included): a subscriber at QoS 1 gets each of the simulated node's messages at QoS 0,
    so the gateway has no PUBACK to send per reading, as with the real firmware."""
    everything = Subscriber(mosquitto.port, "#")
    node = make_node(
        node_format,
        "s-coffee",
        BrokerUrl.tcp("127.0.0.1", mosquitto.port),
        "store-001",
        NodeClock(SystemClock()),
        speed=100.0,  # a heartbeat every 50 ms
    )
    try:
        await node.up()
        await asyncio.sleep(0.3)
        await node.down()
        await asyncio.sleep(0.2)
    finally:
        everything.close()
    topics = {m.topic for m in everything.messages}
    assert {status, heartbeat} <= topics, topics
    assert [m.payload for m in everything.messages if m.topic == status] == [b"online", b"offline"]
    assert {m.qos for m in everything.messages} == {0}
