"""The chain's console's pages (proximity/console/chain.py serves them), rendered on the
server as plain HTML like the gateway console's (:mod:`.views`, whose layout, funnel
table and chart they use). Every value from the database or a gateway goes through
:func:`html.escape`; the fleet table's rows are also what the live stream carries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Any

from proximity.chain.report import ChainReport, StoreLine
from proximity.console import views
from proximity.engine.durations import format_duration


@dataclass(frozen=True, slots=True)
class GatewayRow:
    """One gateway's last status, as the ``fleet`` table or hq's memory has it."""

    store: str
    gateway: str
    last_seen: datetime
    online: bool
    version: str = ""
    rules_version: str = ""
    bundle: int | None = None
    outbox_depth: int = 0
    uplink_pending: int = 0
    errors: int = 0


@dataclass(frozen=True, slots=True)
class RolloutRow:
    """A store's latest rollout report (the ``rollout_latest`` view)."""

    store: str
    gateway: str
    bundle: int
    outcome: str
    reason: str
    rules_version: str
    at: datetime


def _when(at: datetime | None) -> str:
    if at is None:
        return "–"
    utc = at.astimezone(UTC)
    return f'<time datetime="{utc.isoformat()}">{utc:%Y-%m-%d %H:%M:%S}</time>'


def fleet(live: dict[str, Any], problem: str | None, stale_after: timedelta) -> str:
    """The fleet page's body; ``live``: :meth:`ChainConsole.live`."""
    out = [
        '<section aria-labelledby="now-h" class="figures"><h2 id="now-h" class="sr">Now</h2>',
        f'<p><strong data-live="stores">{live["stores"]}</strong> stores</p>',
        f'<p><strong data-live="stale">{live["stale"]}</strong> stale</p>',
        '<p><span id="stream" data-live="stream" role="status">connecting…</span></p>',
        "</section>",
    ]
    if problem is not None:
        out.append(
            views.problem(f"PostgreSQL could not be read ({problem}): showing what hq holds.")
        )
    out.append(
        '<section aria-labelledby="fleet-h"><h2 id="fleet-h">Gateways</h2>'
        '<div class="scroll"><table class="fleet"><caption>Stale stores first: a store is '
        "stale when none of its gateways is online and heard from within "
        f"<code>stale_after</code> ({format_duration(stale_after)})</caption><thead><tr>"
        '<th scope="col">Store</th><th scope="col">Gateway</th><th scope="col">State</th>'
        '<th scope="col">Last seen (UTC)</th><th scope="col">Version</th>'
        '<th scope="col">Rules version</th><th scope="col" class="num">Bundle</th>'
        '<th scope="col" class="num">Outbox</th><th scope="col" class="num">Uplink pending</th>'
        '<th scope="col" class="num">Errors</th><th scope="col">Latest rollout</th>'
        f'</tr></thead><tbody id="fleet-rows">{live["rows"]}</tbody></table></div>'
        '<p class="note">Live: a gateway status or rollout report arriving updates this '
        "table, as does a store going stale. Last seen: hq's clock, by a status, a facts "
        "batch or a rollout report.</p></section>"
    )
    return "".join(out)


def fleet_rows(
    rows: Sequence[GatewayRow], stale: dict[str, bool], rollouts: dict[str, RolloutRow]
) -> str:
    """The fleet table's rows, stale stores first, then by store and gateway."""
    if not rows:
        return '<tr><td colspan="11">No gateway has reported yet.</td></tr>'
    out = []
    ordered = sorted(rows, key=lambda r: (not stale.get(r.store, False), r.store, r.gateway))
    for row in ordered:
        is_stale = stale.get(row.store, False)
        if is_stale:
            state = "stale"
        elif not row.online:
            state = "offline"
        else:
            state = "online"
        cls = ' class="stale"' if is_stale else ""
        store = escape(row.store)
        out.append(
            f'<tr data-store="{store}" data-gateway="{escape(row.gateway)}"'
            f' data-state="{state}"{cls}><th scope="row">{store}</th>'
            f"<td>{escape(row.gateway)}</td>"
            f'<td class="{state}" data-field="state">{"⚠ " if is_stale else ""}{state}</td>'
            f'<td data-field="last_seen">{_when(row.last_seen)}</td>'
            f'<td data-field="version">{escape(row.version) or "–"}</td>'
            f'<td data-field="rules_version"><code>{escape(row.rules_version) or "–"}</code></td>'
            f'<td class="num" data-field="bundle">'
            f"{row.bundle if row.bundle is not None else '–'}</td>"
            f'<td class="num" data-field="outbox_depth">{row.outbox_depth}</td>'
            f'<td class="num" data-field="uplink_pending">{row.uplink_pending}</td>'
            f'<td class="num" data-field="errors">{row.errors}</td>'
            f'<td data-field="rollout">{_rollout(rollouts.get(row.store))}</td></tr>'
        )
    return "".join(out)


