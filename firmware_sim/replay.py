"""Recording raw readings in the simulator, and replaying a recording through the pipeline.

``python -m firmware_sim run --record-readings FILE`` tees the crowd's
advertisements into a readings recording (:mod:`proximity.adapters.ble.recording`)
on their way to the decoder; ``python -m firmware_sim replay FILE`` plays a
recording — the simulator's or a store's (``[ble] record``) — through the real
decoder and :class:`Pipeline` in process, ticked as :func:`run_in_process` ticks
a live crowd, so a recording replays to the same journey events as its run.
The shoppers' acts of a run (NFC taps and code scans: cart bindings, check-ins,
coupons) are recorded beside the advertisements, and the replay plays them through
the same path as the run (``pipeline.on_tap``, ``on_scan``) at their instants, with
a code verifier on the replay's clock and the ``[codes]`` keys of ``--config`` (the
demo's by default, as the run's): the replay binds the same carts and redeems the
same coupons. The same replay into the daemon is ``proximity run`` with ``[ble]
backend = "replay"``, which plays the advertisements only (it passes the acts over).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TextIO

from firmware_sim.acts import ReaderReading
from firmware_sim.beacons import CART_UUID
from firmware_sim.harness import ReadingsAgenda, Tally, demo_resolver, drive, load_table
from proximity.adapters.base import BleBackend
from proximity.adapters.ble.adapter import BeaconDecoder, BleAdapter
from proximity.adapters.ble.recording import ReadingRecorder
from proximity.adapters.ble.replay import ReplayBleBackend, recorded_acts, recording_start
from proximity.adapters.ble.rotating import RotatingResolver
from proximity.clock import Clock, ScaledClock, VirtualClock
from proximity.codes import Verifier
from proximity.config import CodeSettings, PresenceSettings, load_settings
from proximity.engine.decide import Decision
from proximity.engine.table import RuleTable
from proximity.identity.keys import ShopperKeys, load_shopper_keys
from proximity.identity.resolver import IdentityResolver
from proximity.journey.record import JourneyRecorder
from proximity.measurement.feedback import FeedbackDesk
from proximity.pipeline import Pipeline


class ReadingsTee:
    """Wraps a simulated backend in a :class:`ReadingRecorder` writing to ``path``
    (``run_in_process(tee=...)``), and remembers it to report what it wrote.

    The alias key comes from the seed, so the same seed writes the same file (the
    simulated phones are nobody; a daemon draws a secret key per session).
    """

    def __init__(self, path: Path, clock: Clock, seed: int) -> None:
        self.path = path
        self._clock = clock
        self._key = hashlib.sha256(f"{seed}:readings-aliases".encode()).digest()
        self.recorder: ReadingRecorder | None = None

    def __call__(self, backend: BleBackend) -> BleBackend:
        self.recorder = ReadingRecorder(backend, self.path, self._clock, key=self._key)
        return self.recorder

    @property
    def written(self) -> int:
        return self.recorder.written if self.recorder is not None else 0

    @property
    def acts_written(self) -> int:
        return self.recorder.acts_written if self.recorder is not None else 0

    def record_act(self, reading: ReaderReading) -> None:
        """``run_in_process(record_acts=...)``: a shopper's tap or scan, into the file."""
        if self.recorder is not None:
            self.recorder.record_act(reading)


@dataclass
class ReplayResult(Tally):
    sessions: int = 0
    readings: int = 0
    rejected: int = 0
    rejections: list[str] = field(default_factory=list)
    acts: int = 0
    """Taps and scans replayed."""
    bindings: int = 0
    """Carts bound to a shopper (the identity resolver's count)."""
    refused: Counter[str] = field(default_factory=Counter)
    """Codes refused, by reason."""

    @property
    def shoppers(self) -> int:
        return len({e.shopper.token for e in self.events})


