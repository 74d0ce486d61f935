"""The simulator at scale: a full store of 1,000 shoppers advertising at 10 Hz, on one core.

Issue #7 asks for "a crowd of 1,000 shoppers advertising at 10 Hz simulated
faster than real time on one core". The crowd is :func:`firmware_sim.crowd.full_store`
on the example store (4 ceiling scanners, its fixed beacons): every shopper is on
the floor for the whole run, part-way through a visit, rather than trickling in
over an hour. In one run, from one seed (so the same advertisements each time),
this measures:

- **simulator**: :meth:`Crowd.heard` alone, the advertising queue and the radio
  model per scanner (path loss, shadowing, fading, body blocking, loss);
- **simulator → bleak**: the same through :class:`CrowdBleBackend` on a
  :class:`VirtualClock`, i.e. also building bleak ``AdvertisementData`` objects and
  moving the clock, what the BLE adapter consumes;
- **simulator + pipeline**: :func:`firmware_sim.harness.run_in_process`, the whole
  in-process run: the BLE adapter's decoder, identity, presence, journey and rules,
  ticked every second of store time.

Each is reported as advertisements per second and as a real-time factor (store
seconds per wall second), compared with real time (1×, the bar the issue sets).
The pipeline run counts sightings too: the decoder admits new identities at 50/s
after a burst of 200 (its flood defence), so in the first ~16 s of a store that
fills at once most phones are refused, which lightens the pipeline's load there.

The simulator alone runs ``SECONDS`` (60) of store time; the two slower cases
``STACK_SECONDS`` (30), so the benchmark takes about a minute.

``python -m bench.sim_scale [--shoppers N] [--rate HZ] [--seconds S] [--stack-seconds S]
[--profile]``; ``--profile`` prints a cProfile of the simulator alone.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from bench.report import Row, write
from firmware_sim.crowd import Crowd, CrowdParams, full_store
from firmware_sim.crowd_backend import CrowdBleBackend
from firmware_sim.harness import demo_resolver, load_table, run_in_process
from firmware_sim.radio import RadioModel
from firmware_sim.store import Store, builtin_store
from proximity.clock import VirtualClock

NAME = "sim_scale"
SHOPPERS = 1000
RATE_HZ = 10.0
SECONDS = 60.0
"""Store time of the simulator-alone case (the issue's bar)."""
STACK_SECONDS = 30.0
"""Store time of the cases through bleak objects and the pipeline, which are slower: the
whole benchmark stays around a minute of wall time."""
SEED = 7
START = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
REAL_TIME = 1.0


@dataclass(frozen=True)
class Measured:
    wall_s: float
    advertised: int
    """Advertisements sent (phones, carts, fixed beacons)."""
    heard: int
    """Receptions: an advertisement heard by one scanner."""
    sightings: int | None = None
    """Sightings the decoder passed to the pipeline (the pipeline run only)."""


def make_crowd(store: Store, shoppers: int, rate_hz: float, seconds: float) -> Crowd:
    """The benchmark's crowd: the same seed, the same advertisements, every call."""
    radio = RadioModel(store.radio, random.Random(f"{SEED}:radio"))
    params = CrowdParams(shoppers=shoppers, interval_s=1 / rate_hz)
    planned = full_store(store, params, random.Random(f"{SEED}:plan"), radio, seconds)
    return Crowd(store, planned, radio, random.Random(f"{SEED}:advertising"))


def _sent(crowd: Crowd) -> int:
    return crowd.advertised + crowd.device_advertised


def measure_simulator(crowd: Crowd) -> Measured:
    gc.collect()
    heard = 0
    wall = time.perf_counter()
    for _ in crowd.heard():
        heard += 1
    return Measured(time.perf_counter() - wall, _sent(crowd), heard)


async def _drain(backend: CrowdBleBackend) -> int:
    count = 0
    async with backend:
        async for _ in backend.advertisements():
            count += 1
    return count


def measure_backend(crowd: Crowd) -> Measured:
    gc.collect()
    backend = CrowdBleBackend(crowd, VirtualClock(START), START)
    wall = time.perf_counter()
    heard = asyncio.run(_drain(backend))
    return Measured(time.perf_counter() - wall, _sent(crowd), heard)


def measure_pipeline(crowd: Crowd) -> Measured:
    gc.collect()
    table, resolver = load_table(), demo_resolver()
    result = asyncio.run(run_in_process(crowd, table, resolver, start=START))
    heard = crowd.heard_count + crowd.device_heard
    return Measured(result.wall_s, _sent(crowd), heard, result.sightings)


def rows_for(crowd: str, label: str, got: Measured, seconds: float) -> list[Row]:
    """Real-time factor against real time; then throughput (no baseline)."""
    rtf = seconds / got.wall_s
    case = f"{crowd}: {label}, store s per wall s"
    rows = [Row(case, "real-time factor", "x", round(rtf, 2), "real time", REAL_TIME)]
    if got.sightings is None:
        rows.append(
            Row(
                f"{crowd}: {label}, advertisements sent per second",
                "throughput",
                "1/s",
                round(got.advertised / got.wall_s),
            )
        )
    else:
        rows.append(
            Row(
                f"{crowd}: {label}, sightings into the pipeline per second",
                "throughput",
                "1/s",
                round(got.sightings / got.wall_s),
            )
        )
    return rows


def run(
    shoppers: int = SHOPPERS,
    rate_hz: float = RATE_HZ,
    seconds: float = SECONDS,
    stack_seconds: float = STACK_SECONDS,
    profile: bool = False,
) -> list[Row]:
    """Measure the three cases, print the table, write ``bench/out/sim_scale.json``."""
    store = builtin_store()
    crowd = f"{shoppers:,} shoppers at {rate_hz:g} Hz, {len(store.scanners)} scanners"
    print(
        f"{crowd}, {len(store.beacons)} fixed beacons, every shopper on the floor throughout",
        flush=True,
    )
    sim = measure_simulator(make_crowd(store, shoppers, rate_hz, seconds))
    print(
        f"  simulator, {seconds:g} s: {sim.advertised:,} sent, {sim.heard:,} heard "
        f"in {sim.wall_s:.1f} s",
        flush=True,
    )
    ble = measure_backend(make_crowd(store, shoppers, rate_hz, stack_seconds))
    print(
        f"  simulator → bleak, {stack_seconds:g} s: {ble.heard:,} AdvertisementData "
        f"in {ble.wall_s:.1f} s",
        flush=True,
    )
    pipe = measure_pipeline(make_crowd(store, shoppers, rate_hz, stack_seconds))
    print(
        f"  simulator + pipeline, {stack_seconds:g} s: {pipe.heard:,} heard, "
        f"{pipe.sightings:,} admitted by the decoder (new identities 50/s after a burst "
        f"of 200) in {pipe.wall_s:.1f} s",
        flush=True,
    )
    short = f"{shoppers:,} shoppers × {rate_hz:g} Hz"
    rows = (
        rows_for(short, f"simulator ({seconds:g} s)", sim, seconds)
        + rows_for(short, f"simulator → bleak objects ({stack_seconds:g} s)", ble, stack_seconds)[
            :1
        ]
        + rows_for(short, f"simulator + whole pipeline ({stack_seconds:g} s)", pipe, stack_seconds)
    )
    write(NAME, rows)
    if profile:
        profiler = cProfile.Profile()
        profiled = make_crowd(store, shoppers, rate_hz, seconds)
        profiler.runcall(measure_simulator, profiled)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m bench`` calls this with no arguments: the issue's full-size run."""
    parser = argparse.ArgumentParser(prog="python -m bench.sim_scale", description=__doc__)
    parser.add_argument("--shoppers", type=int, default=SHOPPERS)
    parser.add_argument("--rate", type=float, default=RATE_HZ, help="advertisements/s a phone")
    parser.add_argument(
        "--seconds", type=float, default=SECONDS, help="store time, simulator alone"
    )
    parser.add_argument(
        "--stack-seconds",
        type=float,
        default=STACK_SECONDS,
        help="store time through bleak objects and through the pipeline",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the simulator alone")
    args = parser.parse_args(list(argv or []))
    run(args.shoppers, args.rate, args.seconds, args.stack_seconds, args.profile)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
