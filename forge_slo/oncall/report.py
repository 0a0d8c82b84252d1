"""``forge-slo report``: an error-budget report of a period for a service review, as HTML, Markdown and JSON.

Per SLO (and group): attainment and budget consumed over the period, read with the compiled rules' own
arithmetic (a ratio of sums of the recorded base-window rates over the report's period); the days that spent
the most budget; every page and ticket with its duration; and the change against the period before.

Pages and tickets are found by evaluating the compiled burn-rate alert conditions over the period (every
``step``, honouring their ``for``) on the recorded error ratios, so the report also covers backfilled data
and periods whose alerts Prometheus never evaluated. Overlapping alerts of one SLO and severity (several
windows, several groups) are one page, as Alertmanager groups them.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from html import escape
from pathlib import Path
from typing import Any

from forge_slo import conventions as cv
from forge_slo import promql
from forge_slo.compile.rules import burn_alert_expr, sli_recordings
from forge_slo.durations import format_duration
from forge_slo.errors import UsageError
from forge_slo.oncall.history import Interval, intervals, merge
from forge_slo.oncall.pages import CSS, attained_decimals, percent
from forge_slo.oncall.status import group_labels
from forge_slo.runtime.svg import PALETTE, Chart
from forge_slo.sources.prometheus import PrometheusClient
from forge_slo.spec.model import PAGE, SLO, TICKET, ServiceSpec

WORST_DAYS = 5
MAX_CHUNKS = 10_000
FILES = ("report.html", "report.md", "report.json")


@dataclass(frozen=True)
class Incident:
    """A page or a ticket: the union of the SLO's alerts of one severity that fired together."""

    severity: str
    start: float
    end: float | None  # None: still firing at the end of the period
    windows: tuple[str, ...]
    groups: tuple[str, ...]

    def duration(self, until: float) -> float:
        return (self.end if self.end is not None else until) - self.start


@dataclass(frozen=True)
class Bucket:
    """A day (or hour, or minute for short periods) of the period: its error ratio and the share of the
    period's error budget it spent."""

    label: str
    start: float
    error_ratio: float  # NaN without traffic
    budget_consumed: float


@dataclass(frozen=True)
class Numbers:
    """One group's period: the error ratio by the rules' arithmetic (None: no data; NaN: no traffic)."""

    error_ratio: float | None

    def attainment(self) -> float | None:
        return None if self.error_ratio is None else 1.0 - self.error_ratio

    def consumed(self, budget: float) -> float | None:
        return None if self.error_ratio is None else self.error_ratio / budget


@dataclass(frozen=True)
class GroupReport:
    group: Mapping[str, str]
    current: Numbers
    previous: Numbers
    buckets: tuple[Bucket, ...]  # the current period, in time order

    def group_text(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(self.group.items())) or "all"

    def worst(self) -> list[Bucket]:
        spent = [b for b in self.buckets if b.budget_consumed > 0]
        return sorted(spent, key=lambda b: -b.budget_consumed)[:WORST_DAYS]


@dataclass(frozen=True)
class SloReport:
    spec: ServiceSpec
    slo: SLO
    groups: tuple[GroupReport, ...]
    pages: tuple[Incident, ...]
    tickets: tuple[Incident, ...]
    previous_pages: tuple[Incident, ...]
    previous_tickets: tuple[Incident, ...]


@dataclass(frozen=True)
class Report:
    prometheus_url: str
    generated_at: float
    start: float
    end: float
    period_seconds: float
    step_seconds: float
    bucket: str  # "day", "hour" or "minute"
    slos: tuple[SloReport, ...]


# Reading --------------------------------------------------------------------------------------------------


def _sel(spec: ServiceSpec, slo: SLO) -> dict[str, str]:
    return {cv.SERVICE_LABEL: spec.service, cv.SLO_LABEL: slo.name}


