"""The status page as server-rendered HTML with inline SVG charts: no script, no build step, no external file.

Every value from a spec or from Prometheus is escaped. A number that could not be read says "no data" (and a
recording without traffic says "no traffic"), never blank and never zero. The layout turns its tables into
cards below 700 pixels, so it reads on a phone.
"""

from __future__ import annotations

import math
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

from forge_slo import conventions as cv
from forge_slo.compile.dashboards import dashboard_uid, dashboard_url
from forge_slo.durations import format_duration
from forge_slo.oncall.history import merge
from forge_slo.oncall.status import Detail, Firing, SloRow, Status, windows_of
from forge_slo.runtime.svg import PALETTE, SLO_COLOR, Chart
from forge_slo.spec.model import PAGE, ServiceSpec

SORTS = {
    "worst": "worst first", "service": "service", "slo": "SLO", "objective": "objective",
    "attained": "attained", "budget": "budget left", "burn": "fastest burn",
}
FILTERS = {"": "every SLO", "alerting": "alerting only", "frozen": "releases frozen"}

CSS = """
:root{--bad:#b3261e;--warn:#9a5b00;--ok:#1e6b34;--muted:#5f6368;--line:#dadce0}
*{box-sizing:border-box}
body{font:15px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#202124;background:#f8f9fa}
header{background:#fff;border-bottom:1px solid var(--line);padding:10px 16px}
header h1{font-size:20px;margin:0}header h1 a{color:inherit;text-decoration:none}
.meta{color:var(--muted);margin:4px 0 0;font-size:13px}
main{padding:12px 16px;max-width:1400px}
.banner{border-radius:6px;padding:10px 14px;margin:0 0 12px;font-weight:600}
.banner.error{background:#fce8e6;color:var(--bad);border:1px solid #f4c7c3}
.banner.freeze{background:#fef7e0;color:var(--warn);border:1px solid #feefc3}
form.filters{display:flex;flex-wrap:wrap;gap:8px;margin:0 0 12px}
form.filters input,form.filters select,form.filters button{font:inherit;padding:6px 8px}
form.filters input{flex:1 1 200px}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid var(--line)}
th,td{padding:6px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th a{color:inherit}td.num{text-align:right;white-space:nowrap}
.bad{color:var(--bad);font-weight:600}.warn{color:var(--warn);font-weight:600}.ok{color:var(--ok)}
.nodata{color:var(--bad);font-style:italic}.notraffic{color:var(--muted);font-style:italic}
.burns{display:flex;flex-wrap:wrap;gap:2px 10px}.burn{white-space:nowrap}
.badge{display:inline-block;border-radius:4px;padding:1px 6px;margin:1px 2px;font-size:12px;font-weight:700}
.badge.page{background:var(--bad);color:#fff}.badge.ticket{background:#f9ab00;color:#202124}
.badge.pending{background:#e8eaed;color:#202124}.badge.none{background:#e6f4ea;color:var(--ok)}
.badge.frozen{background:#fef7e0;color:var(--warn);border:1px solid #f9ab00}
.facts{display:flex;flex-wrap:wrap;gap:4px 20px;margin:0 0 10px;padding:0;list-style:none}
.charts{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
figure{margin:0;background:#fff;border:1px solid var(--line);padding:6px;flex:0 1 574px;max-width:100%}
figure svg{max-width:100%;height:auto;display:block}figcaption{font-size:13px;color:var(--muted)}
h2{font-size:17px;margin:18px 0 8px}code{font-size:13px}
@media (max-width:700px){
 table,thead,tbody,tr,th,td{display:block}thead{display:none}
 tr{border-bottom:2px solid var(--line);padding:6px 0}
 td{border:0;padding:2px 8px}td.num{text-align:left}
 td[data-label]::before{content:attr(data-label) ": ";color:var(--muted);font-weight:400}
}
"""


@dataclass(frozen=True)
class Site:
    """What every page names: the Prometheus it reads, where Grafana is, how often it refreshes."""

    prometheus_url: str
    refresh_seconds: float
    grafana_url: str | None = None


# Numbers ---------------------------------------------------------------------------------------------------


