"""``proximity config check FILE``: every problem in a gateway config, before it is deployed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from proximity.cli.common import show_help
from proximity.config import BleBackendKind, Settings, load_settings
from proximity.errors import ConfigError, RuleFileError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def add_command(sub: Any, common: argparse.ArgumentParser) -> None:
    config = sub.add_parser("config", help="check a gateway config file")
    config.set_defaults(run_command=show_help(config))
    config_sub = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    check = config_sub.add_parser(
        "check",
        parents=[common],
        help="validate a config and what it points at; every problem at once",
        description="Validate FILE: every key and value (path:line:column: key: message), "
        "then the files it names: the rule files (loaded and checked as `proximity rules "
        "check` does), the segments CSV, the TLS files, the simulator walk and the floor "
        "plan (its geometry, every rule-file zone and every [[nodes]] scanner in it). Exit 0 "
        "if all is well, 1 otherwise.",
    )
    check.add_argument("file", type=Path, metavar="FILE")
    check.set_defaults(run_command=_check)


def _check(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.file)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAIL
    problems = _referenced_files(args.file, settings)
    plan = None
    if settings.presence.floor_plan is not None:
        from proximity.presence.floorplan import load_floor_plan

        try:
            plan = load_floor_plan(settings.presence.floor_plan)
        except ConfigError as exc:
            problems.append(str(exc))
    from proximity.wiring import load_table

    try:
        table = load_table(settings)
    except RuleFileError as exc:
        problems.append(str(exc))
        table = None
    except ConfigError as exc:
        problems.append(f"{args.file}: {exc}")
        table = None
    warnings: list[str] = []
    if plan is not None and table is not None:
        plan_path = settings.presence.floor_plan
        for zone_id, zone in table.ruleset.zones.items():
            if zone_id not in plan.zone_ids:
                problems.append(
                    f"{plan_path}: the rules' zone {zone_id!r} is not in the floor plan "
                    f"({', '.join(plan.zone_ids)}): no shopper would ever be placed in it"
                )
            for scanner in zone.scanners:
                if scanner not in plan.scanner_ids:
                    warnings.append(
                        f"warning: zone {zone_id!r} lists scanner {scanner!r}, which is not in "
                        f"the floor plan {plan_path}: with a floor plan the plan's scanners "
                        "place shoppers and a zone's scanners list is not needed"
                    )
    if plan is not None:
        for node in settings.nodes:
            if node.scanner_id not in plan.scanner_ids:
                problems.append(
                    f"{args.file}: nodes: {node.source} node {node.node!r} is scanner "
                    f"{node.scanner_id!r}, which is not in the floor plan "
                    f"{settings.presence.floor_plan} ({', '.join(plan.scanner_ids)}): "
                    "its readings would place nobody"
                )
    elif table is not None:
        zoned = {scanner for zone in table.ruleset.zones.values() for scanner in zone.scanners}
        for node in settings.nodes:
            if node.scanner_id not in zoned:
                warnings.append(
                    f"warning: {node.source} node {node.node!r} is scanner "
                    f"{node.scanner_id!r}, which no zone of the rules lists: its readings "
                    "place nobody (add it to a zone's scanners, or use a floor plan)"
                )
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return EXIT_FAIL
    assert table is not None
    readers = [r.id for r in settings.nfc] + [s.id for s in settings.scanners]
    unplaced = [r for r in readers if table.zone_for_reader(r) is None]
    print(
        f"{args.file}: ok — store {settings.store.id}, gateway {settings.store.gateway}, "
        f"broker {settings.broker.url}, BLE {settings.ble.backend}, "
        f"{len(table.rules)} rules (version {table.version}), "
        f"{len(settings.nfc)} NFC readers, {len(settings.scanners)} code scanners, "
        f"{len(settings.nodes)} remote scanner nodes"
    )
    if plan is not None:
        print(
            f"floor plan {plan.name}: {len(plan.zones)} zones, {len(plan.scanners)} scanners, "
            f"{len(plan.beacons)} reference beacons; presence method {settings.presence.method}"
        )
    for warning in warnings:
        print(warning, file=sys.stderr)
    for reader in unplaced:
        print(
            f"warning: reader {reader!r} is in no zone of the rules (add it to a zone's "
            "readers): its taps and scans have no zone",
            file=sys.stderr,
        )
    return EXIT_OK


def _referenced_files(config: Path, settings: Settings) -> list[str]:
    named: list[tuple[str, Path | None]] = [
        ("identity.segments", settings.identity.segments),
        ("broker.ca_file", settings.broker.ca_file),
        ("broker.client_cert", settings.broker.client_cert),
        ("broker.client_key", settings.broker.client_key),
        ("ble.sim.walk", settings.ble.sim.walk),
        (
            "ble.replay.file",
            settings.ble.replay.file if settings.ble.backend is BleBackendKind.REPLAY else None,
        ),
    ]
    problems = []
    for key, path in named:
        if path is not None and not path.is_file():
            problems.append(f"{config}: {key}: {path} does not exist or is not a file")
    for key, path in (
        ("delivery.outbox", settings.delivery.outbox),
        ("delivery.state", settings.delivery.state),
        ("measurement.store", settings.measurement.store),
        ("codes.used", settings.codes.used),
        ("events.record", settings.events.record),
        ("ble.record", settings.ble.record),
    ):
        if path is not None and not _writable_dir(path.parent):
            problems.append(f"{config}: {key}: cannot write in {path.parent}")
    return problems


def _writable_dir(folder: Path) -> bool:
    import os

    while not folder.exists():  # created on first use
        folder = folder.parent
    return folder.is_dir() and os.access(folder, os.W_OK)
