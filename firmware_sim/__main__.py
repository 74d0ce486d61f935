"""``python -m firmware_sim``: run a simulated store through Proximity, and score presence.

python -m firmware_sim run                       # 20 shoppers, an hour, in about a second
python -m firmware_sim run --scenario crowded --record journey.jsonl
python -m firmware_sim run --carts 0.3 --checkins 0.5 --redeem 0.8   # carts bound at the
                                                 # dock, check-ins and coupons at the till
python -m firmware_sim run --walk demo           # the scripted demo walk on the floor
python -m firmware_sim score                     # sparse, crowded, noisy: table + JSON
python -m firmware_sim score --store firmware_sim/stores/grid.toml --method fused \
    --scenarios sparse,node_failure --seed 101   # a presence method on a ceiling grid
python -m firmware_sim run --via bluez --walk demo --speed 10   # a real `proximity run`,
                                                 # over a mocked BlueZ and mosquitto
python -m firmware_sim run --via nodes --walk demo --speed 10 --node-format espresense
                                                 # ...through scanner nodes over mosquitto
python -m firmware_sim run --via nodes --walk demo --speed 10 --node-down gw-coffee@15-30
python -m firmware_sim run --via bluez --walk demo --speed 10 --checkins 1 --redeem 1
                                                 # ...and the same acts as in process, on
                                                 # the store's readers (pty, nfcpy UDP)
python -m firmware_sim run --record-readings readings.jsonl --record journey.jsonl
python -m firmware_sim replay readings.jsonl     # the same journey events, from the readings
                                                 # (and the same taps and scans: bindings,
                                                 # redemptions)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from firmware_sim.acts import PlannedAct, plan_acts
from firmware_sim.beacons import CART_UUID
from firmware_sim.crowd import Crowd, CrowdParams, shopper_from_walk
from firmware_sim.harness import (
    EXAMPLE_RULES,
    SCENARIO_START,
    RunResult,
    demo_resolver,
    load_table,
    run_in_process,
    run_scenario,
    scenario_acts,
    scenario_crowd,
    seeded,
)
from firmware_sim.methods import METHODS, THRESHOLD, MethodUnsupported, presence_settings
from firmware_sim.radio import RadioModel
from firmware_sim.replay import ReadingsTee, run_replay
from firmware_sim.replay import add_command as add_replay_command
from firmware_sim.scenarios import DEFAULT_SCENARIOS, SCENARIOS, Scenario
from firmware_sim.score import DEFAULT_MIN_STAY_S, DEFAULT_TOLERANCE_S, Score
from firmware_sim.store import BUILTIN_STORES, Store, StoreError, load_store
from firmware_sim.walk import builtin_walk, load_walk
from firmware_sim.zoning import table_for
from proximity.clock import Clock, ScaledClock, VirtualClock
from proximity.config import CodeSettings, PresenceSettings, load_settings
from proximity.engine.durations import parse_duration
from proximity.errors import ConfigError, RuleFileError
from proximity.identity.resolver import IdentityResolver
from proximity.journey.record import JourneyRecorder
from proximity.logsetup import configure_logging

if TYPE_CHECKING:
    from firmware_sim.live import LivePlan, LiveResult

DEFAULT_STORE = BUILTIN_STORES / "example.toml"
DEFAULT_SCORE_JSON = Path("bench/out/presence_score.json")


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        try:
            return parse_duration(text).total_seconds()
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share (0 to 1)") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a share (0 to 1)")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m firmware_sim",
        description="The hardware simulator: a store full of shoppers, heard by BLE scanners, "
        "run through Proximity's real pipeline, with ground truth to score presence against.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--store", type=Path, default=DEFAULT_STORE, help="store file (default: %(default)s)"
    )
    common.add_argument(
        "--rules",
        type=Path,
        action="append",
        help="rule file or folder (repeatable; default: rules/example-store.toml)",
    )
    common.add_argument("--seed", type=int, default=7, help="same seed, same numbers")
    common.add_argument(
        "--method",
        choices=METHODS,
        default=THRESHOLD,
        help="the daemon's presence method (default: %(default)s, the per-zone thresholds); "
        "any other is given the store file as its floor plan",
    )
    common.add_argument("--shoppers", type=int, help="override the scenario's crowd size")
    common.add_argument(
        "--duration",
        type=_seconds,
        help='arrival window, e.g. "1h" or "600" seconds (default: the scenario\'s, 1h)',
    )
    common.add_argument(
        "--config",
        type=Path,
        help="a proximity config file: its [presence] settings and pseudonym key are used "
        "(default: the daemon's defaults and the demo key); with --via bluez or nodes, its "
        "[presence] settings only (the run writes the rest of the daemon's config)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        parents=[common],
        help="run a store and a crowd (or a scripted walk) in process, or live through a "
        "real `proximity run` (--via bluez)",
        description="Run a store and a crowd (or a scripted walk). --via inprocess (the "
        "default) runs Proximity's pipeline in this process on virtual time and scores it. "
        "--via bluez drives a real `proximity run` through its real interfaces: a mocked "
        "BlueZ on a private D-Bus (one adapter per store scanner, read by the daemon's "
        "bleak backend), mosquitto, and one shopper app per consenting shopper printing "
        "the offers it receives. It needs dbus-daemon, mosquitto and python-dbusmock "
        "(make test installs them) and runs in real time, or --speed times faster.",
    )
    run.add_argument(
        "--via",
        choices=("inprocess", "bluez", "nodes"),
        default="inprocess",
        help="inprocess: the pipeline in this process (default); bluez: a real `proximity "
        "run` hearing the store through a mocked BlueZ; nodes: a real `proximity run` "
        "reading one scanner node per store scanner over MQTT",
    )
    nodes = run.add_argument_group(
        "scanner nodes (--via nodes)",
        "Each store scanner is a scanner node named after it, publishing what it hears to "
        'the broker in one format; the daemon reads them with ble.backend = "nodes".',
    )
    nodes.add_argument(
        "--node-format",
        choices=("ours", "espresense", "omg"),
        default="ours",
        help="ours (proximity scan's batches), espresense or omg (OpenMQTTGateway) "
        "(default: %(default)s)",
    )
    nodes.add_argument(
        "--node-down",
        action="append",
        default=[],
        metavar="SCANNER@START-END",
        help="that scanner's node is down from START to END store seconds: it says offline "
        "(its will) and sends nothing (repeatable)",
    )
    nodes.add_argument(
        "--node-skew",
        action="append",
        default=[],
        metavar="SCANNER=SECONDS",
        help="that scanner's node's clock is SECONDS ahead (negative: behind) (repeatable)",
    )
    run.add_argument(
        "--scenario", choices=sorted(SCENARIOS), default="sparse", help="default: %(default)s"
    )
    run.add_argument("--walk", help='a scripted walk instead of a crowd: a TOML file or "demo"')
    run.add_argument(
        "--speed",
        type=float,
        help="run on a clock this many times faster than real time (default: virtual time, "
        "as fast as possible; with --via bluez: 1, real time, and the daemon's clock runs "
        "at the same speed)",
    )
    run.add_argument(
        "--broker",
        help="--via bluez: the MQTT 5 broker the daemon publishes to, e.g. "
        "mqtt://127.0.0.1:1883 (default: a mosquitto started for the run)",
    )
    run.add_argument(
        "--workdir",
        type=Path,
        help="--via bluez: keep the daemon's config and every log here (default: a "
        "temporary folder, removed at the end)",
    )
    run.add_argument("--record", type=Path, help="append the journey events to this JSONL file")
    run.add_argument(
        "--record-readings",
        type=Path,
        metavar="FILE",
        help="append the raw readings (each advertisement each scanner heard, device "
        "addresses aliased) to FILE, for `replay` or the daemon's [ble] backend replay",
    )
    run.add_argument("--json", action="store_true", help="print the summary as JSON")
    acts = run.add_argument_group(
        "shoppers' acts",
        "What shoppers do at the store file's [[readers]] besides walking: taps on NFC "
        "readers and scans of codes, fed to the pipeline as the daemon's NFC and scanner "
        "adapters would, at their instant; with --via bluez, the same acts played on the "
        "daemon's real reader interfaces (a serial line per code scanner, nfcpy's UDP "
        "frontend per NFC reader). Each share is 0 by default, so a run without them is "
        "the same run as before.",
    )
    acts.add_argument(
        "--carts",
        type=_share,
        metavar="SHARE",
        help="the share of shoppers who take a cart or basket with a beacon (default: the "
        "scenario's, 0); a cart is anonymous presence until its shopper checks in at the "
        "cart dock, then its presence is theirs",
    )
    acts.add_argument(
        "--checkins",
        type=_share,
        metavar="SHARE",
        help="the share of shoppers who check in with the app's signed code: at the cart "
        "dock if they took a cart (binding it to them), else at the till when they pay",
    )
    acts.add_argument(
        "--redeem",
        type=_share,
        metavar="SHARE",
        help="the share of shoppers who have the till scan the coupons their app received "
        "when they pay (offer.redeemed)",
    )

    score = sub.add_parser(
        "score", parents=[common], help="score presence against ground truth across scenarios"
    )
    score.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help="comma-separated (default: %(default)s; also: quiet)",
    )
    score.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE_S,
        help="seconds an event may be off its true transition (default: %(default)s)",
    )
    score.add_argument(
        "--min-stay",
        type=float,
        default=DEFAULT_MIN_STAY_S,
        help="shorter true stays are pass-throughs, not required (default: %(default)s)",
    )
    score.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_SCORE_JSON,
        dest="json_path",
        help="write the scores here (default: %(default)s)",
    )
    add_replay_command(sub)
    return parser


def _scenario(name: str, args: argparse.Namespace) -> Scenario:
    scenario = SCENARIOS[name]
    changes: dict[str, Any] = {}
    if args.shoppers is not None:
        changes["shoppers"] = args.shoppers
    if args.duration is not None:
        changes["arrival_window_s"] = args.duration
    for flag, key in _ACT_FLAGS:
        value = getattr(args, flag, None)
        if value is not None:
            changes[key] = value
    return scenario.with_crowd(**changes) if changes else scenario


_ACT_FLAGS = (("carts", "cart_share"), ("checkins", "checkin_share"), ("redeem", "redeem_share"))
"""``run`` flags that change the crowd's acts, and the crowd parameter each sets."""


