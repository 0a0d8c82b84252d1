"""``report.html``: one self-contained page (inline CSS and SVG, no scripts) for a load run."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from html import escape
from typing import Any

import numpy as np

from forge_slo.load.summary import saturation_note
from forge_slo.runtime.svg import PALETTE, Chart
from forge_slo.sources.records import RequestRecord

METRICS = (("ttft_s", "TTFT", "ttft"), ("tpot_s", "TPOT", "tpot"), ("itl_s", "ITL", "itl"),
           ("e2e_s", "e2e latency", "e2e"))
MAX_CDF_POINTS = 300
MAX_SCATTER_POINTS = 4000

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}th{background:#f4f4f4}
td.l,th.l{text-align:left}.pass{color:#1e7e34;font-weight:bold}.fail{color:#c0392b;font-weight:bold}
.muted{color:#777}.charts{display:flex;flex-wrap:wrap;gap:12px}.charts svg{border:1px solid #eee}
.verdict{font-size:18px;padding:6px 12px;display:inline-block;border-radius:4px;margin:6px 0}
.verdict.pass{background:#e6f4ea}.verdict.fail{background:#fdecea}.verdict.no_spec{background:#eee}
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
               metric: str) -> str:
    series = []
    hi = 0.0
    lo = math.inf
    for name in by_stage:
        values = np.sort(_values(by_stage[name], key))
        if values.size:
            series.append((name, values))
            hi = max(hi, float(np.percentile(values, 99.5)))
            lo = min(lo, float(values[0]))
    thresholds = _thresholds(summary, metric)
    if not series:
        return ""
    for thr, _ in thresholds:
        if thr <= 3 * hi:  # a far-away threshold is named in the legend instead of squashing the curves
            hi = max(hi, thr * 1.05)
            lo = min(lo, thr)
    margin = (hi - lo) * 0.05
    lo = max(0.0, lo - margin) if lo > 2 * margin else 0.0
    chart = Chart(f"{title}: cumulative distribution", f"{title} (ms)", "share of requests (%)" if key != "itl_s"
                  else "share of gaps (%)", (lo * 1000, (hi + margin) * 1000 or 1.0), (0.0, 100.0))
    for i, (name, values) in enumerate(series):
        n = values.size
        idx = np.unique(np.linspace(0, n - 1, min(n, MAX_CDF_POINTS)).astype(int))
        points = [(float(values[j]) * 1000, 100.0 * (j + 1) / n) for j in idx]
        points.insert(0, (float(values[0]) * 1000, 0.0))
        chart.line(points, PALETTE[i % len(PALETTE)], name if len(series) > 1 or name else title)
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
                      (0.0, end), (0.0, hi or 1.0))
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
                  (0.0, float(seconds)), (0.0, float(max(reqs.max(), fails.max(), sent.max(), 1.0)) * 1.15))
    chart.line(list(zip(xs, sent.tolist(), strict=True)), "#999", "sent requests/s (offered)")
    chart.line(list(zip(xs, reqs.tolist(), strict=True)), PALETTE[0], "successful requests/s (served)")
    if fails.any():
        chart.line(list(zip(xs, fails.tolist(), strict=True)), PALETTE[3], "failed requests/s")
    _stage_marks(chart, summary, t0)
    charts.append(chart.render())
    chart = Chart("Output tokens per second", "seconds since start", "tokens/s", (0.0, float(seconds)),
                  (0.0, float(max(toks.max(), 1.0)) * 1.15))
    chart.line(list(zip(xs, toks.tolist(), strict=True)), PALETTE[2], "output tokens/s")
    _stage_marks(chart, summary, t0)
    charts.append(chart.render())
    return charts


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
    charts = []
    xs = [s["requests_per_s"] for s in stages]
    x_hi = max(xs) * 1.15 or 1.0
    for key, title, metric in (("ttft_s", "TTFT", "ttft"), ("tpot_s", "TPOT", "tpot"), ("e2e_s", "e2e", "e2e")):
        p50 = [s["latency"][key]["p50"] for s in stages]
        p99 = [s["latency"][key]["p99"] for s in stages]
        if all(v is None for v in p99):
            continue
        hi = max(v for v in p99 + p50 if v is not None) * 1000 * 1.15
        for thr, _ in _thresholds(summary, metric):
            hi = max(hi, thr * 1000 * 1.1)
        chart = Chart(f"{title} against served throughput, per stage", "served requests/s (drain included)",
                      f"{title} (ms)", (0.0, x_hi), (0.0, hi or 1.0))
        for values, name, color in ((p50, "p50", PALETTE[0]), (p99, "p99", PALETTE[1])):
            pts = [(x, v * 1000) for x, v in zip(xs, values, strict=True) if v is not None]
            chart.line(pts, color, name, markers=True)
        for thr, label in _thresholds(summary, metric):
            chart.hline(thr * 1000, label)
        for x, stage in zip(xs, stages, strict=True):
            if stage.get("saturated"):
                chart.vline(x, f"{stage['name']} saturated", color="#c0392b", dash="2,3", top=True)
        charts.append(chart.render())
    return charts


def _load_cell(stage: dict[str, Any]) -> str:
    if not stage.get("saturated"):
        return "<td class=l>kept up</td>"
    why = "; ".join(stage.get("saturation", []))
    return f"<td class='l fail' title='{escape(why)}'>saturated</td>"


def _stage_table(summary: dict[str, Any]) -> str:
    head = ("stage", "requests", "failed", "offered req/s", "served req/s", "out tok/s", "goodput req/s",
            "TTFT p50/p90/p99 ms", "TPOT p50/p99 ms", "ITL p50/p99 ms", "e2e p50/p99 ms", "errors by kind", "load",
            "verdict")
    rows = []
    for s in summary.get("stages", []):
        lat = s["latency"]
        kinds = ", ".join(f"{k} {v}" for k, v in s["errors"]["by_kind"].items()) or "none"
        rows.append(
            f"<tr><td class=l>{escape(s['name'])}</td><td>{s['requests']}</td><td>{s['failed']}</td>"
            f"<td>{_num(s['sent_per_s'])}</td><td>{_num(s['requests_per_s'])}</td>"
            f"<td>{_num(s['output_tokens_per_s'], 1)}</td>"
            f"<td>{_num(s['goodput_requests_per_s'])}</td>"
            f"<td>{_ms(lat['ttft_s']['p50'])} / {_ms(lat['ttft_s']['p90'])} / {_ms(lat['ttft_s']['p99'])}</td>"
            f"<td>{_ms(lat['tpot_s']['p50'])} / {_ms(lat['tpot_s']['p99'])}</td>"
            f"<td>{_ms(lat['itl_s']['p50'])} / {_ms(lat['itl_s']['p99'])}</td>"
            f"<td>{_ms(lat['e2e_s']['p50'])} / {_ms(lat['e2e_s']['p99'])}</td>"
            f"<td class=l>{escape(kinds)}</td>{_load_cell(s)}<td class='{s['verdict']}'>{s['verdict']}</td></tr>")
    th = "".join(f"<th{' class=l' if h in ('stage', 'errors by kind', 'load') else ''}>{h}</th>" for h in head)
    why = "".join(f"<li>{escape(s['name'])} saturated: {escape('; '.join(s['saturation']))}</li>"
                  for s in summary.get("stages", []) if s.get("saturated"))
    return f"<table><tr>{th}</tr>{''.join(rows)}</table>" + (f"<ul>{why}</ul>" if why else "")


def _slo_table(summary: dict[str, Any]) -> str:
    if not summary.get("spec"):
        return "<p class=muted>No spec given (--spec): nothing judged.</p>"
    rows = []
    for s in summary.get("stages", []):
        for slo in s["slos"]:
            if not slo["judged"]:
                rows.append(f"<tr><td class=l>{escape(s['name'])}</td><td class=l>{escape(slo['name'])}</td>"
                            f"<td class=l>{escape(slo['kind'])}</td><td>{slo['objective_percent']:g}%</td>"
                            f"<td colspan=3 class='l muted'>{escape(slo.get('reason', ''))}</td></tr>")
                continue
            what = "availability" if slo["kind"] == "availability" else \
                f"{slo['metric']} &le; {slo['threshold_s']:g}s"
            att = slo["attainment_percent"]
            verdict = "pass" if slo["met"] else "fail"
            rows.append(f"<tr><td class=l>{escape(s['name'])}</td><td class=l>{escape(slo['name'])}</td>"
                        f"<td class=l>{what}</td><td>{slo['objective_percent']:g}%</td>"
                        f"<td>{'–' if att is None else f'{att:.3f}%'}</td><td>{slo['good']} / {slo['events']}</td>"
                        f"<td class={verdict}>{verdict}</td></tr>")
    head = "".join(f"<th class=l>{h}</th>" if i < 3 else f"<th>{h}</th>" for i, h in
                   enumerate(("stage", "SLO", "objective on", "objective", "attained", "good / events", "")))
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


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


def render_report(summary: dict[str, Any], records: Sequence[RequestRecord]) -> str:
    by_stage: dict[str, list[RequestRecord]] = {}
    for s in summary.get("stages", []):
        by_stage[s["name"]] = []
    for r in records:
        if r.stage in by_stage:
            by_stage[r.stage].append(r)
    verdict = summary.get("verdict", "no_spec")
    verdict_text = {"pass": "every SLO held", "fail": "an SLO was missed",
                    "no_spec": "no spec: not judged"}.get(verdict, verdict) + saturation_note(summary)
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
        ("stages planned", ", ".join(summary.get("stages_planned", []))),
        ("workload", ", ".join(f"{k}={v}" for k, v in workload.items() if v not in (None, ""))),
        ("spec", f"{spec['service']} ({spec['source']})" if spec else "none"),
        ("records", summary.get("records")),
    ]
    fact_rows = "".join(f"<tr><th class=l>{escape(str(k))}</th><td class=l>{escape(str(v))}</td></tr>"
                        for k, v in facts)
    cdfs = [c for key, title, metric in METRICS if (c := _cdf_chart(summary, by_stage, key, title, metric))]
    sweep = _sweep_charts(summary) if len(summary.get("stages", [])) > 1 else []
    over_time = _over_time(summary, records)
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>forge-slo load: {escape(str(summary.get('model')))}</title><style>{_CSS}</style></head><body>",
        f"<h1>Load test of {escape(str(summary.get('model')))}</h1>",
        f"<div class='verdict {verdict}'>Verdict: {escape(verdict_text)}</div>",
        "".join(f"<p><b>{escape(n)}</b></p>" for n in notes),
        f"<table>{fact_rows}</table>",
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
        parts += ["<h2>Latency against throughput</h2><div class=charts>", "".join(sweep), "</div>"]
    parts += ["<h2>Over time</h2><div class=charts>", "".join(over_time), "</div>",
              "<h2>Errors</h2>", _error_samples(records),
              "<p class=muted>Written by forge-slo load. Exact per-request values are in records.jsonl, "
              "the figures above in summary.json.</p></body></html>"]
    return "\n".join(parts)
