"""``proximity hq``: the chain's central service, and its database schema::

    proximity hq run --config hq.toml        every store's uplink into PostgreSQL, acked
    proximity hq migrate --config hq.toml    apply pending schema migrations and exit

The service itself is proximity/chain/hq.py; its settings proximity/chain/hqconfig.py.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import psycopg

from proximity.chain.hqconfig import HqSettings, load_hq_settings
from proximity.chain.pgstore import PgStore
from proximity.logsetup import configure_logging

EXIT_OK, EXIT_FAIL = 0, 1


def add_command(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "hq",
        parents=[common],
        help="the chain's central service: every store's uplink into PostgreSQL",
        description="proximity hq reads every store's uplink (facts batches, gateway "
        "status, rollout reports; docs/chain.md) from the central broker into PostgreSQL "
        "and acknowledges each facts batch once committed. Settings: hq.toml "
        "(deploy/hq.example.toml).",
    )
    parser.set_defaults(run_command=lambda args: _help(parser))
    hq_sub = parser.add_subparsers(dest="hq_command", metavar="SUBCOMMAND")
    run = hq_sub.add_parser(
        "run",
        parents=[common],
        help="run hq (SIGINT/SIGTERM stop it: what is buffered is committed and acked first)",
        description="Apply pending migrations, subscribe to proximity/v1/+/up/# on [hq] broker "
        "(a persistent session: what arrives while hq is down waits in the broker), commit "
        "to [hq] database, ack on proximity/v1/{store}/down/acks. /metrics and /healthz on "
        "[hq] metrics_host:metrics_port (default 127.0.0.1:9465).",
    )
    run.add_argument("--config", type=Path, required=True, help="hq.toml")
    run.set_defaults(run_command=_run)
    migrate = hq_sub.add_parser(
        "migrate",
        parents=[common],
        help="apply pending schema migrations to the chain's database and exit",
        description="Create or update the chain's tables in [hq] database "
        "(proximity/chain/schema/*.sql, applied in order, recorded in schema_migrations). "
        "`proximity hq run` does the same at start.",
    )
    migrate.add_argument("--config", type=Path, required=True, help="hq.toml")
    migrate.add_argument("--database", metavar="DSN", help="override [hq] database")
    migrate.set_defaults(run_command=_migrate)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _logging(args: argparse.Namespace) -> None:
    configure_logging(args.log_level or "info", args.log_format or "auto")


def _migrate(args: argparse.Namespace) -> int:
    settings = load_hq_settings(args.config)
    _logging(args)
    store = PgStore(args.database or settings.hq.database)
    try:
        applied = store.migrate()
    except psycopg.Error as exc:
        print(f"proximity hq migrate: error: {_first_line(exc)}", file=sys.stderr)
        return EXIT_FAIL
    finally:
        store.close()
    print(f"applied {', '.join(applied)}" if applied else "the schema is up to date")
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    settings = load_hq_settings(args.config)
    _logging(args)
    try:
        asyncio.run(_serve(settings))
    except psycopg.Error as exc:
        print(f"proximity hq: error: database: {_first_line(exc)}", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


async def _serve(settings: HqSettings) -> None:
    from proximity.chain.hq import serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await serve(settings, stop)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
