"""``proximity report``: the funnel per rule and variant, as a table, JSON, CSV or a chart."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from proximity.config import load_settings
from proximity.engine.durations import parse_duration
from proximity.measurement.store import MeasurementStore, RuleFunnel, Stage

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
