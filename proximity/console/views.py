"""The console's pages, rendered on the server as plain HTML (no template engine).

Every value that comes from a file or the store goes through :func:`html.escape`. The
pages carry no inline script or style (the server's Content-Security-Policy forbids
both): the live page's data for its script sits in ``data-`` attributes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from proximity.chain.report import Uplift
from proximity.engine.lint import Finding
from proximity.engine.ruletests import CaseResult
from proximity.errors import RuleError
from proximity.events import EventKind
from proximity.measurement.store import RuleFunnel, Stage
from proximity.presence.floorplan import Circle, FloorPlan

FUNNEL = [
    Stage.DECIDED,
    Stage.PUBLISHED,
    Stage.DELIVERED,
    Stage.OPENED,
    Stage.CLICKED,
    Stage.REDEEMED,
    Stage.CONVERTED,
]
PAGES = [("/console/", "Live store"), ("/console/funnel", "Funnel"), ("/console/rules", "Rules")]
"""The gateway console's pages (the chain's console has its own: proximity/console/chain.py)."""


def page(
    title: str, here: str, body: str, version: str, pages: Sequence[tuple[str, str]] = PAGES
) -> bytes:
    """A whole page: the layout, the stylesheet and script, the nav of ``pages``
    ((path, name) pairs; ``here`` is marked as the current one) and ``body``."""
    current = ' aria-current="page"'
    nav = "".join(
        f'<li><a href="{href}"{current if href == here else ""}>{escape(name)}</a></li>'
        for href, name in pages
    )
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} · Proximity console</title>"
        '<link rel="stylesheet" href="/console/static/console.css">'
        '<script defer src="/console/static/console.js"></script>'
        "</head><body>"
        '<a class="skip" href="#main">Skip to content</a>'
        f'<header><p class="brand">Proximity <span>{escape(version)}</span></p>'
        f'<nav aria-label="Console"><ul>{nav}</ul></nav></header>'
        f'<main id="main" tabindex="-1"><h1>{escape(title)}</h1>{body}</main>'
        "</body></html>\n"
    ).encode()


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


# -- live store ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScannerHealth:
    id: str
    alive: bool | None
    """None: nothing reports this scanner's health (a local radio without a floor plan)."""
    position: tuple[float, float] | None = None

    @property
    def state(self) -> str:
        return "unknown" if self.alive is None else "alive" if self.alive else "silent"


def live(
    zones: Sequence[tuple[str, str | None]],
    occupancy: Mapping[str, int],
    scanners: Sequence[ScannerHealth],
    nodes: Mapping[str, str],
    plan: FloorPlan | None,
    recent: Sequence[Mapping[str, Any]],
    offers_per_minute: int,
) -> str:
    """``zones``: (id, name) of every zone; ``nodes``: scanner node → its state."""
    top = max(occupancy.values(), default=0)
    out = [
        '<section aria-labelledby="now-h" class="figures"><h2 id="now-h" class="sr">Now</h2>',
        f'<p><strong id="shoppers" data-live="shoppers">{sum(occupancy.values())}</strong> '
        "shoppers in zones</p>",
        f'<p><strong data-live="opm">{offers_per_minute}</strong> offers per minute</p>',
        '<p><span id="stream" data-live="stream" role="status">connecting…</span></p>',
        "</section>",
        '<div class="live">',
        '<section aria-labelledby="map-h"><h2 id="map-h">Floor</h2>',
    ]
    if plan is not None:
        out.append(_floor_svg(plan, occupancy, top, {s.id: s for s in scanners}))
    else:
        out.append(
            '<p class="note">No floor plan (presence method threshold): zones as boxes.</p>'
            '<ul class="boxes">'
        )
        for zone, name in zones:
            n = occupancy.get(zone, 0)
            out.append(
                f'<li data-zone="{escape(zone)}" data-shade="{_shade(n, top):.2f}">'
                f"<strong>{escape(name or zone)}</strong> "
                f'<span class="count" data-zone-count="{escape(zone)}">{n}</span></li>'
            )
        out.append("</ul>")
    out.append(
        '<table class="zones"><caption>Shoppers per zone</caption>'
        '<thead><tr><th scope="col">Zone</th><th scope="col">Shoppers now</th></tr></thead><tbody>'
    )
    for zone, name in zones:
        label = escape(zone) + (f" <small>{escape(name)}</small>" if name else "")
        out.append(
            f'<tr><th scope="row">{label}</th><td class="num" '
            f'data-zone-count="{escape(zone)}">{occupancy.get(zone, 0)}</td></tr>'
        )
    out.append("</tbody></table>")
    out.append(
        '<table class="scanners"><caption>Scanners</caption><thead><tr><th scope="col">Scanner'
        '</th><th scope="col">Health</th></tr></thead><tbody>'
    )
    for s in scanners:
        state = s.state
        out.append(
            f'<tr><th scope="row">{escape(s.id)}</th>'
            f'<td data-scanner="{escape(s.id)}" class="{state}">{state}</td></tr>'
        )
    for node, state in sorted(nodes.items()):
        out.append(
            f'<tr><th scope="row">node {escape(node)}</th>'
            f'<td class="{escape(state)}">{escape(state)}</td></tr>'
        )
    out.append("</tbody></table></section>")
    out.append(
        '<section aria-labelledby="feed-h"><h2 id="feed-h">Live feed</h2>'
        '<p class="note">Newest first. Shoppers are shown as 4 characters of a hash.</p>'
        '<ol id="feed" class="feed" aria-live="polite" reversed>'
    )
    out.extend(feed_item(entry) for entry in reversed(recent))
    out.append("</ol></section></div>")
    return "".join(out)


