"""The alerts on-call relies on, proven with promtool on the rules forge-slo compiles.

A 99.9% / 30-day availability SLO over vLLM's own counters, grouped by model: a failed request is an HTTP
5xx of the generation routes (charged to the model: the HTTP counter has no model label); vLLM also counts
it as finished with ``error``, which the series below include and the SLI must not count a second time.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from forge_slo.compile.rules import rules_document
from forge_slo.spec import load_specs
from tests.conftest import run_promtool_tests

SPEC = textwrap.dedent("""\
    apiVersion: forge-slo/v1
    kind: ServiceSLO
    service: chat
    preset: vllm
    group_by: [model_name]
    period: {period}
    alerting:
      min_events: {min_events}
      {windows}
    slos:
      - name: availability
        objective: 99.9
        sli: {{availability: {{}}}}
    """)

M = 'model_name="m"'
STOP = f'vllm:request_success_total{{{M},finished_reason="stop"}}'
ERROR = f'vllm:request_success_total{{{M},finished_reason="error"}}'
HTTP_5XX = 'http_requests_total{handler="/v1/chat/completions",method="POST",status="5xx"}'


def failures(values: str) -> dict[str, str]:
    """Failed requests as vLLM shows them: an HTTP 500 each, and the same requests finished with "error"."""
    return {HTTP_5XX: values, ERROR: values}
PAGES = 'count by (forge_slo_long_window) (ALERTS{alertstate="firing",forge_slo_severity="page"})'
TICKETS = 'count by (forge_slo_long_window) (ALERTS{alertstate="firing",forge_slo_severity="ticket"})'


def rules(tmp_path: Path, period: str = "30d", min_events: float = 10, windows: str = "") -> dict:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.format(period=period, min_events=min_events, windows=windows), encoding="utf-8")
    [spec] = load_specs([path])
    return rules_document(spec)


def check(promtool: str, tmp_path: Path, rule_doc: dict, series: dict[str, str],
          expectations: list[tuple[str, str, list[dict]]], evaluation_interval: str = "1m") -> None:
    test = {
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "promql_expr_test": [{"expr": expr, "eval_time": at, "exp_samples": exp} for expr, at, exp in expectations],
    }
    result = run_promtool_tests(promtool, rule_doc, [test], tmp_path, evaluation_interval=evaluation_interval)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def window(name: str) -> dict:
    return {"labels": f'{{forge_slo_long_window="{name}"}}', "value": 1}


def test_total_outage_pages_within_five_minutes(promtool: str, tmp_path: Path) -> None:
    # 10 requests/s for 3 hours, then every request fails (finished with "error", answered with a 500).
    series = {
        STOP: "0+600x180 108000+0x29",
        **failures("0+0x180 600+600x29"),
    }
    check(promtool, tmp_path, rules(tmp_path), series, [
        (PAGES, "180m", []),
        (PAGES, "185m", [window("1h"), window("6h")]),
    ])


def test_outage_page_needs_the_fault_to_last(promtool: str, tmp_path: Path) -> None:
    """The same outage seen one minute in: the `for: 2m` keeps a one-scrape blip from paging."""
    series = {STOP: "0+600x180 108000+0x29", **failures("0+0x180 600+600x29")}
    check(promtool, tmp_path, rules(tmp_path), series, [(PAGES, "182m", [])])


def test_steady_2x_burn_for_6_hours_opens_a_ticket_and_pages_nobody(promtool: str, tmp_path: Path) -> None:
    # Error ratio 0.2% (twice the 0.1% budget) from the first request on, for six hours.
    series = {STOP: "0+598.8x360", **failures("0+1.2x360")}
    check(promtool, tmp_path, rules(tmp_path), series, [
        (PAGES, "60m", []),
        (PAGES, "180m", []),
        (PAGES, "360m", []),
        (TICKETS, "360m", [window("3d")]),
    ])


def test_half_budget_burn_for_3_days_raises_nothing(promtool: str, tmp_path: Path) -> None:
    series = {STOP: "0+599.7x4320", **failures("0+0.3x4320")}
    anything = 'count(ALERTS{alertstate="firing"})'
    check(promtool, tmp_path, rules(tmp_path), series, [
        (anything, "1h", []), (anything, "1d", []), (anything, "2d", []), (anything, "3d", []),
    ], evaluation_interval="5m")  # rules every 5 minutes over 1-minute data: same verdict, 5x less work


def _low_traffic() -> dict[str, str]:
    # Five requests in an hour: successes at minutes 10 and 40, aborts at 20, 30 and 50.
    return {
        STOP: "0x9 1x29 2x20",
        **failures("0x19 1x9 2x19 3x10"),
    }


def test_three_failures_out_of_five_at_night_page_nobody(promtool: str, tmp_path: Path) -> None:
    checks = [(PAGES, f"{m}m", []) for m in (21, 31, 35, 51, 55, 60)]
    check(promtool, tmp_path, rules(tmp_path), _low_traffic(), checks)


def test_without_the_guard_the_same_night_would_page(promtool: str, tmp_path: Path) -> None:
    """The guard is what keeps the previous test quiet: with min_events 0 the same data pages."""
    check(promtool, tmp_path, rules(tmp_path, min_events=0), _low_traffic(), [
        ('count(ALERTS{alertstate="firing",forge_slo_severity="page"}) > bool 0', "55m",
         [{"labels": "{}", "value": 1}]),
    ])


# Period SLI ---------------------------------------------------------------------------------------------------

def _diurnal(minutes: int) -> tuple[list[float], list[float]]:
    """Per-minute requests and failures: days 10x busier than nights, a 20% error incident 02:00-04:00."""
    total, errors = [], []
    for m in range(minutes):
        hour = (m // 60) % 24
        requests = 6000.0 if 8 <= hour < 20 else 600.0
        ratio = 0.2 if 2 <= hour < 4 and m < 24 * 60 else 0.001
        total.append(requests)
        errors.append(requests * ratio)
    return total, errors


def _cumulative(per_minute: list[float]) -> str:
    values, acc = ["0"], 0.0
    for v in per_minute:
        acc += v
        values.append(repr(round(acc, 6)))
    return " ".join(values)


def test_period_sli_is_traffic_weighted(promtool: str, tmp_path: Path) -> None:
    """Over a 1-day period: the recorded period SLI matches the exact errors/total within 0.1%, where an
    average of 5-minute ratios overstates it by more than 30% (the night incident weighs as much as a day)."""
    minutes = 25 * 60
    total, errors = _diurnal(minutes)
    window = slice(minutes - 24 * 60, minutes)  # the increments inside the last day
    exact = sum(errors[window]) / sum(total[window])
    series = {
        STOP: _cumulative([t - e for t, e in zip(total, errors, strict=True)]),
        **failures(_cumulative(errors)),
    }
    windows = ('page: {windows: [{long: 1h, short: 5m, factor: 14.4}]}\n'
               '  ticket: {windows: [{long: 6h, short: 30m, factor: 6}]}')
    labels = '{forge_slo_name="availability",forge_slo_service="chat",model_name="m"}'
    at = f"{minutes}m"
    check(promtool, tmp_path, rules(tmp_path, period="1d", windows=windows), series, [
        (f"abs(forge_slo:period_error:ratio / {exact!r} - 1) < bool 0.001", at, [{"labels": labels, "value": 1}]),
        (f"avg_over_time(forge_slo:sli_error:ratio_rate5m[1d]) / {exact!r} - 1 > bool 0.3", at,
         [{"labels": labels, "value": 1}]),
        (f"abs(forge_slo:error_budget_remaining:ratio - (1 - {exact!r} / 0.001)) < bool 0.01", at,
         [{"labels": labels, "value": 1}]),
    ])
