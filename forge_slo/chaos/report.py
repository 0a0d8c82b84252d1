"""The game-day report: ``report.md`` (with SVG plots in ``plots/``), a self-contained ``report.html`` (plots
inline) and ``summary.json``. Plots are hand-written SVG: the SLIs and burn rates of every SLO an experiment
names, and the extra PromQL plots of its ``forge-slo`` extension, from 10 s before to 5 s after it, drawn with
:class:`forge_slo.runtime.svg.Chart`.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from forge_slo import conventions as cv
from forge_slo import promql
from forge_slo.chaos.configuration import substitute
from forge_slo.chaos.gameday import OK, SKIPPED, ExperimentResult, GamedayResult
from forge_slo.durations import parse_duration
from forge_slo.runtime.svg import PALETTE, Chart

_RATIO_PREFIX = cv.error_ratio(1.0).removesuffix("1s")
_NAME_MATCHER = f"__name__=~{promql.quote(promql.any_of_regex([_RATIO_PREFIX]) + '.+')}"


@dataclass(frozen=True)
class Line:
    label: str
    points: tuple[tuple[float, float], ...]  # (seconds since the experiment started, value)


@dataclass(frozen=True)
class Plot:
    title: str
    lines: tuple[Line, ...]
    markers: tuple[tuple[float, str], ...] = ()  # (seconds, label): the method's actions
    y_label: str = ""


# Data from Prometheus -------------------------------------------------------------------------------------

def experiment_plots(prometheus_url: str, res: ExperimentResult) -> tuple[list[Plot], list[str]]:
    """Plots for one experiment and notes on what could not be drawn."""
    from forge_slo.errors import ForgeError
    from forge_slo.sources.prometheus import PrometheusClient

    if not prometheus_url or not res.start:
        return [], []
    start, end = res.start - 10, res.end + 5
    step = max(1.0, round((end - start) / 240))
    markers = tuple((a.start - res.start, a.name) for a in res.method if a.kind == "action" and a.start)
    plots: list[Plot] = []
    notes: list[str] = []
    try:
        with PrometheusClient(prometheus_url) as client:
            for service, slo in res.slos:
                sel = {cv.SERVICE_LABEL: service, cv.SLO_LABEL: slo}
                budget = client.query(promql.selector(cv.ERROR_BUDGET, sel), at=end)
                if not budget:
                    notes.append(f"no {cv.ERROR_BUDGET} for {service}/{slo}: rules not loaded?")
                    continue
                ratios = client.query_range(
                    promql.selector("", sel, [_NAME_MATCHER]),
                    start, end, step)
                by_window = sorted(((parse_duration(s.labels["__name__"].removeprefix(_RATIO_PREFIX)), s)
                                    for s in ratios if s.labels.get("__name__", "").startswith(_RATIO_PREFIX)),
                                   key=lambda item: item[0])
                if not by_window:
                    notes.append(f"no recorded error ratios for {service}/{slo} during the experiment")
                    continue
                shortest_s, shortest = by_window[0]
                window = shortest.labels["__name__"].removeprefix(_RATIO_PREFIX)
                plots.append(Plot(f"{service}/{slo}: SLI over {window} (share of good events)",
                                  (Line(f"SLI {window}", _relative(shortest.points, res.start, lambda v: 1 - v)),),
                                  markers, "ratio"))
                b = budget[0].value
                lines = [Line(s.labels["__name__"].removeprefix(_RATIO_PREFIX),
                              _relative(s.points, res.start, lambda v, b=b: v / b)) for _, s in by_window]
                lines += _guard_lines(res, service, slo)
                plots.append(Plot(f"{service}/{slo}: burn rate per alert window (1 = on budget)", tuple(lines),
                                  markers, "x"))
            for spec in res.extension.get("plots") or []:
                if not isinstance(spec, dict) or not isinstance(spec.get("query"), str):
                    notes.append("an extension plot without a query was skipped")
                    continue
                query = str(substitute(spec["query"], res.configuration))
                legend = str(spec.get("legend", ""))
                series = client.query_range(query, start, end, step)
                extra = tuple(Line(s.labels.get(legend, "") if legend else _labels(s.labels),
                                   _relative(s.points, res.start, lambda v: v)) for s in series)
                if extra:
                    plots.append(Plot(str(spec.get("title", query)), extra, markers))
                else:
                    notes.append(f"no data for plot {spec.get('title', query)!r}")
    except ForgeError as exc:
        notes.append(f"Prometheus could not be read for plots: {exc}")
    return plots, notes


def _guard_lines(res: ExperimentResult, service: str, slo: str) -> list[Line]:
    """The burn rates the budget guard read, as it read them: the figures its verdict and peak come from."""
    out = []
    for guard in res.guard:
        if guard.get("service") != service or guard.get("slo") != slo or not guard.get("max_burn_rate"):
            continue
        points = tuple((float(t) - res.start, float(v)) for t, v, _ in guard.get("readings") or () if v is not None)
        if points:
            out.append(Line(f"guard's reading {guard.get('window') or ''}".strip(), points))
    return out


def _relative(points: Sequence[tuple[float, float]], t0: float, fn: Any) -> tuple[tuple[float, float], ...]:
    return tuple((t - t0, float(fn(v))) for t, v in points if math.isfinite(v))


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") or "value"


# SVG ------------------------------------------------------------------------------------------------------

MARKER_COLOR = "#555"


def plot_svg(plot: Plot, width: int = 680, height: int = 260) -> str:
    """One plot as standalone SVG (runtime's Chart): a line per series, the method's actions as dashed marks."""
    xs = [x for line in plot.lines for x, _ in line.points] + [x for x, _ in plot.markers]
    ys = [y for line in plot.lines for _, y in line.points]
    low = min(0.0, *ys) if ys else 0.0
    high = max(ys) if ys else 1.0
    chart = Chart(plot.title, "seconds since the experiment started", plot.y_label or "value",
                  (min(xs), max(xs)) if xs else (0.0, 1.0), (low, high + (high - low) * 0.05), width, height)
    for i, line in enumerate(plot.lines):
        color = PALETTE[i % len(PALETTE)]
        if line.points:
            chart.line(line.points, color, line.label[:24])
        else:
            chart.legend.append((f"{line.label[:24]} (no data)", color, True))
    for i, (x, label) in enumerate(plot.markers):
        chart.vline(x, label[:18], color=MARKER_COLOR, dash="3,3", top=i % 2 == 1)  # alternate: labels apart
    if not ys:
        chart.legend.append(("no data", MARKER_COLOR, True))
    return chart.render()


# Text -----------------------------------------------------------------------------------------------------

def _budget_text(res: ExperimentResult) -> str:
    if not res.budgets:
        return "-"
    return ", ".join(f"{k} {v:.3%}" for k, v in sorted(res.budgets.items()))


def _detections_text(res: ExperimentResult) -> str:
    parts = []
    for run in res.detections():
        if run.status == "succeeded" and isinstance(run.output, int | float):
            parts.append(f"{run.name} {run.output:.1f}s")
        elif run.status == "failed":
            parts.append(f"{run.name} NOT within its timeout")
        else:
            parts.append(f"{run.name} {run.status}")
    return ", ".join(parts) or "-"


SUMMARY_COLUMNS = ("Experiment", "Result", "Hypothesis before", "Hypothesis after", "Budget consumed",
                   "Alerts / detections (time to fire)", "Rollbacks", "Duration")


def summary_rows(result: GamedayResult) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for res in result.experiments:
        outcome = res.outcome.upper() if res.outcome != OK else "ok"
        if res.outcome == SKIPPED:
            outcome = f"skipped ({res.reason})"
        rows.append((res.name, outcome, res.hypothesis_text(res.before), res.hypothesis_text(res.after),
                     _budget_text(res), _detections_text(res), res.rollback_text(),
                     f"{res.duration_s:.0f}s" if res.duration_s else "-"))
    return rows


def headline(result: GamedayResult) -> str:
    """One line on the whole game day, counting every experiment: run, held, deviated, failed, skipped."""
    counts: dict[str, int] = {}
    for res in result.experiments:
        counts[res.outcome] = counts.get(res.outcome, 0) + 1
    total, skipped = len(result.experiments), counts.get(SKIPPED, 0)
    ran = total - skipped
    parts = [f"{total} experiment{'s' if total != 1 else ''}"]
    if ran == 0:
        parts.append("none ran")
    elif counts.get(OK, 0) == ran:
        parts.append(f"{ran} ran and every hypothesis held" if ran > 1 else "1 ran and its hypothesis held")
    else:
        bad = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()) if outcome not in (OK, SKIPPED))
        parts.append(f"{ran} ran: {counts.get(OK, 0)} held, {bad}")
    if skipped:
        parts.append(f"{skipped} skipped (not judged)")
    return "; ".join(parts)


def guard_text(guard: Mapping[str, Any]) -> str:
    """What the budget guard watched and the peaks of exactly those figures."""
    parts = []
    window = guard.get("window") or "the shortest alert window"
    if guard.get("max_burn_rate"):
        parts.append(f"burn rate over {window}: peak {float(guard.get('peak_burn_rate') or 0):.1f}x "
                     f"(limit {float(guard['max_burn_rate']):g}x)")
    if guard.get("max_budget_consumed"):
        parts.append(f"budget consumed during the experiment: peak {float(guard.get('peak_budget_consumed') or 0):.3%} "
                     f"(limit {float(guard['max_budget_consumed']):.2%})")
    text = f"Budget guard {guard.get('service')}/{guard.get('slo')}, {guard.get('checks', 0)} readings: "
    text += "; ".join(parts) or "nothing watched"
    if guard.get("aborted"):
        text += f". ABORTED: {guard.get('reason')}"
    return text


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else value


def render_markdown(result: GamedayResult, plot_files: Mapping[str, list[str]]) -> str:
    when = datetime.fromtimestamp(result.started, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [f"# Game day report ({when})", "",
             f"{headline(result)}; {result.ended - result.started:.0f}s in all."
             + (" Interrupted (Ctrl-C)." if result.interrupted else ""),
             "", "| " + " | ".join(SUMMARY_COLUMNS) + " |", "|" + "---|" * len(SUMMARY_COLUMNS)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in summary_rows(result)]
    for note in result.notes:
        lines += ["", f"Note: {note}"]
    for res in result.experiments:
        lines += ["", f"## {res.name}: {res.title}", "",
                  f"Result: **{res.outcome}**" + (f" — {res.reason}" if res.reason else ""), ""]
        if res.outcome == SKIPPED:
            continue
        if res.journal_path:
            lines += [f"Journal: `{res.journal_path.name}` (in `journals/`), log: `logs/{res.name}.log`", ""]
        for label, checks in (("before", res.before), ("after", res.after)):
            if checks:
                lines += [f"Hypothesis {label} the method:", "", "| probe | value | tolerance | met |",
                          "|---|---|---|---|"]
                lines += [f"| {_md_cell(c.name)} | {_md_cell(_value(c.value))} | {_md_cell(_value(c.tolerance))} | "
                          f"{'yes' if c.met else 'NO'} |" for c in checks]
                lines.append("")
        if res.method:
            lines += ["Method:", "", "| activity | status | output | at |", "|---|---|---|---|"]
            lines += [f"| {_md_cell(a.kind + ' ' + a.name)} | {a.status} | {_md_cell(_value(a.output)[:100])} | "
                      f"{a.start - res.start:.1f}s |" for a in res.method]
            lines.append("")
        if res.rollbacks:
            lines += ["Rollbacks: " + ", ".join(f"{r.name} {r.status}" for r in res.rollbacks), ""]
        lines += [guard_text(guard) + "\n" for guard in res.guard]
        for path in plot_files.get(res.name, []):
            lines += [f"![{res.name}]({path})", ""]
    return "\n".join(lines).rstrip() + "\n"


_CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px;vertical-align:top}
th{background:#f0f0f0}.ok{color:#1a7f37;font-weight:bold}.bad{color:#c62828;font-weight:bold}.skip{color:#777}
h2{border-top:1px solid #ddd;padding-top:.6em}"""


def _css_ok(ok: bool) -> str:
    return "ok" if ok else "bad"


def render_html(result: GamedayResult, plots: Mapping[str, list[Plot]]) -> str:
    e = html.escape
    when = datetime.fromtimestamp(result.started, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    out = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>Game day report {e(when)}</title><style>{_CSS}</style></head><body>",
           f"<h1>Game day report</h1><p>{e(when)}: <span class=\"{'bad' if result.deviated else 'ok'}\">"
           f"{e(headline(result))}</span>; {result.ended - result.started:.0f}s in all.</p>",
           "<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in SUMMARY_COLUMNS) + "</tr>"]
    for row, res in zip(summary_rows(result), result.experiments, strict=True):
        css = "ok" if res.outcome == OK else "skip" if res.outcome == SKIPPED else "bad"
        cells = [f"<td><a href=\"#{e(res.name)}\">{e(row[0])}</a></td>", f"<td class=\"{css}\">{e(row[1])}</td>"]
        cells += [f"<td>{e(c)}</td>" for c in row[2:]]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    out += [f"<p>Note: {e(n)}</p>" for n in result.notes]
    for res in result.experiments:
        out.append(f"<h2 id=\"{e(res.name)}\">{e(res.name)}: {e(res.title)}</h2>")
        css = "ok" if res.outcome == OK else "skip" if res.outcome == SKIPPED else "bad"
        out.append(f"<p>Result: <span class=\"{css}\">{e(res.outcome)}</span>"
                   + (f" — {e(res.reason)}" if res.reason else "") + "</p>")
        if res.outcome == SKIPPED:
            continue
        for label, checks in (("before", res.before), ("after", res.after)):
            if checks:
                out.append(f"<p>Hypothesis {label} the method:</p><table><tr><th>probe</th><th>value</th>"
                           "<th>tolerance</th><th>met</th></tr>")
                out += [f"<tr><td>{e(c.name)}</td><td>{e(_value(c.value))}</td><td>{e(_value(c.tolerance))}</td>"
                        f"<td class=\"{_css_ok(bool(c.met))}\">{'yes' if c.met else 'NO'}</td></tr>" for c in checks]
                out.append("</table>")
        if res.method:
            out.append("<p>Method:</p><table><tr><th>activity</th><th>status</th><th>output</th><th>at</th></tr>")
            out += [f"<tr><td>{e(a.kind)} {e(a.name)}</td><td class=\"{'ok' if a.status == 'succeeded' else 'bad'}\">"
                    f"{e(a.status)}</td><td>{e(_value(a.output)[:160])}</td><td>{a.start - res.start:.1f}s</td></tr>"
                    for a in res.method]
            out.append("</table>")
        if res.rollbacks:
            out.append("<p>Rollbacks: " + ", ".join(
                f"{e(r.name)} <span class=\"{_css_ok(r.status == 'succeeded')}\">{e(r.status)}</span>"
                for r in res.rollbacks) + "</p>")
        out += [f"<p class=\"{'bad' if g.get('aborted') else ''}\">{e(guard_text(g))}</p>" for g in res.guard]
        for plot in plots.get(res.name, []):
            out.append(f"<div>{plot_svg(plot)}</div>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def summary_json(result: GamedayResult) -> dict[str, Any]:
    return {
        "deviated": result.deviated,
        "interrupted": result.interrupted,
        "started": result.started,
        "ended": result.ended,
        "experiments": [{
            "name": r.name, "path": str(r.path), "title": r.title, "outcome": r.outcome, "reason": r.reason,
            "status": r.status, "deviated": r.deviated, "duration_s": round(r.duration_s, 3),
            "hypothesis_before": [{"probe": c.name, "value": c.value, "met": c.met} for c in r.before],
            "hypothesis_after": [{"probe": c.name, "value": c.value, "met": c.met} for c in r.after],
            "budget_consumed": {k: v for k, v in sorted(r.budgets.items())},
            "detections_s": {a.name: a.output if a.status == "succeeded" else None for a in r.detections()},
            "rollbacks": {a.name: a.status for a in r.rollbacks},
            "journal": str(r.journal_path) if r.journal_path else None,
        } for r in result.experiments],
    }


def write_report(result: GamedayResult, report_dir: Path) -> Path:
    """Write report.md, report.html, plots/*.svg and summary.json; returns the HTML page's path."""
    plots: dict[str, list[Plot]] = {}
    for res in result.experiments:
        if res.outcome != SKIPPED:
            drawn, notes = experiment_plots(result.prometheus_url, res)
            plots[res.name] = drawn
            result.notes.extend(f"{res.name}: {n}" for n in notes)
    plot_dir = report_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[str]] = {}
    for name, drawn in plots.items():
        for i, plot in enumerate(drawn):
            path = plot_dir / f"{name}-{i + 1}.svg"
            path.write_text(plot_svg(plot), encoding="utf-8")
            files.setdefault(name, []).append(f"plots/{path.name}")
    (report_dir / "report.md").write_text(render_markdown(result, files), encoding="utf-8")
    html_path = report_dir / "report.html"
    html_path.write_text(render_html(result, plots), encoding="utf-8")
    (report_dir / "summary.json").write_text(json.dumps(summary_json(result), indent=1, sort_keys=True, default=str)
                                             + "\n", encoding="utf-8")
    return html_path