def _rollout(report: RolloutRow | None) -> str:
    if report is None:
        return "–"
    outcome = escape(report.outcome)
    cls = "good" if report.outcome == "applied" else "bad"
    reason = f": {escape(report.reason)}" if report.reason else ""
    return (
        f'<span class="{cls}" data-outcome="{outcome}">bundle {report.bundle} {outcome}</span>'
        f"{reason} <small>({escape(report.gateway)}, {_when(report.at)})</small>"
    )


def funnel_form(groups: Sequence[str], values: dict[str, str]) -> str:
    chosen = values.get("group", "")
    options = '<option value="">(every store)</option>' + "".join(
        f"<option{' selected' if g == chosen else ''}>{escape(g)}</option>" for g in groups
    )
    return (
        '<form method="get" action="/console/funnel" class="explain">'
        f'<p><label for="f-group">Group (hq.toml <code>[groups]</code>)</label>'
        f'<select id="f-group" name="group">{options}</select></p>'
        '<p><label for="f-since">Since (a duration back, "7d", or an ISO time)</label>'
        f'<input id="f-since" name="since" value="{escape(values.get("since", ""))}" '
        'placeholder="7d"></p><p><button type="submit">Show</button></p></form>'
    )


def scope(group: str | None, stores: Sequence[str] | None, since: datetime | None) -> str:
    """What the report covers, in words."""
    who = (
        "Every store"
        if group is None
        else f"Group {escape(group)}: " + ", ".join(escape(s) for s in stores or ())
    )
    when = "all facts" if since is None else f"facts since {_when(since)} UTC"
    return f'<p id="scope">{who}; {when}.</p>'


def chain_funnel(report: ChainReport) -> str:
    """The chain report: the funnel table and chart (the gateway console's), uplift per
    rule with its interval, and the league of stores."""
    uplift = {u.rule: u for u in report.uplift}
    out = [views.funnel(report.funnel, uplift)]
    if not report.funnel:
        return out[0]
    out.append(
        '<section aria-labelledby="uplift-h"><h2 id="uplift-h">Uplift per rule</h2>'
        '<table class="uplift"><thead><tr><th scope="col">Rule</th>'
        '<th scope="col" class="num">Published</th><th scope="col" class="num">Converted</th>'
        '<th scope="col" class="num">Conv.</th><th scope="col" class="num">Held out</th>'
        '<th scope="col" class="num">Holdout conv.</th><th scope="col">Uplift [95% interval]'
        "</th></tr></thead><tbody>"
    )
    for u in report.uplift:
        out.append(
            f'<tr data-uplift="{escape(u.rule)}"><th scope="row">{escape(u.rule)}</th>'
            f'<td class="num">{u.published}</td><td class="num">{u.converted}</td>'
            f'<td class="num">{views.pct(u.conversion)}</td><td class="num">{u.held_out}</td>'
            f'<td class="num">{views.pct(u.holdout_conversion)}</td>'
            f'<td data-rate="uplift">{views.uplift_text(u)}</td></tr>'
        )
    out.append("</tbody></table></section>")
    out.append(league(report.league))
    return "".join(out)


def league(stores: Sequence[StoreLine]) -> str:
    out = [
        '<section aria-labelledby="league-h"><h2 id="league-h">League of stores</h2>'
        '<table class="league"><thead><tr><th scope="col" class="num">#</th>'
        '<th scope="col">Store</th><th scope="col" class="num">Published</th>'
        '<th scope="col" class="num">Redeemed</th><th scope="col" class="num">Converted</th>'
        '<th scope="col" class="num">Redemption</th><th scope="col" class="num">Conv.</th>'
        "</tr></thead><tbody>"
    ]
    for n, s in enumerate(stores, 1):
        out.append(
            f'<tr data-league="{escape(s.store)}"><td class="num">{n}</td>'
            f'<th scope="row">{escape(s.store)}</th><td class="num">{s.published}</td>'
            f'<td class="num">{s.redeemed}</td><td class="num">{s.converted}</td>'
            f'<td class="num">{views.pct(s.redemption)}</td>'
            f'<td class="num">{views.pct(s.conversion)}</td></tr>'
        )
    out.append(
        '</tbody></table><p class="note">Counts summed over the stores\' facts first, then '
        "divided (never an average of the stores' rates); best conversion first.</p></section>"
    )
    return "".join(out)
