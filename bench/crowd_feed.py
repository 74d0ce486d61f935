"""The crowd in a process of its own, heard by the store's scanners as scanner nodes.

``python -m bench.crowd_feed --port PORT --speed X --hours H --for SECONDS`` plays the
crowd ``[ble.sim]`` would play in the daemon's own process (the same scenario, store,
shoppers, arrival window and seed: :meth:`CrowdBleBackend.from_settings`), each
advertisement at its time on a clock ``X`` times faster than real time, to the store
broker on ``127.0.0.1:PORT`` through one OpenMQTTGateway node per store scanner
(:class:`firmware_sim.nodes.OmgNode`: a message per advertisement, as the gateway's
radio would hand it over, which the daemon stamps when it arrives). So a daemon with
``ble.backend = "nodes"`` hears the same store as with the simulated backend, and its
process holds the daemon alone: the CPU it uses is its own, not the simulator's.

It prints one JSON line when its nodes are connected and it starts (``playing``) and
one when it stops (``played``: advertisements handed to nodes, messages published,
how far playback fell behind its schedule at worst), at the end of ``--for`` seconds,
of the crowd, or on SIGTERM. Used by bench/trading_day's store-speed runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from datetime import UTC, datetime, timedelta

from firmware_sim.crowd_backend import CrowdBleBackend
from firmware_sim.nodes import NodeClock, SimNode, make_node, totals
from proximity.clock import ScaledClock
from proximity.config import SimSettings
from proximity.delivery.url import BrokerUrl

STORE_ID = "store-001"


def _say(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


async def play(
    port: int, speed: float, hours: float, shoppers: int, seed: int, scenario: str, for_s: float
) -> None:
    sim = SimSettings.model_validate(
        {
            "scenario": scenario,
            "shoppers": shoppers,
            "seed": seed,
            "arrival_window": timedelta(hours=hours),
            "speed": speed,
        }
    )
    clock = ScaledClock(datetime.now(UTC), speed)
    crowd = CrowdBleBackend.from_settings(sim, clock).crowd
    url = BrokerUrl.parse(f"mqtt://127.0.0.1:{port}")
    nodes: dict[str, SimNode] = {}
    for scanner in (s.id for s in crowd.store.scanners):
        nodes[scanner] = make_node("omg", scanner, url, STORE_ID, NodeClock(clock), speed)
        await nodes[scanner].up()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    t0 = time.monotonic()
    _say("playing", nodes=sorted(nodes), speed=speed)
    sent, worst_lag = 0, 0.0
    try:
        for heard in crowd.heard():
            if heard.t / speed > for_s or stop.is_set():
                break
            wait = t0 + heard.t / speed - time.monotonic()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
                if stop.is_set():
                    break
            else:
                worst_lag = max(worst_lag, -wait)
            nodes[heard.scanner].hear(heard)
            sent += 1
            if sent % 256 == 0:
                await asyncio.sleep(0)  # let the signal handler run in a long burst
    finally:
        for node in nodes.values():
            await node.down()
    counts = totals(list(nodes.values()))
    _say(
        "played",
        seconds=round(time.monotonic() - t0, 3),
        heard=sent,
        messages=counts["messages"],
        unexpressed=counts["unexpressed"],
        max_lag_ms=round(worst_lag * 1000, 2),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.crowd_feed", description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="the store broker's port")
    parser.add_argument("--speed", type=float, required=True, help="times real time")
    parser.add_argument("--hours", type=float, required=True, help="the arrival window")
    parser.add_argument("--shoppers", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--scenario", default="crowded")
    parser.add_argument("--for", dest="for_s", type=float, required=True, help="real seconds")
    args = parser.parse_args(argv)
    asyncio.run(
        play(
            args.port,
            args.speed,
            args.hours,
            args.shoppers,
            args.seed,
            args.scenario,
            args.for_s,
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