def when(unix: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unix))


def _missing(value: float | None, what: str) -> str | None:
    """The text shown instead of a number that is missing (None) or undefined (NaN)."""
    if value is None:
        return f'<span class="nodata" title="{escape(what)}">no data</span>'
    if math.isnan(value):
        return '<span class="notraffic" title="no requests in the period">no traffic</span>'
    return None


def percent(value: float, decimals: int) -> str:
    return f"{value * 100:,.{decimals}f}%"


def attained_decimals(objective_percent: float) -> int:
    """Enough digits to tell the attainment from the objective: 99.9 -> 3, 99.95 -> 4, 99 -> 2."""
    text = f"{objective_percent:.10g}"
    digits = len(text.split(".")[1]) if "." in text else 0
    return max(2, digits + 2)


def _value(value: float | None, text: str, what: str, cls: str = "") -> str:
    shown = _missing(value, what)
    if shown is not None:
        return shown
    return f'<span class="v {cls}" data-value="{value!r}">{escape(text)}</span>'


def budget_class(row: SloRow) -> str:
    value = row.remaining
    if value is None or math.isnan(value):
        return ""
    if value < 0:
        return "bad"
    policy = row.spec.budget_policy
    return "warn" if value < (policy.freeze_below_ratio if policy else 0.25) else "ok"


def attained_cell(row: SloRow) -> str:
    value = row.attained
    text = percent(value, attained_decimals(row.slo.objective_percent)) if value is not None else ""
    cls = "" if value is None or math.isnan(value) else ("bad" if value < row.slo.objective_ratio else "ok")
    return _value(value, text, f"no {cv.PERIOD_ERROR_RATIO} series", cls)


def budget_cell(row: SloRow) -> str:
    value = row.remaining
    text = percent(value, 2) if value is not None else ""
    cell = _value(value, text, f"no {cv.ERROR_BUDGET_REMAINING} series", budget_class(row))
    if row.frozen:
        cell += ' <span class="badge frozen" title="the budget policy freezes releases">releases frozen</span>'
    return cell


def burn_text(value: float) -> str:
    return f"{value:,.2f}×"


def burns_cell(row: SloRow) -> str:
    factors: dict[float, float] = {}  # the lowest factor an alert of this SLO judges each window against
    for policy in row.spec.policies(row.slo):
        for pair in policy.windows:
            for seconds in (pair.long_seconds, pair.short_seconds):
                factors[seconds] = min(factors.get(seconds, math.inf), pair.factor)
    parts = []
    for window in windows_of(row.spec):
        value = row.burn.get(window)
        name = format_duration(window)
        cls = ""
        if value is not None and not math.isnan(value) and value >= factors.get(window, math.inf):
            cls = "bad"
        shown = _value(value, burn_text(value) if value is not None else "", f"no {cv.error_ratio(window)} series", cls)
        parts.append(f'<span class="burn" data-window="{escape(name)}">{escape(name)} {shown}</span>')
    return f'<div class="burns">{"".join(parts)}</div>'


def alert_badges(alerts: Sequence[Firing]) -> str:
    if not alerts:
        return '<span class="badge none">none</span>'
    out = []
    for alert in sorted(alerts, key=lambda a: (a.state != "firing", a.severity != PAGE, a.windows)):
        cls = alert.severity if alert.state == "firing" else "pending"
        label = f"{alert.severity} {alert.state}" + (f" {alert.windows}" if alert.windows else f" ({alert.name})")
        out.append(f'<span class="badge {escape(cls)}" title="{escape(alert.name)} since '
                   f'{escape(alert.active_at)}">{escape(label)}</span>')
    return "".join(out)


# Page frame ------------------------------------------------------------------------------------------------


def page(title: str, body: str, site: Site, at: float | None, *, refresh: bool = True) -> str:
    head = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta http-equiv="refresh" content="{site.refresh_seconds:g}">' if refresh else "",
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
    ]
    meta = ""
    if at is not None:
        meta = (f'<p class="meta">as of <time class="as-of" datetime="'
                f'{time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))}" data-unix="{at!r}">{when(at)}</time> · '
                f"Prometheus <code>{escape(site.prometheus_url)}</code> · refreshes every "
                f"{format_duration(site.refresh_seconds)}</p>")
    header = f'<header><h1><a href="/">SLO status</a></h1>{meta}</header>'
    return "".join(head) + header + f"<main>{body}</main></body></html>"


