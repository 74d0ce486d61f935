"""``proximity scan``: this machine as a remote scanner node, publishing what it hears.

No rules, no identity keys, no decisions: the radio (``[ble]``, bleak with its
watchdog) in, batches of raw advertisements out to the store broker (``[broker]``),
as node ``[scan] node`` of ``[store] id`` (docs/nodes.md). SIGINT/SIGTERM stop it:
what is waiting is sent, then its status says ``offline``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

from proximity import __version__
from proximity.adapters.nodes.sender import NodeSender, SenderStats
from proximity.clock import Clock, SystemClock
from proximity.config import BleBackendKind, Settings, load_settings
from proximity.delivery._bridge import TlsFiles
from proximity.errors import ConfigError
from proximity.logsetup import configure_logging

EXIT_OK, EXIT_USAGE = 0, 2


def add_command(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "scan",
        parents=[common],
        help="run as a remote scanner node: publish what the radio hears to the store broker",
        description="Scan with [ble] (bleak on a Pi) and publish every advertisement heard to "
        "[broker] on proximity/v1/{store}/nodes/{node}/readings, in batches, with a retained "
        "status and an MQTT will; the gateway reads it through its [[nodes]] (docs/nodes.md). "
        "SIGINT/SIGTERM stop it cleanly.",
    )
    parser.add_argument("--config", type=Path, required=True, help="the node's TOML config")
    parser.add_argument("--node", metavar="NAME", help="override scan.node from the config")
    parser.add_argument("--broker", metavar="URL", help="override broker.url from the config")
    parser.set_defaults(run_command=_run)


def _run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config).with_broker(args.broker)
    node = args.node or settings.scan.node
    try:
        check(settings, node)
    except ConfigError as exc:
        print(f"proximity scan: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    assert node is not None
    configure_logging(
        args.log_level or settings.logging.level, args.log_format or settings.logging.format
    )
    asyncio.run(scan(settings, node, install_signals=True))
    return EXIT_OK


def check(settings: Settings, node: str | None) -> None:
    """ConfigError if ``settings`` cannot run a node named ``node``."""
    if node is None:
        raise ConfigError("no node name: set scan.node in the config or pass --node")
    if settings.broker.url.is_embedded:
        raise ConfigError(
            "a node publishes to the store broker: set broker.url (mqtt://… or mqtts://…)"
        )
    if settings.ble.backend is BleBackendKind.NODES:
        raise ConfigError('a node scans a radio: ble.backend = "nodes" is for the gateway')


async def scan(
    settings: Settings,
    node: str,
    stop: asyncio.Event | None = None,
    clock: Clock | None = None,
    install_signals: bool = False,
) -> SenderStats:
    """Scan and publish until ``stop`` (or a signal) or until the radio's stream ends."""
    from proximity.wiring import ble_backends

    check(settings, node)
    stop = stop or asyncio.Event()
    if install_signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    clock = clock or SystemClock()
    broker = settings.broker
    scan_settings = settings.scan
    sender = NodeSender(
        ble_backends(settings).make(settings.ble, clock),
        broker.url,
        store=settings.store.id,
        node=node,
        clock=clock,
        client_id=broker.client_id or f"proximity-node-{node}",
        protocol=settings.mqtt_protocol(),
        tls=TlsFiles(
            ca_file=None if broker.ca_file is None else str(broker.ca_file),
            cert_file=None if broker.client_cert is None else str(broker.client_cert),
            key_file=None if broker.client_key is None else str(broker.client_key),
        ),
        window_s=scan_settings.window.total_seconds(),
        batch_max=scan_settings.batch,
        buffer_max=scan_settings.buffer,
        heartbeat_s=scan_settings.heartbeat.total_seconds(),
        version=__version__,
        publish_timeout=broker.publish_timeout.total_seconds(),
    )
    return await sender.run(stop)