async def replay_in_process(
    path: Path,
    table: RuleTable,
    resolver: IdentityResolver,
    presence: PresenceSettings | None = None,
    clock: Clock | None = None,
    recorder: JourneyRecorder | None = None,
    decoder: BeaconDecoder | None = None,
    codes: CodeSettings | None = None,
) -> ReplayResult:
    """Replay the readings in ``path`` through a real :class:`Pipeline`.

    The clock (default: virtual, from the recording's start) is ticked every
    ``presence.tick`` from the recording's start, as the live run ticked, and kept
    going after the last reading until exit and visit timeouts have run out.
    ``decoder``: one with the daemon's shopper keys (rotating identifiers, IRKs);
    ``codes``: the ``[codes]`` keys recorded taps and scans are verified with (default:
    the demo's, as the simulator's run signs with).
    """
    presence = presence or PresenceSettings()
    start = recording_start(path)
    clock = clock or VirtualClock(start)
    store_id = (table.store.id if table.store is not None else None) or "store-001"
    codes = codes or CodeSettings()
    feedback = FeedbackDesk(store_id)
    verifier = Verifier(codes.key_bytes(), clock, skew=codes.skew)
    pipeline = Pipeline.for_presence(
        store_id, table, resolver, presence, verifier=verifier, sent_offer=feedback.lookup
    )
    taps_and_scans = recorded_acts(path)
    acts = ReadingsAgenda(taps_and_scans, pipeline)
    last_act = max((r.at for r in taps_and_scans), default=start)
    bindings_before = resolver.bindings
    backend = ReplayBleBackend(path, clock)
    # flood defence on the recording's clock, as in the simulator's own run
    decoder = decoder or BeaconDecoder(monotonic=lambda: (clock.now() - start).total_seconds())
    adapter = BleAdapter(backend, decoder)
    result = ReplayResult(start)

    def handle(decisions: list[Decision]) -> None:
        for decision in decisions:
            result.take(decision, recorder)
            for offer in decision.offers:  # the daemon's desk knows every offer it sent
                feedback.sent(offer.id, decision.event.shopper.token, offer.rule, offer.variant)

    wall = time.perf_counter()
    end = await drive(
        adapter,
        pipeline,
        presence,
        clock,
        start,
        handle,
        lambda: max(backend.last or start, last_act),
        acts,
    )
    result.wall_s = time.perf_counter() - wall
    result.simulated_s = (end - start).total_seconds()
    result.sessions = backend.sessions
    result.readings = backend.replayed
    result.rejected = backend.rejected
    result.rejections = list(backend.rejections)
    result.sightings = decoder.sightings
    result.acts = acts.played
    result.bindings = resolver.bindings - bindings_before
    if pipeline.acts is not None:
        result.refused = Counter(pipeline.acts.refused)
    return result


# -- the command line -----------------------------------------------------------------------


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    replay = sub.add_parser(
        "replay",
        help="replay a raw readings recording through the pipeline in process",
        description="Play a readings recording (`run --record-readings`, or a daemon's "
        "[ble] record) through the real BLE decoder, identity, presence and rules, on "
        "virtual time from the recording's start; prints what `run` prints. A recording "
        "replays to the same journey events as the run that recorded it (same rules, "
        "presence settings and pseudonym key). Lines that are not readings are reported "
        "as FILE:LINE: reason and skipped.",
    )
    replay.add_argument("file", type=Path, metavar="FILE", help="the readings recording (JSONL)")
    replay.add_argument(
        "--rules",
        type=Path,
        action="append",
        help="rule file or folder (repeatable; default: rules/example-store.toml)",
    )
    replay.add_argument(
        "--config",
        type=Path,
        help="a proximity config file: its [presence] settings, pseudonym key and shopper "
        "keys are used (default: the daemon's defaults and the demo key)",
    )
    replay.add_argument(
        "--speed",
        type=float,
        help="replay this many times faster than it was heard (default: virtual time, "
        "as fast as possible)",
    )
    replay.add_argument("--record", type=Path, help="append the journey events to this JSONL file")
    replay.add_argument("--json", action="store_true", help="print the summary as JSON")