def _fmt(value: float | None, pattern: str = "{:.2f}") -> str:
    return "–" if value is None else pattern.format(value)


def _acts_json(result: RunResult) -> dict[str, Any]:
    return {
        **result.acts.to_json(),
        "bindings": result.bindings,
        "redemptions": result.redemptions,
        "refused": dict(sorted(result.refused.items())),
        "unlisted_readers": list(result.unlisted_readers),
    }


def _acts_lines(result: RunResult, out: TextIO) -> None:
    acts = result.acts
    if not (acts.taps or acts.scans or result.bindings or result.refused):
        return
    print(
        f"  acts: NFC taps {acts.taps} · code scans {acts.scans} · check-ins "
        f"{acts.checkins} · carts bound {result.bindings} of {acts.cart_codes} · coupons "
        f"shown {acts.coupons}, redeemed {result.redemptions}",
        file=out,
    )
    if result.refused:
        refused = ", ".join(f"{k} {v}" for k, v in sorted(result.refused.items()))
        print(f"  codes refused: {refused}", file=out)
    if result.unlisted_readers:
        print(
            f"  note: the rules do not list {', '.join(result.unlisted_readers)} under the "
            "zone the store file puts them in: their events carry no zone, or another",
            file=out,
        )


def _summary(result: RunResult, label: str, out: TextIO) -> None:
    speed = result.simulated_s / result.wall_s if result.wall_s > 0 else 0.0
    print(
        f"{label}: {len(result.visits)} shoppers, {result.simulated_s / 60:.1f} min of store "
        f"time in {result.wall_s:.2f} s ({speed:,.0f}× real time)",
        file=out,
    )
    print(
        f"  advertisements {result.advertisements:,} · heard by scanners {result.heard:,} · "
        f"sightings {result.sightings:,}",
        file=out,
    )
    counts = result.counts()
    print("  journey events: " + ", ".join(f"{k} {counts[k]}" for k in sorted(counts)), file=out)
    print(f"  offers decided {result.offers} (suppressed {result.suppressed})", file=out)
    _acts_lines(result, out)


