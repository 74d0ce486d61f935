"""``proximity report``: the funnel per rule and variant, as a table, JSON, CSV or a chart.

Of one store (``--config``/``--store``: the gateway's funnel file), or of the whole chain
(``--hq DSN``: the chain's PostgreSQL, see proximity/chain/report.py), where it adds the
uplift per rule against the holdout with its confidence interval and a league of stores.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proximity.config import load_settings
from proximity.engine.durations import parse_duration
from proximity.measurement.store import MeasurementStore, RuleFunnel, Stage

if TYPE_CHECKING:
    from proximity.chain.report import ChainReport

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

COLUMNS = [
    "decided",
    "suppressed",
    "published",
    "expired",
    "delivered",
    "opened",
    "clicked",
    "dismissed",
    "redeemed",
    "converted",
    "held_out",
    "held_out_converted",
]
BARS = [
    Stage.DECIDED,
    Stage.PUBLISHED,
    Stage.DELIVERED,
    Stage.OPENED,
    Stage.CLICKED,
    Stage.REDEEMED,
    Stage.CONVERTED,
]


def add_command(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "report",
        parents=[common],
        help="the funnel per rule and variant: decided … clicked, CTR, conversion, uplift",
        description="Aggregate the funnel the daemon recorded (measurement.store): per rule "
        "and variant, offers decided, suppressed, published, expired, delivered, opened, "
        "clicked, redeemed, converted; CTR (clicks per delivered), conversion (per published) and "
        "uplift against the holdout.",
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path, help="the daemon's config (its measurement.store)")
    where.add_argument("--store", type=Path, help="the funnel file itself")
    where.add_argument(
        "--hq",
        metavar="DSN",
        help="the whole chain: the funnel in hq's PostgreSQL (postgresql://user@host/db), "
        "summed over stores, with the uplift per rule and a league table of stores",
    )
    chain = parser.add_argument_group("with --hq")
    chain.add_argument(
        "--stores", metavar="A,B", help="only these stores (comma-separated store ids)"
    )
    chain.add_argument("--group", metavar="NAME", help="only the stores of [groups] NAME")
    chain.add_argument(
        "--groups-from", type=Path, metavar="HQ.toml", help="where --group is defined (hq.toml)"
    )
    chain.add_argument("--rule", metavar="ID", help="only this rule")
    parser.add_argument(
        "--since",
        metavar="WHEN",
        help='only facts since then: a duration back from now ("2h", "7d") or an ISO time',
    )
    parser.add_argument("--format", choices=["table", "json", "csv"], default="table")
    parser.add_argument(
        "--chart",
        type=Path,
        metavar="FILE.svg",
        help="also draw the funnel per rule as an SVG chart",
    )
    parser.set_defaults(run_command=run)


def run(args: argparse.Namespace) -> int:
    if args.hq is not None:
        return _run_chain(args)
    if args.stores or args.group or args.groups_from or args.rule:
        print(
            "proximity report: error: --stores, --group, --groups-from and --rule go with --hq",
            file=sys.stderr,
        )
        return EXIT_USAGE
    path = args.store
    if args.config is not None:
        path = load_settings(args.config).measurement.store
        if path is None:
            print("proximity report: error: the config has no measurement.store", file=sys.stderr)
            return EXIT_FAIL
    if not path.exists():
        print(
            f"proximity report: error: {path} does not exist (has the daemon run with "
            "measurement.store?)",
            file=sys.stderr,
        )
        return EXIT_FAIL
    try:
        since = _since(args.since)
    except ValueError as exc:
        print(f"proximity report: error: --since: {exc}", file=sys.stderr)
        return EXIT_USAGE
    store = MeasurementStore(path)
    rows = store.funnel(since)
    store.close()
    if args.chart is not None:
        args.chart.write_text(svg(rows))
    match args.format:
        case "json":
            print(json.dumps([_as_dict(r) for r in rows], indent=2))
        case "csv":
            writer = csv.DictWriter(
                sys.stdout, fieldnames=list(_as_dict(rows[0]).keys()) if rows else ["rule"]
            )
            writer.writeheader()
            for row in rows:
                writer.writerow(
                    {
                        k: ("" if v is None else v)
                        for k, v in _as_dict(row).items()
                        if not isinstance(v, dict)
                    }
                    | {"suppressed_by": ";".join(f"{k}={v}" for k, v in row.suppressed.items())}
                )
        case _:
            _table(rows)
    return EXIT_OK


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.now(UTC) - parse_duration(text)
    except ValueError:
        pass
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def _as_dict(row: RuleFunnel) -> dict[str, Any]:
    out: dict[str, Any] = {"rule": row.rule, "variant": row.variant or None}
    out.update({c: row.stages[c] for c in COLUMNS})
    out["suppressed_by"] = dict(row.suppressed)
    out["ctr"] = row.ctr
    out["redemption"] = row.redemption
    out["conversion"] = row.conversion
    out["holdout_conversion"] = row.holdout_conversion
    out["uplift"] = (
        row.conversion - row.holdout_conversion
        if row.conversion is not None and row.holdout_conversion is not None
        else None
    )
    return out


def _table(rows: list[RuleFunnel]) -> None:
    if not rows:
        print("no facts yet")
        return
    head = [
        "rule",
        "variant",
        "decided",
        "suppr.",
        "publ.",
        "expired",
        "deliv.",
        "opened",
        "clicked",
        "CTR",
        "redeemed",
        "conv.",
        "conv. %",
        "held out",
        "uplift",
    ]
    lines = [head]
    for r in rows:
        d = _as_dict(r)
        lines.append(
            [
                r.rule,
                r.variant or "-",
                *(
                    str(d[c])
                    for c in (
                        "decided",
                        "suppressed",
                        "published",
                        "expired",
                        "delivered",
                        "opened",
                        "clicked",
                    )
                ),
                _pct(r.ctr),
                str(d["redeemed"]),
                str(d["converted"]),
                _pct(r.conversion),
                str(d["held_out"]),
                "" if d["uplift"] is None else f"{d['uplift']:+.1%}",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for line in lines:
        print(
            "  ".join(
                cell.ljust(w) if i < 2 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(line, widths, strict=True))
            )
        )
    reasons = {k for r in rows for k in r.suppressed}
    if reasons:
        print(
            "\nsuppressed by: "
            + ", ".join(
                f"{reason} {sum(r.suppressed[reason] for r in rows)}" for reason in sorted(reasons)
            )
        )


def svg(rows: list[RuleFunnel]) -> str:
    """A horizontal bar chart: one group of bars per rule and variant, one bar per stage."""
    bar, gap, label_w, width = 14, 10, 220, 640
    top = max((r.stages[s] for r in rows for s in BARS), default=0) or 1
    colors = ["#4c6ef5", "#228be6", "#15aabf", "#12b886", "#40c057", "#82c91e", "#fab005"]
    height = 40 + len(rows) * (len(BARS) * bar + gap) + 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        '<text x="10" y="20" font-size="14">Offer funnel per rule</text>',
    ]
    y = 40
    for row in rows:
        name = row.rule + (f" ({row.variant})" if row.variant else "")
        parts.append(f'<text x="10" y="{y + bar}">{escape(name)}</text>')
        for n, stage in enumerate(BARS):
            count = row.stages[stage]
            w = (width - label_w - 60) * count / top
            parts.append(
                f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar - 2}" '
                f'fill="{colors[n]}"><title>{stage}: {count}</title></rect>'
            )
            parts.append(
                f'<text x="{label_w + w + 4:.1f}" y="{y + bar - 4}">{stage} {count}</text>'
            )
            y += bar
        y += gap
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


# -- the whole chain (--hq) -------------------------------------------------------------------


def _run_chain(args: argparse.Namespace) -> int:
    import psycopg

    from proximity.chain.hqconfig import load_hq_settings
    from proximity.chain.report import chain_report

    stores: list[str] | None = None
    if args.stores:
        stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    if args.group is not None:
        if args.groups_from is None:
            print("proximity report: error: --group needs --groups-from hq.toml", file=sys.stderr)
            return EXIT_USAGE
        group = load_hq_settings(args.groups_from).group(args.group)  # ConfigError: main's
        stores = group if stores is None else [s for s in stores if s in group]
    try:
        since = _since(args.since)
    except ValueError as exc:
        print(f"proximity report: error: --since: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with psycopg.connect(args.hq) as conn:
            report = chain_report(conn, stores=stores, rule=args.rule, since=since)
    except psycopg.Error as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"proximity report: error: --hq: {reason}", file=sys.stderr)
        return EXIT_FAIL
    if args.chart is not None:
        args.chart.write_text(svg(report.funnel))
    match args.format:
        case "json":
            doc = {
                "stores": stores,
                "funnel": [_as_dict(r) for r in report.funnel],
                "uplift": [u.as_dict() for u in report.uplift],
                "league": [s.as_dict() for s in report.league],
            }
            print(json.dumps(doc, indent=2))
        case "csv":
            _chain_csv(report)
        case _:
            _table(report.funnel)
            if report.funnel:
                _chain_tables(report)
    return EXIT_OK


def _chain_csv(report: ChainReport) -> None:
    """One CSV, a ``table`` column saying which table a line is of: funnel, uplift, league."""
    lines: list[dict[str, Any]] = []
    for row in report.funnel:
        d = _as_dict(row)
        d["suppressed_by"] = ";".join(f"{k}={v}" for k, v in row.suppressed.items())
        lines.append({"table": "funnel", **d})
    lines += [{"table": "uplift", **u.as_dict()} for u in report.uplift]
    lines += [{"table": "league", **s.as_dict()} for s in report.league]
    fields: list[str] = []
    for line in lines:
        fields += [k for k in line if k not in fields]
    writer = csv.DictWriter(sys.stdout, fieldnames=fields or ["table"])
    writer.writeheader()
    for line in lines:
        writer.writerow({k: ("" if v is None else v) for k, v in line.items()})


def _chain_tables(report: ChainReport) -> None:
    print("\nuplift per rule across the chain (conversion vs holdout, 95% interval)")
    head = ["rule", "publ.", "conv.", "conv. %", "held out", "held conv.", "holdout %", "uplift"]
    lines = [head]
    for u in report.uplift:
        interval = u.interval
        uplift = "" if u.uplift is None else f"{u.uplift:+.1%}"
        if interval is not None:
            uplift += f" [{interval[0]:+.1%}, {interval[1]:+.1%}]"
        lines.append(
            [
                u.rule,
                str(u.published),
                str(u.converted),
                _pct(u.conversion),
                str(u.held_out),
                str(u.held_out_converted),
                _pct(u.holdout_conversion),
                uplift,
            ]
        )
    _print_lines(lines)
    print("\nstores, best conversion first")
    lines = [["#", "store", "published", "redeemed", "converted", "conv. %"]]
    for n, s in enumerate(report.league, 1):
        lines.append(
            [
                str(n),
                s.store,
                str(s.published),
                str(s.redeemed),
                str(s.converted),
                _pct(s.conversion),
            ]
        )
    _print_lines(lines, left=(1,))


def _print_lines(lines: list[list[str]], left: tuple[int, ...] = (0,)) -> None:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for line in lines:
        print(
            "  ".join(
                cell.ljust(w) if i in left else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(line, widths, strict=True))
            )
        )