def period_expr(spec: ServiceSpec, slo: SLO, period_seconds: float) -> str:
    """The compiled ``forge_slo:period_error:ratio`` expression, over the report's period instead of the spec's."""
    rules = sli_recordings(replace(spec, period_seconds=period_seconds), slo)
    return str(next(r["expr"] for r in rules if r.get("record") == cv.PERIOD_ERROR_RATIO))


def _key(labels: Mapping[str, str], spec: ServiceSpec, slo: SLO) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(group_labels(labels, spec, slo).items()))


def bucket_size(period_seconds: float) -> tuple[float, str]:
    if period_seconds >= 2 * 86400:
        return 86400.0, "day"
    if period_seconds >= 2 * 3600:
        return 3600.0, "hour"
    return 60.0, "minute"


def _bucket_label(start: float, bucket: str) -> str:
    fmt = {"day": "%Y-%m-%d", "hour": "%Y-%m-%d %H:00", "minute": "%Y-%m-%d %H:%M"}[bucket]
    return time.strftime(fmt, time.gmtime(start))


def _chunk(period_seconds: float, bucket_seconds: float) -> float:
    """The step of the per-bucket sums: a 24th of a bucket (at least a second), within Prometheus' points."""
    return max(1.0, round(bucket_seconds / 24), math.ceil(period_seconds / MAX_CHUNKS))


def _sums(client: PrometheusClient, metric: str, spec: ServiceSpec, slo: SLO, start: float, end: float,
          chunk: float) -> dict[tuple[tuple[str, str], ...], dict[float, float]]:
    """``sum_over_time`` of a recorded rate over consecutive chunks tiling (start, end], per group."""
    expr = f"sum_over_time({promql.selector(metric, _sel(spec, slo))}[{format_duration(chunk)}])"
    out: dict[tuple[tuple[str, str], ...], dict[float, float]] = {}
    for series in client.query_range(expr, start + chunk, end, chunk):
        out.setdefault(_key(series.labels, spec, slo), {}).update(
            {t: v for t, v in series.points if math.isfinite(v)})
    return out


def _buckets(errors: Mapping[float, float], requests: Mapping[float, float], budget: float, chunk: float,
             bucket: str) -> tuple[Bucket, ...]:
    total = sum(requests.values())
    grouped: dict[str, list[float]] = {}
    starts: dict[str, float] = {}
    for t in sorted(requests):
        label = _bucket_label(t - chunk, bucket)
        starts.setdefault(label, t - chunk)
        grouped.setdefault(label, []).append(t)
    out = []
    for label, stamps in grouped.items():
        err = sum(errors.get(t, 0.0) for t in stamps)
        req = sum(requests[t] for t in stamps)
        out.append(Bucket(label, starts[label], err / req if req > 0 else math.nan,
                          err / (budget * total) if total > 0 else 0.0))
    return tuple(out)


def _incidents(client: PrometheusClient, spec: ServiceSpec, slo: SLO, severity: str, start: float, end: float,
               step: float) -> tuple[Incident, ...]:
    found: list[Interval] = []
    for policy in spec.policies(slo):
        if policy.severity != severity:
            continue
        for window in policy.windows:
            name = f"{format_duration(window.long_seconds)}/{format_duration(window.short_seconds)}"
            for item in intervals(client, burn_alert_expr(spec, slo, window), start, end, step,
                                  hold_seconds=policy.for_seconds):
                labels = {"window": name, "group": ", ".join(
                    f"{k}={v}" for k, v in sorted(group_labels(item.labels, spec, slo).items())) or "all"}
                found.append(Interval(labels, item.start, item.end))
    return tuple(Incident(severity, m.start, m.end, tuple(sorted({i.labels["window"] for i in m.members})),
                          tuple(sorted({i.labels["group"] for i in m.members})))
                 for m in merge(found, step))