def feed_item(entry: Mapping[str, Any]) -> str:
    """One feed line (the script builds the same from the stream's JSON)."""
    at = str(entry.get("at", ""))[11:19]
    kind = str(entry.get("kind", ""))
    zone = entry.get("zone")
    what = escape(kind)
    if kind == "offer":
        variant = entry.get("variant")
        what = f"offer <b>{escape(str(entry.get('rule')))}</b>" + (
            f" ({escape(str(variant))})" if variant else ""
        )
    where = f" in {escape(str(zone))}" if zone else ""
    who = escape(str(entry.get("who", "")))
    return (
        f'<li class="{"offer" if kind == "offer" else "event"}"><time>{escape(at)}</time> '
        f'<span class="who">{who}</span> {what}{where}</li>'
    )


def _shade(n: int, top: int) -> float:
    return 0.08 + 0.72 * (n / top) if top else 0.08


def _floor_svg(
    plan: FloorPlan, occupancy: Mapping[str, int], top: int, health: Mapping[str, ScannerHealth]
) -> str:
    x0, y0, x1, y1 = plan.bounds()
    w, h = x1 - x0, y1 - y0
    font = max(w, h) / 40
    out = [
        f'<svg id="floor" class="floor" viewBox="{x0:g} {y0:g} {w:g} {h:g}" role="img" '
        f'aria-labelledby="floor-t" font-size="{font:.2f}">'
        f'<title id="floor-t">Floor plan {escape(plan.name)}: zones shaded by shoppers now</title>'
        f'<rect x="{x0:g}" y="{y0:g}" width="{w:g}" height="{h:g}" class="ground"/>'
    ]
    for zone in plan.zones:
        n = occupancy.get(zone.id, 0)
        attrs = f'class="zone" fill-opacity="{_shade(n, top):.2f}"'
        shape = zone.shape
        if isinstance(shape, Circle):
            (cx, cy), r = shape.center, shape.radius
            drawn = f'<circle cx="{cx:g}" cy="{cy:g}" r="{r:g}" {attrs}/>'
        else:
            points = " ".join(f"{x:g},{y:g}" for x, y in shape.points)
            drawn = f'<polygon points="{points}" {attrs}/>'
        cx, cy = zone.centroid
        label = escape(zone.name or zone.id)
        out.append(
            f'<g data-zone="{escape(zone.id)}"><title>{label}</title>{drawn}'
            f'<text x="{cx:g}" y="{cy - font * 0.7:g}" text-anchor="middle">{escape(zone.id)}'
            f'</text><text x="{cx:g}" y="{cy + font * 1.6:g}" text-anchor="middle" '
            f'class="count" data-zone-count="{escape(zone.id)}">{n}</text></g>'
        )
    for scanner in plan.scanners:
        known = health.get(scanner.id)
        state = "unknown" if known is None else known.state
        x, y = scanner.position
        out.append(
            f'<g class="scanner {state}" data-scanner="{escape(scanner.id)}">'
            f"<title>{escape(scanner.id)}: {state}</title>"
            f'<rect x="{x - font * 0.35:g}" y="{y - font * 0.35:g}" width="{font * 0.7:g}" '
            f'height="{font * 0.7:g}"/></g>'
        )
    out.append("</svg>")
    out.append(
        '<p class="note legend"><span class="key alive"></span> scanner alive '
        '<span class="key silent"></span> scanner silent · zones darker with more shoppers</p>'
    )
    return "".join(out)


