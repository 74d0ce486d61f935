"""Nodes over TLS: `proximity scan` and the gateway's node backend, both with the [broker]
TLS files, through a mosquitto that accepts TLS with a client certificate only."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from proximity.adapters.base import Advertisement
from proximity.adapters.ble.backends import nodes_backend
from proximity.adapters.nodes.backend import NodeBackend
from proximity.cli.scan_cmd import scan
from proximity.clock import SystemClock
from proximity.config import Settings
from tests.mosquitto import Mosquitto, eventually
from tests.test_nodes_scan import recording
from tests.test_tls import make_ca, make_cert, tls_mosquitto


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("pki")
    make_ca("store-ca", tmp)
    make_cert("broker", "store-ca", tmp, ip=True)
    make_cert("gateway", "store-ca", tmp)
    make_cert("node", "store-ca", tmp)
    return tmp


@pytest.fixture
def tls_broker(pki: Path, tmp_path: Path) -> Iterator[Mosquitto]:
    broker = tls_mosquitto(pki, tmp_path)
    broker.start()
    yield broker
    broker.stop()


def tls(pki: Path, port: int, cert: str) -> dict[str, str]:
    return {
        "url": f"mqtts://127.0.0.1:{port}",
        "ca_file": str(pki / "store-ca.crt"),
        "client_cert": str(pki / f"{cert}.crt"),
        "client_key": str(pki / f"{cert}.key"),
    }


async def test_a_node_and_the_gateway_over_tls(
    tls_broker: Mosquitto, pki: Path, tmp_path: Path
) -> None:
    gateway_settings = Settings.model_validate(
        {
            "broker": tls(pki, tls_broker.port, "gateway"),
            "ble": {"backend": "nodes"},
            "nodes": [{"source": "ours", "node": "pi-1", "scanner": "gw-coffee"}],
        }
    )
    node_settings = Settings.model_validate(
        {
            "broker": tls(pki, tls_broker.port, "node"),
            "ble": {
                "backend": "replay",
                "replay": {"file": str(recording(tmp_path / "r.jsonl", 5)), "linger": "10ms"},
            },
            "scan": {"node": "pi-1"},
        }
    )
    clock = SystemClock()
    gateway = nodes_backend(gateway_settings, clock)
    assert isinstance(gateway, NodeBackend)
    assert gateway.brokers[0].tls is not None
    received: list[Advertisement] = []

    async def collect() -> None:
        async for adv in gateway.advertisements():
            received.append(adv)

    async with gateway:
        await eventually(lambda: gateway.scanning)
        collecting = asyncio.create_task(collect())
        stats = await asyncio.wait_for(scan(node_settings, "pi-1"), 15)
        await eventually(lambda: len(received) == 5)
        collecting.cancel()
    assert stats.sent == 5
    assert {adv.scanner for adv in received} == {"gw-coffee"}