def _score_line(score: Score) -> str:
    k = score.kinds
    return (
        f"enter P {_fmt(k['enter'].precision)} R {_fmt(k['enter'].recall)} · "
        f"exit P {_fmt(k['exit'].precision)} R {_fmt(k['exit'].recall)} · "
        f"dwell P {_fmt(k['dwell'].precision)} R {_fmt(k['dwell'].recall)} · "
        f"latency p50 enter {_fmt(score.latency['enter'].p50, '{:.1f}')} s "
        f"exit {_fmt(score.latency['exit'].p50, '{:.1f}')} s · "
        f"wrong zone {_percent(score.wrong_zone)}"
    )


def _percent(share: float | None) -> str:
    return _fmt(None if share is None else 100 * share, "{:.1f} %")


def _daemon_side(
    config: Path | None,
) -> tuple[PresenceSettings, IdentityResolver, CodeSettings]:
    """The presence settings, identity resolver and code keys of a daemon config, or the
    defaults. The simulator's carts (:data:`CART_UUID`) are always anonymous presence to
    it, as ``run --via bluez`` configures the daemon, so a check-in can bind them."""
    if config is None:
        return PresenceSettings(), demo_resolver(), CodeSettings()
    settings = load_settings(config)
    identity = settings.identity
    key = identity.pseudonym_key.get_secret_value().encode()
    anonymous = [*identity.anonymous_uuids, CART_UUID]
    resolver = IdentityResolver(identity.app_uuids, key, anonymous_uuids=anonymous)
    return settings.presence, resolver, settings.codes