# -- funnel -------------------------------------------------------------------------------------


def funnel(rows: Sequence[RuleFunnel], uplift: Mapping[str, Uplift]) -> str:
    if not rows:
        return "<p>No facts yet: the funnel fills as offers are decided.</p>"
    out = [
        '<section aria-labelledby="funnel-h"><h2 id="funnel-h">Per rule and variant</h2>',
        '<div class="scroll"><table class="funnel"><thead><tr><th scope="col">Rule</th>'
        '<th scope="col">Variant</th>',
    ]
    out += [f'<th scope="col" class="num">{escape(str(s).capitalize())}</th>' for s in FUNNEL]
    out.append(
        '<th scope="col" class="num">CTR</th><th scope="col" class="num">Conv.</th>'
        '<th scope="col" class="num">Held out</th><th scope="col" class="num">Holdout conv.</th>'
        '<th scope="col">Uplift [95% interval]</th></tr></thead><tbody>'
    )
    for row in rows:
        key = f"{row.rule}/{row.variant}"
        out.append(
            f'<tr data-row="{escape(key)}"><th scope="row">{escape(row.rule)}</th>'
            f"<td>{escape(row.variant) or '–'}</td>"
        )
        out += [f'<td class="num" data-stage="{s}">{row.stages[s]}</td>' for s in FUNNEL]
        u = _variant_uplift(row, uplift.get(row.rule))
        out.append(
            f'<td class="num" data-rate="ctr">{pct(row.ctr)}</td>'
            f'<td class="num" data-rate="conversion">{pct(row.conversion)}</td>'
            f'<td class="num" data-stage="held_out">{u.held_out}</td>'
            f'<td class="num">{pct(u.holdout_conversion)}</td>'
            f'<td data-rate="uplift">{uplift_text(u)}</td></tr>'
        )
    out.append("</tbody></table></div>")
    out.append(
        '<p class="note">CTR: clicked per delivered. Conv.: converted per published. '
        "Uplift: conversion minus the holdout's (the rule's holdout, shared by its variants), "
        "with a 95% interval (normal approximation), as <code>proximity report --hq</code> "
        "computes it.</p></section>"
    )
    out.append(
        '<section aria-labelledby="chart-h"><h2 id="chart-h">Chart</h2>'
        f'<figure class="chart">{chart(rows)}'
        '<figcaption id="chart-c">Offers at each stage, per rule and variant: '
        + ", ".join(str(s) for s in FUNNEL)
        + ".</figcaption></figure></section>"
    )
    return "".join(out)


_COLORS = ["#4c6ef5", "#228be6", "#15aabf", "#12b886", "#40c057", "#82c91e", "#fab005"]


def chart(rows: Sequence[RuleFunnel]) -> str:
    """Horizontal bars: one group per rule and variant, one bar per funnel stage, every
    bar on the same scale (the largest count of the page spans the bar area)."""
    bar, gap, label_w, area, width = 16, 18, 100, 520, 700
    top = max((r.stages[s] for r in rows for s in FUNNEL), default=0) or 1
    height = 10 + len(rows) * (22 + len(FUNNEL) * bar + gap)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-labelledby="chart-c" '
        'font-family="sans-serif" font-size="12">'
    ]
    y = 10
    for row in rows:
        name = row.rule + (f" ({row.variant})" if row.variant else "")
        out.append(f'<text x="0" y="{y + 13}" font-weight="bold">{escape(name)}</text>')
        y += 22
        for n, stage in enumerate(FUNNEL):
            count = row.stages[stage]
            w = area * count / top
            out.append(
                f'<text x="{label_w - 6}" y="{y + bar - 4}" text-anchor="end">{stage}</text>'
                f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar - 3}" '
                f'fill="{_COLORS[n]}"><title>{escape(name)}: {stage} {count}</title></rect>'
                f'<text x="{label_w + w + 5:.1f}" y="{y + bar - 4}">{count}</text>'
            )
            y += bar
        y += gap
    out.append("</svg>")
    return "".join(out)


