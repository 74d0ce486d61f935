"""NFC tap-to-reading latency through the real nfcpy stack, against raw nfcpy.

The emulated Type 3 tag (``firmware_sim.nfc.TagEmulator``) carries one URI
record on a loopback UDP port. Both sides open nfcpy's ``udp:`` reader on it:

- Proximity: ``NfcAdapter`` (0.2 s debounce, default polling), time from
  ``emulator.present()`` to the ``NfcTap`` coming out of ``adapter.taps()`` in the
  event loop: the worker's sense round, activation, NDEF read, UID hash, tap
  validation and the hop into the loop;
- the peer: a thread looping nfcpy's own ``ContactlessFrontend.connect(rdwr=...)``
  (one sense per round, as the adapter does, and no pause between rounds) whose
  ``on-connect`` reads ``tag.ndef.records`` and hands the URI over a queue; time from
  ``present()`` to the main thread getting it.

On the UDP driver a sense round that meets no tag waits a full second for an
answer, so a tap's latency is mostly where in that round the tag arrives. Each
tap is presented at a different point of the reader's round (stratified over one
round, in a seeded order, the same order for both sides) after the previous one
was removed and released, so both sides are sampled over the whole round.

The adapter's round is 1.1 s (it pauses ``poll_interval``, 0.1 s, in nfcpy's
``terminate`` callback before each sense), the peer's 1.0 s, so about 50 ms of
the difference in mean latency is that pause. With taps 1/18 of a round apart,
p50 and mean also depend on where the samples fall against the round, which
shifts with how soon the reader noticed the last removal: they move by up to
about 60 ms between runs. The last row takes the round out: from the tag's
activation (``on-connect`` entered; for the adapter, the tap's ``at``, taken
first thing there, on the wall clock as the peer's) to the reading in hand.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import random
import socket
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nfc

from bench.report import Row, write
from firmware_sim.nfc import TagEmulator
from proximity.adapters.nfc.adapter import UDP_TARGETS, NfcAdapter
from proximity.adapters.nfc.ndef import build_ndef, uri_record
from proximity.clock import SystemClock
from proximity.logsetup import configure_logging

TAPS = 18
URL = "https://shop.example/p/4242"
KEY = b"gateway-secret-key-for-bench-0001"
DEBOUNCE = 0.2
POLL_INTERVAL = 0.1
"""The adapter's default pause between sense rounds (its ``terminate`` wait)."""
SENSE_ROUND = 1.0
"""How long nfcpy's UDP driver waits for a tag to answer a sense request."""
SETTLE = 0.35
"""After a removal: the reader notices it (about 0.1 s) and the debounce runs out."""
WAIT = 5.0
"""Longest a tap may take before the run is called broken."""


def udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def phases(seed: int) -> list[float]:
    """Where in the reader's round each tap lands: stratified over [0, 1), shuffled."""
    points = [(i + 0.5) / TAPS for i in range(TAPS)]
    random.Random(seed).shuffle(points)
    return points


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)
    """Present to reading, ms."""
    after_activation: list[float] = field(default_factory=list)
    """From the tag's activation (``on-connect`` called) to the reading, ms: the NDEF read
    and everything after it, whatever the phase of the sense round."""
    debounced: int = 0
    """Presentations folded into an earlier tap (there should be none)."""


async def ours(tag: TagEmulator, round_s: float) -> Run:
    adapter = NfcAdapter(
        tag.path,
        "bench",
        KEY,
        SystemClock(),
        debounce=DEBOUNCE,
        poll_interval=POLL_INTERVAL,
    )
    run = Run()
    async with adapter:
        taps = adapter.taps()
        await asyncio.sleep(SETTLE)  # the reader is open and sensing
        for phase in phases(seed=7):
            await asyncio.sleep(phase * round_s)
            t0 = time.perf_counter()
            tag.present()
            tap = await asyncio.wait_for(anext(taps), WAIT)
            run.latencies.append((time.perf_counter() - t0) * 1000)
            # the tap's time is taken as on-connect starts, on the wall clock
            run.after_activation.append((time.time() - tap.at.timestamp()) * 1000)
            if tap.ndef is None or tap.ndef.uris != (URL,):
                raise RuntimeError(f"unexpected tap: {tap}")
            await asyncio.to_thread(tag.remove)
            await asyncio.sleep(SETTLE)
        run.debounced = adapter.debounced
    return run


