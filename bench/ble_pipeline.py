"""Advertisements per second through the whole BLE path on one core.

bleak AdvertisementData → iBeacon parse → identity → zone → RSSI smoothing →
presence/journey → rule decision, for many simulated shoppers walking the demo
store, compared with the physical ceiling of one scanner radio: about 2,660
legacy advertising PDUs per second on one channel at 1M PHY.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.report import Row, write
from firmware_sim.ble import SimulatedBleBackend
from firmware_sim.walk import builtin_walk, hear
from proximity.adapters.base import Advertisement
from proximity.adapters.ble.adapter import BeaconDecoder
from proximity.clock import VirtualClock
from proximity.engine.loader import load_rule_files
from proximity.engine.table import RuleTable
from proximity.identity.resolver import IdentityResolver
from proximity.pipeline import Pipeline
from proximity.presence.machine import PresenceConfig

RADIO_CEILING = 2660.0
ROOT = Path(__file__).resolve().parent.parent
START = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


def advertisements(shoppers: int) -> list[Advertisement]:
    """Every advertisement the scanners hear while ``shoppers`` walk the store, in time order."""
    walk = builtin_walk()
    out: list[Advertisement] = []
    for i in range(shoppers):
        phone = walk.phone.model_copy(
            update={"major": 1 + i // 0x7FFF, "minor": 0x8000 | (i % 0x7FFF)}
        )
        w = walk.model_copy(update={"phone": phone})
        backend = SimulatedBleBackend(w, VirtualClock(START), random.Random(i))
        offset = timedelta(seconds=i * 0.37)
        for heard in hear(w, random.Random(i)):
            out.append(
                Advertisement(
                    backend.device,
                    backend.advertisement_data(heard.rssi),
                    heard.scanner,
                    START + offset + timedelta(seconds=heard.offset),
                )
            )
    out.sort(key=lambda a: a.at)
    return out


def run_once(ads: list[Advertisement], table: RuleTable) -> tuple[float, int, int]:
    resolver = IdentityResolver([builtin_walk().phone.uuid], b"bench-pseudonym-key-0123456789")
    pipeline = Pipeline("store-001", table, resolver, PresenceConfig())
    decoder = BeaconDecoder()
    offers = events = 0
    next_tick = ads[0].at
    t0 = time.perf_counter()
    for adv in ads:
        if adv.at >= next_tick:
            for d in pipeline.tick(adv.at):
                events += 1
                offers += len(d.offers)
            next_tick = adv.at + timedelta(seconds=1)
        sighting = decoder.to_sighting(adv)
        if sighting is not None:
            for d in pipeline.on_sighting(sighting):
                events += 1
                offers += len(d.offers)
    return time.perf_counter() - t0, events, offers


def main() -> None:
    table = RuleTable.from_ruleset(load_rule_files([ROOT / "rules" / "example-store.toml"]))
    rows: list[Row] = []
    for shoppers in (10, 200):
        ads = advertisements(shoppers)
        best = min(run_once(ads, table)[0] for _ in range(3))
        _, events, offers = run_once(ads, table)
        rate = len(ads) / best
        rows.append(
            Row(
                f"{shoppers} shoppers, {len(ads):,} ads, {events} events, {offers} offers",
                "advertisements per second",
                "1/s",
                round(rate, 1),
                "one radio's ceiling (1M PHY, one channel)",
                RADIO_CEILING,
            )
        )
    write("ble_pipeline", rows)


if __name__ == "__main__":
    main()