def _variant_uplift(row: RuleFunnel, rule: Uplift | None) -> Uplift:
    held, held_conv = (rule.held_out, rule.held_out_converted) if rule else (0, 0)
    return Uplift(
        row.rule, row.stages[Stage.PUBLISHED], row.stages[Stage.CONVERTED], held, held_conv
    )


def uplift_text(u: Uplift) -> str:
    """The uplift with its 95 % interval, e.g. ``+2.1% [+0.4%, +3.8%]`` (– when none)."""
    if u.uplift is None:
        return "–"
    text = f"{u.uplift:+.1%}"
    if u.interval is not None:
        low, high = u.interval
        text += f" [{low:+.1%}, {high:+.1%}]"
    return escape(text)


# -- rules --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RulesView:
    version: str | None
    rules: int
    files: Sequence[str]
    reloads: int | None
    """Reloads and failures counted by the hot reload (None: rules are not watched)."""
    failures: int | None
    errors: Sequence[RuleError]
    """What is wrong with the files on disk now."""
    on_disk: str | None
    """The version of the files on disk, when they are valid."""
    findings: Sequence[Finding]
    tests: Sequence[CaseResult]


def rules(view: RulesView, explain_form: str, explained: str) -> str:
    out = [
        '<section aria-labelledby="serving-h"><h2 id="serving-h">Serving</h2><dl class="facts">',
        f'<dt>Version</dt><dd><code data-live="version">{escape(view.version or "–")}</code></dd>',
        f"<dt>Rules</dt><dd>{view.rules}</dd>",
        "<dt>Files</dt><dd>" + ", ".join(f"<code>{escape(f)}</code>" for f in view.files) + "</dd>",
    ]
    if view.reloads is not None:
        out.append(f"<dt>Hot reload</dt><dd>{view.reloads} reloaded, {view.failures} failed</dd>")
    else:
        out.append("<dt>Hot reload</dt><dd>off (<code>[rules] watch = false</code>)</dd>")
    out.append("</dl></section>")
    out.append('<section aria-labelledby="reload-h"><h2 id="reload-h">Last reload</h2>')
    if view.errors:
        out.append(
            f'<p class="bad" role="alert">The rule files on disk have {len(view.errors)} '
            f"problem{'s' if len(view.errors) != 1 else ''}: the last good rules keep serving."
            '</p><ul class="errors" id="reload-errors">'
        )
        out += [
            f"<li><code>{escape(f'{e.path}:{e.line}:{e.column}')}</code>: {escape(e.message)}</li>"
            for e in view.errors
        ]
        out.append("</ul>")
    else:
        out.append('<p class="good" id="reload-ok">The rule files on disk are valid')
        if view.on_disk is not None and view.on_disk != view.version:
            out.append(
                f" (version <code>{escape(view.on_disk)}</code>) but not serving: the hot "
                "reload has not looked yet, or refused them (its reason is in the log)"
            )
        out.append(".</p>")
    out.append("</section>")
    out.append('<section aria-labelledby="lint-h"><h2 id="lint-h">Lint</h2>')
    if view.findings:
        out.append(
            '<table><thead><tr><th scope="col">Where</th><th scope="col">Severity</th>'
            '<th scope="col">Finding</th></tr></thead><tbody>'
        )
        out += [
            f"<tr><td><code>{escape(str(f.source))}</code></td>"
            f'<td class="{escape(str(f.severity))}">{escape(str(f.severity))}</td>'
            f"<td>{escape(f.message)}</td></tr>"
            for f in view.findings
        ]
        out.append("</tbody></table>")
    else:
        out.append("<p>No findings.</p>")
    out.append('</section><section aria-labelledby="tests-h"><h2 id="tests-h">Tests</h2>')
    if view.tests:
        passed = sum(t.passed for t in view.tests)
        out.append(
            f"<p>{passed} passed, {len(view.tests) - passed} failed.</p>"
            '<table><thead><tr><th scope="col">Case</th><th scope="col">Result</th>'
            '<th scope="col">Problem</th></tr></thead><tbody>'
        )
        for t in view.tests:
            result = "pass" if t.passed else "fail"
            problem = "" if t.passed else f"<code>{escape(str(t.source))}</code>: "
            problem += escape(t.problem or "")
            out.append(
                f'<tr><th scope="row">{escape(t.name)}</th><td class="{result}">{result}</td>'
                f"<td>{problem}</td></tr>"
            )
        out.append("</tbody></table>")
    else:
        out.append("<p>No <code>[[tests]]</code> cases in the rule files.</p>")
    out.append("</section>")
    out.append(
        '<section aria-labelledby="explain-h"><h2 id="explain-h">Explain</h2>'
        "<p>Every rule's verdict on one event, and the delivery control that would hold a "
        "match back — the same engine call as <code>proximity rules explain</code>.</p>"
        f"{explain_form}{explained}</section>"
    )
    return "".join(out)


