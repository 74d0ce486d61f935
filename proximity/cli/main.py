"""The ``proximity`` command line. The only place that configures logging or exits."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from proximity import __version__
from proximity.cli.app_cmd import add_command as add_app
from proximity.cli.codes_cmd import add_commands as add_code_commands
from proximity.cli.config_cmd import add_command as add_config
from proximity.cli.hq_cmd import add_command as add_hq
from proximity.cli.replay_cmd import add_command as add_replay
from proximity.cli.report_cmd import add_command as add_report
from proximity.cli.rollout_cmd import add_command as add_rollout
from proximity.cli.rules_cmd import add_commands
from proximity.cli.rules_cmd import run as run_rules
from proximity.cli.scan_cmd import add_command as add_scan
from proximity.config import (
    DEMO_CODE_KEY,
    DEMO_PSEUDONYM_KEY,
    BleBackendKind,
    Settings,
    load_settings,
)
from proximity.errors import ProximityError, RuleFileError
from proximity.logsetup import LogLevel, configure_logging

log = structlog.get_logger(__name__)

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="proximity",
        description=(
            "Proximity turns what in-store hardware sees (BLE beacons, NFC taps, QR scans) "
            "into calls to action on the shopper's phone, over MQTT."
        ),
        epilog=(
            "examples:\n"
            "  proximity demo                         a simulated visit on the embedded broker\n"
            "  proximity demo --broker mqtt://127.0.0.1:1883 --json\n"
            "  proximity run --config /etc/proximity/config.toml\n"
            "  proximity config check /etc/proximity/config.toml\n"
            "  proximity scan --config /etc/proximity/node.toml   a remote scanner node\n"
            "  proximity rules check rules/           validate every rule file in a folder\n"
            "  proximity rollout publish --config hq.toml --rules rules/ --group north\n"
            "  proximity qr make --kind coupon --subject o-123 --out coupon.png\n"
            "  proximity inspect qr photo.jpg         what the codes in a picture say\n"
            "  proximity inspect ble --company 0x004C --data 0215...   decode a beacon frame\n"
            "  proximity hq run --config hq.toml      the chain's central service (PostgreSQL)\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"proximity {__version__}")
    _log_options(parser, default=None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    _log_options(common, default=argparse.SUPPRESS)  # also accepted after the command

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="run a simulated store visit end to end and show what the app receives",
        description=(
            "A simulated shopper walks the demo store: enters (an 'I want to go' offer), "
            "lingers at the coffee promotion (an 'I want to buy' coupon), picks up bread, "
            "pays and leaves. Shows the journey events and each offer as a shopper-app "
            "client subscribed on the broker received it."
        ),
    )
    demo.add_argument("--config", type=Path, help="config file (default: built-in demo settings)")
    demo.add_argument(
        "--broker",
        metavar="URL",
        help="mqtt://host:port or mqtts://… (default: an embedded broker on a free port)",
    )
    demo.add_argument(
        "--speed",
        type=float,
        default=60.0,
        metavar="X",
        help="how many times faster than real time the visit runs "
        "(default 60; 0 = virtual time, no waiting)",
    )
    demo.add_argument(
        "--record",
        type=Path,
        metavar="FILE",
        help="append the journey events to FILE (JSON lines) for `proximity replay`",
    )
    demo.add_argument(
        "--funnel",
        type=Path,
        metavar="FILE",
        help="keep the funnel in FILE (SQLite) for `proximity report --store FILE`",
    )
    demo.add_argument(
        "--json",
        action="store_true",
        help='one JSON object per line, "type" "event" or "offer" '
        "(an offer line carries the exact payload the broker delivered)",
    )

    run = sub.add_parser(
        "run",
        parents=[common],
        help="run the daemon (SIGINT/SIGTERM stop it cleanly)",
        description="Run the gateway daemon with a config file (see config.example.toml; "
        "`proximity config check FILE` validates it first). While it runs, "
        "http://127.0.0.1:9464 serves /metrics, /healthz and /readyz ([metrics]).",
    )
    run.add_argument("--config", type=Path, required=True, help="the daemon's TOML config")
    run.add_argument("--broker", metavar="URL", help="override broker.url from the config")

    add_replay(sub, common)
    add_app(sub, common)
    add_report(sub, common)
    add_code_commands(sub, common)
    add_config(sub, common)
    add_scan(sub, common)
    add_hq(sub, common)
    add_rollout(sub, common)

    rules = sub.add_parser("rules", help="work with rule files")
    rules.set_defaults(print_rules_help=rules.print_help)
    rules_sub = rules.add_subparsers(dest="rules_command", metavar="SUBCOMMAND")
    add_commands(rules_sub, common)
    return parser


def _log_options(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        default=default,
        help="log verbosity (default: the config's logging.level, else info; demo: warning)",
    )
    parser.add_argument(
        "--log-format",
        choices=["auto", "json", "console"],
        default=default,
        help="log format on stderr (auto: console on a terminal, JSON lines otherwise)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        match args.command:
            case "demo":
                return _demo(args)
            case "run":
                return _run(args)
            case "rules":
                return run_rules(args)
            case "hq":
                return int(args.run_command(args))
            case "replay" | "app" | "report" | "qr" | "inspect" | "config" | "scan" | "rollout":
                result: int = args.run_command(args)
                return result
            case _:
                parser.print_help()
                return EXIT_USAGE
    except RuleFileError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAIL
    except ProximityError as exc:
        print(f"proximity: error: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout went away (e.g. `proximity demo --json | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAIL


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config) if args.config else Settings()
    return settings.with_broker(args.broker)


def _logging(args: argparse.Namespace, settings: Settings, default: LogLevel | None = None) -> None:
    level: LogLevel = args.log_level or default or settings.logging.level
    configure_logging(level, args.log_format or settings.logging.format)


def _demo(args: argparse.Namespace) -> int:
    from proximity.demo import run_demo

    if args.speed < 0:
        print("proximity demo: error: --speed must be 0 or more", file=sys.stderr)
        return EXIT_USAGE
    settings = _settings(args)
    _logging(args, settings, default="warning")
    result = asyncio.run(
        run_demo(
            settings,
            speed=args.speed,
            as_json=args.json,
            out=sys.stdout,
            record=args.record,
            funnel=args.funnel,
        )
    )
    if len(result.offers_received) < result.offers_published:
        print(
            f"proximity demo: error: {result.offers_published} offers published but only "
            f"{len(result.offers_received)} reached the shopper app",
            file=sys.stderr,
        )
        return EXIT_FAIL
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _logging(args, settings)
    # a simulation or a replay hears no real shopper: the demo key is fine there
    if settings.ble.backend not in (BleBackendKind.SIM, BleBackendKind.REPLAY) and (
        settings.identity.pseudonym_key.get_secret_value() == DEMO_PSEUDONYM_KEY
    ):
        print(
            "proximity run: error: identity.pseudonym_key is the demo key; set a secret key "
            "of your own (e.g. `openssl rand -hex 32`) before running on real hardware",
            file=sys.stderr,
        )
        return EXIT_FAIL
    if (settings.nfc or settings.scanners) and DEMO_CODE_KEY in {
        key.get_secret_value() for key in settings.codes.keys.values()
    }:
        print(
            "proximity run: error: codes.keys holds the demo key; with NFC readers or code "
            "scanners, anyone could sign codes with it: set a secret key of your own "
            '(e.g. keys = { 1 = "hex:<openssl rand -hex 32>" })',
            file=sys.stderr,
        )
        return EXIT_FAIL
    from proximity.service import serve

    asyncio.run(serve(settings, install_signals=_install_signals))
    return EXIT_OK


def _install_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
