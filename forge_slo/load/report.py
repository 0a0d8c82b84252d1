"""``report.html``: one self-contained page (inline CSS and SVG, no scripts) for a load run.

A capacity search's answer comes first; then the stages, the SLOs (one row per stage), latency distributions
(on a log axis when they span decades), latency against throughput (every point named by its stage), the
server's own view (running and waiting requests, KV-cache usage, its TTFT beside the client's) and the
figures over time. The chart helpers are shared with ``forge-slo load compare``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from html import escape
from typing import Any

import numpy as np

from forge_slo.load.console import broke_text, missed_text, pct, sure_text, unit_of
from forge_slo.load.server_view import Sample, window_quantiles
from forge_slo.load.summary import saturation_note
from forge_slo.runtime.svg import PALETTE, Chart
from forge_slo.sources.records import RequestRecord

METRICS = (("ttft_s", "TTFT", "ttft"), ("tpot_s", "TPOT", "tpot"), ("itl_s", "ITL", "itl"),
           ("e2e_s", "e2e latency", "e2e"))
MAX_CDF_POINTS = 300
MAX_SCATTER_POINTS = 4000
LOG_SPAN = 10.0          # a latency axis whose values span this factor or more is logarithmic
SERVER_WINDOW_S = 5.0    # the server's TTFT quantiles over time are taken over windows this long
VERDICT_COLORS = {"held": "#1e7e34", "missed": "#c0392b"}

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}th{background:#f4f4f4}
td.l,th.l{text-align:left}.pass{color:#1e7e34;font-weight:bold}.fail{color:#c0392b;font-weight:bold}
.muted{color:#777}.charts{display:flex;flex-wrap:wrap;gap:12px}.charts svg{border:1px solid #eee}
.verdict{font-size:18px;padding:6px 12px;display:inline-block;border-radius:4px;margin:6px 0}
.verdict.pass{background:#e6f4ea}.verdict.fail{background:#fdecea}.verdict.no_spec{background:#eee}
.answer{font-size:15px;border-left:4px solid #1f77b4;padding:4px 12px;margin:8px 0;background:#f5f9fc}
.held{color:#1e7e34}.missed{color:#c0392b;font-weight:bold}.unsure{color:#d68910}
"""


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:.1f}"


def _num(value: float | None, digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:,.{digits}f}"


def _time(ts: float | None) -> str:
    if not ts:
        return "–"
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _values(records: Sequence[RequestRecord], key: str) -> np.ndarray:
    ok = [r for r in records if r.ok and not r.warmup]
    if key == "itl_s":
        return np.fromiter((g for r in ok for g in r.itl_s), dtype=np.float64)
    return np.fromiter((getattr(r, key) for r in ok if getattr(r, key) is not None), dtype=np.float64)


def _thresholds(summary: dict[str, Any], metric: str) -> list[tuple[float, str]]:
    spec = summary.get("spec") or {}
    out = []
    for slo in spec.get("slos", []):
        if slo.get("kind") == "latency" and slo.get("metric") == metric and slo.get("threshold_s") is not None:
            out.append((float(slo["threshold_s"]), f"SLO {slo['name']}: {slo['threshold_s']:g}s @ "
                                                   f"{slo['objective_percent']:g}%"))
    return out