def raw(tag: TagEmulator, round_s: float) -> Run:
    """The same through nfcpy alone."""
    readings: queue.Queue[tuple[str, float]] = queue.Queue()
    stop = threading.Event()

    def on_connect(found: Any) -> bool:
        activated = time.time()
        readings.put((found.ndef.records[0].uri, activated))
        return True

    options: dict[str, object] = {"targets": list(UDP_TARGETS), "iterations": 1}
    options["on-connect"] = on_connect
    worker = threading.Thread(target=read_until(tag.path, options, stop.is_set), daemon=True)
    worker.start()
    run = Run()
    try:
        time.sleep(SETTLE)
        for phase in phases(seed=7):
            time.sleep(phase * round_s)
            t0 = time.perf_counter()
            tag.present()
            uri, activated = readings.get(timeout=WAIT)
            run.latencies.append((time.perf_counter() - t0) * 1000)
            run.after_activation.append((time.time() - activated) * 1000)
            if uri != URL:
                raise RuntimeError(f"unexpected reading: {uri}")
            tag.remove()
            time.sleep(SETTLE)
    finally:
        stop.set()
        worker.join(WAIT)
    return run


def read_until(
    path: str, options: dict[str, object], stop: Callable[[], bool]
) -> Callable[[], None]:
    def work() -> None:
        frontend = nfc.ContactlessFrontend(path)
        try:
            while not stop():
                frontend.connect(rdwr=options, terminate=stop)
        finally:
            frontend.close()

    return work


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def main() -> None:
    configure_logging("warning")
    logging.getLogger("nfc").setLevel(logging.WARNING)  # nfcpy sets INFO on itself
    message = build_ndef([uri_record(URL)])
    started = time.perf_counter()
    tag = TagEmulator(udp_port(), message)  # off the reader until each tap
    try:
        mine = asyncio.run(ours(tag, SENSE_ROUND + POLL_INTERVAL))
    finally:
        tag.remove()
    tag = TagEmulator(udp_port(), message)
    try:
        peer = raw(tag, SENSE_ROUND)
    finally:
        tag.remove()
    print(
        f"{TAPS} taps each in {time.perf_counter() - started:.0f} s; "
        f"debounced by mistake: {mine.debounced}"
    )
    base = "raw nfcpy connect(rdwr)"
    rows = [
        Row(
            f"{TAPS} taps, p50 present to reading",
            "latency",
            "ms",
            round(statistics.median(mine.latencies), 1),
            base,
            round(statistics.median(peer.latencies), 1),
            higher_is_better=False,
        ),
        Row(
            f"{TAPS} taps, p95",
            "latency",
            "ms",
            round(p95(mine.latencies), 1),
            base,
            round(p95(peer.latencies), 1),
            higher_is_better=False,
        ),
        Row(
            f"{TAPS} taps, max",
            "latency",
            "ms",
            round(max(mine.latencies), 1),
            base,
            round(max(peer.latencies), 1),
            higher_is_better=False,
        ),
        Row(
            f"{TAPS} taps, mean",
            "latency",
            "ms",
            round(statistics.fmean(mine.latencies), 1),
            base,
            round(statistics.fmean(peer.latencies), 1),
            higher_is_better=False,
        ),
        Row(
            f"{TAPS} taps, p50 activation to reading (NDEF read on)",
            "latency",
            "ms",
            round(statistics.median(mine.after_activation), 2),
            base,
            round(statistics.median(peer.after_activation), 2),
            higher_is_better=False,
        ),
    ]
    write("nfc_tap", rows)


if __name__ == "__main__":
    main()
