"""What a load run shows its user, from records alone: the verdict names the stages and the SLOs they missed, the SLO
table has a row per stage, the live figures leave warm-up out and say which stage of how many and how long is
left, latency distributions that span decades are on a log axis, sweep points carry their stage's name, and
stage names above the time charts keep clear of the title and of each other."""

from __future__ import annotations

import re

from forge_slo.load.judge import Criterion, SpecInfo
from forge_slo.load.launch import format_verdict
from forge_slo.load.progress import plain_line
from forge_slo.load.report import render_report
from forge_slo.load.sink import RecordSink
from forge_slo.load.summary import build_summary
from forge_slo.sources.records import RequestRecord

T0 = 1_750_000_000.0
CRITERIA = (Criterion("ttft", "latency", 90.0, "ttft", 0.5), Criterion("tpot", "latency", 90.0, "tpot", 0.1),
            Criterion("itl", "latency", 90.0, "itl", 0.1), Criterion("e2e", "latency", 90.0, "e2e", 20.0),
            Criterion("availability", "availability", 99.0))
SPEC = SpecInfo("chat", "chat.yaml", CRITERIA)


def _record(stage: str, at: float, ttft: float, warmup: bool = False) -> RequestRecord:
    return RequestRecord(start_time=at, model="m", ok=True, status=200, ttft_s=ttft, tpot_s=0.02, e2e_s=ttft + 0.2,
                         itl_s=(0.02,) * 10, prompt_tokens=10, output_tokens=11, stage=stage, warmup=warmup)


def _run(stages: list[tuple[str, float, list[float]]], seconds: float = 10.0
         ) -> tuple[dict[str, object], list[RequestRecord]]:
    """A sweep: (name, rate, the TTFT of each request sent 1/rate apart) per stage, ``seconds`` each."""
    records, metas = [], []
    for i, (name, rate, ttfts) in enumerate(stages):
        start = T0 + seconds * i
        metas.append({"name": name, "mode": "rate", "value": rate, "started_at": start, "measure_from": start,
                      "ended_at": start + seconds})
        records += [_record(name, start + k / rate, t) for k, t in enumerate(ttfts)]
    run = {"target": "http://127.0.0.1:8000", "endpoint": "/v1/chat/completions", "model": "m", "api": "chat",
           "stages": metas, "stages_planned": [s[0] for s in stages]}
    return build_summary(records, run, SPEC), records


def _sweep() -> tuple[dict[str, object], list[RequestRecord]]:
    return _run([("rate=2", 2, [0.05] * 20), ("rate=4", 4, [0.06] * 40), ("rate=8", 8, [0.07] * 40 + [2.0] * 40),
                 ("rate=16", 16, [9.0] * 160)])


def test_the_verdict_names_each_stage_and_the_slos_it_missed() -> None:
    summary, records = _sweep()
    text = format_verdict(summary)
    verdict = text.splitlines()[-1]
    assert verdict.startswith("verdict: FAIL (rate=8 missed ttft (50.00% < 90%); rate=16 missed ttft"), verdict
    badge = re.search(r"<div class='verdict fail'>(.*?)</div>", render_report(summary, records))
    assert badge is not None and "rate=8 missed ttft (50.00% &lt; 90%)" in badge.group(1), badge


def test_the_slo_table_has_one_row_per_stage() -> None:
    summary, records = _sweep()
    lines = format_verdict(summary).splitlines()
    head = lines.index("SLOs of chat (chat.yaml):")
    rows = [line for line in lines[head:] if line.startswith("rate=")]
    assert [r.split()[0] for r in rows] == ["rate=2", "rate=4", "rate=8", "rate=16"]  # 4 rows, not 4 x 5
    assert rows[2].split()[1:4] == ["50.00%", "of", "80"] and rows[2].count("FAIL") == 1
    html = render_report(summary, records)
    table = html[html.index("<h2>SLOs</h2>"):html.index("<h2>Latency distributions</h2>")]
    assert table.count("<tr>") == 1 + 4