def banner(status: Status) -> str:
    if status.problem is None:
        return ""
    return (f'<div class="banner error" role="alert">Prometheus cannot be read: {escape(status.problem)}. '
            "Every number below is unknown (not zero) until it answers again.</div>")


def freeze_banner(rows: Sequence[SloRow]) -> str:
    frozen = sorted({row.spec.service for row in rows if row.frozen})
    if not frozen:
        return ""
    return (f'<div class="banner freeze" role="status">Releases frozen by the budget policy: '
            f'{escape(", ".join(frozen))}</div>')


def slo_path(service: str, slo: str) -> str:
    return f"/slo/{urllib.parse.quote(service, safe='')}/{urllib.parse.quote(slo, safe='')}"


# The list --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListQuery:
    """The list's sort and filter, from the URL's query string (unknown values fall back to the defaults)."""

    sort: str = "worst"
    descending: bool = False
    text: str = ""
    only: str = ""

    @staticmethod
    def parse(params: Mapping[str, str]) -> ListQuery:
        sort = params.get("sort", "worst")
        only = params.get("only", "")
        return ListQuery(sort=sort if sort in SORTS else "worst", descending=params.get("order") == "desc",
                         text=params.get("q", "")[:200], only=only if only in FILTERS else "")

    def link(self, **changes: str) -> str:
        params = {"sort": self.sort, "order": "desc" if self.descending else "asc", "q": self.text,
                  "only": self.only}
        params.update(changes)
        return "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v})


def _sort_value(row: SloRow, sort: str) -> tuple[object, ...]:
    def number(value: float | None) -> float:
        return math.inf if value is None or math.isnan(value) else value

    if sort == "service":
        return row.spec.service, row.slo.name, row.group_text()
    if sort == "slo":
        return row.slo.name, row.spec.service, row.group_text()
    if sort == "objective":
        return (row.slo.objective_percent,)
    if sort == "attained":
        return (number(row.attained),)
    if sort == "budget":
        return (number(row.remaining),)
    if sort == "burn":
        return (-row.max_burn,)
    return row.worst_key()


def select(rows: Sequence[SloRow], query: ListQuery) -> list[SloRow]:
    """The rows the list shows, in its order."""
    needle = query.text.strip().lower()
    out = []
    for row in rows:
        haystack = " ".join([row.spec.service, row.slo.name, row.group_text(), row.slo.description]).lower()
        if needle and needle not in haystack:
            continue
        if query.only == "alerting" and not any(a.state == "firing" for a in row.alerts):
            continue
        if query.only == "frozen" and not row.frozen:
            continue
        out.append(row)
    # A stable sort by name first: rows that tie keep a predictable order.
    out.sort(key=lambda r: (r.spec.service, r.slo.name, r.group_text()))
    out.sort(key=lambda r: _sort_value(r, query.sort), reverse=query.descending)
    return out


def _header_cell(label: str, sort: str, query: ListQuery) -> str:
    if not sort:
        return f"<th>{escape(label)}</th>"
    descending = not query.descending if query.sort == sort else False
    arrow = (" ▼" if query.descending else " ▲") if query.sort == sort else ""
    link = query.link(sort=sort, order="desc" if descending else "asc")
    return f'<th><a href="{escape(link)}">{escape(label)}{arrow}</a></th>'