def slo_report(client: PrometheusClient, spec: ServiceSpec, slo: SLO, end: float, period: float,
               step: float) -> SloReport:
    start, before = end - period, end - 2 * period
    expr = period_expr(spec, slo, period)
    current = {_key(s.labels, spec, slo): s.value for s in client.query(expr, at=end)}
    previous = {_key(s.labels, spec, slo): s.value for s in client.query(expr, at=start)}
    bucket_seconds, bucket = bucket_size(period)
    chunk = _chunk(period, bucket_seconds)
    base = spec.base_window_seconds
    errors = _sums(client, cv.error_rate(base), spec, slo, start, end, chunk)
    requests = _sums(client, cv.request_rate(base), spec, slo, start, end, chunk)
    keys = sorted(set(current) | set(previous) | set(requests)) or [()]
    groups = tuple(GroupReport(
        dict(key), Numbers(current.get(key)), Numbers(previous.get(key)),
        _buckets(errors.get(key, {}), requests.get(key, {}), slo.error_budget_ratio, chunk, bucket),
    ) for key in keys)
    return SloReport(
        spec, slo, groups,
        pages=_incidents(client, spec, slo, PAGE, start, end, step),
        tickets=_incidents(client, spec, slo, TICKET, start, end, step),
        previous_pages=_incidents(client, spec, slo, PAGE, before, start, step),
        previous_tickets=_incidents(client, spec, slo, TICKET, before, start, step),
    )


def build_report(client: PrometheusClient, specs: Sequence[ServiceSpec], *, end: float, period_seconds: float | None,
                 step_seconds: float) -> Report:
    """The report of the period ending at ``end`` (each spec's own period when ``period_seconds`` is None)."""
    periods = {spec.period_seconds for spec in specs}
    if period_seconds is None and len(periods) > 1:
        raise UsageError(f"the specs have different periods ({', '.join(format_duration(p) for p in sorted(periods))})"
                         "; give --period")
    period = period_seconds or periods.pop()
    slos = tuple(slo_report(client, spec, slo, end, period, step_seconds) for spec in specs for slo in spec.slos)
    return Report(client.url, time.time(), end - period, end, period, step_seconds, bucket_size(period)[1], slos)


# Writing -------------------------------------------------------------------------------------------------


def when(unix: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(unix))


def _num(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, 9)


def _state(value: float | None) -> str:
    return "no data" if value is None else "no traffic" if math.isnan(value) else "ok"


def _pct(value: float | None, decimals: int = 1) -> str:
    if value is None:
        return "no data"
    return "no traffic" if math.isnan(value) else percent(value, decimals)


def _change(now: float | None, before: float | None) -> str:
    if now is None or before is None or math.isnan(now) or math.isnan(before):
        return "–"
    delta = (now - before) * 100
    return f"{delta:+,.1f} pts" if abs(delta) >= 0.05 else "no change"


def _duration(seconds: float) -> str:
    return format_duration(max(round(seconds), 1))


def _incident_json(item: Incident, report: Report, until: float) -> dict[str, Any]:
    return {"severity": item.severity, "start": item.start, "end": item.end,
            "duration_seconds": round(item.duration(until), 3), "windows": list(item.windows),
            "groups": list(item.groups), "ongoing": item.end is None,
            "began_before_the_period": item.start <= until - report.period_seconds}