def test_the_live_figures_leave_the_warm_up_out() -> None:
    sink = RecordSink(None)
    sink.start_stage("rate=4")
    for i in range(5):
        sink.add(_record("rate=4", T0 + i, 0.05, warmup=True))
    for i in range(3):
        sink.add(_record("rate=4", T0 + 5 + i, 0.07))
    view = sink.live_view()
    assert view["ok"] == 3  # the requests the summary will count
    assert view["ttft_p50"] == 0.07


def test_the_progress_line_says_which_stage_of_how_many_and_the_time_left() -> None:
    view = {"elapsed": 42.0, "stage": "rate=4", "ok": 30, "failed": 0, "by_kind": {}, "requests_per_s": 4.0,
            "tokens_per_s": 40.0, "ttft_p50": 0.05, "ttft_p99": 0.08, "in_flight": 1, "sent_per_s": 4.0,
            "warmup": 5, "stage_number": 2, "stages_total": 4, "stage_left_s": 12.4, "run_left_s": 132.4}
    line = plain_line(view)
    assert "stage 2/4 rate=4" in line and "12s left" in line and "(run 2m)" in line, line
    assert "ok 30" in line and "+5 warm-up" in line


def _svg(html: str, label: str) -> str:
    start = html.index(f'aria-label="{label}')
    return html[html.rindex("<svg", 0, start):html.index("</svg>", start)]


def test_latencies_that_span_decades_are_drawn_on_a_log_axis() -> None:
    summary, records = _sweep()  # TTFT from 50 ms to 9 s
    html = render_report(summary, records)
    assert "TTFT (ms, log scale)" in _svg(html, "TTFT: cumulative distribution")
    narrow, narrow_records = _run([("rate=2", 2, [0.05, 0.06, 0.07] * 10), ("rate=4", 4, [0.06, 0.08] * 20)])
    assert "log scale" not in _svg(render_report(narrow, narrow_records), "TTFT: cumulative distribution")


def test_points_against_throughput_carry_their_stage_names() -> None:
    summary, records = _run([("rate=2", 2, [0.05] * 20), ("rate=4", 4, [0.06] * 40), ("rate=8", 8, [0.09] * 80)])
    chart = _svg(render_report(summary, records), "TTFT against served throughput")
    names = re.findall(r">(rate=\d+)\*?</text>", chart)
    assert sorted(names) == ["rate=2", "rate=4", "rate=8"], chart


def _texts(svg: str) -> list[tuple[float, float, str, str]]:
    """(x, y, anchor, text) of every text element."""
    out = []
    for m in re.finditer(r'<text x="([\d.]+)" y="([\d.]+)"([^>]*)>([^<]*)</text>', svg):
        anchor = re.search(r'text-anchor="(\w+)"', m.group(3))
        out.append((float(m.group(1)), float(m.group(2)), anchor.group(1) if anchor else "start", m.group(4)))
    return out


def test_stage_names_above_the_time_charts_clear_the_title_and_each_other() -> None:
    # Six stages of 4 s: their names, as wide as 5 s of the chart, are close together above it.
    stages = [(f"rate={r}", float(r), [0.05] * (4 * r)) for r in (1, 2, 3, 4, 5, 6)]
    summary, records = _run(stages, seconds=4.0)
    svg = _svg(render_report(summary, records), "Throughput over time")
    texts = _texts(svg)
    title = next(t for t in texts if t[3].startswith("Throughput over time"))
    labels = [t for t in texts if re.fullmatch(r"rate=\d", t[3])]
    assert len(labels) == 6
    for _x, y, _anchor, _text in labels:
        assert y - 10 >= title[1] + 3, (labels, title)  # below the title's line, not through it

    def extent(t: tuple[float, float, str, str]) -> tuple[float, float]:
        width = 5.6 * len(t[3])
        x = t[0]
        return (x - width / 2, x + width / 2) if t[2] == "middle" else (x - width, x) if t[2] == "end" else (
            x, x + width)

    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            if a[1] == b[1]:
                (a0, a1), (b0, b1) = extent(a), extent(b)
                assert a1 < b0 or b1 < a0, (a, b)