def row_html(row: SloRow, *, with_names: bool = True) -> str:
    key = f"{row.spec.service}/{row.slo.name}" + (f"/{row.group_text()}" if row.group else "")
    cells = []
    if with_names:
        cells.append(f'<td data-label="Service">{escape(row.spec.service)}</td>')
        cells.append(f'<td data-label="SLO" class="slo"><a href="{escape(slo_path(row.spec.service, row.slo.name))}">'
                     f"{escape(row.slo.name)}</a></td>")
    cells += [
        f'<td data-label="Group">{escape(row.group_text()) or "<span class=notraffic>all</span>"}</td>',
        f'<td data-label="Objective" class="num">{row.slo.objective_percent:g}%</td>',
        f'<td data-label="Period" class="num">{format_duration(row.spec.period_seconds)}</td>',
        f'<td data-label="Attained" class="num attained">{attained_cell(row)}</td>',
        f'<td data-label="Budget left" class="num budget">{budget_cell(row)}</td>',
        f'<td data-label="Burn rate" class="burn-rates">{burns_cell(row)}</td>',
        f'<td data-label="Alerts" class="alerts">{alert_badges(row.alerts)}</td>',
    ]
    return f'<tr class="slo-row rank-{row.rank}" data-key="{escape(key)}">{"".join(cells)}</tr>'


def list_page(status: Status, query: ListQuery, site: Site) -> str:
    rows = select(status.rows, query)
    options = "".join(f'<option value="{k}"{" selected" if k == query.only else ""}>{escape(v)}</option>'
                      for k, v in FILTERS.items())
    sorts = "".join(f'<option value="{k}"{" selected" if k == query.sort else ""}>{escape(v)}</option>'
                    for k, v in SORTS.items())
    form = (f'<form class="filters" method="get" action="/"><input type="search" name="q" value="{escape(query.text)}" '
            f'placeholder="filter by service, SLO or label" aria-label="filter">'
            f'<select name="only" aria-label="show">{options}</select>'
            f'<select name="sort" aria-label="sort">{sorts}</select><button type="submit">apply</button></form>')
    head = "".join([
        _header_cell("Service", "service", query), _header_cell("SLO", "slo", query), _header_cell("Group", "", query),
        _header_cell("Objective", "objective", query), _header_cell("Period", "", query),
        _header_cell("Attained", "attained", query), _header_cell("Budget left", "budget", query),
        _header_cell("Burn rate", "burn", query), _header_cell("Alerts", "", query),
    ])
    body = "".join(row_html(row) for row in rows) or \
        f'<tr><td colspan="9">No SLO matches. <a href="/">Show every SLO</a> ({len(status.rows)}).</td></tr>'
    note = ('<p class="meta">Attained and budget left over each SLO\'s period; burn rate = error ratio / (1 − '
            "objective) over each alert window (1× spends the budget exactly in the period).</p>")
    content = (banner(status) + freeze_banner(status.rows) + form
               + f'<table class="slos"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>' + note)
    return page("SLO status", content, site, status.at)


# One SLO ---------------------------------------------------------------------------------------------------


def _unit(seconds: float) -> tuple[float, str]:
    if seconds >= 2 * 86400:
        return 86400.0, "days"
    if seconds >= 2 * 3600:
        return 3600.0, "hours"
    return 60.0, "minutes"


def _group_name(group: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(group.items())) or "all"


def burn_down_chart(detail: Detail) -> str:
    spec, at = detail.spec, detail.status.at
    unit, unit_name = _unit(spec.period_seconds)
    lines = detail.burn_down
    if not lines:
        why = "no data" if detail.problems or not detail.status.rows or any(
            r.remaining is None for r in detail.status.rows) else "no traffic in the period"
        return f'<figure class="burn-down"><figcaption>Budget burn-down: {why}.</figcaption></figure>'
    values = [v * 100 for line in lines for _, v in line.points]
    chart = Chart(f"Error budget left over the {format_duration(spec.period_seconds)} period",
                  f"{unit_name} before now", "budget left (%)", (-spec.period_seconds / unit, 0.0),
                  (min(0.0, min(values)) * 1.05, 105.0))
    policy = spec.budget_policy
    if policy is not None and policy.covers(detail.slo.name) and policy.freeze_below_ratio > 0:
        chart.hline(policy.freeze_below_ratio * 100, f"releases freeze below {policy.freeze_below_ratio:.0%}")
    else:  # one label near zero: two would print over each other
        chart.hline(0.0, "budget spent", color="#5f6368")
    ends = []
    for i, line in enumerate(lines[:len(PALETTE)]):
        color = PALETTE[i]
        chart.line([((t - at) / unit, v * 100) for t, v in line.points], color,
                   label=_group_name(line.group) if len(lines) > 1 else "")
        assert line.end_value is not None
        x, y = chart.px(0.0), chart.py(line.end_value * 100)
        chart.parts.append(f'<circle class="end-point" cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{color}" '
                           f'data-value="{line.end_value!r}"/>')
        ends.append(f'<span class="end-label" data-value="{line.end_value!r}">{escape(_group_name(line.group))}: '
                    f"{percent(line.end_value, 2)} left now</span>")
        chart.parts.append(f'<text class="end-label" x="{x - 6:.1f}" y="{y - 7:.1f}" font-size="11" fill="{color}" '
                           f'text-anchor="end">now {escape(percent(line.end_value, 2))}</text>')
    caption = ("From 100% at the start of the period to what the recording rule says is left now; each drop is "
               "where errors spent budget. " + " · ".join(ends))
    return f'<figure class="burn-down">{chart.render()}<figcaption>{caption}</figcaption></figure>'