def _cdf_chart(summary: dict[str, Any], by_stage: dict[str, list[RequestRecord]], key: str, title: str,
               metric: str, dashed: frozenset[str] = frozenset()) -> str:
    """Cumulative distributions of one latency, a line per stage (``dashed``: names drawn dashed)."""
    series = []
    hi = 0.0
    lo = low = mid = math.inf
    for name in by_stage:
        values = np.sort(_values(by_stage[name], key))
        if values.size:
            series.append((name, values))
            hi = max(hi, float(np.percentile(values, 99.5)))
            lo = min(lo, float(values[0]))
            low = min(low, float(np.percentile(values, 5)))
            mid = min(mid, float(np.percentile(values, 50)))
    thresholds = _thresholds(summary, metric)
    if not series:
        return ""
    for thr, _ in thresholds:
        if thr <= 3 * hi:  # a far-away threshold is named in the legend instead of squashing the curves
            hi = max(hi, thr * 1.05)
            lo, low, mid = min(lo, thr), min(low, thr), min(mid, thr)
    # Logarithmic when the stages' curves lie decades apart (the fastest stage's median far below the slowest
    # stage's tail); a few near-zero values (tokens read together) do not decide it, nor set its start.
    log = mid > 0 and low > 0 and hi / mid >= LOG_SPAN
    if log:
        x_range = (low * 1000 * 0.8, hi * 1000 * 1.1)
    else:
        margin = (hi - lo) * 0.05
        lo = max(0.0, lo - margin) if lo > 2 * margin else 0.0
        x_range = (lo * 1000, (hi + margin) * 1000 or 1.0)
    chart = Chart(f"{title}: cumulative distribution", f"{title} (ms{', log scale' if log else ''})",
                  "share of requests (%)" if key != "itl_s" else "share of gaps (%)", x_range, (0.0, 100.0),
                  log_x=log, legend_corner="bottom-right")
    colors: dict[str, str] = {}
    for name, values in series:
        base = name.split(" ")[-1] if dashed else name
        color = colors.setdefault(base, PALETTE[len(colors) % len(PALETTE)])
        n = values.size
        idx = np.unique(np.linspace(0, n - 1, min(n, MAX_CDF_POINTS)).astype(int))
        points = [(float(values[j]) * 1000, 100.0 * (j + 1) / n) for j in idx]
        points.insert(0, (float(values[0]) * 1000, 0.0))
        chart.line(points, color, name if len(series) > 1 or name else title, dash="6,3" if name in dashed else "")
    for thr, label in thresholds:
        chart.vline(thr * 1000, label)
    objectives = {float(s["objective_percent"]) for s in (summary.get("spec") or {}).get("slos", [])
                  if s.get("metric") == metric}
    for obj in objectives:
        chart.hline(obj, f"objective {obj:g}%")
    return chart.render()


