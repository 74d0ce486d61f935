"""``proximity inspect presence``: why the floor-plan presence placed shoppers where it did.

A readings recording (``[ble] record``, or ``python -m firmware_sim run
--record-readings``) is played on virtual time through the pipeline the config's
``[presence]`` builds (``method = "fused"`` or ``"nearest"`` with a floor plan); each
zone enter and exit is printed with the shopper's posterior at that instant (zone →
probability), the estimator's reasons, and with ``fused`` where enough scanners hear
each phone, how much louder than the store's other phones it is heard (``phone``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from proximity.config import Settings, load_settings
from proximity.engine.decide import Decision
from proximity.errors import ConfigError, RuleFileError
from proximity.events import EventKind

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def add_inspect_presence(inspect_sub: Any, common: argparse.ArgumentParser) -> None:
    presence = inspect_sub.add_parser(
        "presence",
        parents=[common],
        help="replay a readings recording and show each zone change with its posterior",
        description="Play RECORDING (a readings recording) on virtual time through the "
        "presence of --config (method fused, nearest or multilateration, with its floor "
        "plan) and print every zone enter and exit with the shopper's posterior: "
        "zone -> probability.",
    )
    presence.add_argument("recording", type=Path, metavar="RECORDING")
    presence.add_argument("--config", type=Path, required=True, help="the gateway config")
    presence.add_argument("--shopper", help="only this shopper token")
    presence.add_argument("--json", action="store_true", help="one JSON object per line")
    presence.set_defaults(run_command=_inspect)


def _inspect(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAIL
    if settings.presence.method == "threshold":
        print(
            f"{args.config}: presence.method is threshold: inspect presence shows the "
            "posterior of a floor-plan method (with presence.floor_plan)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        return asyncio.run(_replay(settings, args))
    except (ConfigError, RuleFileError) as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAIL


async def _replay(settings: Settings, args: argparse.Namespace) -> int:
    from proximity.adapters.ble.adapter import BeaconDecoder, BleAdapter
    from proximity.adapters.ble.replay import ReplayBleBackend, recording_start
    from proximity.clock import VirtualClock
    from proximity.identity.resolver import IdentityResolver
    from proximity.pipeline import Pipeline
    from proximity.wiring import load_table

    identity = settings.identity
    resolver = IdentityResolver(
        identity.app_uuids,
        identity.pseudonym_key.get_secret_value().encode(),
        anonymous_uuids=identity.anonymous_uuids,
        anonymous_namespaces=[bytes.fromhex(n) for n in identity.anonymous_namespaces],
    )
    pipeline = Pipeline.for_presence(
        settings.store.id, load_table(settings), resolver, settings.presence
    )
    start = recording_start(args.recording)
    clock = VirtualClock(start)
    backend = ReplayBleBackend(args.recording, clock)
    decoder = BeaconDecoder(monotonic=lambda: (clock.now() - start).total_seconds())
    adapter = BleAdapter(backend, decoder)
    tick = settings.presence.tick
    next_tick = start + tick
    changes = 0

    def show(decisions: list[Decision], now: datetime) -> None:
        nonlocal changes
        for decision in decisions:
            event = decision.event
            if event.kind not in (EventKind.ZONE_ENTER, EventKind.ZONE_EXIT):
                continue
            token = event.shopper.token
            if args.shopper is not None and token != args.shopper:
                continue
            changes += 1
            posterior = pipeline.tracker.posterior(token) or {}
            rounded = {zone: round(p, 3) for zone, p in posterior.items()}
            offset = pipeline.tracker.phone_offset(token)
            if args.json:
                line: dict[str, Any] = {
                    "at": event.at.isoformat(),
                    "shopper": token,
                    "kind": str(event.kind),
                    "zone": event.zone,
                    "posterior": rounded,
                }
                if offset is not None:
                    line["phone_offset_db"] = round(offset, 1)
                print(json.dumps(line))
            else:
                seconds = (event.at - start).total_seconds()
                reasons = "  ".join(
                    f"{zone} {p:.2f}" for zone, p in sorted(rounded.items(), key=lambda i: -i[1])
                )
                phone = "" if offset is None else f"  (phone {offset:+.1f} dB)"
                print(
                    f"{seconds:8.1f} s  {token}  {event.kind!s:10} {event.zone:16} {reasons}{phone}"
                )

    last = start
    async with adapter.backend:
        async for sighting in adapter.readings():
            while next_tick <= sighting.at:
                show(pipeline.tick(next_tick), next_tick)
                next_tick += tick
            show(pipeline.on_sighting(sighting), sighting.at)
            last = max(last, sighting.at)
    end = last + settings.presence.visit_timeout + settings.presence.exit_timeout + 2 * tick
    while next_tick <= end:
        show(pipeline.tick(next_tick), next_tick)
        next_tick += tick
    show(pipeline.close(end), end)
    print(
        f"{args.recording}: {backend.replayed} readings, {changes} zone changes "
        f"(method {settings.presence.method})",
        file=sys.stderr,
    )
    return EXIT_OK