def _clock(speed: float | None) -> Clock:
    if speed is None:
        return VirtualClock(SCENARIO_START)
    return ScaledClock(datetime.now(UTC), speed)


async def _run(args: argparse.Namespace, out: TextIO) -> int:
    store = load_store(args.store)
    table, rules_from = table_for(store, args.rules)
    presence, resolver, codes = _daemon_side(args.config)
    try:
        presence = presence_settings(args.method, args.store.resolve(), presence)
    except MethodUnsupported as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    clock = _clock(args.speed)
    recorder = JourneyRecorder(args.record) if args.record else None
    tee = ReadingsTee(args.record_readings, clock, args.seed) if args.record_readings else None
    crowd, acts, label = crowd_and_acts(args, store)
    with recorder if recorder is not None else _Nothing():
        result = await run_in_process(
            crowd,
            table,
            resolver,
            presence,
            clock,
            clock.now(),
            recorder,
            tee,
            acts,
            codes,
            tee.record_act if tee is not None else None,
        )
    score = result.score()
    if args.json:
        summary = {
            "label": label,
            "shoppers": len(result.visits),
            "advertisements": result.advertisements,
            "heard": result.heard,
            "sightings": result.sightings,
            "events": dict(sorted(result.counts().items())),
            "offers": result.offers,
            "acts": _acts_json(result),
            "score": score.to_json(),
        }
        print(json.dumps(summary, indent=2), file=out)
    else:
        print(
            f"store {store.name}: {len(store.zones)} zones, {len(store.scanners)} scanners "
            f"· rules: {rules_from}",
            file=out,
        )
        _summary(result, label, out)
        print("  " + _score_line(score), file=out)
        if recorder is not None:
            print(f"  recorded {recorder.written} journey events to {args.record}", file=out)
        if tee is not None:
            acts_note = f" and {tee.acts_written} taps and scans" if tee.acts_written else ""
            print(
                f"  recorded {tee.written} readings{acts_note} to {args.record_readings}",
                file=out,
            )
    return 0


def crowd_and_acts(args: argparse.Namespace, store: Store) -> tuple[Crowd, list[PlannedAct], str]:
    """The crowd (or the scripted walk) of ``run``'s flags, what its shoppers do at the
    store's readers, and its label: the same for the in-process and the live run, so
    one store and seed play the same acts in both."""
    if args.walk is not None:
        walk = builtin_walk() if args.walk == "demo" else load_walk(Path(args.walk))
        radio = RadioModel(store.radio, seeded(args.seed, "walk:radio"))
        crowd = Crowd(store, [shopper_from_walk(store, walk)], radio, seeded(args.seed, "walk:adv"))
        walker = CrowdParams(checkin_share=args.checkins or 0.0, redeem_share=args.redeem or 0.0)
        acts = plan_acts(store, crowd.shoppers.values(), walker, seeded(args.seed, "walk:acts"))
        return crowd, acts, f"walk {walk.name}"
    scenario = _scenario(args.scenario, args)
    crowd = scenario_crowd(store, scenario, args.seed)
    acts = scenario_acts(store, scenario, args.seed, crowd)
    return crowd, acts, f"scenario {scenario.name} (seed {args.seed})"


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


