"""``proximity rollout``: signing keys, signed rule bundles to chosen stores (canaries
first), and what every store runs (docs/chain.md)."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any

from proximity.chain.bundle import generate_keys
from proximity.chain.hqconfig import HqSettings, load_hq_settings
from proximity.cli.common import show_help
from proximity.clock import SystemClock
from proximity.errors import ConfigError, DeliveryError, RuleFileError
from proximity.logsetup import configure_logging

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
_STORE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def add_command(sub: Any, common: argparse.ArgumentParser) -> None:
    rollout = sub.add_parser(
        "rollout",
        help="roll signed rule bundles out to chosen stores, canaries first",
        description="Sign rule files into bundles and publish them to stores through the "
        "chain's central broker (docs/chain.md): each gateway verifies the signature, "
        "checks and tests the rules, swaps them in and reports on up/rollout.",
    )
    rollout.set_defaults(run_command=show_help(rollout))
    rollout_sub = rollout.add_subparsers(dest="rollout_command", metavar="SUBCOMMAND")

    keygen = rollout_sub.add_parser(
        "keygen",
        parents=[common],
        help="make an Ed25519 signing key pair",
        description="Write DIR/ID.pem (the private key, mode 0600: for [rollout] signing_key "
        "in hq.toml) and DIR/ID.pub.pem (the public key: for [chain] rollout_keys on every "
        'gateway, as ID = "…/ID.pub.pem"). Never overwrites a key.',
    )
    keygen.add_argument("--out", type=Path, required=True, metavar="DIR")
    keygen.add_argument("--key-id", required=True, metavar="ID", help='e.g. "ops-2026"')
    keygen.set_defaults(run_command=_keygen)

    publish = rollout_sub.add_parser(
        "publish",
        parents=[common],
        help="check, test, sign and publish rule files to stores (canaries first)",
        description="Check the rule files and run their [[tests]] here (a broken bundle is "
        "never sent), sign one bundle per store and publish it retained on "
        "proximity/v1/{store}/down/rules. With --canary, the canary stores (the first ones "
        "by store id) get it first and are watched for [rollout] canary_watch: a refusal, "
        "rising errors or no report halts the rollout (exit 1), else the rest get it.",
        epilog="examples:\n"
        "  proximity rollout publish --config hq.toml --rules rules/ --group north\n"
        "  proximity rollout publish --config hq.toml --rules rules/ --stores s1,s2,s3 "
        "--canary 10%",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _hq_options(publish)
    publish.add_argument(
        "--rules", type=Path, nargs="+", required=True, metavar="PATH", help="rule files/folders"
    )
    publish.add_argument(
        "--canary",
        type=_percent,
        metavar="N%",
        help="publish to ceil(N%% of the stores) first (at least one) and watch them",
    )
    publish.add_argument(
        "--bundle",
        type=_positive,
        metavar="N",
        help="the bundle number (default: now in unix seconds, or above the highest one "
        "the database recorded); it must be above what the stores run",
    )
    publish.set_defaults(run_command=_publish)

    status = rollout_sub.add_parser(
        "status",
        parents=[common],
        help="what every store runs: its last rollout report and status",
        description="Per store: the last up/rollout report (bundle, outcome, reason) and the "
        "bundle its status says it runs; from the database ([hq] database) when hq's tables "
        "are there, else from the retained messages on the central broker.",
    )
    _hq_options(status, required=False)
    status.add_argument("--format", choices=["table", "json"], default="table")
    status.add_argument(
        "--source",
        choices=["auto", "database", "broker"],
        default="auto",
        help="where to read (auto: the database if reachable, else the broker)",
    )
    status.set_defaults(run_command=_status)


def _hq_options(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--config", type=Path, required=True, help="hq.toml")
    targets = parser.add_mutually_exclusive_group(required=required)
    targets.add_argument("--stores", type=_stores, metavar="A,B", help="store ids, comma-separated")
    targets.add_argument("--group", metavar="NAME", help="a group of [groups] in hq.toml")


def _stores(text: str) -> list[str]:
    stores = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in stores if not _STORE.fullmatch(s)]
    if not stores or bad:
        raise argparse.ArgumentTypeError(f"not store ids: {text!r}")
    return sorted(set(stores))


def _percent(text: str) -> float:
    try:
        value = float(text.removesuffix("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a percentage: {text!r}") from None
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError("a canary share is above 0% and at most 100%")
    return value


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1 or int(text) >= 2**63:
        raise argparse.ArgumentTypeError(f"not a positive bundle number: {text!r}")
    return int(text)


def _logging(args: argparse.Namespace) -> None:
    configure_logging(args.log_level or "warning", args.log_format or "auto")


def _targets(args: argparse.Namespace, settings: HqSettings) -> list[str] | None:
    if args.stores is not None:
        return list(args.stores)
    if args.group is not None:
        return sorted(settings.group(args.group))
    return None


def _say(line: str) -> None:
    print(line, flush=True)  # progress as it goes, also through a pipe


def _fail(message: str) -> int:
    print(f"proximity rollout: error: {message}", file=sys.stderr)
    return EXIT_FAIL


def _keygen(args: argparse.Namespace) -> int:
    try:
        private, public = generate_keys(args.out, args.key_id)
    except ConfigError as exc:
        return _fail(str(exc))
    print(f"private key: {private} (keep it secret: [rollout] signing_key in hq.toml)")
    print(f"public key:  {public} (every gateway: [chain] rollout_keys.{args.key_id})")
    return EXIT_OK


def _publish(args: argparse.Namespace) -> int:
    from proximity.chain.publish import RolloutHalted, RolloutRefused, bundle_files

    _logging(args)
    try:
        settings = load_hq_settings(args.config)
        stores = _targets(args, settings)
        assert stores is not None  # argparse requires --stores or --group
        files = bundle_files(args.rules, stores)
    except RuleFileError as exc:
        print(str(exc), file=sys.stderr)
        return _fail("the rules have problems: nothing published")
    except (ConfigError, RolloutRefused) as exc:
        return _fail(f"{exc}\nnothing published")
    _say(f"rules ok: {len(files)} file(s), checked and tested")
    try:
        asyncio.run(_publish_async(args, settings, files, stores))
    except RolloutHalted as exc:
        return _fail(f"{exc}; the other stores were not published to")
    except (ConfigError, DeliveryError) as exc:
        return _fail(str(exc))
    return EXIT_OK


async def _publish_async(
    args: argparse.Namespace, settings: HqSettings, files: dict[str, str], stores: list[str]
) -> None:
    from proximity.chain.publish import publish_rollout
    from proximity.chain.published import PublishedLog

    clock = SystemClock()
    db, why = await asyncio.to_thread(PublishedLog.open, settings.hq.database)
    if db is None:
        _say(f"not recorded in the database: {why}")
    try:
        bundle = args.bundle
        if bundle is None:
            bundle = int(clock.now().timestamp())
            highest = await asyncio.to_thread(db.highest) if db is not None else None
            if highest is not None and highest >= bundle:
                bundle = highest + 1
        _say(f"bundle {bundle} for {len(stores)} store(s): {', '.join(stores)}")

        def recorded(store: str, stage: str) -> None:
            if db is not None:
                db.record([store], bundle, stage, settings.rollout.key_id)

        result = await publish_rollout(
            settings,
            files,
            stores,
            bundle=bundle,
            clock=clock,
            canary_percent=args.canary,
            say=_say,
            on_published=recorded,
        )
        _say(f"done: bundle {result.bundle} published to {len(result.stores)} store(s)")
    finally:
        if db is not None:
            db.close()


def _status(args: argparse.Namespace) -> int:
    _logging(args)
    try:
        settings = load_hq_settings(args.config)
        stores = _targets(args, settings)
        found, source = asyncio.run(_status_async(args, settings, stores))
    except (ConfigError, DeliveryError) as exc:
        return _fail(str(exc))
    rows = _status_rows(found, stores)
    if args.format == "json":
        print(json.dumps({"source": source, "stores": rows}, indent=2))
        return EXIT_OK
    print(f"from the {source}")
    header = ("store", "gateway", "runs", "last bundle", "outcome", "at", "reason")
    table = [header] + [
        (
            r["store"],
            r["gateway"] or "",
            "" if r["running"] is None else str(r["running"]),
            "" if r["bundle"] is None else str(r["bundle"]),
            r["outcome"] or "no report",
            r["at"] or "",
            r["reason"] or "",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
    return EXIT_OK


async def _status_async(
    args: argparse.Namespace, settings: HqSettings, stores: list[str] | None
) -> tuple[dict[str, dict[str, Any]], str]:
    from proximity.chain.publish import retained_status
    from proximity.chain.published import PublishedLog

    if args.source != "broker":
        db, why = await asyncio.to_thread(PublishedLog.open, settings.hq.database)
        if db is not None:
            try:
                return await asyncio.to_thread(db.status, stores), "database"
            finally:
                db.close()
        if args.source == "database":
            raise ConfigError(why)
    return await retained_status(settings, stores), "broker"


def _status_rows(
    found: dict[str, dict[str, Any]], stores: list[str] | None
) -> list[dict[str, Any]]:
    rows = []
    for store in stores if stores is not None else sorted(found):
        seen = found.get(store, {})
        report, status = seen.get("rollout", {}), seen.get("status", {})
        rows.append(
            {
                "store": store,
                "gateway": report.get("gateway") or status.get("gateway"),
                "running": status.get("bundle"),
                "online": status.get("online"),
                "bundle": report.get("bundle"),
                "outcome": report.get("outcome"),
                "reason": report.get("reason"),
                "at": report.get("at"),
                "published": seen.get("published", {}).get("bundle"),
            }
        )
    return rows