def explain_form(zones: Iterable[str], values: Mapping[str, str]) -> str:
    kind = values.get("kind", "zone.dwell")
    options = "".join(
        f"<option{' selected' if k.value == kind else ''}>{escape(k.value)}</option>"
        for k in EventKind
    )
    zone = values.get("zone", "")
    zone_options = '<option value="">(none)</option>' + "".join(
        f"<option{' selected' if z == zone else ''}>{escape(z)}</option>" for z in zones
    )
    consent = "consent" not in values or values.get("consent") in ("on", "true", "1")
    return (
        '<form method="get" action="/console/rules#explain-h" class="explain">'
        f'<p><label for="x-kind">Event kind</label><select id="x-kind" name="kind">{options}'
        "</select></p>"
        f'<p><label for="x-zone">Zone</label><select id="x-zone" name="zone">{zone_options}'
        "</select></p>"
        '<p><label for="x-dwell">Dwell (seconds)</label><input id="x-dwell" name="dwell" '
        f'type="number" min="0" step="any" value="{escape(values.get("dwell", ""))}"></p>'
        '<p><label for="x-at">At (ISO time, store time if no offset; empty: now)</label>'
        f'<input id="x-at" name="at" value="{escape(values.get("at", ""))}" '
        'placeholder="2026-11-24T10:00:00"></p>'
        '<p><label for="x-segments">Segments (comma-separated)</label><input id="x-segments" '
        f'name="segments" value="{escape(values.get("segments", ""))}"></p>'
        '<p class="check"><input type="hidden" name="consent" value="off">'
        f'<input id="x-consent" name="consent" type="checkbox" value="on"'
        f'{" checked" if consent else ""}><label for="x-consent">Consented to personal offers'
        "</label></p>"
        '<p><button type="submit" name="explain" value="1">Explain</button></p></form>'
    )


def explained(heading: str, lines: Sequence[Mapping[str, str | None]]) -> str:
    out = [
        f'<table id="verdicts"><caption>{escape(heading)}</caption><thead><tr>'
        '<th scope="col">Rule</th><th scope="col">Verdict</th><th scope="col">Control</th>'
        '<th scope="col">Why</th></tr></thead><tbody>'
    ]
    for line in lines:
        verdict = line.get("verdict") or ""
        out.append(
            f'<tr data-rule="{escape(line.get("rule") or "")}"><th scope="row">'
            f"{escape(line.get('rule') or '')}</th>"
            f'<td class="{escape(verdict)}" data-verdict="{escape(verdict)}">{escape(verdict)}'
            f'</td><td data-control="{escape(line.get("control") or "")}">'
            f"{escape(line.get('control') or '')}</td>"
            f"<td>{escape(line.get('reason') or 'fires: an offer would be sent')}</td></tr>"
        )
    out.append("</tbody></table>")
    return "".join(out)


def problem(message: str) -> str:
    return f'<p class="bad" role="alert" id="explain-error">{escape(message)}</p>'