async def _score(args: argparse.Namespace, out: TextIO) -> int:
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(
            f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIOS)}",
            file=sys.stderr,
        )
        return 2
    store = load_store(args.store)
    table, rules_from = table_for(store, args.rules)
    presence, resolver, codes = _daemon_side(args.config)
    try:
        presence = presence_settings(args.method, args.store.resolve(), presence)
    except MethodUnsupported as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    header = (
        f"{'scenario':<12} {'shoppers':>8} {'enter P/R':>11} {'exit P/R':>11} {'dwell P/R':>11} "
        f"{'enter p50/p95 s':>15} {'exit p50/p95 s':>15} {'wrong zone':>10} {'flaps/h':>7} "
        f"{'wall s':>7}"
    )
    print(
        f"presence against ground truth · method {args.method} · store {store.name} · seed "
        f"{args.seed} · tolerance {args.tolerance:g} s · pass-throughs < {args.min_stay:g} s "
        f"ignored · rules: {rules_from}",
        file=out,
    )
    print(header, file=out)
    scenarios: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for name in names:
        scenario = _scenario(name, args)
        result = await run_scenario(
            store, scenario, args.seed, table, resolver, presence, codes=codes
        )
        score = result.score(args.tolerance, args.min_stay)
        k, lat = score.kinds, score.latency

        def pr(kind: str, k: Any = k) -> str:
            return f"{_fmt(k[kind].precision)}/{_fmt(k[kind].recall)}"

        def pp(kind: str, lat: Any = lat) -> str:
            return f"{_fmt(lat[kind].p50, '{:.1f}')}/{_fmt(lat[kind].p95, '{:.1f}')}"

        wrong = _percent(score.wrong_zone)
        flaps = _fmt(score.flaps_per_shopper_hour)
        print(
            f"{name:<12} {len(result.visits):>8} {pr('enter'):>11} {pr('exit'):>11} "
            f"{pr('dwell'):>11} {pp('enter'):>15} {pp('exit'):>15} {wrong:>10} {flaps:>7} "
            f"{result.wall_s:>7.1f}",
            file=out,
        )
        if result.outages:
            print(
                f"{'':<12} scanners down {', '.join(sorted(result.outages))}: exits of "
                f"shoppers still in the zone meanwhile {score.outage_false_exits}",
                file=out,
            )
        scenarios[name] = {
            "description": scenario.description,
            "shoppers": scenario.crowd.shoppers,
            "arrival_window_s": scenario.crowd.arrival_window_s,
            "radio": scenario.radio_for(store).model_dump(),
            "advertisements": result.advertisements,
            "heard": result.heard,
            "events": dict(sorted(result.counts().items())),
            "offers": result.offers,
            "scanners_down": {k: list(v) for k, v in sorted(result.outages.items())},
            **score.to_json(),
        }
        rows.extend(_rows(name, score))
    report = {
        "name": "presence_score",
        "method": args.method,
        "store": store.name,
        "store_file": str(args.store),
        "rules": rules_from,
        "seed": args.seed,
        "tolerance_s": args.tolerance,
        "min_stay_s": args.min_stay,
        "rows": rows,
        "scenarios": scenarios,
    }
    args.json_path.parent.mkdir(parents=True, exist_ok=True)
    args.json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json_path}", file=out)
    return 0


