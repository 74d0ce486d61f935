"""``proximity scan``: a node's radio through a real mosquitto into the gateway's node backend.

The node's radio here is a readings recording (``ble.backend = "replay"``): the same
backend interface as bleak, so what `proximity scan` does with a Pi's radio it does here.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import pytest
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from proximity.adapters.base import Advertisement
from proximity.adapters.ble.ibeacon import IBeacon, build_ibeacon, parse_ibeacon
from proximity.adapters.ble.recording import header_line, reading_line
from proximity.adapters.nodes.backend import NodeBackend, NodeBroker
from proximity.adapters.nodes.ingest import NodeSpec
from proximity.cli.main import main
from proximity.cli.scan_cmd import scan
from proximity.clock import SystemClock
from proximity.config import Settings
from proximity.service import _serve
from proximity.wiring import build_runtime
from tests.factories import APP_UUID
from tests.mosquitto import Mosquitto, Subscriber, eventually


def recording(path: Path, count: int) -> Path:
    """``count`` readings of one phone, 10 ms apart, starting now."""
    start = SystemClock().now()
    lines = [header_line(start)]
    for i in range(count):
        frame = build_ibeacon(IBeacon(APP_UUID, 1, i, -59))
        adv = Advertisement(
            BLEDevice("00:00:00:00:00:00", None, None),
            AdvertisementData(None, {0x004C: frame}, {}, [], None, -60 - i % 10, ()),
            "hci0",
            start + timedelta(milliseconds=10 * i),
        )
        lines.append(reading_line(adv, f"dev-{i:012x}"))
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_proximity_scan_publishes_what_its_radio_hears(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    settings = Settings.model_validate(
        {
            "store": {"id": "store-001"},
            "broker": {"url": str(mosquitto.url)},
            "ble": {
                "backend": "replay",
                "replay": {"file": str(recording(tmp_path / "r.jsonl", 30)), "linger": "10ms"},
            },
            "scan": {"node": "pi-7", "batch": 8},
        }
    )
    clock = SystemClock()
    spec = NodeSpec("ours", "pi-7", "gw-coffee")
    gateway = NodeBackend("store-001", [NodeBroker(mosquitto.url, (spec,))], clock)
    received: list[Advertisement] = []

    async def collect() -> None:
        async for adv in gateway.advertisements():
            received.append(adv)

    async with gateway:
        await eventually(lambda: gateway.scanning)
        collecting = asyncio.create_task(collect())
        stats = await asyncio.wait_for(
            scan(settings, "pi-7"), 15
        )  # the recording ends: so does scan
        await eventually(lambda: len(received) == 30)
        await eventually(lambda: gateway.ingest.alive("gw-coffee") is False)  # said offline
        collecting.cancel()
    assert (stats.heard, stats.sent, stats.dropped) == (30, 30, 0)
    minors = [parse_ibeacon(adv.data.manufacturer_data[0x004C]).minor for adv in received]
    assert minors == list(range(30))
    assert {adv.scanner for adv in received} == {"gw-coffee"}
    assert gateway.ingest.nodes[("ours", "pi-7")].batches >= 4


@pytest.mark.parametrize(
    ("text", "args", "message"),
    [
        ('[broker]\nurl = "mqtt://127.0.0.1:1"\n', [], "no node name"),
        ("[scan]\nnode = 'pi-1'\n", [], "a node publishes to the store broker"),
        (
            '[broker]\nurl = "mqtt://127.0.0.1:1"\n[ble]\nbackend = "nodes"\n'
            '[[nodes]]\nsource = "ours"\nnode = "x"\n',
            ["--node", "pi-1"],
            "a node scans a radio",
        ),
    ],
)
def test_scan_says_what_its_config_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, args: list[str], message: str
) -> None:
    config = tmp_path / "node.toml"
    config.write_text(text)
    assert main(["scan", "--config", str(config), *args]) == 2
    assert message in capsys.readouterr().err


async def test_proximity_scan_into_proximity_run_gives_the_offer(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The whole chain: a node's radio -> `proximity scan` -> mosquitto -> `proximity run`
    (its serving path) -> the shopper placed at the entrance and the entrance offer on the
    broker."""
    gateway_settings = Settings.model_validate(
        {
            "store": {"id": "store-001"},
            "broker": {"url": str(mosquitto.url)},
            "ble": {"backend": "nodes"},
            "nodes": [{"source": "ours", "node": "pi-entrance", "scanner": "gw-entrance"}],
            "rules": {"watch": False},
            "metrics": {"enabled": False},
        }
    )
    start = SystemClock().now()
    lines = [header_line(start)]
    frame = build_ibeacon(IBeacon(APP_UUID, 1, 0x8001, -59))  # a consenting app install
    for i in range(20):
        adv = Advertisement(
            BLEDevice("00:00:00:00:00:00", None, None),
            AdvertisementData(None, {0x004C: frame}, {}, [], None, -55, ()),
            "hci0",
            start + timedelta(milliseconds=50 * i),
        )
        lines.append(reading_line(adv, "dev-00000000aa01"))
    radio = tmp_path / "radio.jsonl"
    radio.write_text("\n".join(lines) + "\n")
    node_settings = Settings.model_validate(
        {
            "store": {"id": "store-001"},
            "broker": {"url": str(mosquitto.url)},
            "ble": {"backend": "replay", "replay": {"file": str(radio), "linger": "10ms"}},
            "scan": {"node": "pi-entrance"},
        }
    )
    sub = Subscriber(mosquitto.port, "proximity/v1/store-001/#")
    runtime = build_runtime(gateway_settings, SystemClock())
    stop = asyncio.Event()
    daemon = asyncio.create_task(_serve(gateway_settings, runtime, stop, None))
    try:
        await eventually(lambda: getattr(runtime.adapter.backend, "scanning", False))
        stats = await asyncio.wait_for(scan(node_settings, "pi-entrance"), 15)
        await eventually(lambda: offers(sub) == ["welcome-directions"])
    finally:
        stop.set()
        await asyncio.wait_for(daemon, 15)
        sub.close()
    assert stats.sent == 20
    entered = [
        event["zone"]
        for event in map(json.loads, sub.payloads("/events"))
        if event["kind"] == "zone.enter"
    ]
    assert entered == ["entrance"]


def offers(sub: Subscriber) -> list[str]:
    return [json.loads(payload)["rule"] for payload in sub.payloads("/offers")]