def error_ratio_chart(detail: Detail) -> str:
    spec, slo, at = detail.spec, detail.slo, detail.status.at
    span = detail.error_ratio_range
    unit, unit_name = _unit(span)
    window = format_duration(detail.error_ratio_window)
    lines = [line for line in detail.error_ratio if line.points]
    if not lines:
        return (f'<figure class="error-ratio"><figcaption>Error ratio ({window}): no data over the last '
                f"{format_duration(span)}.</figcaption></figure>")
    thresholds = sorted({(w.factor * slo.error_budget_ratio, p.severity, w.long_seconds, w.short_seconds, w.factor)
                         for p in spec.policies(slo) for w in p.windows})
    top = max(v * 100 for line in lines for _, v in line.points)
    lowest = min((t[0] * 100 for t in thresholds), default=top)
    chart = Chart(f"Error ratio over {window} windows, last {format_duration(span)}", f"{unit_name} before now",
                  "error ratio (%)", (-span / unit, 0.0), (0.0, max(top, lowest) * 1.15 or 1.0))
    for i, line in enumerate(lines[:len(PALETTE)]):
        chart.line([((t - at) / unit, v * 100) for t, v in line.points], PALETTE[i],
                   label=_group_name(line.group) if len(lines) > 1 else f"error ratio ({window})")
    for ratio, severity, long_s, short_s, factor in thresholds:
        chart.hline(ratio * 100, f"{severity} {format_duration(long_s)}/{format_duration(short_s)}: {factor:g}×",
                    color=SLO_COLOR if severity == PAGE else "#f9ab00")
    return (f'<figure class="error-ratio">{chart.render()}<figcaption>Dashed: the error ratio at which each alert '
            "fires (burn-rate factor × error budget), when its long and short windows both exceed it."
            "</figcaption></figure>")