def _rows(name: str, score: Score) -> list[dict[str, Any]]:
    """Rows in the benchmark table's format (no baseline: ground truth is the reference)."""
    rows: list[dict[str, Any]] = []
    for kind in ("enter", "exit", "dwell"):
        for metric in ("precision", "recall"):
            value = getattr(score.kinds[kind], metric)
            if value is not None:
                rows.append(
                    {
                        "case": f"{name}: zone.{kind}",
                        "metric": metric,
                        "unit": "1",
                        "value": round(value, 4),
                    }
                )
    for kind in ("enter", "exit"):
        for q in ("p50", "p90", "p95", "p99"):
            value = getattr(score.latency[kind], q)
            if value is not None:
                rows.append(
                    {
                        "case": f"{name}: zone.{kind}",
                        "metric": f"detection latency {q}",
                        "unit": "s",
                        "value": round(value, 3),
                    }
                )
    if score.wrong_zone is not None:
        rows.append(
            {
                "case": f"{name}",
                "metric": "wrong-zone time share",
                "unit": "1",
                "value": round(score.wrong_zone, 4),
            }
        )
    if score.flaps_per_shopper_hour is not None:
        rows.append(
            {
                "case": f"{name}",
                "metric": "flaps per shopper-hour",
                "unit": "1/h",
                "value": round(score.flaps_per_shopper_hour, 3),
            }
        )
    if score.outage_false_exits is not None:
        rows.append(
            {
                "case": f"{name}",
                "metric": "false exits while scanners are down",
                "unit": "1",
                "value": score.outage_false_exits,
            }
        )
    return rows


def _run_live(args: argparse.Namespace, out: TextIO) -> int:
    """``run --via bluez`` (or ``nodes``): the same crowd (or walk) and seed as in process,
    played live."""
    unsupported = [
        flag
        for flag, value in (
            ("--record", args.record),
            ("--record-readings", getattr(args, "record_readings", None)),
        )
        if value is not None
    ]
    if unsupported:
        print(
            f"error: {', '.join(unsupported)} not available with --via {args.via}: the live run "
            "writes the daemon's config itself (--workdir keeps it, with the daemon's log)",
            file=sys.stderr,
        )
        return 2
    if args.speed is not None and args.speed <= 0:
        print(f"error: --speed must be more than 0 with --via {args.via}", file=sys.stderr)
        return 2
    try:
        from firmware_sim.live import LiveError, LivePlan, print_summary, run_live
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    store = load_store(args.store)
    table = load_table(args.rules)
    try:
        # the live daemon's config is written by the run; --config lends it its [presence]
        base = load_settings(args.config).presence if args.config is not None else None
        presence = presence_settings(args.method, args.store.resolve(), base)
    except MethodUnsupported as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    crowd, acts, label = crowd_and_acts(args, store)
    plan = LivePlan(
        crowd,
        label,
        rules=args.rules or [EXAMPLE_RULES],
        store_id=(table.store.id if table.store is not None else None) or "store-001",
        speed=args.speed or 1.0,
        broker=args.broker,
        workdir=args.workdir,
        presence=presence,
        acts=tuple(acts),
    )
    progress = sys.stderr if args.json else out
    try:
        if args.via == "nodes":
            result = _play_nodes(args, plan, progress)
        else:
            result = run_live(plan, progress)
    except (LiveError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopped: everything the run started is stopped", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result.to_json(), indent=2), file=out)
    elif args.via == "nodes":
        from firmware_sim.live_nodes import NodesResult, print_nodes_summary

        assert isinstance(result, NodesResult)
        print_nodes_summary(result, out)
    else:
        print_summary(result, out)
    published = int(result.daemon.get("offers_published") or 0)
    if len(result.offers) < published:
        print(
            f"error: the daemon published {published} offers but the shopper apps received "
            f"{len(result.offers)}",
            file=sys.stderr,
        )
        return 1
    return 0


def _play_nodes(args: argparse.Namespace, plan: LivePlan, progress: TextIO) -> LiveResult:
    """``run --via nodes``: the live plan played through scanner nodes."""
    from firmware_sim.live_nodes import NodeFaults, parse_down, parse_skew, run_nodes

    faults = NodeFaults(
        dict(parse_down(text) for text in args.node_down),
        dict(parse_skew(text) for text in args.node_skew),
    )
    return run_nodes(plan, progress, args.node_format, faults)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = _parser().parse_args(argv)
    out = out or sys.stdout
    try:
        if args.command == "replay":
            return asyncio.run(run_replay(args, out))
        if args.command == "run" and args.walk is not None and args.carts is not None:
            print("error: --carts applies to a crowd: a scripted walk has no cart", file=sys.stderr)
            return 2
        if args.command == "run" and args.via in ("bluez", "nodes"):
            return _run_live(args, out)
        if args.command == "run":
            return asyncio.run(_run(args, out))
        return asyncio.run(_score(args, out))
    except (StoreError, RuleFileError, ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # logs on stderr, warnings and up: stdout is the summary (or its JSON)
    configure_logging("warning")
    sys.exit(main())