def _over_time(summary: dict[str, Any], records: Sequence[RequestRecord]) -> list[str]:
    if not records:
        return []
    t0 = min(r.start_time for r in records)
    ok = [r for r in records if r.ok and r.ttft_s is not None]
    end = max(r.start_time + (r.e2e_s or 0.0) for r in records) - t0
    charts = []
    if ok:
        step = max(1, len(ok) // MAX_SCATTER_POINTS)
        pts = [(r.start_time - t0, (r.ttft_s or 0.0) * 1000) for r in ok[::step]]
        hi = float(np.percentile([p[1] for p in pts], 99.5)) * 1.15
        for thr, _ in _thresholds(summary, "ttft"):
            hi = max(hi, thr * 1000 * 1.1)
        chart = Chart("TTFT over time (each dot a request)", "seconds since start (request sent)", "TTFT (ms)",
                      (0.0, end), (0.0, hi or 1.0), band_rows=_band_rows(summary))
        chart.scatter(pts, PALETTE[0], "TTFT")
        warm = [(r.start_time - t0, (r.ttft_s or 0.0) * 1000) for r in ok[::step] if r.warmup]
        if warm:
            chart.scatter(warm, "#aaa", "warm-up (excluded)")
        for thr, label in _thresholds(summary, "ttft"):
            chart.hline(thr * 1000, label)
        _stage_marks(chart, summary, t0)
        charts.append(chart.render())
    seconds = int(math.ceil(end)) + 1
    reqs = np.zeros(seconds)
    toks = np.zeros(seconds)
    fails = np.zeros(seconds)
    sent = np.zeros(seconds)
    for r in records:
        sent[min(seconds - 1, max(0, int(r.start_time - t0)))] += 1
        i = int(r.start_time + (r.e2e_s or 0.0) - t0)
        if 0 <= i < seconds:
            if r.ok:
                reqs[i] += 1
                toks[i] += r.output_tokens or 0
            else:
                fails[i] += 1
    xs = [i + 0.5 for i in range(seconds)]
    chart = Chart("Throughput over time: sent and served per second", "seconds since start", "requests/s",
                  (0.0, float(seconds)), (0.0, float(max(reqs.max(), fails.max(), sent.max(), 1.0)) * 1.15),
                  band_rows=_band_rows(summary))
    chart.line(list(zip(xs, sent.tolist(), strict=True)), "#999", "sent requests/s (offered)")
    chart.line(list(zip(xs, reqs.tolist(), strict=True)), PALETTE[0], "successful requests/s (served)")
    if fails.any():
        chart.line(list(zip(xs, fails.tolist(), strict=True)), PALETTE[3], "failed requests/s")
    _stage_marks(chart, summary, t0)
    charts.append(chart.render())
    chart = Chart("Output tokens per second", "seconds since start", "tokens/s", (0.0, float(seconds)),
                  (0.0, float(max(toks.max(), 1.0)) * 1.15), band_rows=_band_rows(summary))
    chart.line(list(zip(xs, toks.tolist(), strict=True)), PALETTE[2], "output tokens/s")
    _stage_marks(chart, summary, t0)
    charts.append(chart.render())
    return charts


def _band_rows(summary: dict[str, Any]) -> int:
    """Rows of room above a time chart for the stages' names (none for one stage without warm-up)."""
    stages = summary.get("stages", [])
    return 2 if len(stages) > 1 or any(s.get("warmup_requests") for s in stages) else 0


def _stage_marks(chart: Chart, summary: dict[str, Any], t0: float) -> None:
    stages = summary.get("stages", [])
    if len(stages) < 2 and not any(s.get("warmup_requests") for s in stages):
        return
    for stage in stages:
        if stage.get("started_at"):
            chart.vline(max(stage["started_at"] - t0, 0.0), stage["name"], color="#555", dash="2,3", top=True)


def _sweep_charts(summary: dict[str, Any]) -> list[str]:
    stages = [s for s in summary.get("stages", []) if s["succeeded"]]
    if not stages:
        return []
    quantities = (("ttft_s", "TTFT", "ttft"), ("tpot_s", "TPOT", "tpot"), ("e2e_s", "e2e", "e2e"))
    return [c for key, title, metric in quantities
            if (c := latency_against_throughput([("", summary, stages)], key, title, metric))]


def latency_against_throughput(runs: list[tuple[str, dict[str, Any], list[dict[str, Any]]]], key: str, title: str,
                               metric: str) -> str:
    """p50 and p99 of one latency against served throughput, one point per stage, each named by its stage;
    ``runs``: (label, summary, stages) of one run, or of two to overlay (the second dashed)."""
    pts_all = [(s["requests_per_s"], s["latency"][key][q]) for _, _, stages in runs for s in stages
               for q in ("p50", "p99") if s["latency"][key][q] is not None]
    if not pts_all:
        return ""
    x_hi = max(x for x, _ in pts_all) * 1.2 or 1.0
    hi = max(v for _, v in pts_all) * 1000 * 1.2
    summary = runs[0][1]
    for thr, _ in _thresholds(summary, metric):
        hi = max(hi, thr * 1000 * 1.1)
    chart = Chart(f"{title} against served throughput", "served requests/s (drain included)",
                  f"{title} (ms)", (0.0, x_hi), (0.0, hi or 1.0), width=560, height=320)
    for r, (label, _, stages) in enumerate(runs):
        for q, color in (("p50", PALETTE[0]), ("p99", PALETTE[1])):
            # In the order of the load offered: past the capacity, served throughput falls back.
            pts = [(s["requests_per_s"], s["latency"][key][q] * 1000) for s in stages
                   if s["latency"][key][q] is not None]
            name = f"{label} {q}".strip()
            chart.line(pts, color if r == 0 else PALETTE[2 + (q == "p99")], name, markers=True,
                       dash="6,3" if r else "")
        for s in stages:
            v = s["latency"][key]["p99"]
            if v is not None:
                chart.point_label(s["requests_per_s"], v * 1000, s["name"] + ("*" if s.get("saturated") else ""))
    for thr, label in _thresholds(summary, metric):
        chart.hline(thr * 1000, label)
    return chart.render()


def _load_cell(stage: dict[str, Any]) -> str:
    if not stage.get("saturated"):
        return "<td class=l>kept up</td>"
    why = "; ".join(stage.get("saturation", []))
    return f"<td class='l fail' title='{escape(why)}'>saturated</td>"


def _stage_table(summary: dict[str, Any]) -> str:
    stages = summary.get("stages", [])
    server = any(s.get("server") for s in stages)
    head = ["stage", "requests", "failed", "offered req/s", "served req/s", "out tok/s", "goodput req/s",
            "TTFT p50/p90/p99 ms", "TPOT p50/p99 ms", "ITL p50/p99 ms", "e2e p50/p99 ms"]
    if server:
        head += ["server TTFT p50/p99 ms", "server running / waiting (mean)", "KV cache (max)"]
    head += ["errors by kind", "load", "verdict"]
    rows = []
    for s in stages:
        lat = s["latency"]
        kinds = ", ".join(f"{k} {v}" for k, v in s["errors"]["by_kind"].items()) or "none"
        cells = (f"<tr><td class=l>{escape(s['name'])}</td><td>{s['requests']}</td><td>{s['failed']}</td>"
                 f"<td>{_num(s['sent_per_s'])}</td><td>{_num(s['requests_per_s'])}</td>"
                 f"<td>{_num(s['output_tokens_per_s'], 1)}</td>"
                 f"<td>{_num(s['goodput_requests_per_s'])}</td>"
                 f"<td>{_ms(lat['ttft_s']['p50'])} / {_ms(lat['ttft_s']['p90'])} / {_ms(lat['ttft_s']['p99'])}</td>"
                 f"<td>{_ms(lat['tpot_s']['p50'])} / {_ms(lat['tpot_s']['p99'])}</td>"
                 f"<td>{_ms(lat['itl_s']['p50'])} / {_ms(lat['itl_s']['p99'])}</td>"
                 f"<td>{_ms(lat['e2e_s']['p50'])} / {_ms(lat['e2e_s']['p99'])}</td>")
        if server:
            sv = s.get("server") or {}
            cells += (f"<td>{_ms(sv.get('ttft_p50'))} / {_ms(sv.get('ttft_p99'))}</td>"
                      f"<td>{_num(sv.get('running_mean'), 1)} / {_num(sv.get('waiting_mean'), 1)}</td>"
                      f"<td>{pct(sv.get('kv_cache_usage_max')) if sv.get('kv_cache_usage_max') is not None else '–'}"
                      "</td>")
        verdict = str(s.get("search_verdict") or s["verdict"])
        cells += (f"<td class=l>{escape(kinds)}</td>{_load_cell(s)}"
                  f"<td class='{verdict}'>{escape(verdict)}</td></tr>")
        rows.append(cells)
    left = ("stage", "errors by kind", "load")
    th = "".join(f"<th{' class=l' if h in left else ''}>{h}</th>" for h in head)
    why = "".join(f"<li>{escape(s['name'])} saturated: {escape('; '.join(s['saturation']))}</li>"
                  for s in stages if s.get("saturated"))
    errors = "".join(f"<li>{escape(s['name'])}: {escape(e['kind'])} ×{e['requests']}: {escape(e['message'])}</li>"
                     for s in stages for e in (s.get("top_errors") or [])[:1])
    return (f"<table><tr>{th}</tr>{''.join(rows)}</table>" + (f"<ul>{why}</ul>" if why else "")
            + (f"<p>Most frequent error per stage:</p><ul>{errors}</ul>" if errors else ""))


def _slo_table(summary: dict[str, Any]) -> str:
    """One row per stage, one column per judged SLO (its attainment, events and verdict), the objectives in the
    header; the SLOs not judged client-side listed below."""
    spec = summary.get("spec")
    if not spec:
        return "<p class=muted>No spec given (--spec): nothing judged.</p>"
    judged = [c for c in spec["slos"] if c["kind"] != "unjudged"]
    unjudged = [c for c in spec["slos"] if c["kind"] == "unjudged"]
    search = bool(summary.get("search"))
    head = "<th class=l>stage</th>" + "".join(
        f"<th>{escape(c['name'])}<br><span class=muted>{escape(_objective(c))}</span></th>" for c in judged)
    head += "<th>verdict</th>"
    rows = []
    for s in summary.get("stages", []):
        by_name = {x["name"]: x for x in s["slos"]}
        cells = "".join(_slo_cell(by_name.get(c["name"]), search) for c in judged)
        verdict = str(s.get("search_verdict") or s["verdict"])
        rows.append(f"<tr><td class=l>{escape(s['name'])}</td>{cells}<td class='{verdict}'>{escape(verdict)}</td></tr>")
    notes = "".join(f"<li>{escape(c['name'])} ({c['objective_percent']:g}%): {escape(c['reason'])}</li>"
                    for c in unjudged)
    conf = ("<p class=muted>Confidence: how sure the stage is that the SLO holds (the Beta posterior of its share "
            "of good events, Jeffreys' prior). A search stage sends longer while that can make its verdict as sure "
            f"as the {float(summary['search']['confidence']) * 100:g}% asked.</p>") if search else ""
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>" + (f"<ul>{notes}</ul>" if notes else "") + conf


def _objective(crit: dict[str, Any]) -> str:
    if crit["kind"] == "availability":
        return f"availability {crit['objective_percent']:g}%"
    return f"{crit['metric']} ≤ {crit['threshold_s']:g}s for {crit['objective_percent']:g}%"


def _slo_cell(row: dict[str, Any] | None, search: bool) -> str:
    if row is None or not row.get("judged"):
        return "<td class=muted>–</td>"
    att = row["attainment_percent"]
    verdict = "pass" if row["met"] else "fail"
    text = "no events" if att is None else f"{att:.2f}% of {row['events']}"
    sure = f"<br><span class=muted>confidence {pct(row['held_confidence'])}</span>" if search else ""
    return f"<td class={verdict}>{text}{sure}</td>"


def _capacity(summary: dict[str, Any]) -> str:
    """The answer of a capacity search, what broke above it, the stages it tried and a chart of them."""
    search = summary.get("search")
    if not search:
        return ""
    answer, above = search.get("answer"), search.get("above")
    asked = float(search["confidence"])
    if answer is None:
        head = "No load tried held every SLO."
    else:
        least = answer.get("least_sure")
        head = (f"Capacity: <b>{answer['value']:g} {unit_of(search['mode'])}</b> ({escape(answer['stage'])}): every "
                f"SLO held, {escape(sure_text(answer['confidence'], asked))}"
                + (f" (least sure: {escape(least['name'])})" if least else "")
                + f". There: goodput {_num(answer['goodput_requests_per_s'])} req/s, served "
                f"{_num(answer['requests_per_s'])} req/s, {_num(answer['output_tokens_per_s'], 0)} tok/s.")
    lines = [head]
    if above is not None:
        text = broke_text(above)
        lines.append(escape(text[0].upper() + text[1:] + f", {sure_text(above['confidence'], asked)}."))
    if search.get("ended"):
        lines.append(f"The search ended: {escape(search['ended'])}.")
    rows = "".join(f"<tr><td>{i}</td><td class=l>{escape(t['stage'])}</td><td class='l {t['verdict']}'>"
                   f"{escape(t['verdict'])}</td><td>{pct(t['confidence'])}</td>"
                   f"<td class=l>{escape(', '.join(t['slos']) or '–')}</td><td>{_num(t['duration_s'], 1)}</td>"
                   f"<td class=l>{escape(str(t['stopped_by'] or ''))}</td></tr>"
                   for i, t in enumerate(search.get("tried", []), 1))
    table = ("<table><tr><th>#</th><th class=l>stage</th><th class=l>verdict</th><th>sure</th>"
             "<th class=l>SLOs missed (or least sure)</th><th>sent for s</th><th class=l>stage ended by</th></tr>"
             f"{rows}</table>")
    return ("<h2>Capacity</h2>" + "".join(f"<div class=answer>{line}</div>" for line in lines)
            + "<div class=charts>" + _search_chart(summary) + "</div>" + table)


def _search_chart(summary: dict[str, Any]) -> str:
    """Goodput and served throughput against the load offered, one point per stage tried, coloured by verdict."""
    search = summary["search"]
    stages = sorted(summary.get("stages", []), key=lambda s: float(s["target"]))
    if not stages:
        return ""
    xs = [float(s["target"]) for s in stages]
    y_hi = max([s["requests_per_s"] for s in stages] + [s["goodput_requests_per_s"] for s in stages] + [1.0]) * 1.2
    x_label = "offered load (requests/s)" if search["mode"] == "rate" else "concurrent streams"
    chart = Chart("Capacity search: served and goodput per stage tried", x_label, "requests/s",
                  (0.0, max(xs) * 1.15), (0.0, y_hi), width=700, height=340, band_rows=1)
    chart.line([(x, s["requests_per_s"]) for x, s in zip(xs, stages, strict=True)], "#999", "served req/s")
    chart.line([(x, s["goodput_requests_per_s"]) for x, s in zip(xs, stages, strict=True)], PALETTE[0],
               "goodput req/s")
    for x, s in zip(xs, stages, strict=True):
        color = VERDICT_COLORS.get(str(s.get("search_verdict")), "#555")
        chart.scatter([(x, s["goodput_requests_per_s"])], color, radius=5, opacity=0.9)
        chart.point_label(x, s["goodput_requests_per_s"], f"{s['name']} {s.get('search_verdict', '')}", color)
    answer = search.get("answer")
    if answer is not None:
        chart.vline(float(answer["value"]), f"capacity {answer['value']:g}", color="#1e7e34", top=True)
    return chart.render()


def _server_charts(summary: dict[str, Any], records: Sequence[RequestRecord], samples: Sequence[Sample]) -> list[str]:
    """The server's running and waiting requests, KV-cache usage, and its TTFT beside the client's, over time."""
    if not samples or not records:
        return []
    t0 = min(r.start_time for r in records)
    end = max(max(r.start_time + (r.e2e_s or 0.0) for r in records) - t0, float(samples[-1]["t"]) - t0, 1.0)
    charts = []
    for keys, title, unit, scale in ((("running", "waiting"), "Server: requests running and waiting", "requests",
                                      1.0),
                                     (("kv_cache_usage",), "Server: KV-cache usage", "% of the cache", 100.0)):
        lines = [(k, [(float(s["t"]) - t0, float(s[k]) * scale) for s in samples if s.get(k) is not None])
                 for k in keys]
        lines = [(k, pts) for k, pts in lines if pts]
        if not lines:
            continue
        y_hi = max(max(v for _, v in pts) for _, pts in lines) * 1.15 or 1.0
        if scale == 100.0:  # a share: up to 100%, or up to a little above the highest when it stays low
            y_hi = min(100.0, max(y_hi * 1.3, 1.0))
        chart = Chart(title, "seconds since start", unit, (0.0, end), (0.0, y_hi), band_rows=_band_rows(summary))
        for i, (k, pts) in enumerate(lines):
            chart.line(pts, PALETTE[i + 3], k.replace("_", " "))
        _stage_marks(chart, summary, t0)
        charts.append(chart.render())
    ttft = _ttft_beside(summary, records, samples, t0, end)
    return charts + ([ttft] if ttft else [])


def _ttft_beside(summary: dict[str, Any], records: Sequence[RequestRecord], samples: Sequence[Sample], t0: float,
                 end: float) -> str:
    """TTFT p50 and p99 over windows of a few seconds: the server's (from its histogram) and the client's."""
    if not any(s.get("ttft_buckets") for s in samples):
        return ""
    ok = sorted((r.start_time + (r.ttft_s or 0.0), r.ttft_s or 0.0) for r in records if r.ok and r.ttft_s is not None)
    server: dict[str, list[tuple[float, float]]] = {"p50": [], "p99": []}
    client: dict[str, list[tuple[float, float]]] = {"p50": [], "p99": []}
    # Windows of SERVER_WINDOW_S, shorter for a short run (at least three of them, not under the one-second
    # scrape interval), so a run of a few seconds still has points to draw.
    window = SERVER_WINDOW_S if end >= 3 * SERVER_WINDOW_S else round(max(1.0, end / 3), 1)
    t = 0.0
    while t == 0.0 or t < end - window / 2:  # a last piece shorter than half a window would tell little
        a, b = t0 + t, t0 + t + window
        mid = t + min(window, end - t) / 2  # the middle of what the window covers of the run
        for q, v in zip(("p50", "p99"), window_quantiles(samples, a, b), strict=True):
            if v is not None:
                server[q].append((mid, v * 1000))
        mine = [v for at, v in ok if a <= at < b]  # by when the first token came, as the server's histogram
        if mine:
            for q, v in zip(("p50", "p99"), np.percentile(mine, (50, 99)), strict=True):
                client[q].append((mid, float(v) * 1000))
        t += window
    values = [v for d in (server, client) for pts in d.values() for _, v in pts]
    if not values:
        return ""
    chart = Chart(f"TTFT, server and client (p50, p99 over {window:g} s windows)", "seconds since start",
                  "TTFT (ms)", (0.0, end), (0.0, max(values) * 1.15), band_rows=_band_rows(summary))
    for q, color in (("p50", PALETTE[0]), ("p99", PALETTE[1])):  # a line of one or two points is hard to see
        chart.line(client[q], color, f"client {q}", markers=len(client[q]) < 3)
        chart.line(server[q], color, f"server {q} (histogram)", dash="6,3", markers=len(server[q]) < 3)
    for thr, label in _thresholds(summary, "ttft"):
        chart.hline(thr * 1000, label)
    _stage_marks(chart, summary, t0)
    return chart.render()


def _models_table(summary: dict[str, Any]) -> str:
    rows = []
    for s in summary.get("stages", []):
        for model, m in (s.get("models") or {}).items():
            rows.append(f"<tr><td class=l>{escape(s['name'])}</td><td class=l>{escape(model)}</td>"
                        f"<td>{m['requests']}</td><td>{m['succeeded']}</td><td>{_ms(m['ttft_p50'])}</td>"
                        f"<td>{_ms(m['ttft_p99'])}</td></tr>")
    if not rows:
        return ""
    return ("<h2>Models</h2><table><tr><th class=l>stage</th><th class=l>model</th><th>requests</th>"
            f"<th>succeeded</th><th>TTFT p50 ms</th><th>TTFT p99 ms</th></tr>{''.join(rows)}</table>")


def _error_samples(records: Sequence[RequestRecord]) -> str:
    seen: dict[tuple[str, str], int] = {}
    for r in records:
        if not r.ok:
            key = (r.error_kind or "other", r.error[:160])
            seen[key] = seen.get(key, 0) + 1
    if not seen:
        return "<p class=muted>No failed requests.</p>"
    rows = "".join(f"<tr><td class=l>{escape(k)}</td><td>{n}</td><td class=l>{escape(msg)}</td></tr>"
                   for (k, msg), n in sorted(seen.items(), key=lambda kv: -kv[1])[:20])
    return f"<table><tr><th class=l>kind</th><th>requests</th><th class=l>message</th></tr>{rows}</table>"


def verdict_text(summary: dict[str, Any]) -> str:
    """The badge: the capacity found, or which stages missed which SLOs."""
    verdict = summary.get("verdict", "no_spec")
    search = summary.get("search")
    if search:
        answer = search.get("answer")
        text = (f"capacity {answer['value']:g} {unit_of(search['mode'])} ({answer['stage']})" if answer
                else "no load tried held every SLO")
    elif verdict == "fail":
        text = missed_text(summary) or "an SLO was missed"
    else:
        text = {"pass": "every SLO held", "no_spec": "no spec: not judged"}.get(verdict, verdict)
    return text + saturation_note(summary)


def render_report(summary: dict[str, Any], records: Sequence[RequestRecord],
                  server: Sequence[Sample] = ()) -> str:
    by_stage: dict[str, list[RequestRecord]] = {}
    for s in summary.get("stages", []):
        by_stage[s["name"]] = []
    for r in records:
        if r.stage in by_stage:
            by_stage[r.stage].append(r)
    verdict = summary.get("verdict", "no_spec")
    spec = summary.get("spec")
    notes = []
    if summary.get("interrupted"):
        notes.append("The run was interrupted: the figures cover what ran until then.")
    if summary.get("stopped_early"):
        notes.append(f"The sweep stopped early: {summary['stopped_early']}.")
    workload = summary.get("workload") or {}
    facts = [
        ("target", f"{summary.get('target')}{summary.get('endpoint')}"), ("model", summary.get("model")),
        ("API", summary.get("api")), ("workers", summary.get("workers") or "one process"),
        ("started", _time(summary.get("started_at"))), ("finished", _time(summary.get("finished_at"))),
        ("stages planned", ", ".join(summary.get("stages_planned", [])) or "decided by the search"),
        ("workload", ", ".join(f"{k}={v}" for k, v in workload.items() if v not in (None, ""))),
        ("spec", f"{spec['service']} ({spec['source']})" if spec else "none"),
        ("records", summary.get("records")),
    ]
    fact_rows = "".join(f"<tr><th class=l>{escape(str(k))}</th><td class=l>{escape(str(v))}</td></tr>"
                        for k, v in facts)
    cdfs = [c for key, title, metric in METRICS if (c := _cdf_chart(summary, by_stage, key, title, metric))]
    sweep = _sweep_charts(summary) if len(summary.get("stages", [])) > 1 else []
    over_time = _over_time(summary, records)
    server_charts = _server_charts(summary, records, server)
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>forge-slo load: {escape(str(summary.get('model')))}</title><style>{_CSS}</style></head><body>",
        f"<h1>Load test of {escape(str(summary.get('model')))}</h1>",
        f"<div class='verdict {verdict}'>Verdict: {escape(verdict_text(summary))}</div>",
        "".join(f"<p><b>{escape(n)}</b></p>" for n in notes),
        _capacity(summary),
        f"<h2>Run</h2><table>{fact_rows}</table>",
        "<h2>Stages</h2>", _stage_table(summary),
        "<p class=muted>Latency figures cover successful requests sent after the warm-up. Offered: requests sent "
        "per second of the stage's sending window. Served (and tokens/s, goodput): successful requests over the "
        "stage's wall time, from its first request sent to its last one finished, so the drain is included; "
        "goodput counts those that met every latency SLO. Saturated: the server could not keep up (queueing "
        "grew over the stage, it shed requests, or arrivals were dropped at --max-in-flight).</p>",
        "<h2>SLOs</h2>", _slo_table(summary),
        "<h2>Latency distributions</h2><div class=charts>", "".join(cdfs), "</div>",
    ]
    if sweep:
        parts += ["<h2>Latency against throughput</h2><p class=muted>Each point is a stage (* saturated).</p>"
                  "<div class=charts>", "".join(sweep), "</div>"]
    if server_charts:
        parts += ["<h2>The server's view</h2><p class=muted>Read from the server's own metrics every second "
                  "(server_metrics.jsonl). Its TTFT starts when it receives a request; the client's when it sends "
                  "it.</p><div class=charts>", "".join(server_charts), "</div>"]
    parts += [_models_table(summary),
              "<h2>Over time</h2><div class=charts>", "".join(over_time), "</div>",
              "<h2>Errors</h2>", _error_samples(records),
              "<p class=muted>Written by forge-slo load. Exact per-request values are in records.jsonl, "
              "the figures above in summary.json.</p></body></html>"]
    return "\n".join(parts)