def to_json(report: Report) -> dict[str, Any]:
    slos = []
    for item in report.slos:
        budget = item.slo.error_budget_ratio
        groups = []
        for group in item.groups:
            consumed = group.current.consumed(budget)
            groups.append({
                "group": dict(group.group), "state": _state(group.current.error_ratio),
                "attainment": _num(group.current.attainment()), "error_ratio": _num(group.current.error_ratio),
                "budget_consumed": _num(consumed), "budget_remaining": _num(None if consumed is None else 1 - consumed),
                "previous": {"state": _state(group.previous.error_ratio),
                             "attainment": _num(group.previous.attainment()),
                             "budget_consumed": _num(group.previous.consumed(budget))},
                "worst": [{"label": b.label, "start": b.start, "error_ratio": _num(b.error_ratio),
                           "budget_consumed": _num(b.budget_consumed)} for b in group.worst()],
            })
        slos.append({
            "service": item.spec.service, "slo": item.slo.name, "objective_percent": item.slo.objective_percent,
            "error_budget_ratio": budget, "groups": groups,
            "pages": [_incident_json(i, report, report.end) for i in item.pages],
            "tickets": [_incident_json(i, report, report.end) for i in item.tickets],
            "previous": {"pages": len(item.previous_pages), "tickets": len(item.previous_tickets)},
        })
    return {"prometheus": report.prometheus_url, "generated_at": report.generated_at, "start": report.start,
            "end": report.end, "period_seconds": report.period_seconds, "step_seconds": report.step_seconds,
            "bucket": report.bucket, "slos": slos}


def _title(report: Report) -> str:
    return (f"Error-budget report, {when(report.start)} to {when(report.end)} "
            f"({format_duration(report.period_seconds)})")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cell(c) for c in row) + " |" for row in rows)]


def _group_rows(item: SloReport) -> list[list[str]]:
    budget = item.slo.error_budget_ratio
    decimals = attained_decimals(item.slo.objective_percent)
    rows = []
    for group in item.groups:
        consumed, before = group.current.consumed(budget), group.previous.consumed(budget)
        left = None if consumed is None else 1 - consumed if not math.isnan(consumed) else math.nan
        rows.append([group.group_text(), _pct(group.current.attainment(), decimals), _pct(consumed),
                     _pct(left), _pct(group.previous.attainment(), decimals), _pct(before), _change(consumed, before)])
    return rows


GROUP_HEADER = ("group", "attained", "budget consumed", "budget left", "previous attained", "previous consumed",
                "change in consumed")
INCIDENT_HEADER = ("started", "ended", "duration", "windows", "groups")


def _incident_rows(items: Sequence[Incident], report: Report) -> list[list[str]]:
    return [[when(i.start) + (" (or before)" if i.start <= report.start else ""),
             when(i.end) if i.end is not None else "still firing", _duration(i.duration(report.end)),
             ", ".join(i.windows), ", ".join(i.groups)] for i in items]


def _worst_rows(item: SloReport) -> list[list[str]]:
    return [[group.group_text(), b.label, _pct(b.error_ratio, 3), _pct(b.budget_consumed)]
            for group in item.groups for b in group.worst()]