async def run_replay(args: argparse.Namespace, out: TextIO) -> int:
    if args.speed is not None and args.speed <= 0:
        raise ValueError("--speed must be more than 0")
    table = load_table(args.rules)
    presence, resolver, decoder_for, codes = _daemon_side(args.config)
    start = recording_start(args.file)
    clock: Clock = VirtualClock(start) if args.speed is None else ScaledClock(start, args.speed)
    decoder = decoder_for(clock, start) if decoder_for is not None else None
    recorder = JourneyRecorder(args.record) if args.record else None
    if recorder is not None:
        with recorder:
            result = await replay_in_process(
                args.file, table, resolver, presence, clock, recorder, decoder, codes
            )
    else:
        result = await replay_in_process(
            args.file, table, resolver, presence, clock, None, decoder, codes
        )
    if args.json:
        summary = {
            "file": str(args.file),
            "sessions": result.sessions,
            "readings": result.readings,
            "rejected": result.rejected,
            "rejections": result.rejections,
            "sightings": result.sightings,
            "shoppers": result.shoppers,
            "events": dict(sorted(result.counts().items())),
            "offers": result.offers,
            "suppressed": result.suppressed,
            "acts": {
                "replayed": result.acts,
                "bindings": result.bindings,
                "redemptions": result.redemptions,
                "refused": dict(sorted(result.refused.items())),
            },
            "recorded": recorder.written if recorder is not None else None,
        }
        print(json.dumps(summary, indent=2), file=out)
        return 0
    speed = result.simulated_s / result.wall_s if result.wall_s > 0 else 0.0
    print(
        f"replay {args.file}: {result.sessions} session(s), {result.shoppers} shoppers, "
        f"{result.simulated_s / 60:.1f} min of store time in {result.wall_s:.2f} s "
        f"({speed:,.0f}× real time)",
        file=out,
    )
    print(
        f"  readings {result.readings:,} · rejected lines {result.rejected:,} · "
        f"sightings {result.sightings:,}",
        file=out,
    )
    for line in result.rejections[:5]:
        print(f"  rejected {line}", file=out)
    counts = result.counts()
    print("  journey events: " + ", ".join(f"{k} {counts[k]}" for k in sorted(counts)), file=out)
    print(f"  offers decided {result.offers} (suppressed {result.suppressed})", file=out)
    if result.acts or result.refused:
        refused = ", ".join(f"{k} {v}" for k, v in sorted(result.refused.items())) or "none"
        print(
            f"  acts: taps and scans {result.acts} · carts bound {result.bindings} · "
            f"coupons redeemed {result.redemptions} · codes refused: {refused}",
            file=out,
        )
    if recorder is not None:
        print(f"  recorded {recorder.written} journey events to {args.record}", file=out)
    return 0


DecoderFactory = Callable[[Clock, datetime], BeaconDecoder]


def _daemon_side(
    config: Path | None,
) -> tuple[PresenceSettings, IdentityResolver, DecoderFactory | None, CodeSettings]:
    """Presence, identity, (with shopper keys) the decoder and the code keys of a daemon
    config. The simulator's carts (:data:`CART_UUID`) are anonymous presence, as to
    ``run``, so a recorded check-in at the dock binds them again."""
    if config is None:
        return PresenceSettings(), demo_resolver(), None, CodeSettings()
    settings = load_settings(config)
    identity = settings.identity
    keys = load_shopper_keys(identity.shopper_keys) if identity.shopper_keys else ShopperKeys()
    resolver = IdentityResolver(
        identity.app_uuids,
        identity.pseudonym_key.get_secret_value().encode(),
        anonymous_uuids=[*identity.anonymous_uuids, CART_UUID],
        anonymous_namespaces=[bytes.fromhex(n) for n in identity.anonymous_namespaces],
        consent=keys.consent,
    )
    if identity.shopper_keys is None:
        return settings.presence, resolver, None, settings.codes

    def decoder(clock: Clock, start: datetime) -> BeaconDecoder:
        return BeaconDecoder(
            rotating=RotatingResolver(keys.rotating, period=identity.rotating_period)
            if keys.rotating
            else None,
            irks=keys.irks,
            max_ids_per_address=identity.max_ids_per_address,
            ban_for=identity.ban_for,
            new_ids_per_second=identity.new_ids_per_second,
            monotonic=lambda: (clock.now() - start).total_seconds(),
        )

    return settings.presence, resolver, decoder, settings.codes