def history_table(detail: Detail) -> str:
    at = detail.status.at
    if detail.problems:
        return '<p><span class="nodata">no data</span>: the alert history could not be read.</p>'
    if not detail.history:
        return (f'<p class="history-empty">No alert of this SLO fired in the last '
                f"{format_duration(detail.spec.period_seconds)} (as far as Prometheus keeps ALERTS).</p>")
    rows = []
    for item in sorted(detail.history, key=lambda i: i.start, reverse=True):
        labels = item.labels
        windows = f"{labels.get(cv.LONG_WINDOW_LABEL, '')}/{labels.get(cv.SHORT_WINDOW_LABEL, '')}".strip("/")
        group = _group_name({k: v for k, v in labels.items() if k in detail.spec.group_by})
        rows.append(
            f'<tr><td data-label="Severity">{escape(labels.get(cv.SEVERITY_LABEL, ""))}</td>'
            f'<td data-label="Alert">{escape(labels.get("alertname", ""))}</td>'
            f'<td data-label="Windows">{escape(windows) or "–"}</td><td data-label="Group">{escape(group)}</td>'
            f'<td data-label="Started">{when(item.start)}</td>'
            f'<td data-label="Ended">{when(item.end) if item.end is not None else "still firing"}</td>'
            f'<td data-label="Duration" class="num">{_duration(item.duration(at))}</td></tr>')
    pages = len(merge([i for i in detail.history if i.labels.get(cv.SEVERITY_LABEL) == PAGE],
                      detail.history_step))
    return (f'<p class="meta">{pages} page{"s" if pages != 1 else ""} in the period; times to '
            f"{format_duration(detail.history_step)}.</p>"
            '<table class="history"><thead><tr><th>Severity</th><th>Alert</th><th>Windows</th><th>Group</th>'
            f'<th>Started</th><th>Ended</th><th>Duration</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _duration(seconds: float) -> str:
    return format_duration(max(round(seconds), 1))


def _links(spec: ServiceSpec, detail: Detail, site: Site) -> str:
    path = dashboard_url(dashboard_uid(spec.service))
    if site.grafana_url:
        grafana = f'<a href="{escape(site.grafana_url.rstrip("/") + path)}">Grafana dashboard</a>'
    else:
        grafana = f"Grafana dashboard <code>{escape(path)}</code> (start the page with --grafana-url to link it)"
    runbook = next((p.annotations["runbook_url"] for p in spec.page_and_ticket(detail.slo)
                    if "runbook_url" in p.annotations), None)
    if runbook is None:
        book = "no runbook in the spec (alerting.page.annotations.runbook_url)"
    elif runbook.startswith(("https://", "http://")):
        book = f'<a href="{escape(runbook)}">runbook</a>'
    else:
        book = f"runbook: <code>{escape(runbook)}</code>"
    return f'<ul class="facts links"><li>{grafana}</li><li>{book}</li></ul>'


def detail_page(detail: Detail, site: Site) -> str:
    spec, slo = detail.spec, detail.slo
    facts = [f"objective {slo.objective_percent:g}%", f"period {format_duration(spec.period_seconds)}",
             f"error budget {slo.error_budget_ratio:.4g} of requests", f"SLI: {slo.sli.kind}"]
    if spec.group_by:
        facts.append("grouped by " + ", ".join(spec.group_by))
    description = f"<p>{escape(slo.description)}</p>" if slo.description else ""
    rows = sorted(detail.status.rows, key=SloRow.worst_key)
    table = ('<table class="groups"><thead><tr><th>Group</th><th>Objective</th><th>Period</th><th>Attained</th>'
             "<th>Budget left</th><th>Burn rate</th><th>Alerts</th></tr></thead><tbody>"
             + "".join(row_html(r, with_names=False) for r in rows) + "</tbody></table>")
    problems = "".join(f'<div class="banner error" role="alert">Prometheus cannot be read: {escape(p)}. Numbers '
                       "below are unknown (not zero).</div>" for p in detail.problems)
    content = (f'{problems}{freeze_banner(rows)}<p><a href="/">← every SLO</a></p>'
               f"<h2>{escape(spec.service)} / {escape(slo.name)}</h2>{description}"
               f'<ul class="facts">{"".join(f"<li>{escape(f)}</li>" for f in facts)}</ul>{_links(spec, detail, site)}'
               f"<h2>By group</h2>{table}"
               f'<div class="charts">{burn_down_chart(detail)}{error_ratio_chart(detail)}</div>'
               f"<h2>Alert history</h2>{history_table(detail)}")
    return page(f"{spec.service} / {slo.name}", content, site, detail.status.at)


def not_found_page(what: str, site: Site) -> str:
    return page("Not found", f'<p>{escape(what)}</p><p><a href="/">Every SLO</a></p>', site, None, refresh=False)


def login_page(site: Site, next_path: str, wrong: bool) -> str:
    error = '<div class="banner error" role="alert">Wrong token.</div>' if wrong else ""
    form = (f'{error}<form class="filters" method="post" action="/login"><input type="hidden" name="next" '
            f'value="{escape(next_path)}"><input type="password" name="token" autocomplete="current-password" '
            'placeholder="bearer token" aria-label="token" required><button type="submit">sign in</button></form>'
            '<p class="meta">This page needs the token it was started with (--token); clients may also send '
            "<code>Authorization: Bearer TOKEN</code>.</p>")
    return page("Sign in", form, site, None, refresh=False)