def to_markdown(report: Report) -> str:
    out = [f"# {_title(report)}", "",
           f"Prometheus {report.prometheus_url}; alert conditions evaluated every "
           f"{format_duration(report.step_seconds)}; generated {when(report.generated_at)}.", ""]
    for item in report.slos:
        out += [f"## {item.spec.service} / {item.slo.name} (objective {item.slo.objective_percent:g}%)", ""]
        out += _md_table(GROUP_HEADER, _group_rows(item))
        out += ["", f"Pages: {len(item.pages)} (previous period {len(item.previous_pages)}). "
                    f"Tickets: {len(item.tickets)} (previous period {len(item.previous_tickets)}).", ""]
        for title, items in (("Pages", item.pages), ("Tickets", item.tickets)):
            if items:
                out += [f"### {title}", "", *_md_table(INCIDENT_HEADER, _incident_rows(items, report)), ""]
        worst = _worst_rows(item)
        out += [f"### Worst {report.bucket}s", ""]
        out += [*_md_table(("group", report.bucket, "error ratio", "budget consumed"), worst), ""] if worst else \
            [f"No {report.bucket} spent any budget.", ""]
    return "\n".join(out)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], cls: str) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td data-label="{escape(h)}">{escape(c)}</td>' for h, c in zip(header, row,
                                                                                                 strict=True))
                   + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _charts(item: SloReport, report: Report) -> str:
    groups = [g for g in item.groups if g.buckets][:len(PALETTE)]
    if not groups:
        return '<p class="meta">No recorded traffic in the period: nothing to chart.</p>'
    unit = 86400.0 if report.bucket == "day" else 3600.0 if report.bucket == "hour" else 60.0
    span = report.period_seconds / unit
    spent = Chart(f"Budget consumed per {report.bucket}", f"{report.bucket}s into the period", "budget consumed (%)",
                  (0.0, span), (0.0, max(b.budget_consumed * 100 for g in groups for b in g.buckets) * 1.1 or 1.0))
    values = []
    lines = []
    for i, group in enumerate(groups):
        spent.line([((b.start - report.start) / unit, b.budget_consumed * 100) for b in group.buckets], PALETTE[i],
                   label=group.group_text() if len(groups) > 1 else "", markers=True)
        running, points = 0.0, [(0.0, 100.0)]
        for b in group.buckets:
            running += b.budget_consumed
            points.append(((b.start - report.start) / unit + 1, 100 * (1 - running)))
        values += [v for _, v in points]
        lines.append(points)
    left = Chart("Error budget left", f"{report.bucket}s into the period", "budget left (%)", (0.0, span),
                 (min(0.0, min(values)) * 1.05, 105.0))
    left.hline(0.0, "budget spent", color="#5f6368")
    for i, points in enumerate(lines):
        left.line(points, PALETTE[i], label=groups[i].group_text() if len(groups) > 1 else "")
    return f'<div class="charts"><figure>{left.render()}</figure><figure>{spent.render()}</figure></div>'


def to_html(report: Report) -> str:
    parts = [f"<h1>{escape(_title(report))}</h1>",
             f'<p class="meta">Prometheus <code>{escape(report.prometheus_url)}</code>; alert conditions evaluated '
             f"every {format_duration(report.step_seconds)}; generated {when(report.generated_at)}.</p>"]
    for item in report.slos:
        parts.append(f"<h2>{escape(item.spec.service)} / {escape(item.slo.name)} "
                     f"(objective {item.slo.objective_percent:g}%)</h2>")
        parts.append(_html_table(GROUP_HEADER, _group_rows(item), "groups"))
        parts.append(f"<p>Pages: {len(item.pages)} (previous period {len(item.previous_pages)}). Tickets: "
                     f"{len(item.tickets)} (previous period {len(item.previous_tickets)}).</p>")
        parts.append(_charts(item, report))
        for title, items, cls in (("Pages", item.pages, "pages"), ("Tickets", item.tickets, "tickets")):
            if items:
                parts.append(f"<h3>{title}</h3>" + _html_table(INCIDENT_HEADER, _incident_rows(items, report), cls))
        worst = _worst_rows(item)
        parts.append(f"<h3>Worst {report.bucket}s</h3>")
        parts.append(_html_table(("group", report.bucket, "error ratio", "budget consumed"), worst, "worst")
                     if worst else f"<p>No {report.bucket} spent any budget.</p>")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{escape(_title(report))}</title>'
            f'<style>{CSS}</style></head><body><main>{"".join(parts)}</main></body></html>')


def write_report(report: Report, folder: Path) -> list[Path]:
    """The three files in ``folder``, each written whole under a temporary name first, then renamed; when one
    cannot be written, none is (the temporary files are removed)."""
    texts = {"report.html": to_html(report), "report.md": to_markdown(report),
             "report.json": json.dumps(to_json(report), indent=2, sort_keys=True) + "\n"}
    temps: list[tuple[Path, Path]] = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in texts.items():
            temp = folder / f".{name}.tmp"
            temps.append((temp, folder / name))
            temp.write_text(text, encoding="utf-8")
        for temp, final in temps:
            os.replace(temp, final)
    except OSError as exc:
        for temp, _ in temps:
            temp.unlink(missing_ok=True)
        raise UsageError(f"--out {folder}: cannot write the report: {exc.strerror or exc}") from None
    return [folder / name for name in texts]
